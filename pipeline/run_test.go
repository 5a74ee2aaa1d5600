package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// smallRun is the fixture shrunk to seconds: 2 prompts × 2 images, 3 steps (2 trained),
// minibatches of 2, evaluation on 2 test prompts.
var smallRun = []string{"run.epochs=2", "prompts.per_epoch=2", "sampler.group_size=2", "sampler.steps=3",
	"pipeline.rollout_batch=2", "grpo.minibatch=2", "eval.prompts=2", "run.checkpoint_every=1", "run.sample_every=1"}

func readMetrics(t *testing.T, dir string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestRunDenseAndSparse(t *testing.T) {
	for _, tc := range []struct {
		name string
		sets []string
	}{
		{"dense overlapped", []string{"dense.enabled=true", "pipeline.overlap=true"}},
		{"sparse sequential", []string{"dense.enabled=false", "pipeline.overlap=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := fixture(t, append(append([]string{}, smallRun...), tc.sets...)...)
			res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
			if err != nil {
				t.Fatal(err)
			}
			lines := readMetrics(t, res.Dir)
			if len(lines) != 3 {
				t.Fatalf("%d metrics lines, want 3 (eval at epoch 0, epochs 1 and 2)", len(lines))
			}
			if lines[0]["epoch"].(float64) != 0 || lines[0]["eval_reward_mean"] == nil {
				t.Errorf("first line %v, want the base model's evaluation at epoch 0", lines[0])
			}
			for _, key := range []string{"reward_mean", "reward_std", "reward/bright", "loss", "kl", "approx_kl", "clip_frac",
				"stage_seconds", "wall_seconds", "samples_per_second", "samples"} {
				if _, ok := lines[1][key]; !ok {
					t.Errorf("epoch line lacks %q: %v", key, lines[1])
				}
			}
			if got := lines[2]["samples"].(float64); got != 8 {
				t.Errorf("samples after 2 epochs = %v, want 8 (2 prompts × 2 images × 2 epochs)", got)
			}
			pos, isDense := lines[1]["dense_pos_frac"].([]any)
			if isDense != cfg.Dense.Enabled || (isDense && len(pos) != 2) {
				t.Errorf("dense_pos_frac = %v with dense=%v, want 2 per-step values exactly when dense", lines[1]["dense_pos_frac"], cfg.Dense.Enabled)
			}
			stages := lines[1]["stage_seconds"].(map[string]any)
			if _, ok := stages[StageTrain]; !ok {
				t.Errorf("stage_seconds %v lacks %s", stages, StageTrain)
			}
			if lines[2]["eval_reward_mean"] == nil || res.EvalAfter == nil || res.EvalBefore == nil {
				t.Error("no evaluation after the last epoch")
			}
			for _, f := range []string{"config.toml", "report.html", "checkpoints/epoch-000002/lora.safetensors",
				"checkpoints/epoch-000002/ema.safetensors", "checkpoints/epoch-000002/trainer.safetensors",
				"samples/eval-0000.png", "samples/eval-0002.png", "samples/epoch-0001.png"} {
				if _, err := os.Stat(filepath.Join(res.Dir, f)); err != nil {
					t.Errorf("run directory: %v", err)
				}
			}
			if _, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)}); err == nil || !strings.Contains(err.Error(), "--resume") {
				t.Errorf("second run into the same directory: error %v, want a pointer to --resume", err)
			}
		})
	}
}

// checkBeforeAfter checks that a straight run a and a resumed run c wrote the same before/after
// grid — a from its base evaluation, c by drawing the base model's images again — with a before
// and an after cell per test prompt.
func checkBeforeAfter(t *testing.T, a, c RunResult) {
	t.Helper()
	ga, errA := os.ReadFile(filepath.Join(a.Dir, runfiles.SamplesDir, runfiles.BeforeAfterFile))
	gc, errC := os.ReadFile(filepath.Join(c.Dir, runfiles.SamplesDir, runfiles.BeforeAfterFile))
	if errA != nil || errC != nil || !bytes.Equal(ga, gc) {
		t.Errorf("before/after grids: straight %d bytes (%v), resumed %d bytes (%v); want the same file", len(ga), errA, len(gc), errC)
	}
	layout, err := ReadGridLayout(filepath.Join(a.Dir, runfiles.SamplesDir, runfiles.BeforeAfterFile))
	if err != nil || layout == nil || len(layout.Cells) != 2*len(a.EvalAfter.Prompts) {
		t.Fatalf("before/after layout %+v, %v; want a before and an after cell per test prompt", layout, err)
	}
	for i, cell := range layout.Cells {
		if cell.Prompt != a.EvalAfter.Prompts[i/2] {
			t.Errorf("before/after cell %d: prompt %q, want %q", i, cell.Prompt, a.EvalAfter.Prompts[i/2])
		}
	}
}

