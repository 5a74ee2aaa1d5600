package pipeline

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/pipeline/promptfile"
	"github.com/densegrpo/densegrpo/rewards"
)

// genevalPrompts are GenEval metadata lines over classes of the tiny detector of
// rewards/testdata/geneval-detector.
const genevalPrompts = `{"tag": "single_object", "include": [{"class": "bicycle", "count": 1}], "prompt": "a photo of a bicycle"}
{"tag": "counting", "include": [{"class": "spoon", "count": 2}], "exclude": [{"class": "spoon", "count": 3}], "prompt": "a photo of two spoons"}

{"tag": "position", "include": [{"class": "bird", "count": 1}, {"class": "bicycle", "count": 1, "position": ["left of", 0]}], "prompt": "a photo of a bicycle left of a bird"}
`

// genevalFixture is the pipeline fixture with a second reward, the tiny GenEval detector of
// rewards/testdata/geneval-detector (weight 0, so training still follows the brightness reward),
// and prompts as its train and test JSON Lines file.
func genevalFixture(t *testing.T, prompts string, sets ...string) Config {
	t.Helper()
	det, err := filepath.Abs(filepath.Join("..", "rewards", "testdata", "geneval-detector"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "geneval.jsonl")
	if err := os.WriteFile(path, []byte(prompts), 0o644); err != nil {
		t.Fatal(err)
	}
	block := "\n[[reward]]\nname = \"geneval\"\nkind = \"geneval\"\nweight = 0.0\nmodel = " + quote(filepath.Join(det, "detector.onnx")) +
		"\nclasses = " + quote(filepath.Join(det, "classes.txt")) + "\n[reward.image]\nsize = [64, 64]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n" +
		"[reward.output]\nboxes = \"boxes\"\nscores = \"scores\"\nlabels = \"labels\"\nmasks = \"masks\"\n"
	cfg, _ := fixtureWith(t, block, append([]string{"prompts.train=" + path, "prompts.test=" + path}, sets...)...)
	return cfg
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `\`, `\\`) + `"` }

// TestEvaluateJSONLMetadata: the metadata of a JSON Lines test file reaches the geneval reward:
// the evaluation's geneval score equals the reward's own score of the same images with the
// file's metadata, and differs from its score with each image paired with the next line's.
func TestEvaluateJSONLMetadata(t *testing.T) {
	cfg := genevalFixture(t, genevalPrompts)
	res, err := Evaluate(context.Background(), cfg, newTestPolicy(t, cfg, ""), EvalOptions{KeepImages: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.N != 3 || res.Prompts[2] != "a photo of a bicycle left of a bird" {
		t.Fatalf("n %d, prompts %q", res.N, res.Prompts)
	}
	file, err := promptfile.Load(cfg.Resolve(cfg.Prompts.Test))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rewards.Open(context.Background(), cfg.Rewards, "", onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	direct, err := set.Score(context.Background(), res.Images, file.Prompts)
	if err != nil {
		t.Fatal(err)
	}
	var mean float64
	for _, v := range direct.Extra["geneval.score"] {
		mean += v / 3
	}
	if got := res.Extra["geneval.score"]; math.Abs(got-mean) > 1e-12 {
		t.Errorf("eval geneval.score mean %v, the reward on the same images and metadata %v", got, mean)
	}
	rotated := append(append([]rewards.Prompt{}, file.Prompts[1:]...), file.Prompts[0])
	other, err := set.Score(context.Background(), res.Images, rotated)
	if err != nil {
		t.Fatal(err)
	}
	var otherMean float64
	for _, v := range other.Extra["geneval.score"] {
		otherMean += v / 3
	}
	if math.Abs(otherMean-mean) < 1e-6 {
		t.Errorf("paired with other lines' metadata the images score the same (%v): the test cannot tell", otherMean)
	}
	t.Logf("geneval scores %v; paired with the next line's metadata %v", direct.Extra["geneval.score"], other.Extra["geneval.score"])
}

// TestPromptFileErrors: a prompt the rewards cannot score fails before any image is generated,
// naming the config key, the file and the line.
func TestPromptFileErrors(t *testing.T) {
	for _, tt := range []struct{ name, prompts, want string }{
		{"unknown class", genevalPrompts + `{"tag": "single_object", "include": [{"class": "unicorn", "count": 1}], "prompt": "a photo of a unicorn"}` + "\n",
			`geneval.jsonl:5: reward "geneval": prompt "a photo of a unicorn": geneval metadata: include[0].class: got "unicorn", want one of the 80 classes of `},
		{"no metadata", genevalPrompts + `{"prompt": "a photo"}` + "\n",
			`geneval.jsonl:5: reward "geneval": prompt "a photo" has no GenEval metadata (give the prompts as a .jsonl file with GenEval's tag/include/exclude)`},
		{"bad count", `{"tag": "counting", "include": [{"class": "cup", "count": 0}], "prompt": "no cups"}`,
			`geneval.jsonl:1: reward "geneval": prompt "no cups": geneval metadata: include[0]: field count: got 0, want an integer >= 1`},
		{"bad line", genevalPrompts + `{"prompt": "a",` + "\n", `geneval.jsonl:5: invalid JSON: unexpected end of JSON input`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := genevalFixture(t, tt.prompts)
			_, err := Evaluate(context.Background(), cfg, newTestPolicy(t, cfg, ""), EvalOptions{})
			if err == nil || !strings.Contains(err.Error(), "evaluate: prompts.test: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("evaluate: %v\nwant %q", err, tt.want)
			}
			_, err = Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
			if err == nil || !strings.Contains(err.Error(), "prompts.train: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run: %v\nwant %q", err, tt.want)
			}
		})
	}
}

// TestRunJSONLMetadata trains one epoch on a JSON Lines prompt file with the geneval reward:
// every training and evaluation image is scored with its prompt's metadata (a prompt without
// it would fail the reward), and the metrics carry the reward alone.
func TestRunJSONLMetadata(t *testing.T) {
	cfg := genevalFixture(t, genevalPrompts, append(append([]string{}, smallRun...), "run.epochs=1")...)
	res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	lines := readMetrics(t, res.Dir)
	if len(lines) != 2 {
		t.Fatalf("%d metrics lines, want 2", len(lines))
	}
	for _, key := range []string{"reward/geneval", "eval/geneval", "eval/geneval.strict"} {
		v, ok := lines[1][key].(float64)
		if !ok || math.IsNaN(v) {
			t.Errorf("epoch line %s = %v", key, lines[1][key])
		}
	}
}
