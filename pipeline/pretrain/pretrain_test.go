package pretrain

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// runSteps runs cfg to completion and returns the loss of every step.
func runSteps(t *testing.T, ctx context.Context, cfg Config, opts Options) ([]float32, Result, error) {
	t.Helper()
	var losses []float32
	opts.Backend = nntest.Backend(t)
	next := opts.OnStep
	opts.OnStep = func(step int, loss float32) {
		losses = append(losses, loss)
		if next != nil {
			next(step, loss)
		}
	}
	res, err := Run(ctx, cfg, opts)
	return losses, res, err
}

func mean(xs []float32) float64 {
	s := 0.0
	for _, x := range xs {
		s += float64(x)
	}
	return s / float64(len(xs))
}

// TestTrainingLowersLoss: at step 0 the transformer outputs 0 (zero proj_out), so the loss is
// E[(x1 − x0)²] ≈ 1 + E[x0²]; a few AdamW steps must lower it clearly. Then the outputs
// must load: the transformer through mmdit.Load, the text encoder through tinyocr's
// ImportVariables.
func TestTrainingLowersLoss(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, 40)
	cfg.Output.CheckpointEvery = 10
	started := time.Now()
	losses, res, err := runSteps(t, context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(started).Seconds()
	if res.Steps != 40 || res.Stopped != StoppedSteps || len(losses) != 40 {
		t.Fatalf("result %+v after %d steps, want 40 steps stopped by %q", res, len(losses), StoppedSteps)
	}
	first, last := mean(losses[:8]), mean(losses[32:])
	t.Logf("mean loss of steps 1-8 %.4f, of steps 33-40 %.4f", first, last)
	if !(last < 0.8*first) {
		t.Errorf("loss went from %.4f to %.4f, want a drop of at least 20%%", first, last)
	}

	// loss.jsonl: one record per step (log_every 1), steps 1..40, with positive rates.
	records := readLossLog(t, filepath.Join(cfg.Output.Dir, LossFile))
	if len(records) != 40 || records[0].Step != 1 || records[39].Step != 40 {
		t.Fatalf("loss log has %d records (first %+v), want steps 1..40", len(records), records[0])
	}
	// Elapsed seconds grow and never exceed the wall time of the run (checkpoints every 10
	// steps must not count time twice).
	prev := 0.0
	for i, r := range records {
		if float32(r.Loss) != losses[i] || !(r.SamplesPerSec > 0) || !(r.LR > 0) {
			t.Fatalf("record %+v: want loss %g and positive lr and rate", r, losses[i])
		}
		if r.Seconds < prev || r.Seconds > wall {
			t.Fatalf("record %+v: seconds after %g and within the run's %.3f s", r, prev, wall)
		}
		prev = r.Seconds
	}

	mcfg, err := mmdit.LoadConfig(cfg.Model.Transformer)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mmdit.New(mcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Load(mlctx.New(), res.Transformer); err != nil {
		t.Errorf("load %s: %v", TransformerFile, err)
	}
	ts, meta, err := safetensors.Read(res.TextEncoder)
	if err != nil {
		t.Fatal(err)
	}
	// The exporter reads the text encoder with tinyocr.TextEncoderTensors under its prefix.
	if _, teCfg, err := tinyocr.TextEncoderTensors(ts, tinyocr.TextEncoderPrefix); err != nil || teCfg != tinyTextEncoder.tinyocr() {
		t.Errorf("read %s: config %+v, error %v; want %+v", TextEncoderFile, teCfg, err, tinyTextEncoder.tinyocr())
	}
	if !strings.Contains(meta["config"], `"dim":16`) {
		t.Errorf("text encoder metadata %v: want the config", meta)
	}
}

func readLossLog(t *testing.T, path string) []lossRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []lossRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r lossRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("loss log line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// TestResumeMatchesUninterrupted: a run cancelled after step 3 (as Ctrl-C does) writes a
// checkpoint; resuming it gives steps 4-6 with losses bit-identical to an uninterrupted run,
// and the same final weights.
func TestResumeMatchesUninterrupted(t *testing.T) {
	const steps, stopAt = 6, 3
	dirA, dirB := t.TempDir(), t.TempDir()
	cfgA := testConfig(t, dirA, steps)
	cfgA.Output.CheckpointEvery = 2
	cfgA.Train.EMADecay = 0.5 // the final files are the average, which must survive resuming
	want, resA, err := runSteps(t, context.Background(), cfgA, Options{})
	if err != nil {
		t.Fatal(err)
	}

	cfgB := testConfig(t, dirB, steps)
	cfgB.Model.VAE = cfgA.Model.VAE // the same random VAE
	cfgB.Output.CheckpointEvery = 2
	cfgB.Train.EMADecay = 0.5
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before, res, err := runSteps(t, ctx, cfgB, Options{OnStep: func(step int, _ float32) {
		if step == stopAt {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "--resume") {
		t.Fatalf("cancelled run: got error %v, want context.Canceled and a hint to resume", err)
	}
	if res.Stopped != StoppedInterrupted || res.Steps != stopAt || filepath.Base(res.Checkpoint) != "epoch-000003" || res.Transformer != "" {
		t.Fatalf("cancelled run result %+v: want interrupted at step 3 with its checkpoint and no final weights", res)
	}

	// Without --resume the checkpointed output dir is refused; with it the run continues.
	if _, _, err := runSteps(t, context.Background(), cfgB, Options{}); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Fatalf("rerun without resume: got %v, want a refusal naming --resume", err)
	}
	after, resB, err := runSteps(t, context.Background(), cfgB, Options{Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	got := append(before, after...)
	if len(got) != steps {
		t.Fatalf("got %d losses (%d before, %d after resuming), want %d", len(got), len(before), len(after), steps)
	}
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Errorf("step %d: loss %v after resume, %v uninterrupted", i+1, got[i], want[i])
		}
	}
	// The loss log of the resumed run has each step once.
	if records := readLossLog(t, filepath.Join(cfgB.Output.Dir, LossFile)); len(records) != steps || records[steps-1].Step != steps {
		t.Errorf("resumed loss log has %d records, want %d", len(records), steps)
	}
	a, _, err := safetensors.Read(resA.Transformer)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := safetensors.Read(resB.Transformer)
	if err != nil {
		t.Fatal(err)
	}
	for key, ta := range a {
		tb := b[key]
		for i := range ta.Data {
			if math.Float32bits(ta.Data[i]) != math.Float32bits(tb.Data[i]) {
				t.Fatalf("final weights differ at %s[%d]: %v vs %v", key, i, ta.Data[i], tb.Data[i])
			}
		}
	}
}

// TestFinalWeightsAreTheAverage: with train.ema_decay the final files hold
// avg_n = d_n·avg_(n−1) + (1−d_n)·w_n, d_n = min((1+n)/(10+n), max) for n = 0, 1, 2, avg from
// the initial weights w_0 — recomputed here from the initial weights and each step's
// checkpoint — while the checkpoints keep the last step's weights for training on.
func TestFinalWeightsAreTheAverage(t *testing.T) {
	const steps = 3
	cfg := testConfig(t, t.TempDir(), steps)
	cfg.Train.EMADecay = 0.2 // d = 0.1, 2/11, 0.2
	cfg.Output.CheckpointEvery = 1
	cfg.Output.KeepCheckpoints = steps
	tr, err := newTrainer(cfg, Options{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	initial, _, err := nn.SnapshotVariables(tr.mctx, isModelWeight)
	tr.close()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := runSteps(t, context.Background(), cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]float64{}
	for k, v := range initial {
		for _, x := range v.Data {
			want[k] = append(want[k], float64(x))
		}
	}
	for step, d := range []float64{0.1, 2.0 / 11, 0.2} {
		w, _, err := safetensors.Read(filepath.Join(cfg.Output.Dir, CheckpointDir, fmt.Sprintf("epoch-%06d", step+1), stateGroup+".safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		for k, avg := range want {
			for i := range avg {
				avg[i] = d*avg[i] + (1-d)*float64(w[k].Data[i])
			}
		}
	}
	final, _, err := safetensors.Read(filepath.Join(cfg.Output.Dir, TransformerFile))
	if err != nil {
		t.Fatal(err)
	}
	last, _, err := safetensors.Read(filepath.Join(cfg.Output.Dir, CheckpointDir, fmt.Sprintf("epoch-%06d", steps), stateGroup+".safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	checked, moved := 0, false
	for k, avg := range want {
		key, ok := transformerKey(t, k)
		if !ok {
			continue
		}
		got, ok := final[key]
		if !ok {
			t.Fatalf("final transformer has no %s (variable %s)", key, k)
		}
		for j, x := range avg {
			if math.Abs(float64(got.Data[j])-x) > 1e-6*(1+math.Abs(x)) {
				t.Fatalf("%s[%d] = %v, want the average %v", key, j, got.Data[j], x)
			}
			moved = moved || got.Data[j] != last[k].Data[j]
		}
		checked++
	}
	if checked == 0 || !moved {
		t.Fatalf("checked %d transformer tensors; final differs from the last step's weights: %v", checked, moved)
	}
}

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, 2)
	tests := []struct {
		name   string
		edit   func(c *Config)
		resume bool
		want   []string
	}{
		{"resume without checkpoint", func(c *Config) {}, true, []string{"resume: no checkpoint in"}},
		{"text encoder width", func(c *Config) { c.Model.TextEncoder.Dim = 32 },
			false, []string{"joint_attention_dim: got 16, want 32 (model.text_encoder.dim)"}},
		{"missing VAE", func(c *Config) { c.Model.VAE = filepath.Join(dir, "absent.safetensors") },
			false, []string{"absent.safetensors"}},
		{"missing prompts", func(c *Config) { c.Data.Prompts = filepath.Join(dir, "absent.txt") },
			false, []string{"absent.txt"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.Output.Dir = filepath.Join(t.TempDir(), "out")
			tc.edit(&c)
			_, _, err := runSteps(t, context.Background(), c, Options{Resume: tc.resume})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestWorkersTakeTheSameStep: two workers on shards of 2 take the step one worker takes on
// the batch of 4 — the losses of a few steps agree to float rounding, and so do the weights.
func TestWorkersTakeTheSameStep(t *testing.T) {
	run := func(workers int) ([]float32, map[string][]float32) {
		dir := t.TempDir()
		cfg := testConfig(t, dir, 4)
		cfg.Train.Workers = workers
		losses, res, err := runSteps(t, context.Background(), cfg, Options{})
		if err != nil {
			t.Fatalf("workers %d: %v", workers, err)
		}
		ts, _, err := safetensors.Read(res.Transformer)
		if err != nil {
			t.Fatal(err)
		}
		w := map[string][]float32{}
		for name, tensor := range ts {
			w[name] = tensor.Data
		}
		return losses, w
	}
	l1, w1 := run(1)
	l2, w2 := run(2)
	for i := range l1 {
		if math.Abs(float64(l1[i]-l2[i])) > 1e-5*math.Abs(float64(l1[i])) {
			t.Errorf("step %d: loss %.7f with one worker, %.7f with two", i+1, l1[i], l2[i])
		}
	}
	var worst float64
	for name, a := range w1 {
		for j, v := range a {
			worst = max(worst, math.Abs(float64(v-w2[name][j])))
		}
	}
	if len(w1) == 0 || worst > 1e-5 {
		t.Errorf("%d tensors; largest weight difference between one and two workers %g, want <= 1e-5", len(w1), worst)
	}
}

// transformerKey maps a checkpoint variable of the transformer scope to its key in
// transformer.safetensors; ok is false for other variables.
func transformerKey(t *testing.T, variable string) (key string, ok bool) {
	t.Helper()
	if !strings.HasPrefix(variable, "/"+transformerScope+"/") {
		return "", false
	}
	i := strings.LastIndex(variable, "/")
	key, err := mmdit.ScopeToKey(variable[len(transformerScope)+1:i], variable[i+1:])
	if err != nil {
		t.Fatal(err)
	}
	return key, true
}

// TestExportCheckpoint: exporting the last checkpoint reproduces the run's final files byte
// for byte; exporting an earlier one writes that step's weights (an earlier pick of the run).
func TestExportCheckpoint(t *testing.T) {
	const steps = 3
	cfg := testConfig(t, t.TempDir(), steps)
	cfg.Output.CheckpointEvery = 1
	cfg.Output.KeepCheckpoints = steps
	if _, _, err := runSteps(t, context.Background(), cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	files := []string{TransformerFile, TextEncoderFile}
	final := map[string][]byte{}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(cfg.Output.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		final[f] = data
	}
	ckpt := func(step int) string {
		return filepath.Join(cfg.Output.Dir, CheckpointDir, fmt.Sprintf("epoch-%06d", step))
	}
	opts := Options{Backend: nntest.Backend(t)}
	res, err := Export(cfg, ckpt(steps), opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != steps || res.Transformer != filepath.Join(cfg.Output.Dir, TransformerFile) {
		t.Errorf("export result %+v, want step %d and the output dir's files", res, steps)
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(cfg.Output.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != string(final[f]) {
			t.Errorf("%s exported from the last checkpoint differs from the run's final file", f)
		}
	}

	if _, err := Export(cfg, ckpt(1), opts); err != nil {
		t.Fatal(err)
	}
	exported, _, err := safetensors.Read(filepath.Join(cfg.Output.Dir, TransformerFile))
	if err != nil {
		t.Fatal(err)
	}
	state, _, err := safetensors.Read(filepath.Join(ckpt(1), stateGroup+".safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for k, v := range state {
		key, ok := transformerKey(t, k)
		if !ok {
			continue
		}
		got, ok := exported[key]
		if !ok {
			t.Fatalf("exported transformer has no %s (variable %s)", key, k)
		}
		for j := range v.Data {
			if got.Data[j] != v.Data[j] {
				t.Fatalf("%s[%d] = %v, want step 1's %v", key, j, got.Data[j], v.Data[j])
			}
		}
		checked++
	}
	if checked == 0 {
		t.Fatal("no transformer tensor in the step-1 checkpoint")
	}

	if _, err := Export(cfg, filepath.Join(cfg.Output.Dir, "nonexistent"), opts); err == nil || !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("export of a missing checkpoint: got %v, want an error naming it", err)
	}

	// A checkpoint whose state carries a tensor the trainer does not expect, or a variable of
	// another shape, is refused from its header.
	for _, c := range []struct {
		name   string
		change func(map[string]safetensors.Tensor)
		err    string
	}{
		{"unrelated", func(ts map[string]safetensors.Tensor) {
			ts["/unrelated"] = safetensors.Tensor{Shape: []int{4}, Data: make([]float32, 4)}
		}, `variables.safetensors: 1 tensors not declared by the model config, e.g. ["/unrelated"]`},
		{"shape", func(ts map[string]safetensors.Tensor) {
			ts["/optimizers/learning_rate"] = safetensors.Tensor{Shape: []int{2}, Data: make([]float32, 2)}
		}, `variables.safetensors: tensor "/optimizers/learning_rate": file has shape [2], model wants []`},
	} {
		path := filepath.Join(ckpt(2), stateGroup+".safetensors")
		ts, meta, err := safetensors.Read(path)
		if err != nil {
			t.Fatal(err)
		}
		c.change(ts)
		if err := safetensors.Write(path, ts, meta); err != nil {
			t.Fatal(err)
		}
		if _, err := Export(cfg, ckpt(2), opts); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("export of a checkpoint with %s: got %v, want %q", c.name, err, c.err)
		}
	}
}
