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
	"github.com/densegrpo/densegrpo/rewards/preprocess"
	"github.com/densegrpo/densegrpo/rewards/tokenize"
)

// clipReference is testdata/clip-tiny/reference.json, written by
// exporters/clip/make_tiny_fixture.py: a tiny random CLIPModel with PickScore's config keys,
// exported by exporters/clip/export_clip.py, and what transformers computes on the same
// images and prompts through CLIPProcessor (Flow-GRPO's PickScoreScorer and AestheticScorer).
type clipReference struct {
	Prompts    []string  `json:"prompts"`
	Images     []string  `json:"images"`
	InputIDs   [][]int64 `json:"input_ids"`
	LogitScale float64   `json:"logit_scale"`
	CLIP       []float64 `json:"clip"`
	Aesthetic  []float64 `json:"aesthetic"`
}

// exactSize is how many of the fixture's images are already the model's 32×32 (no
// resampling: the Go path and the processor see the same pixels); the rest are resized and
// centre-cropped, where PIL works on 8-bit pixels and the Go side in float32.
const exactSize = 3

func loadCLIPFixture(t *testing.T) (string, clipReference, []Image) {
	t.Helper()
	dir := filepath.Join("testdata", "clip-tiny")
	raw, err := os.ReadFile(filepath.Join(dir, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref clipReference
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	var ims []Image
	for _, name := range ref.Images {
		im, err := preprocess.ReadImage(filepath.Join(dir, name), imagefile.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		ims = append(ims, im)
	}
	return dir, ref, ims
}

// exporterConfigs decodes the reward.toml an exporter wrote into dir (clip-tiny: pickscore, then
// aesthetic).
func exporterConfigs(t *testing.T, dir string) []Config {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "reward.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := DecodeTOML(data, dir)
	if err != nil {
		t.Fatal(err)
	}
	return cfgs
}

// TestCLIPTokenizerMatchesTransformers: the exported vocab.json/merges.txt give the ids of
// transformers' CLIPTokenizer (NFC, whitespace, case, punctuation, truncation to 77, padding).
func TestCLIPTokenizerMatchesTransformers(t *testing.T) {
	dir, ref, _ := loadCLIPFixture(t)
	cfg := exporterConfigs(t, dir)[0]
	tok, err := tokenize.LoadCLIPBPE(cfg.Text.Vocab, cfg.Text.Merges, cfg.Text.MaxLength, *cfg.Text.PadID, cfg.Text.Special...)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ref.Prompts {
		ids, _, err := tok.Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		for j := range ids {
			if ids[j] != ref.InputIDs[i][j] {
				t.Errorf("prompt %q: ids %v, transformers %v", p, ids, ref.InputIDs[i])
				break
			}
		}
	}
}

// TestPickScoreMatchesTransformers scores the fixture's images and prompts with the exported
// `[[reward]]` blocks exactly as written by the exporter, and compares with transformers:
// logit_scale·cos(image, text) (PickScore, /26 as Flow-GRPO) and the aesthetic head, batch 4
// over 6 images so one batch is partial.
func TestPickScoreMatchesTransformers(t *testing.T) {
	dir, ref, ims := loadCLIPFixture(t)
	set, err := Open(context.Background(), exporterConfigs(t, dir), "", onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	prompts := make([]Prompt, len(ref.Prompts))
	for i, p := range ref.Prompts {
		prompts[i] = Prompt{Text: p}
	}
	got, err := set.Score(context.Background(), ims, prompts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ims {
		// PickScore: the block's output.scale is 1/26; compare the unscaled logit.
		pick := got.ByName["pickscore"][i] * 26
		tol := 1e-4 * math.Max(1, math.Abs(ref.CLIP[i]))
		atol := 1e-4
		if i >= exactSize {
			// Resampled images: PIL resizes 8-bit pixels (rounding each pass), the Go side
			// float32 ones; measured: up to 2.1e-2 on a logit of ~34 (6e-4 relative), 2.2e-4
			// on the aesthetic score.
			tol, atol = 5e-3*math.Abs(ref.CLIP[i]), 2e-3
		}
		if d := math.Abs(pick - ref.CLIP[i]); d > tol {
			t.Errorf("image %d: pickscore·26 = %.6f, transformers %.6f (|diff| %.2g)", i, pick, ref.CLIP[i], d)
		}
		if d := math.Abs(got.ByName["aesthetic"][i] - ref.Aesthetic[i]); d > atol {
			t.Errorf("image %d: aesthetic = %.6f, transformers %.6f (|diff| %.2g)", i, got.ByName["aesthetic"][i], ref.Aesthetic[i], d)
		}
		t.Logf("image %d (%dx%d): pickscore·26 %.6f vs %.6f (diff %.1e); aesthetic %.6f vs %.6f (diff %.1e)", i, ims[i].W, ims[i].H,
			pick, ref.CLIP[i], pick-ref.CLIP[i], got.ByName["aesthetic"][i], ref.Aesthetic[i], got.ByName["aesthetic"][i]-ref.Aesthetic[i])
	}
}
