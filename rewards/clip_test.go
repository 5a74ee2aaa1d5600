package rewards

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// clipFiles writes the tokenizer fixture (see rewards/tokenize's test): "hello" → hello</w>
// (id 4), "hi" → h (2), i</w> (3); <|startoftext|> 0, <|endoftext|> 1.
func clipFiles(t *testing.T, dir string) (vocab, merges string) {
	vocab = writeFile(t, dir, "vocab.json", `{"<|startoftext|>": 0, "<|endoftext|>": 1, "h": 2, "i</w>": 3, "hello</w>": 4,
		"he": 5, "ll": 6, "hell": 7, "o</w>": 8}`)
	merges = writeFile(t, dir, "merges.txt", "#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\n")
	return vocab, merges
}

// Image tower: pixel_values [N,3,1,1] → Flatten → MatMul diag(2,1,1) → image_embeds [N,3].
// Text tower: input_ids [N,4] → Gather rows of E [9,3] → ReduceSum over tokens → text_embeds.
// E is zero except E[4] (hello</w>) = (1,0,0), E[2] (h) = (0,1,0), E[3] (i</w>) = (0,0,1).
func imageTower(g *onnx.Graph) {
	x := g.Input("pixel_values", onnx.Float32, onnx.Sym("N"), onnx.Dim{Value: 3}, onnx.Dim{Value: 1}, onnx.Dim{Value: 1})
	flat := g.Op("Flatten", []string{x}, onnx.AttrInt("axis", 1))
	w := g.InitializerF32("w_img", []int64{3, 3}, []float32{2, 0, 0, 0, 1, 0, 0, 0, 1})
	g.Node("MatMul", []string{flat, w}, []string{"image_embeds"})
	g.Output("image_embeds", onnx.Float32, onnx.Sym("N"), onnx.Dim{Value: 3})
}

func textTower(g *onnx.Graph) {
	ids := g.Input("input_ids", onnx.Int64, onnx.Sym("N"), onnx.Dim{Value: 4})
	e := make([]float32, 9*3)
	e[4*3+0], e[2*3+1], e[3*3+2] = 1, 1, 1
	table := g.InitializerF32("token_embedding", []int64{9, 3}, e)
	rows := g.Op("Gather", []string{table, ids}, onnx.AttrInt("axis", 0))
	axes := g.ConstI64("axes", []int64{1}, []int64{1})
	g.Node("ReduceSum", []string{rows, axes}, []string{"text_embeds"}, onnx.AttrInt("keepdims", 0))
	g.Output("text_embeds", onnx.Float32, onnx.Sym("N"), onnx.Dim{Value: 3})
}

