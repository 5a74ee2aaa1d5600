package rewards

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// TestGenevalKind runs a stand-in detector graph whose outputs are constants in the declared
// layout (unbatched: boxes [K,4], scores [K], labels [K]), and checks the kind maps boxes back
// to image pixels, reads colours from the pixels and applies GenEval's rules.
func TestGenevalKind(t *testing.T) {
	dir := t.TempDir()
	g := onnx.NewGraph("detector")
	g.Input("images", onnx.Float32, onnx.Sym("N"), onnx.Dim{Value: 3}, onnx.Dim{Value: 50}, onnx.Dim{Value: 50})
	// In the 50×50 detector input: a car at [0,0,20,20] (0.9) and a dog at [30,0,50,20]
	// (0.8); a cup at 0.2 falls under the 0.3 threshold.
	boxes := g.InitializerF32("boxes_value", []int64{3, 4}, []float32{0, 0, 20, 20, 30, 0, 50, 20, 0, 30, 10, 40})
	scores := g.InitializerF32("scores_value", []int64{3}, []float32{0.9, 0.8, 0.2})
	labels := g.InitializerI64("labels_value", []int64{3}, []int64{2, 1, 0})
	g.Node("Identity", []string{boxes}, []string{"boxes"})
	g.Node("Identity", []string{scores}, []string{"scores"})
	g.Node("Identity", []string{labels}, []string{"labels"})
	g.Output("boxes", onnx.Float32, onnx.Sym("K"), onnx.Dim{Value: 4})
	g.Output("scores", onnx.Float32, onnx.Sym("K"))
	g.Output("labels", onnx.Int64, onnx.Sym("K"))

	c := Config{Name: "geneval", Kind: "geneval", Model: writeModel(t, dir, g), Classes: writeFile(t, dir, "classes.txt", "cup\ndog\ncar\n"), BatchSize: 1}
	c.Image.Input = "images"
	c.Image.Size = []int{50, 50}
	c.Output.Boxes, c.Output.Scores, c.Output.Labels = "boxes", "scores", "labels"
	set, err := Open(context.Background(), []Config{c}, dir, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()

	// A 100×100 image: left 40 columns blue, the rest red. Boxes scale ×2: car [0,0,40,40]
	// is blue, dog [60,0,100,40] is red.
	im := Image{W: 100, H: 100, Pix: make([]float32, 100*100*3)}
	for y := 0; y < 100; y++ {
		for x := 0; x < 100; x++ {
			if x < 40 {
				im.Pix[(y*100+x)*3+2] = 1
			} else {
				im.Pix[(y*100+x)*3] = 1
			}
		}
	}
	clause := func(class string, kv ...any) map[string]any {
		m := map[string]any{"class": class, "count": int64(1)}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	prompts := []Prompt{
		// Blue car: count 1, colour 1 → 1.
		{Text: "a photo of a blue car", Metadata: map[string]any{"tag": "colors", "include": []any{clause("car", "color", "blue")}}},
		// Dog right of car: car 1; dog count 1, position 1 → 1.
		{Text: "a photo of a dog right of a car", Metadata: map[string]any{"tag": "position",
			"include": []any{clause("car"), clause("dog", "position", []any{"right of", int64(0)})}}},
		// Red car and blue dog: both colours wrong → (1+0+1+0)/4 = 0.5.
		{Text: "a photo of a red car and a blue dog", Metadata: map[string]any{"tag": "color_attr",
			"include": []any{clause("car", "color", "red"), clause("dog", "color", "blue")}}},
		// A cup: only found at 0.2 → 0; strict and correct 0.
		{Text: "a photo of a cup", Metadata: map[string]any{"tag": "single_object", "include": []any{clause("cup")}}},
	}
	images := []Image{im, im, im, im}
	got, err := set.Score(context.Background(), images, prompts)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct{ score, strict float64 }{{1, 1}, {1, 1}, {0.5, 0}, {0, 0}} {
		if math.Abs(got.ByName["geneval"][i]-want.score) > 1e-12 || got.Extra["geneval.strict"][i] != want.strict || got.Extra["geneval.correct"][i] != want.strict {
			t.Errorf("prompt %d: score %v strict %v correct %v, want %v %v %v", i, got.ByName["geneval"][i],
				got.Extra["geneval.strict"][i], got.Extra["geneval.correct"][i], want.score, want.strict, want.strict)
		}
	}
	if _, err := set.Score(context.Background(), images[:1], []Prompt{{Text: "no metadata"}}); err == nil {
		t.Error("prompt without metadata: no error")
	}
	unicorn := Prompt{Text: "a photo of a unicorn", Metadata: map[string]any{"tag": "single_object", "include": []any{clause("unicorn")}}}
	_, err = set.Score(context.Background(), images[:1], []Prompt{unicorn})
	if err == nil || !strings.Contains(err.Error(), `include[0].class: got "unicorn", want one of the 3 classes of `+c.Classes) {
		t.Errorf("unknown class: %v", err)
	}
}

// TestGenevalLayoutDisagreeingK: outputs declaring different fixed numbers of detections are
// an error at open naming both.
func TestGenevalLayoutDisagreeingK(t *testing.T) {
	dir := t.TempDir()
	g := onnx.NewGraph("detector")
	g.Input("images", onnx.Float32, onnx.Sym("N"), onnx.Dim{Value: 3}, onnx.Dim{Value: 8}, onnx.Dim{Value: 8})
	boxes := g.InitializerF32("boxes_value", []int64{3, 4}, make([]float32, 12))
	scores := g.InitializerF32("scores_value", []int64{2}, []float32{0.9, 0.8})
	labels := g.InitializerI64("labels_value", []int64{3}, []int64{0, 0, 0})
	g.Node("Identity", []string{boxes}, []string{"boxes"})
	g.Node("Identity", []string{scores}, []string{"scores"})
	g.Node("Identity", []string{labels}, []string{"labels"})
	g.Output("boxes", onnx.Float32, onnx.Dim{Value: 3}, onnx.Dim{Value: 4})
	g.Output("scores", onnx.Float32, onnx.Dim{Value: 2})
	g.Output("labels", onnx.Int64, onnx.Dim{Value: 3})
	model := writeModel(t, dir, g)
	c := Config{Name: "geneval", Kind: "geneval", Model: model, Classes: writeFile(t, dir, "classes.txt", "cup\n"), BatchSize: 1}
	c.Image.Input = "images"
	c.Image.Size = []int{8, 8}
	c.Output.Boxes, c.Output.Scores, c.Output.Labels = "boxes", "scores", "labels"
	_, err := Open(context.Background(), []Config{c}, dir, onnxrt.Config{IntraOpThreads: 1})
	want := `model ` + model + `: output "boxes" ([reward.output] boxes) has 3 detections, output "scores" ([reward.output] scores) has 2: want the same K in every detector output`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v\nwant %q", err, want)
	}
}
