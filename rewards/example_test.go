package rewards_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards"
)

// Scoring an image with a reward declared by a TOML table. The model here is a one-node
// ONNX graph (the mean brightness of a 32×32 RGB input) written on the spot; any ONNX file
// with an image input and a score output is added the same way.
func Example() {
	dir, err := os.MkdirTemp("", "rewards-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	g := onnx.NewGraph("brightness")
	g.Input("pixel_values", onnx.Float32, onnx.Sym("N"), onnx.Dim{Value: 3}, onnx.Dim{Value: 32}, onnx.Dim{Value: 32})
	g.Node("ReduceMean", []string{"pixel_values"}, []string{"score"}, onnx.AttrInts("axes", 1, 2, 3), onnx.AttrInt("keepdims", 0))
	g.Output("score", onnx.Float32, onnx.Sym("N"))
	if err := (&onnx.Model{Graph: g}).WriteFile(filepath.Join(dir, "brightness.onnx")); err != nil {
		fmt.Println(err)
		return
	}

	cfgs, err := rewards.DecodeTOML([]byte(`
[[reward]]
name   = "brightness"
weight = 0.5
kind   = "onnx-scalar"
model  = "brightness.onnx"
[reward.image]
input = "pixel_values"
size = [32, 32]
resize = "bicubic"
[reward.output]
name = "score"
scale = 10.0
`), dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	set, err := rewards.Open(context.Background(), cfgs, dir, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer set.Close()

	// A 64×48 image, grey 0.25 everywhere: mean 0.25 → reward 2.5 → total 1.25.
	im := rewards.Image{W: 64, H: 48, Pix: make([]float32, 64*48*3)}
	for i := range im.Pix {
		im.Pix[i] = 0.25
	}
	scores, err := set.Score(context.Background(), []rewards.Image{im}, []rewards.Prompt{{Text: "a grey square"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	out, _ := json.Marshal(map[string]any{"rewards": map[string]float64{"brightness": scores.ByName["brightness"][0]}, "total": scores.Total[0]})
	fmt.Println(string(out))
	// Output: {"rewards":{"brightness":2.5},"total":1.25}
}