func TestCLIPScoreAgainstHand(t *testing.T) {
	dir := t.TempDir()
	vocab, merges := clipFiles(t, dir)
	gi := onnx.NewGraph("image_tower")
	imageTower(gi)
	gt := onnx.NewGraph("text_tower")
	textTower(gt)
	// The joint graph holds both towers and reads logit_scale (50) from an output of shape
	// [1]. (A rank-0 output currently panics inside models/onnxrt's Run.)
	gj := onnx.NewGraph("joint")
	imageTower(gj)
	textTower(gj)
	ls := gj.InitializerF32("logit_scale_value", []int64{1}, []float32{50})
	gj.Node("Identity", []string{ls}, []string{"logit_scale"})
	gj.Output("logit_scale", onnx.Float32, onnx.Dim{Value: 1})

	base := Config{Name: "pickscore", Kind: "clip-score", BatchSize: 2}
	base.Image.Size = []int{1, 1}
	base.Text = TextConfig{Tokenizer: "clip-bpe", Vocab: vocab, Merges: merges, MaxLength: 4}
	towers := base
	towers.ImageModel, towers.TextModel = writeModel(t, dir, gi), writeModel(t, dir, gt)
	scale := 1.0 / 26 // Flow-GRPO's PickScore normalisation
	towers.Output.Scale = &scale
	joint := base
	joint.Name = "joint"
	joint.Model = writeModel(t, dir, gj)
	joint.Output.LogitScaleOutput = "logit_scale"

	set, err := Open(context.Background(), []Config{towers, joint}, dir, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	// 1×1 images: A = (0.6, 0.8, 0) → image embedding (1.2, 0.8, 0), |·| = √2.08;
	// B = (0.8, 0, 0.6) → (1.6, 0, 0.6), |·| = √2.92.
	// "hello" → ids [0 4 1 1] → text (1,0,0); "hi" → [0 2 3 1] → (0,1,1), |·| = √2.
	// cos(A, hello) = 1.2/√2.08 = 0.832050; cos(B, hi) = 0.6/(√2.92·√2) = 0.248282;
	// cos(A, hi) = 0.8/(√2.08·√2) = 0.392232.
	// Towers: 100·cos/26 = 3.200193, 0.954930, 1.508586. Joint: 50·cos = 41.602515,
	// 12.414088, 19.611614.
	a := Image{W: 1, H: 1, Pix: []float32{0.6, 0.8, 0}}
	b := Image{W: 1, H: 1, Pix: []float32{0.8, 0, 0.6}}
	got, err := set.Score(context.Background(), []Image{a, b, a}, []Prompt{{Text: "Hello"}, {Text: "hi"}, {Text: "hi"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float64{
		"pickscore": {3.200193, 0.954930, 1.508586},
		"joint":     {41.602515, 12.414088, 19.611614},
	}
	for name, w := range want {
		for i := range w {
			if math.Abs(got.ByName[name][i]-w[i]) > 1e-5 {
				t.Errorf("%s[%d] = %.6f, want %.6f", name, i, got.ByName[name][i], w[i])
			}
		}
	}
	for i := range got.Total {
		if math.Abs(got.Total[i]-(want["pickscore"][i]+want["joint"][i])) > 1e-4 {
			t.Errorf("total[%d] = %v, want the sum", i, got.Total[i])
		}
	}
}

func TestCosine(t *testing.T) {
	for _, tt := range []struct {
		a, b []float32
		want float64
	}{
		{[]float32{1, 0}, []float32{0, 1}, 0},
		{[]float32{3, 4}, []float32{6, 8}, 1},
		{[]float32{1, 1}, []float32{-1, -1}, -1},
		{[]float32{0, 0}, []float32{1, 2}, 0}, // zero vector: defined as 0, not NaN
	} {
		if got := Cosine(tt.a, tt.b); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("Cosine(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// A panic in a tower's ONNX Runtime call (here a nil session) is an error naming the reward,
// as in every other scoring goroutine, not a crash of the process: the two towers run in
// goroutines of their own, which errgroup does not recover.
func TestCLIPTowerPanicIsAnError(t *testing.T) {
	dir := t.TempDir()
	vocab, merges := clipFiles(t, dir)
	gi, gt := onnx.NewGraph("image_tower"), onnx.NewGraph("text_tower")
	imageTower(gi)
	textTower(gt)
	c := Config{Name: "pickscore", Kind: "clip-score", BatchSize: 2}
	c.Image.Size = []int{1, 1}
	c.Text = TextConfig{Tokenizer: "clip-bpe", Vocab: vocab, Merges: merges, MaxLength: 4}
	c.ImageModel, c.TextModel = writeModel(t, dir, gi), writeModel(t, dir, gt)
	set, err := Open(context.Background(), []Config{c}, dir, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	sc := set.rewards[0].scorer.(*clipScorer)
	for _, p := range []*pool{sc.image, sc.text} {
		real := <-p.free
		p.free <- nil // the next run of this tower dereferences a nil session
		_, err := set.Score(context.Background(), []Image{{W: 1, H: 1, Pix: []float32{0.6, 0.8, 0}}}, []Prompt{{Text: "hi"}})
		if err == nil || !strings.Contains(err.Error(), `score reward "pickscore"`) || !strings.Contains(err.Error(), "panic") {
			t.Errorf("%s tower: got %v, want an error naming the reward and the panic", p.path, err)
		}
		<-p.free
		p.free <- real
	}
}

// TestCLIPLogitScaleChecks: the output a joint graph's logit scale is read from is checked
// from the file's declaration before ONNX Runtime reads it (the graph here also holds an
// operator ONNX Runtime does not know, so only a fitting config reaches its refusal), and the
// value it gives must be a finite scale > 0 (a negative one would turn the reward upside down).
func TestCLIPLogitScaleChecks(t *testing.T) {
	dir := t.TempDir()
	vocab, merges := clipFiles(t, dir)
	joint := func(name string, scale []float32, unloadable bool) Config {
		g := onnx.NewGraph(name)
		imageTower(g)
		textTower(g)
		ls := g.InitializerF32("logit_scale_value", []int64{int64(len(scale))}, scale)
		g.Node("Identity", []string{ls}, []string{"logit_scale"})
		g.Output("logit_scale", onnx.Float32, onnx.Dim{Value: int64(len(scale))})
		if unloadable {
			g.Node("NoSuchOp", []string{"pixel_values"}, []string{"unloadable"})
		}
		c := Config{Name: name, Kind: "clip-score", BatchSize: 2, Model: writeModel(t, dir, g)}
		c.Image.Size = []int{1, 1}
		c.Text = TextConfig{Tokenizer: "clip-bpe", Vocab: vocab, Merges: merges, MaxLength: 4}
		c.Output.LogitScaleOutput = "logit_scale"
		return c
	}
	missing := joint("missing", []float32{50}, true)
	missing.Output.LogitScaleOutput = "scale"
	for _, tt := range []struct {
		c    Config
		want string
	}{
		{joint("two", []float32{50, 60}, true), `output "logit_scale": got float32 [2], want one float32 value (from [reward.output] logit_scale_output)`},
		{missing, `no output "scale" (from [reward.output] logit_scale_output)`},
		{joint("fits", []float32{50}, true), "NoSuchOp"},
	} {
		set, err := Open(context.Background(), []Config{tt.c}, dir, onnxrt.Config{IntraOpThreads: 1})
		if err == nil {
			set.Close()
			t.Fatalf("%s: Open succeeded, want an error", tt.c.Name)
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.c.Model) {
			t.Errorf("%s: error %q, want it to name %s and contain %q", tt.c.Name, err, tt.c.Model, tt.want)
		}
	}
	for _, v := range []float32{-50, 0, float32(math.Inf(1))} {
		c := joint("negative", []float32{v}, false)
		set, err := Open(context.Background(), []Config{c}, dir, onnxrt.Config{IntraOpThreads: 1})
		if err != nil {
			t.Fatal(err)
		}
		_, err = set.Score(context.Background(), []Image{{W: 1, H: 1, Pix: []float32{0.6, 0.8, 0}}}, []Prompt{{Text: "hello"}})
		set.Close()
		want := fmt.Sprintf(`model %s: output "logit_scale" is %v, want a finite logit scale > 0`, c.Model, v)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("logit scale %v: %v, want an error containing %q", v, err, want)
		}
	}
}
