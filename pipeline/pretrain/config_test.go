package pretrain

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/models/mmdit"
)

const validTOML = `
[model]
transformer = "tiny-mmdit.json"
vae = "/abs/vae.safetensors"

[data]
prompts = "../datasets/ocr-tiny/train.txt"

[train]
steps = 10

[output]
dir = "runs/pretrain"
`

func TestParseConfigDefaultsAndPaths(t *testing.T) {
	cfg, err := ParseConfig([]byte(mergeTOML(validTOML, "[train]\ntime_budget = \"45m\"")), filepath.Join("configs", "p.toml"))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	if cfg.Train.Steps != 10 || cfg.Train.Budget() != 45*time.Minute {
		t.Errorf("steps %d, budget %v: want 10, 45m", cfg.Train.Steps, cfg.Train.Budget())
	}
	if cfg.Train.BatchSize != want.Train.BatchSize || cfg.Sigma != want.Sigma || cfg.Data.CaptionDropout != want.Data.CaptionDropout {
		t.Errorf("defaults not kept: %+v", cfg)
	}
	paths := map[string][2]string{
		"model.transformer": {cfg.Model.Transformer, filepath.Join("configs", "tiny-mmdit.json")},
		"model.vae":         {cfg.Model.VAE, "/abs/vae.safetensors"},
		"data.prompts":      {cfg.Data.Prompts, filepath.Join("datasets", "ocr-tiny", "train.txt")},
		"output.dir":        {cfg.Output.Dir, filepath.Join("configs", "runs", "pretrain")},
	}
	for field, p := range paths {
		if p[0] != p[1] {
			t.Errorf("%s: got %q, want %q (relative to the config's directory)", field, p[0], p[1])
		}
	}
	// The resolved config round-trips through Encode.
	doc, err := cfg.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseConfig(doc, "")
	if err != nil {
		t.Fatalf("re-parse encoded config: %v\n%s", err, doc)
	}
	back.Path = cfg.Path
	if back != cfg {
		t.Errorf("round trip: got %+v, want %+v", back, cfg)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, extra string
		want        []string
	}{
		{"unknown key", "[train]\nlearning_rate = 1", []string{"unknown keys", "train.learning_rate"}},
		{"unknown table", "[optimiser]\nlr = 1", []string{"unknown keys", "optimiser"}},
		{"zero batch", "[train]\nbatch_size = 0", []string{"field train.batch_size: got 0, want >= 1"}},
		{"negative lr", "[train]\nlr = -1.0", []string{"field train.lr: got -1, want > 0"}},
		{"dropout one", "[data]\ncaption_dropout = 1.0", []string{"field data.caption_dropout: got 1, want 0 <= p < 1"}},
		{"bad sampling", "[sigma]\nsampling = \"beta\"", []string{`field sigma.sampling: got "beta", want "logit-normal" or "uniform"`}},
		{"zero std", "[sigma]\nstd = 0.0", []string{"field sigma.std: got 0, want > 0"}},
		{"bad schedule", "[train]\nschedule = \"linear\"", []string{`field train.schedule: got "linear"`}},
		{"bad budget", "[train]\ntime_budget = \"soon\"", []string{`field train.time_budget: got "soon"`}},
		{"bad backend", "[train]\nbackend = \"tpu\"", []string{`field train.backend: got "tpu", want one of auto, go`}},
		{"text encoder", "[model.text_encoder]\ndim = 0", []string{"field model.text_encoder.dim: got 0, want >= 1"}},
		{"log every", "[output]\nlog_every = 0", []string{"field output.log_every: got 0, want >= 1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Later tables of the same name would be a TOML error, so the override replaces
			// the matching table of validTOML.
			doc := mergeTOML(validTOML, tc.extra)
			_, err := ParseConfig([]byte(doc), "p.toml")
			if err == nil {
				t.Fatalf("no error for\n%s", doc)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to contain %q", err, w)
				}
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "absent.toml")); err == nil || !strings.Contains(err.Error(), "absent.toml") {
		t.Errorf("missing file: got %v, want an error naming it", err)
	}
	path := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(path, []byte(mergeTOML(validTOML, "[train]\nstepz = 3")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "train.stepz") {
		t.Errorf("bad key: got %v, want an error naming the file and the key", err)
	}
}

// mergeTOML appends the keys of extra's single table to that table of base (or adds the
// table when base lacks it).
func mergeTOML(base, extra string) string {
	lines := strings.SplitN(extra, "\n", 2)
	header, body := lines[0], lines[1]
	if i := strings.Index(base, header+"\n"); i >= 0 {
		at := i + len(header) + 1
		return base[:at] + body + "\n" + base[at:]
	}
	return base + "\n" + extra + "\n"
}

func TestShiftSigma(t *testing.T) {
	tests := []struct{ u, shift, want float64 }{
		{0, 3, 0},
		{1, 3, 1},
		{0.5, 3, 0.75},          // 1.5 / (1 + 2·0.5)
		{0.25, 3, 0.5},          // 0.75 / (1 + 2·0.25)
		{0.3, 1, 0.3},           // shift 1 is the identity
		{0.5, 0.5, 0.25 / 0.75}, // 0.25 / (1 − 0.25)
	}
	for _, tc := range tests {
		if got := ShiftSigma(tc.u, tc.shift); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("ShiftSigma(%g, %g) = %g, want %g", tc.u, tc.shift, got, tc.want)
		}
	}
}

func TestSampleSigma(t *testing.T) {
	// Same generator state: uniform with shift 1 is the generator's Float64; logit-normal is
	// the sigmoid of mean + std·NormFloat64, shifted.
	u := rand.New(rand.NewPCG(1, 2)).Float64()
	if got := SampleSigma(rand.New(rand.NewPCG(1, 2)), SigmaConfig{Sampling: "uniform", Shift: 1}); got != float32(u) {
		t.Errorf("uniform: got %g, want %g", got, u)
	}
	n := rand.New(rand.NewPCG(1, 2)).NormFloat64()
	want := float32(ShiftSigma(1/(1+math.Exp(-(0.5+2*n))), 3))
	if got := SampleSigma(rand.New(rand.NewPCG(1, 2)), SigmaConfig{Sampling: "logit-normal", Mean: 0.5, Std: 2, Shift: 3}); got != want {
		t.Errorf("logit-normal: got %g, want %g", got, want)
	}
	// The median of sigmoid(N(0,1)) is 0.5, so the median σ is ShiftSigma(0.5, 3) = 0.75.
	rng := rand.New(rand.NewPCG(3, 4))
	draws := make([]float64, 4001)
	for i := range draws {
		s := SampleSigma(rng, SigmaConfig{Sampling: "logit-normal", Std: 1, Shift: 3})
		if !(s > 0 && s < 1) {
			t.Fatalf("σ = %g outside (0, 1)", s)
		}
		draws[i] = float64(s)
	}
	slices.Sort(draws)
	if median := draws[2000]; math.Abs(median-0.75) > 0.02 {
		t.Errorf("median σ %g, want 0.75 ± 0.02", median)
	}
}

func TestLearningRate(t *testing.T) {
	cosine := TrainConfig{LR: 1, Schedule: "cosine", WarmupSteps: 10, Steps: 110, MinLRRatio: 0.1}
	constant := cosine
	constant.Schedule = "constant"
	// Warm-up: (step+1)/10. After it, q = (p − 10/110)/(100/110): step 60 is halfway, where
	// lr = 0.1 + 0.9·(1 + cos(π/2))/2 = 0.55; at p = 1 the floor 0.1.
	tests := []struct {
		name string
		c    TrainConfig
		step int
		p    float64
		want float64
	}{
		{"first warm-up step", cosine, 0, 0, 0.1},
		{"last warm-up step", cosine, 9, 9.0 / 110, 1},
		{"cosine start", cosine, 10, 10.0 / 110, 1},
		{"cosine half", cosine, 60, 60.0 / 110, 0.55},
		{"cosine end", cosine, 110, 1, 0.1},
		{"time budget ahead of steps", cosine, 20, 1, 0.1},
		{"constant", constant, 60, 60.0 / 110, 1},
		{"constant warm-up", constant, 4, 4.0 / 110, 0.5},
	}
	for _, tc := range tests {
		if got := LearningRate(tc.c, tc.step, tc.p); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s: LearningRate(step %d, p %g) = %g, want %g", tc.name, tc.step, tc.p, got, tc.want)
		}
	}
}

// The committed default config loads and fits the committed transformer config.
func TestCommittedConfig(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("..", "..", "configs", "pretrain-tiny.toml"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := mmdit.LoadConfig(cfg.Model.Transformer)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkCompatible(m, cfg.Model.TextEncoder.tinyocr()); err != nil {
		t.Errorf("%s does not fit the text encoder: %v", cfg.Model.Transformer, err)
	}
	// The whole pretraining must fit 90 minutes of this 2-core machine, at the batch size the
	// committed weights were trained with (a checkpoint resumes only at its own batch size).
	if cfg.Train.BatchSize != 16 || cfg.Train.Budget() <= 0 || cfg.Train.Budget() > 90*time.Minute {
		t.Errorf("batch %d, budget %v: want 16 and a budget within 90 minutes", cfg.Train.BatchSize, cfg.Train.Budget())
	}
	if _, err := os.Stat(cfg.Data.Prompts); err != nil {
		t.Errorf("prompts: %v", err)
	}
}
