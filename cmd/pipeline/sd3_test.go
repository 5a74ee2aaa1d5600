package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/mmdit"
)

// sd3TinyConfig is configs/sd3-tiny.toml as the tests run it (repoConfigs).
func sd3TinyConfig() string { return filepath.Join(repoConfigs, "sd3-tiny.toml") }

// TestSD3TinyRun: the real binary on configs/sd3-tiny.toml — the tiny random SD3.5 fixture's
// export (diffusers transformer folder, CLIP-L/G + T5, 16-channel VAE) with the OCR reward —
// exports, trains two epochs and leaves a checkpoint whose pytorch_lora_weights.safetensors
// carries the LoRA config diffusers' load_lora_weights reads.
func TestSD3TinyRun(t *testing.T) {
	stdout, stderr, code := runBinary(t, ".", nil, "export-models", "--config", sd3TinyConfig())
	if code != 0 {
		t.Fatalf("export-models: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "kept ") || !strings.Contains(stdout, "checked: text encoder, VAE decoder and 1 reward(s)") {
		t.Errorf("export-models output:\n%s", stdout)
	}
	out := t.TempDir()
	stdout, stderr, code = runBinary(t, ".", nil, "run", "--config", sd3TinyConfig(), "--set", "run.out_dir="+out)
	if code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", code, stdout, stderr)
	}
	dir := filepath.Join(out, "sd3-tiny")
	for _, want := range []string{"epoch 2: reward ", "eval reward (ODE 4 steps, 2 test prompts):"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("run output lacks %q:\n%s", want, stdout)
		}
	}
	if got := metricEpochs(t, filepath.Join(dir, "metrics.jsonl")); len(got) != 3 || got[2] != 2 {
		t.Errorf("metrics epochs %v, want [0 1 2]", got)
	}
	lora := filepath.Join(dir, "checkpoints", "epoch-000002", mmdit.DiffusersLoRAFile)
	cfg, err := mmdit.LoadDiffusersConfig("../../testdata/sd3-tiny/snapshot/transformer")
	if err != nil {
		t.Fatal(err)
	}
	lc, err := mmdit.ReadLoRAConfig(lora, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if lc.Rank != 32 || lc.Alpha != 64 || len(lc.Targets) != 8 {
		t.Errorf("checkpoint LoRA config %+v, want r 32, alpha 64 and the 8 targets of sd3-tiny.toml", lc)
	}
	if _, err := os.Stat(filepath.Join(dir, "report.html")); err != nil {
		t.Error(err)
	}
}
