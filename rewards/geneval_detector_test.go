package rewards

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/imagefile"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/geneval"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// genevalCase is one entry of testdata/geneval-detector/reference.json: an image, GenEval
// metadata, and what the Python port of GenEval's scoring (exporters/geneval/geneval_reference.py)
// made of the PyTorch Mask2Former's outputs: the objects kept per class ([x0,y0,x1,y1,score],
// most confident first), GenEval's accuracy, Flow-GRPO's strict accuracy and partial score.
type genevalCase struct {
	Image    string                 `json:"image"`
	Metadata map[string]any         `json:"metadata"`
	Correct  bool                   `json:"correct"`
	Strict   bool                   `json:"strict"`
	Score    float64                `json:"score"`
	Found    map[string][][]float64 `json:"found"`
}

func loadGenevalCases(t *testing.T, dir string) ([]genevalCase, []Image, []Prompt) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []genevalCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	pngs := map[string]Image{}
	var images []Image
	var prompts []Prompt
	for _, c := range cases {
		im, ok := pngs[c.Image]
		if !ok {
			if im, err = preprocess.ReadImage(filepath.Join(dir, c.Image), imagefile.DefaultLimits); err != nil {
				t.Fatal(err)
			}
			pngs[c.Image] = im
		}
		images = append(images, im)
		prompts = append(prompts, Prompt{Text: c.Metadata["prompt"].(string), Metadata: c.Metadata})
	}
	return cases, images, prompts
}

// TestGenevalDetectorMatchesReference scores the fixture's images against metadata of every tag
// with the `geneval` reward as exporters/geneval/export_detector.py wrote its block (a tiny random
// Mask2FormerForUniversalSegmentation exported with mmdet's instance post-processing; colours by
// the tiny CLIP of testdata/clip-tiny) and compares every score, GenEval accuracy and strict
// accuracy with the Python reference — and, before the rules, the detections each rule saw.
func TestGenevalDetectorMatchesReference(t *testing.T) {
	dir := filepath.Join("testdata", "geneval-detector")
	set, err := Open(context.Background(), exporterConfigs(t, dir), "", onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	cases, images, prompts := loadGenevalCases(t, dir)

	// The detections: per case, the objects Select keeps equal the reference's (same classes,
	// counts and boxes; scores within float32 rounding of the two runtimes).
	sc := set.rewards[0].scorer.(*genevalScorer)
	b := &Batch{Images: images, Prompts: prompts, cache: &prepCache{images: images, entries: map[string][]*prepEntry{}}}
	dets, err := sc.detect(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	var worstScore float64
	for i, c := range cases {
		got := geneval.Select(dets[i], c.Metadata["tag"].(string), sc.cfg.Geneval.Options)
		if g, w := classCounts(got), classCounts(c.Found); g != w {
			t.Errorf("case %d (%s, %s): classes kept %s, reference %s", i, c.Image, c.Metadata["prompt"], g, w)
			continue
		}
		for class, want := range c.Found {
			for j, d := range got[class] {
				if len(got[class]) != len(want) {
					t.Errorf("case %d %s: %d objects, reference %d", i, class, len(got[class]), len(want))
					break
				}
				if d.Box != [4]float64(want[j][:4]) {
					t.Errorf("case %d %s[%d]: box %v, reference %v", i, class, j, d.Box, want[j][:4])
				}
				worstScore = math.Max(worstScore, math.Abs(float64(d.Score)-want[j][4]))
			}
		}
	}
	if worstScore > 1e-4 {
		t.Errorf("detection scores differ from the reference by up to %.3g, want <= 1e-4", worstScore)
	}

	got, err := set.Score(context.Background(), images, prompts)
	if err != nil {
		t.Fatal(err)
	}
	type tally struct{ n, correct, strict, agree int }
	tags := map[string]*tally{}
	for i, c := range cases {
		tag := c.Metadata["tag"].(string)
		if tags[tag] == nil {
			tags[tag] = &tally{}
		}
		tl := tags[tag]
		tl.n++
		correct, strict := got.Extra["geneval.correct"][i] == 1, got.Extra["geneval.strict"][i] == 1
		if correct {
			tl.correct++
		}
		if strict {
			tl.strict++
		}
		if math.Abs(got.ByName["geneval"][i]-c.Score) > 1e-12 || correct != c.Correct || strict != c.Strict {
			t.Errorf("case %d (%s, %s %q): score %v correct %v strict %v, reference %v %v %v", i, c.Image, tag, c.Metadata["prompt"],
				got.ByName["geneval"][i], correct, strict, c.Score, c.Correct, c.Strict)
			continue
		}
		tl.agree++
	}
	for _, tag := range geneval.Tags {
		tl := tags[tag]
		if tl == nil {
			t.Errorf("tag %s: no case in the fixture", tag)
			continue
		}
		t.Logf("%-13s %2d cases: %2d equal to the reference; GenEval correct %2d, strict %2d", tag, tl.n, tl.agree, tl.correct, tl.strict)
	}
	t.Logf("detection scores within %.2g of PyTorch's", worstScore)
}

// classCounts lists "class×n" sorted, for comparing which objects were kept.
func classCounts[T any](objs map[string][]T) string {
	var out []string
	for c, l := range objs {
		out = append(out, fmt.Sprintf("%s×%d", c, len(l)))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestGenevalDetectorLayout declares output layouts that do not match the exported detector:
// each is an error at open naming the model file, the tensor and both layouts.
func TestGenevalDetectorLayout(t *testing.T) {
	dir := filepath.Join("testdata", "geneval-detector")
	data, err := os.ReadFile(filepath.Join(dir, "reward.toml"))
	if err != nil {
		t.Fatal(err)
	}
	model := filepath.Join(dir, "detector.onnx")
	for _, tt := range []struct{ name, old, new, want string }{
		{"missing output", `boxes = "boxes"`, `boxes = "pred_boxes"`,
			`model ` + model + `: no output "pred_boxes" (from [reward.output] boxes); the graph's outputs are: boxes, scores, labels, masks`},
		{"scores swapped with boxes", `scores = "scores"`, `scores = "boxes"`,
			`model ` + model + `: output "boxes": got float32 [-1,100,4], want float32 [?,?] (from [reward.output] scores)`},
		{"labels are the masks", `labels = "labels"`, `labels = "masks"`,
			`model ` + model + `: output "masks": got float32 [-1,100,64,64], want int64|int32|float32 [?,?] (from [reward.output] labels)`},
		{"masks are the scores", `masks = "masks"`, `masks = "scores"`,
			`model ` + model + `: output "scores": got float32 [-1,100], want float32 [?,?,?,?] (from [reward.output] masks)`},
		{"input size", `size = [64, 64]`, `size = [96, 96]`,
			`model ` + model + `: input "pixel_values": got float32 [-1,3,64,64], want float32 [?,3,96,96]`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			text := strings.Replace(string(data), tt.old, tt.new, 1)
			if text == string(data) {
				t.Fatalf("fixture reward.toml has no %q", tt.old)
			}
			cfgs, err := DecodeTOML([]byte(text), dir)
			if err != nil {
				t.Fatal(err)
			}
			set, err := Open(context.Background(), cfgs, "", onnxrt.Config{IntraOpThreads: 1})
			if err == nil {
				set.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}
