package rewards

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/densegrpo/densegrpo/internal/imagefile"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/geneval"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// TestGenevalColorMatchesReference compares the CLIP zero-shot colour classifier with
// testdata/geneval-color/reference.json, written by exporters/geneval/color_reference.py:
// GenEval's own steps (mask composited on #999, PIL's rounded crop, open_clip's resize and
// centre crop, three templates per colour averaged) on the tiny CLIP of testdata/clip-tiny, for
// 12 objects in 4 scenes (8 with masks, 4 boxes with half-pixel edges).
func TestGenevalColorMatchesReference(t *testing.T) {
	dir := filepath.Join("testdata", "geneval-color")
	clip := filepath.Join("testdata", "clip-tiny")
	raw, err := os.ReadFile(filepath.Join(dir, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref []struct {
		Image   string `json:"image"`
		Objects []struct {
			Class  string     `json:"class"`
			Box    [4]float64 `json:"box"`
			Mask   string     `json:"mask"`
			Logits []float64  `json:"logits"`
			Color  string     `json:"color"`
		} `json:"objects"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	pad := int64(35) // the fixture tokenizer's "!"
	c := ColorConfig{ImageModel: filepath.Join(clip, "image_tower.onnx"), TextModel: filepath.Join(clip, "text_tower.onnx"),
		Vocab: filepath.Join(clip, "vocab.json"), Merges: filepath.Join(clip, "merges.txt"), PadID: &pad, Special: []string{"!"}, Size: 32}
	c.defaults()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	cc, err := openColor(c, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.close()
	var worst float64
	for _, sc := range ref {
		im, err := preprocess.ReadImage(filepath.Join(dir, sc.Image), imagefile.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		for j, o := range sc.Objects {
			d := geneval.Detection{Class: o.Class, Score: 1, Box: o.Box}
			if o.Mask != "" {
				m, err := preprocess.ReadImage(filepath.Join(dir, o.Mask), imagefile.DefaultLimits)
				if err != nil {
					t.Fatal(err)
				}
				d.Mask = make([]bool, m.W*m.H)
				for p := range d.Mask {
					d.Mask[p] = m.Pix[p*3] > 0.5
				}
			}
			lg, err := cc.logits(context.Background(), im, []geneval.Detection{d})
			if err != nil {
				t.Fatal(err)
			}
			best := 0
			for k := range lg[0] {
				worst = math.Max(worst, math.Abs(lg[0][k]-o.Logits[k]))
				if lg[0][k] > lg[0][best] {
					best = k
				}
			}
			if geneval.Colors[best] != o.Color {
				t.Errorf("%s object %d (%s): colour %s, reference %s (logits %v vs %v)", sc.Image, j, o.Class, geneval.Colors[best], o.Color, lg[0], o.Logits)
			}
		}
	}
	// The crops are resized by PIL on 8-bit pixels in the reference and in float32 here.
	t.Logf("max |logit diff| %.3g (logits are 100·cos)", worst)
	if worst > 0.05 {
		t.Errorf("logits differ from the reference by up to %.3g, want <= 0.05", worst)
	}
}
