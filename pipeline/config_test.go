package pipeline

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/rl"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "train.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const minimalConfig = `
[model]
config = "m.json"
weights = "m.safetensors"
[text_encoder]
model = "te.onnx"
[vae]
decoder = "vae.onnx"
[prompts]
train = "train.txt"
test = "test.txt"
[[reward]]
name = "ocr"
kind = "ocr"
model = "rec.onnx"
keys = "keys.txt"
`

func TestLoadDefaultsAndResolve(t *testing.T) {
	path := writeConfig(t, minimalConfig)
	cfg, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sampler.Steps != 10 || cfg.Sampler.NoiseLevel != 0.7 || cfg.GRPO.ClipRange != 1e-4 || !cfg.Dense.Enabled || cfg.GRPO.Std != "global" {
		t.Errorf("defaults not applied: %+v %+v", cfg.Sampler, cfg.GRPO)
	}
	// ⌊10·0.99⌋ = 9 trained steps of 10.
	if got := cfg.TrainedSteps(); got != 9 {
		t.Errorf("TrainedSteps = %d, want 9", got)
	}
	if got, want := cfg.Resolve(cfg.Model.Weights), filepath.Join(filepath.Dir(path), "m.safetensors"); got != want {
		t.Errorf("Resolve = %s, want %s", got, want)
	}
	if len(cfg.Rewards) != 1 || cfg.Rewards[0].Model != filepath.Join(filepath.Dir(path), "rec.onnx") {
		t.Errorf("rewards %+v, want one with its model path resolved", cfg.Rewards)
	}
}

// The defaults that another package owns are taken from it, not spelled again.
func TestDefaultsFromOwners(t *testing.T) {
	d := Default()
	if !slices.Equal(d.Model.LoRA.Targets, mmdit.DefaultLoRATargets) {
		t.Errorf("model.lora.targets default %q, want mmdit.DefaultLoRATargets %q", d.Model.LoRA.Targets, mmdit.DefaultLoRATargets)
	}
	d.Model.LoRA.Targets[0] = "changed"
	if mmdit.DefaultLoRATargets[0] == "changed" {
		t.Fatal("Default shares its LoRA targets slice with mmdit: a config edit would change the package default")
	}
	for _, v := range []interface{ Valid() bool }{d.Run.Backend, d.Sampler.Kind, d.GRPO.Std, d.Pipeline.InferenceEngine} {
		if !v.Valid() {
			t.Errorf("default %v (%T) is not valid", v, v)
		}
	}
}