// checkResumedBaseEval checks that a resumed run read the base evaluation back from
// metrics.jsonl, prompt by prompt, as the straight run made it.
func checkResumedBaseEval(t *testing.T, resumed, straight RunResult) {
	t.Helper()
	if resumed.EvalBefore == nil || !slices.Equal(resumed.EvalBefore.Totals, straight.EvalBefore.Totals) {
		t.Errorf("resumed run's base evaluation %+v, want the totals %v of the straight run", resumed.EvalBefore, straight.EvalBefore.Totals)
	}
}

// trainingKeys are the metrics a resumed run must reproduce exactly (timings differ).
var trainingKeys = []string{"samples", "reward_mean", "reward_std", "loss", "policy_loss", "kl", "approx_kl",
	"clip_frac", "grad_norm", "dense_pos_frac", "dense_delta_mean"}

// A run stopped after epoch 2 and resumed to epoch 3 logs the same epochs as one that ran
// straight to epoch 3.
func TestRunResumeIsExact(t *testing.T) {
	straight, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=3")...)
	a, err := Run(context.Background(), straight, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := fixture(t, smallRun...)
	b, err := Run(context.Background(), first, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := LoadRunConfig(b.Dir, []string{"run.epochs=3"})
	if err != nil {
		t.Fatal(err)
	}
	checkTrainerGroup(t, b.Dir, resumed)
	c, err := Run(context.Background(), resumed, RunOptions{Backend: nntest.Backend(t), Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	checkResumedBaseEval(t, c, a)
	checkBeforeAfter(t, a, c)
	la, lb := readMetrics(t, a.Dir), readMetrics(t, b.Dir)
	if len(la) != 4 || len(lb) != 4 {
		t.Fatalf("got %d and %d metrics lines, want 4 each", len(la), len(lb))
	}
	for e := 1; e <= 3; e++ {
		for _, k := range trainingKeys {
			ja, _ := json.Marshal(la[e][k])
			jb, _ := json.Marshal(lb[e][k])
			if string(ja) != string(jb) {
				t.Errorf("epoch %d %s: straight %s, resumed %s", e, k, ja, jb)
			}
		}
	}
	for _, k := range []string{"eval_reward_mean", "eval_totals"} {
		ja, _ := json.Marshal(la[3][k])
		jb, _ := json.Marshal(lb[3][k])
		if string(ja) != string(jb) || la[3][k] == nil {
			t.Errorf("final eval %s: straight %s, resumed %s", k, ja, jb)
		}
	}
}

// Resuming a run that is at its end runs nothing, is not an error, and says why it is finished
// and which override continues it; with that override it trains on.
func TestResumeFinishedRun(t *testing.T) {
	cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=1")...)
	a, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadRunConfig(a.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), again, RunOptions{Backend: nntest.Backend(t), Resume: true})
	want := fmt.Sprintf("run %s is finished: 1 of run.epochs = 1 epochs done", a.Dir)
	if err != nil || !strings.Contains(res.Finished, want) || !strings.Contains(res.Finished, "pipeline run --resume "+a.Dir+" --set run.epochs=2") || res.Epochs != 0 {
		t.Fatalf("resume of a finished run: %+v, error %v; want no error and %q with the override", res, err, want)
	}
	more, err := LoadRunConfig(a.Dir, []string{"run.epochs=2"})
	if err != nil {
		t.Fatal(err)
	}
	if res, err = Run(context.Background(), more, RunOptions{Backend: nntest.Backend(t), Resume: true}); err != nil || res.Finished != "" || res.Epochs != 2 {
		t.Fatalf("resume with run.epochs=2: %+v, %v; want epoch 2 trained", res, err)
	}
	// A spent time budget: the clock of the first run is past its budget when its epoch ends.
	bcfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=0", "run.time_budget=10m")...)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { clock = clock.Add(6 * time.Minute); return clock }
	b, err := Run(context.Background(), bcfg, RunOptions{Backend: nntest.Backend(t), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	bagain, err := LoadRunConfig(b.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err = Run(context.Background(), bagain, RunOptions{Backend: nntest.Backend(t), Resume: true})
	if err != nil || !strings.Contains(res.Finished, "its time budget run.time_budget = 10m is spent") || !strings.Contains(res.Finished, "--set run.time_budget=20m") {
		t.Fatalf("resume of a budget-finished run: %+v, error %v", res, err)
	}
}

// checkTrainerGroup checks the trainer state of the newest checkpoint of a run: it holds no
// frozen base weight, and a resume refuses it (before reading it) when it carries a tensor the
// trainer does not expect. The file is put back as it was.
func checkTrainerGroup(t *testing.T, dir string, cfg Config) {
	t.Helper()
	path := filepath.Join(dir, "checkpoints", "epoch-000002", "trainer.safetensors")
	infos, _, err := safetensors.ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, base := range []string{"/proj_out/weight", "/context_embedder/bias"} {
		if _, ok := infos[base]; ok {
			t.Errorf("%s holds the frozen base weight %q", path, base)
		}
	}
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(path, saved, 0o644)
	tensors, meta, err := safetensors.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	tensors["/unrelated"] = safetensors.Tensor{Shape: []int{4}, Data: make([]float32, 4)}
	if err := safetensors.Write(path, tensors, meta); err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t), Resume: true})
	if err == nil || !strings.Contains(err.Error(), `trainer.safetensors: 1 tensors not declared by the model config, e.g. ["/unrelated"]`) {
		t.Errorf("resume from a trainer state with an unrelated tensor: error %v, want it named", err)
	}
}

// The time budget is checked when an epoch ends: a run whose budget runs out after that check
// (here: a clock jumping past it once epoch 1 is logged, as a long periodic evaluation would)
// trains one more epoch and still ends with the final evaluation and samples.
func TestRunTimeBudgetEndsWithFinalEval(t *testing.T) {
	for _, tc := range []struct {
		name       string
		jumpAfter  int // epoch after which the clock jumps past the budget; 0 = never
		wantEpochs int
	}{
		{"budget never reached", 0, 3},
		{"budget spent after epoch 1", 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=3", "run.time_budget=1h", "eval.every=1")...)
			clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t),
				Now: func() time.Time { return clock },
				OnEpoch: func(epoch int, _ runfiles.Line) {
					if epoch == tc.jumpAfter {
						clock = clock.Add(2 * time.Hour)
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			if res.Epochs != tc.wantEpochs || res.EvalAfter == nil {
				t.Fatalf("ran %d epochs, final eval %v; want %d epochs and a final evaluation", res.Epochs, res.EvalAfter != nil, tc.wantEpochs)
			}
			lines := readMetrics(t, res.Dir)
			if last := lines[len(lines)-1]; last["epoch"].(float64) != float64(tc.wantEpochs) || last["eval_reward_mean"] == nil {
				t.Errorf("last metrics line %v, want epoch %d with its evaluation", last, tc.wantEpochs)
			}
			// Every evaluation (eval.every = 1) leaves its grid, the base one included.
			for e := 0; e <= tc.wantEpochs; e++ {
				grid := filepath.Join(res.Dir, "samples", fmt.Sprintf("eval-%04d.png", e))
				if _, err := os.Stat(grid); err != nil {
					t.Errorf("no eval sample grid of epoch %d: %v", e, err)
				}
			}
		})
	}
}

// Ctrl-C (a cancelled context) after epoch 1 checkpoints epoch 1, even though checkpoints are
// otherwise written every 5 epochs, and the resumed run ends where a straight run ends.
func TestRunInterruptCheckpointsAndResumes(t *testing.T) {
	sets := append(append([]string{}, smallRun...), "run.checkpoint_every=5")
	straight, _ := fixture(t, sets...)
	a, err := Run(context.Background(), straight, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := fixture(t, sets...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := Run(ctx, cfg, RunOptions{Backend: nntest.Backend(t), OnEpoch: func(epoch int, _ runfiles.Line) {
		if epoch == 1 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "checkpoint of epoch 1") {
		t.Fatalf("error %v, want an interruption that names the epoch-1 checkpoint", err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir, "checkpoints", "epoch-000001", "lora.safetensors")); err != nil {
		t.Fatalf("no checkpoint after the interruption: %v", err)
	}
	resumed, err := LoadRunConfig(b.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Run(context.Background(), resumed, RunOptions{Backend: nntest.Backend(t), Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	checkResumedBaseEval(t, c, a)
	checkBeforeAfter(t, a, c)
	la, lb := readMetrics(t, a.Dir), readMetrics(t, b.Dir)
	if len(lb) != len(la) {
		t.Fatalf("resumed run logged %d lines, straight run %d", len(lb), len(la))
	}
	for _, k := range trainingKeys {
		ja, _ := json.Marshal(la[2][k])
		jb, _ := json.Marshal(lb[2][k])
		if string(ja) != string(jb) {
			t.Errorf("epoch 2 %s: straight %s, resumed %s", k, ja, jb)
		}
	}
}

// writeNaNReward writes an onnx-scalar reward whose score is sqrt(−1 − mean) = NaN.
func writeNaNReward(t *testing.T, path string) {
	t.Helper()
	g := onnx.NewGraph("nan_reward")
	x := g.Input("pixel_values", onnx.Float32, onnx.Sym("batch"), onnx.Fixed(3)[0], onnx.Sym("height"), onnx.Sym("width"))
	m := g.Op("ReduceMean", []string{x}, onnx.AttrInts("axes", 1, 2, 3), onnx.AttrInt("keepdims", 0))
	neg := g.Op("Sub", []string{g.ConstF32("minus_one", []int64{}, []float32{-1}), m})
	g.Node("Sqrt", []string{neg}, []string{"score"})
	g.Output("score", onnx.Float32, onnx.Sym("batch"))
	if err := (&onnx.Model{Graph: g}).WriteFile(path); err != nil {
		t.Fatal(err)
	}
}

func TestRunStopsOnNaNReward(t *testing.T) {
	cfg, files := fixture(t, smallRun...)
	writeNaNReward(t, files.Reward)
	_, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	// The base-model evaluation meets the NaN first; the rewards layer names the reward, its
	// model file and the output.
	if err == nil || !strings.Contains(err.Error(), `reward "bright"`) || !strings.Contains(err.Error(), "NaN") ||
		!strings.Contains(err.Error(), files.Reward) || !strings.Contains(err.Error(), `output "score"`) {
		t.Fatalf("error %v, want it to name the reward that gave NaN, its model %s and output \"score\"", err, files.Reward)
	}
}

// An output directory that cannot be created is an error before anything is opened or run.
// (A path under a regular file fails even for root, whom permissions do not stop.)
func TestRunUnwritableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.out_dir="+filepath.Join(file, "runs"))...)
	_, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err == nil || !strings.Contains(err.Error(), "create run directory") || !strings.Contains(err.Error(), file) {
		t.Fatalf("error %v, want the run directory named before training", err)
	}
}

// Update minibatches span rollout minibatches: 4 samples (2 rollout minibatches of 2) with
// grpo.minibatch = 4 are one on-policy update (ratio exactly 1, nothing clipped); with 3 they
// are two updates (3 + the remaining 1).
func TestRunUpdateMinibatches(t *testing.T) {
	for _, tc := range []struct {
		minibatch string
		updates   float64
	}{{"4", 1}, {"3", 2}} {
		cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=1", "grpo.minibatch="+tc.minibatch)...)
		res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
		if err != nil {
			t.Fatal(err)
		}
		line := readMetrics(t, res.Dir)[1]
		if line["updates"].(float64) != tc.updates {
			t.Errorf("minibatch %s: %v updates, want %v", tc.minibatch, line["updates"], tc.updates)
		}
		if tc.updates == 1 && (line["ratio_mean"].(float64) != 1 || line["clip_frac"].(float64) != 0) {
			t.Errorf("one update per epoch: ratio_mean %v, clip_frac %v, want exactly 1 and 0", line["ratio_mean"], line["clip_frac"])
		}
	}
}

// grpo.micro_batch splits the gradient computations, not the updates: an epoch in parts of one
// trajectory takes the same single update (to float rounding) as in one part of four.
func TestRunMicroBatchKeepsTheUpdate(t *testing.T) {
	lora := map[string][]float32{}
	for _, micro := range []string{"0", "1"} {
		cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=1", "grpo.minibatch=4", "grpo.micro_batch="+micro)...)
		res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
		if err != nil {
			t.Fatal(err)
		}
		if u := readMetrics(t, res.Dir)[1]["updates"].(float64); u != 1 {
			t.Fatalf("micro_batch %s: %v updates, want 1", micro, u)
		}
		ts, _, err := safetensors.Read(filepath.Join(res.Dir, "checkpoints", "epoch-000001", LoRAFile))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range ts {
			if prev, ok := lora[k]; ok {
				for i := range v.Data {
					if d := math.Abs(float64(v.Data[i] - prev[i])); d > 1e-6*math.Max(1, math.Abs(float64(prev[i]))) {
						t.Fatalf("%s[%d]: %g with micro_batch 1, %g without", k, i, v.Data[i], prev[i])
					}
				}
			}
			lora[k] = v.Data
		}
	}
	moved := false
	for k, v := range lora {
		if strings.HasSuffix(k, "lora_B.weight") {
			moved = moved || slices.ContainsFunc(v, func(x float32) bool { return x != 0 })
		}
	}
	if !moved {
		t.Fatal("no lora_B moved from 0: the update compared is empty")
	}
}

// Calibration writes psi.json with ψ per step and the sign counts of every round, and a run
// reads it back through sampler.psi.
func TestCalibrateThenTrainWithPsi(t *testing.T) {
	cfg, _ := fixture(t, append(append([]string{}, smallRun...), "calibrate.iterations=2", "calibrate.trajectories=3")...)
	out := filepath.Join(t.TempDir(), "psi.json")
	var log strings.Builder
	cal, err := Calibrate(context.Background(), cfg, CalibrateOptions{Out: out, Log: &log, Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(cal.Psi) != 3 || len(cal.Rounds) != 2 {
		t.Fatalf("ψ %v over %d rounds, want 3 values and 2 rounds", cal.Psi, len(cal.Rounds))
	}
	// Each round moves every ψ(k) by exactly ε2 = 0.01, up or down.
	for k := range cal.Psi {
		prev := cal.Rounds[1].Psi[k]
		if d := math.Abs(float64(cal.Psi[k] - prev)); math.Abs(d-0.01) > 1e-6 {
			t.Errorf("ψ(%d) moved by %v in the last round, want ε2 = 0.01", k, d)
		}
	}
	if !strings.Contains(log.String(), "ψ start") {
		t.Errorf("no ψ table printed:\n%s", log.String())
	}
	trainCfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=1", "sampler.psi="+out)...)
	res, err := Run(context.Background(), trainCfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatalf("training with the calibrated ψ: %v", err)
	}
	// The run keeps the ψ it trained with, and its report draws it.
	kept, err := runfiles.ReadPsi(filepath.Join(res.Dir, runfiles.PsiFile))
	if err != nil || !slices.Equal(kept.Psi, cal.Psi) {
		t.Errorf("run directory ψ %v (err %v), want the calibrated %v", kept, err, cal.Psi)
	}
	if page, err := os.ReadFile(res.Report); err != nil || !strings.Contains(string(page), "ψ(k): start vs calibrated") {
		t.Errorf("report (err %v) does not draw the calibrated ψ", err)
	}
	bad, _ := fixture(t, append(append([]string{}, smallRun...), "sampler.steps=4", "sampler.psi="+out)...)
	if _, err := Run(context.Background(), bad, RunOptions{Backend: nntest.Backend(t)}); err == nil || !strings.Contains(err.Error(), "want 4 (sampler.steps)") {
		t.Errorf("ψ of 3 steps for a 4-step schedule: error %v, want a length mismatch", err)
	}
}

// A run that failed before its first checkpoint leaves its metrics lines but nothing to
// resume; running again in that directory starts afresh, with one epoch-0 line, not a second.
func TestRunAfterFailedRunStartsFresh(t *testing.T) {
	cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=1")...)
	dir := RunDir(cfg)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	failed := `{"epoch":0,"eval_n":2,"eval_reward_mean":0.5,"eval_totals":[0.5,0.5]}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, runfiles.MetricsFile), []byte(failed), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	var epochs []float64
	for _, l := range readMetrics(t, res.Dir) {
		epochs = append(epochs, l["epoch"].(float64))
	}
	if !slices.Equal(epochs, []float64{0, 1}) {
		t.Errorf("metrics epochs %v, want [0 1]", epochs)
	}
}

// CPS rollouts train too (their log-prob has no variance term).
func TestRunCPS(t *testing.T) {
	cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=1", "sampler.kind=cps", "sampler.noise_level=0.8")...)
	res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	if l := readMetrics(t, res.Dir)[1]; l["loss"] == nil {
		t.Errorf("CPS epoch line %v has no loss", l)
	}
}

// GRPO must move the policy towards higher reward end to end — rollout, look-ahead, scoring,
// advantages, the clipped loss and the LoRA update together — with dense and sparse rewards.
// The fixture's reward is mean brightness, which the tiny random model can change quickly; with
// the reward's weight negated the same run must darken the images instead, so a drift that
// does not follow the reward, or a sign error anywhere in the chain, fails one of the cases.
func TestRunFollowsReward(t *testing.T) {
	for _, dense := range []bool{true, false} {
		for _, weight := range []float64{1, -1} {
			t.Run(fmt.Sprintf("dense=%v/weight=%v", dense, weight), func(t *testing.T) {
				cfg, _ := fixture(t, "run.epochs=8", "prompts.per_epoch=2", "sampler.group_size=4", "sampler.steps=3",
					"pipeline.rollout_batch=4", "grpo.minibatch=4", "grpo.learning_rate=3e-2", "grpo.clip_range=0.2",
					"eval.prompts=3", "run.checkpoint_every=8", "run.sample_every=0", fmt.Sprintf("dense.enabled=%v", dense))
				cfg.Rewards[0].Weight = &weight
				res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
				if err != nil {
					t.Fatal(err)
				}
				before, after := res.EvalBefore.Rewards["bright"], res.EvalAfter.Rewards["bright"]
				t.Logf("eval brightness %.4f → %.4f", before, after)
				if change := (after - before) * weight; !(change > 0.01) {
					t.Errorf("eval brightness %.4f → %.4f with reward weight %v, want a change of more than 0.01 in the weight's direction", before, after, weight)
				}
			})
		}
	}
}

// With dense.queries = K an epoch decodes and scores K images per trajectory; an audited epoch
// (the first, with audit_every = 2) scores every state and logs the prediction's accuracy per
// step, which the report shows.
func TestRunQueries(t *testing.T) {
	// 3 steps, 2 trained: look-aheads from x_0, x_1, x_2 and the final x_3, 4 states; 4 samples.
	cfg, _ := fixture(t, append(append([]string{}, smallRun...), "dense.queries=3", "dense.audit_every=2")...)
	res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	lines := readMetrics(t, res.Dir)
	if got := lines[1]["scored_images"]; got != float64(16) {
		t.Errorf("audited epoch 1 scored %v images, want 16 (4 samples × 4 states)", got)
	}
	if got := lines[2]["scored_images"]; got != float64(12) {
		t.Errorf("epoch 2 scored %v images, want 12 (4 samples × 3 queries)", got)
	}
	corr, _ := lines[1]["query_r_corr"].([]any)
	sign, _ := lines[1]["query_delta_sign"].([]any)
	frac, _ := lines[1]["query_frac"].([]any)
	moved, _ := lines[1]["query_delta_sign_moved"].([]any)
	if len(corr) != 3 || len(sign) != 2 || len(frac) != 3 || frac[0] != float64(1) || len(moved) != 2 {
		t.Errorf("audited epoch: query_r_corr %v, query_delta_sign %v, query_frac %v, query_delta_sign_moved %v; want 3, 2, 3 and 2 values, x_0 always queried",
			corr, sign, frac, moved)
	}
	if _, ok := lines[2]["query_r_corr"]; ok {
		t.Errorf("epoch 2 is not audited but logs %v", lines[2]["query_r_corr"])
	}
	if page, err := os.ReadFile(res.Report); err != nil || !strings.Contains(string(page), "mean of 1 audited epochs") {
		t.Errorf("report (err %v) has no predicted-reward table", err)
	}
}
