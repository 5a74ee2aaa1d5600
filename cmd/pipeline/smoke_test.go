package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/pipeline"
)

// The end-to-end smoke test: the real binary on configs/smoke.toml (the embedded tiny-ocr
// model, real PP-OCRv4 reward) — export the ONNX files, train, resume, interrupt, kill.

// smokeConfig is configs/smoke.toml as the tests run it (repoConfigs).
func smokeConfig() string { return filepath.Join(repoConfigs, "smoke.toml") }

// exportSmokeModels exports the smoke config's ONNX files (idempotent: once per test binary
// in effect).
func exportSmokeModels(t *testing.T) {
	t.Helper()
	out, errOut, code := runBinary(t, ".", nil, "export-models", "--config", smokeConfig())
	if code != 0 {
		t.Fatalf("export-models: exit %d\n%s\n%s", code, out, errOut)
	}
}

func metricEpochs(t *testing.T, path string) []int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var epochs []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line struct {
			Epoch int `json:"epoch"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("%s: corrupt line %q: %v", path, sc.Text(), err)
		}
		epochs = append(epochs, line.Epoch)
	}
	return epochs
}

func TestSmokeRunAndResume(t *testing.T) {
	exportSmokeModels(t)
	out := t.TempDir()
	stdout, stderr, code := runBinary(t, ".", nil, "run", "--config", smokeConfig(), "--set", "run.out_dir="+out)
	if code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", code, stdout, stderr)
	}
	dir := filepath.Join(out, "smoke")
	for _, want := range []string{"eval reward (ODE 4 steps, 4 test prompts):", "prompt by prompt: ", "report:  " + filepath.Join(dir, "report.html")} {
		if !strings.Contains(stdout, want) {
			t.Errorf("run output lacks %q:\n%s", want, stdout)
		}
	}
	if got := metricEpochs(t, filepath.Join(dir, "metrics.jsonl")); len(got) != 3 || got[2] != 2 {
		t.Errorf("metrics epochs %v, want [0 1 2]", got)
	}
	// Resuming the finished run trains nothing and says how to extend it.
	stdout, stderr, code = runBinary(t, ".", nil, "run", "--resume", dir)
	if want := "is finished: 2 of run.epochs = 2 epochs done"; code != 0 || !strings.Contains(stdout, want) || !strings.Contains(stdout, "--set run.epochs=4") {
		t.Errorf("resume of the finished run: exit %d, stdout %q, stderr %q; want 0 and %q with the override", code, stdout, stderr, want)
	}
	stdout, stderr, code = runBinary(t, ".", nil, "run", "--resume", dir, "--set", "run.epochs=3")
	if code != 0 {
		t.Fatalf("resume: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "prompt by prompt: ") {
		t.Errorf("resumed run's output lacks the prompt-by-prompt change against the base evaluation:\n%s", stdout)
	}
	if got := metricEpochs(t, filepath.Join(dir, "metrics.jsonl")); len(got) != 4 || got[3] != 3 {
		t.Errorf("metrics epochs after resume %v, want [0 1 2 3]", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "checkpoints", "epoch-000003", "ema.safetensors")); err != nil {
		t.Errorf("no checkpoint of epoch 3: %v", err)
	}
	// The run's EMA adapters exported as a PEFT folder evaluate as the checkpoint does.
	adapter := filepath.Join(t.TempDir(), "adapter")
	stdout, stderr, code = runBinary(t, ".", nil, "export-lora", "--run", dir, "--out", adapter)
	if code != 0 || !strings.Contains(stdout, "EMA adapters of smoke epoch-000003 (DenseGRPO") {
		t.Fatalf("export-lora: exit %d\n%s\n%s", code, stdout, stderr)
	}
	viaLoRA := runEvalJSON(t, "--config", smokeConfig(), "--lora", adapter)
	viaCkpt := runEvalJSON(t, "--config", smokeConfig(), "--checkpoint", filepath.Join(dir, "checkpoints", "epoch-000003"))
	if len(viaLoRA.Totals) == 0 || fmt.Sprint(viaLoRA.Totals) != fmt.Sprint(viaCkpt.Totals) {
		t.Errorf("eval --lora %s: %v; eval --checkpoint: %v", adapter, viaLoRA.Totals, viaCkpt.Totals)
	}
	ba := filepath.Join(t.TempDir(), "ba.png")
	stdout, stderr, code = runBinary(t, ".", nil, "sample", "--config", smokeConfig(), "--lora", adapter, "--prompt", "K4RT", "--prompt", "AB",
		"--steps", "2", "--score", "--before-after", "--out", ba)
	if code != 0 || !strings.Contains(stdout, "EMA of smoke epoch-000003, DenseGRPO") || !strings.Contains(stdout, "(2 images, each before and after)") {
		t.Errorf("sample --lora --before-after: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if l, err := pipeline.ReadGridLayout(ba); err != nil || l == nil || len(l.Cells) != 4 || l.Cells[1].Prompt != "K4RT" || l.Cells[2].Prompt != "AB" {
		t.Errorf("before/after grid layout %+v, %v; want K4RT before, after, AB before, after", l, err)
	}
}

// startRun starts a long smoke run in the background and waits until its metrics show epoch
// `after`.
func startRun(t *testing.T, out string, after int) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(binary, "run", "--config", smokeConfig(), "--set", "run.out_dir="+out, "--set", "run.epochs=50")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	metrics := filepath.Join(out, "smoke", "metrics.jsonl")
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if e := metricEpochs(t, metrics); len(e) > 0 && e[len(e)-1] >= after {
			return cmd, &stderr
		}
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Kill()
	t.Fatalf("run did not reach epoch %d:\n%s", after, stderr.String())
	return nil, nil
}

func TestSmokeInterruptWritesCheckpoint(t *testing.T) {
	exportSmokeModels(t)
	out := t.TempDir()
	cmd, log := startRun(t, out, 1)
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 130 {
		t.Fatalf("exit %v, want 130 after Ctrl-C\n%s", err, log.String())
	}
	if !strings.Contains(log.String(), "resume with: pipeline run --resume") {
		t.Errorf("output does not say how to resume:\n%s", log.String())
	}
	ckpts, _ := filepath.Glob(filepath.Join(out, "smoke", "checkpoints", "epoch-*"))
	if len(ckpts) == 0 {
		t.Fatalf("no checkpoint after Ctrl-C:\n%s", log.String())
	}
	for _, c := range ckpts {
		if strings.HasSuffix(c, ".tmp") {
			t.Errorf("unfinished checkpoint left behind: %s", c)
		}
	}
}

// kill -9 mid-run: the newest complete checkpoint survives and --resume finishes the run with
// one metrics line per epoch.
func TestSmokeKillNineThenResume(t *testing.T) {
	exportSmokeModels(t)
	out := t.TempDir()
	cmd, _ := startRun(t, out, 2)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	dir := filepath.Join(out, "smoke")
	stdout, stderr, code := runBinary(t, ".", nil, "run", "--resume", dir, "--set", "run.epochs=4")
	if code != 0 {
		t.Fatalf("resume after kill -9: exit %d\n%s\n%s", code, stdout, stderr)
	}
	got := metricEpochs(t, filepath.Join(dir, "metrics.jsonl"))
	for i, e := range got {
		if e != i {
			t.Fatalf("metrics epochs %v, want 0 … 4 once each", got)
		}
	}
	if len(got) != 5 {
		t.Fatalf("metrics epochs %v, want 0 … 4", got)
	}
}

func TestSmokeCalibrate(t *testing.T) {
	exportSmokeModels(t)
	out := t.TempDir()
	psi := filepath.Join(out, "psi.json")
	stdout, stderr, code := runBinary(t, ".", nil, "calibrate", "--config", smokeConfig(), "--out", psi)
	if code != 0 {
		t.Fatalf("calibrate: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "ψ start") || !strings.Contains(stdout, "train with --set sampler.psi="+psi) {
		t.Errorf("calibrate output lacks the ψ table or the hint:\n%s", stdout)
	}
	stdout, stderr, code = runBinary(t, ".", nil, "run", "--config", smokeConfig(), "--set", "run.out_dir="+out,
		"--set", "sampler.psi="+psi, "--set", "run.epochs=1")
	if code != 0 {
		t.Fatalf("run with ψ: exit %d\n%s\n%s", code, stdout, stderr)
	}
}