func TestLoadSet(t *testing.T) {
	path := writeConfig(t, minimalConfig)
	cfg, err := Load(path, []string{"dense.enabled=false", "grpo.beta=0.01", "run.name=sparse", "sampler.psi=runs/x/psi.json", "dense.lookahead=2", "reward.ocr.concurrency=2", "reward.ocr.weight=0.5"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Dense.Enabled || cfg.GRPO.Beta != 0.01 || cfg.Run.Name != "sparse" || cfg.Sampler.Psi != "runs/x/psi.json" || cfg.Dense.Lookahead != 2 {
		t.Errorf("--set not applied: dense %+v beta %v name %q psi %q", cfg.Dense, cfg.GRPO.Beta, cfg.Run.Name, cfg.Sampler.Psi)
	}
	if r := cfg.Rewards[0]; r.Concurrency != 2 || *r.Weight != 0.5 {
		t.Errorf("--set reward.ocr.*: concurrency %d weight %v, want 2 and 0.5", r.Concurrency, *r.Weight)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		sets []string
		want []string
	}{
		{"unknown key", minimalConfig + "\n[grpo]\nclip_rnge = 0.2\n", nil, []string{"train.toml", `unknown key "grpo.clip_rnge"`}},
		{"unknown table", minimalConfig + "\n[sampelr]\nsteps = 3\n", nil, []string{`unknown key "sampelr.steps"`}},
		{"unknown reward key", minimalConfig + "wieght = 2\n", nil, []string{"reward", "wieght"}},
		{"wrong type", minimalConfig + "\n[sampler]\nsteps = \"ten\"\n", nil, []string{"train.toml", "steps"}},
		{"bad value", minimalConfig, []string{"grpo.clip_range=-1"}, []string{"grpo.clip_range: got -1, want > 0"}},
		{"bad kind", minimalConfig, []string{"sampler.kind=ode"}, []string{`sampler.kind: got "ode", want "sde" or "cps"`}},
		{"bad std", minimalConfig, []string{"grpo.std=batch"}, []string{`grpo.std: got "batch", want "group" or "global"`}},
		{"bad backend", minimalConfig, []string{"run.backend=tpu"}, []string{`run.backend: got "tpu", want "auto", "go", "xla:cpu" or "xla:cuda"`}},
		{"devices on SimpleGo", minimalConfig, []string{"run.devices=2", "run.backend=go", "pipeline.train_workers=1"}, []string{`run.devices: got 2, want 1 with run.backend "go"`}},
		{"devices with workers", minimalConfig, []string{"run.devices=2", "run.backend=xla:cpu"}, []string{"run.devices: got 2, want 1 unless pipeline.train_workers = 1"}},
		{"no device", minimalConfig, []string{"run.devices=0"}, []string{"run.devices: got 0, want >= 1"}},
		{"bad engine", minimalConfig, []string{"pipeline.inference_engine=xla"}, []string{`pipeline.inference_engine: got "xla", want "onnx" or "gomlx"`}},
		{"no trained step", minimalConfig, []string{"sampler.steps=2", "grpo.timestep_fraction=0.4"}, []string{"grpo.timestep_fraction", "at least one trained step"}},
		{"bad budget", minimalConfig, []string{"run.time_budget=soon"}, []string{`run.time_budget: got "soon"`}},
		{"psi with cps", minimalConfig, []string{"sampler.kind=cps", "sampler.psi=psi.json"}, []string{`sampler.psi: got "psi.json"`, `sampler.kind = "cps"`}},
		// Defaults: 10 steps, 9 trained: look-aheads from x_0 … x_9 and x_10, 11 states.
		{"one query", minimalConfig, []string{"dense.queries=1"}, []string{"dense.queries: got 1, want 0 (score every state) or 2 … 11", "first and last states are always queried", "sampler.steps = 10 with 9 trained steps"}},
		{"too many queries", minimalConfig, []string{"dense.queries=12"}, []string{"dense.queries: got 12, want 0 (score every state) or 2 … 11"}},
		{"negative queries", minimalConfig, []string{"dense.queries=-3"}, []string{"dense.queries: got -3"}},
		{"queries over fewer trained steps", minimalConfig, []string{"sampler.steps=8", "grpo.timestep_fraction=0.5", "dense.queries=7"}, []string{"dense.queries: got 7, want 0 (score every state) or 2 … 6", "look-aheads from x_0 … x_4 and x_8"}},
		{"negative audit", minimalConfig, []string{"dense.audit_every=-1"}, []string{"dense.audit_every: got -1, want >= 0"}},
		{"malformed set", minimalConfig, []string{"dense.enabled"}, []string{`--set "dense.enabled": want key=value`}},
		{"unnamed reward key", minimalConfig, []string{"reward.weight=2"}, []string{"--set reward.weight", "want reward.NAME.KEY=value"}},
		{"unknown reward name", minimalConfig, []string{"reward.pick.weight=2"}, []string{`no [[reward]] block named "pick" (have "ocr")`}},
		{"unknown reward key by set", minimalConfig, []string{"reward.ocr.wieght=2"}, []string{"reward", "wieght"}},
		{"no reward", strings.Split(minimalConfig, "[[reward]]")[0], nil, []string{"reward: got no [[reward]] tables"}},
		{"diffusers with own model", minimalConfig, []string{"model.diffusers=sd35m"}, []string{`model.config: got "m.json", want "" with model.diffusers`, `text_encoder.model: got "te.onnx"`, `vae.decoder: got "vae.onnx"`}},
		{"snapshot without diffusers", minimalConfig, []string{"model.snapshot=snap"}, []string{`model.snapshot: got "snap", want "" without model.diffusers`}},
		{"resolution without diffusers", minimalConfig, []string{"model.resolution=512"}, []string{"model.resolution: got 512, want 0 without model.diffusers"}},
		{"bad micro batch", minimalConfig, []string{"grpo.micro_batch=-1"}, []string{"grpo.micro_batch: got -1, want >= 0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.text), tc.sets)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to contain %q", err, w)
				}
			}
		})
	}
}

// The shipped configs must load (paths need not exist: that is checked when models open).
func TestShippedConfigsLoad(t *testing.T) {
	files, err := filepath.Glob("../configs/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), "pretrain") {
			continue // pretraining has its own schema
		}
		n++
		if _, err := Load(f, nil); err != nil {
			t.Errorf("%v", err)
		}
	}
	if n == 0 {
		t.Fatal("no training configs found in ../configs")
	}
}

// The committed ψ must fit the schedule of configs/tiny-ocr.toml (it is what `pipeline calibrate
// --config configs/tiny-ocr.toml --set sampler.kind=sde` writes), so that the Flow-SDE recipe is
// the documented overrides away.
func TestShippedPsiFitsTinyOCR(t *testing.T) {
	cfg, err := Load("../configs/tiny-ocr.toml", []string{"sampler.kind=sde", "sampler.psi=tiny-ocr-psi.json"})
	if err != nil {
		t.Fatal(err)
	}
	sched, err := rl.SD3Schedule(cfg.Sampler.Steps, cfg.Sampler.Shift)
	if err != nil {
		t.Fatal(err)
	}
	psi, err := loadPsi(cfg, sched) // checks the count and the σ_k against the schedule
	if err != nil {
		t.Fatal(err)
	}
	for k, s := range psi.Psi {
		if !(s > 0) {
			t.Errorf("ψ(%d) = %v, want > 0", k, s)
		}
	}
}
