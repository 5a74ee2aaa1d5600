package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/gomlx/gomlx/backends"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/pipeline/checkpoint"
	"github.com/densegrpo/densegrpo/pipeline/progress"
	"github.com/densegrpo/densegrpo/pipeline/report"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
	"github.com/densegrpo/densegrpo/rewards"
)

// RunOptions are the choices of Run that are not in the config.
type RunOptions struct {
	// Resume continues the run in this directory from its newest checkpoint.
	Resume bool
	// Log receives progress and the summary (nil: discarded).
	Log io.Writer
	// Backend, if not nil, replaces the config's GoMLX backend (tests share one).
	Backend backends.Backend
	// OnEpoch, if set, is called with each epoch's metrics line once it is written.
	OnEpoch func(epoch int, line runfiles.Line)
	// Now, if set, replaces time.Now for the time budget (tests drive it).
	Now func() time.Time
}

// RunResult summarises a finished (or interrupted) run.
type RunResult struct {
	Dir        string
	Epochs     int
	EvalBefore *EvalResult
	EvalAfter  *EvalResult
	Report     string
	// Checkpoint is the newest checkpoint directory.
	Checkpoint string
	// Finished is set, and nothing run, when Resume found the run already at its end: why it
	// is finished and the override that continues it.
	Finished string
}

// trainState is the JSON part of a checkpoint: everything besides tensors that a resumed run
// needs to continue exactly.
type trainState struct {
	RNG        []byte                    `json:"rng"`
	Samples    int                       `json:"samples"`
	Elapsed    float64                   `json:"elapsed_seconds"`
	EMAUpdates int                       `json:"ema_updates"`
	Ints       map[string]nn.IntVariable `json:"int_variables"`
}

// Checkpoint tensor groups.
const (
	groupLoRA = "lora" // LoRAFile: the adapters being trained
	groupEMA  = "ema"  // EMALoRAFile: their moving average, used for evaluation
	// groupDiffusers is mmdit.DiffusersLoRAFile: the EMA adapters in diffusers' LoRA format.
	groupDiffusers = "pytorch_lora_weights"
	groupTrainer   = "trainer" // optimizer moments and other trainer variables
)

// RunDir is the run directory of cfg: out_dir/name, relative to the config file.
func RunDir(cfg Config) string { return filepath.Join(cfg.Resolve(cfg.Run.OutDir), cfg.Run.Name) }

// Run trains cfg's policy with DenseGRPO (or Flow-GRPO when dense.enabled is false): it
// evaluates the base model, runs epochs until the epoch count or time budget, evaluates the
// EMA adapters, and writes metrics, checkpoints, sample grids and the report into RunDir(cfg).
// A cancelled ctx (Ctrl-C) checkpoints the last finished epoch and returns context.Canceled.
func Run(ctx context.Context, cfg Config, opts RunOptions) (res RunResult, err error) {
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	dir := RunDir(cfg)
	res.Dir = dir
	ckpt := checkpoint.New(filepath.Join(dir, "checkpoints"), cfg.Run.KeepCheckpoints)
	if err := prepareRunDir(cfg, dir, opts.Resume, ckpt); err != nil {
		return res, err
	}
	// resumed is the newest checkpoint, opened once (its headers validated, no tensor read)
	// both to tell a finished run and to restore from; closed once restored.
	var resumed *checkpoint.Stored
	if opts.Resume {
		ckDir, ok, err := ckpt.Latest()
		if err != nil {
			return res, err
		}
		if !ok {
			return res, fmt.Errorf("resume %s: no checkpoint in %s", dir, ckpt.Dir)
		}
		if resumed, err = checkpoint.Load(ckDir); err != nil {
			return res, fmt.Errorf("resume: %w", err)
		}
		defer func() {
			if resumed != nil {
				resumed.Close()
			}
		}()
		finished, err := finishedRun(cfg, resumed)
		if err != nil {
			return res, err
		}
		if finished != "" {
			res.Finished, res.Checkpoint = finished, ckDir
			return res, nil
		}
	}

	// Open everything (and check every declared tensor) before any compute is spent.
	frozen, err := OpenFrozen(ctx, cfg)
	if err != nil {
		return res, err
	}
	defer frozen.Close()
	frozen.LogRetries(log)
	policy, err := NewPolicy(cfg, PolicyOptions{Backend: opts.Backend})
	if err != nil {
		return res, err
	}
	defer policy.Close()
	if err := policy.Check(frozen.TextEncoder, frozen.VAE); err != nil {
		return res, err
	}
	fmt.Fprintf(log, "run %s: backend %s, %d base + %d LoRA parameters, dense=%v\n",
		dir, policy.BackendDesc, policy.Model.NumParams(), policy.Model.NumLoRAParams(), cfg.Dense.Enabled)
	t, err := newTrainer(ctx, cfg, policy, frozen)
	if err != nil {
		return res, err
	}
	defer t.close()

	if t.psi != nil && !opts.Resume {
		// The ψ the rollouts use, beside the metrics, for the report to draw.
		if err := runfiles.WritePsi(filepath.Join(dir, runfiles.PsiFile), t.psi); err != nil {
			return res, err
		}
	}
	// A new run starts the metrics afresh: a directory without a checkpoint (prepareRunDir)
	// may still hold the lines of a run that failed before its first one.
	metrics, err := openMetrics(filepath.Join(dir, runfiles.MetricsFile), !opts.Resume)
	if err != nil {
		return res, err
	}
	defer metrics.Close()
	// beforeImages is the base model's evaluation with its images, for the before/after grid
	// (a resumed run draws them again).
	var beforeImages *EvalResult
	if opts.Resume {
		ck := resumed
		err := t.restore(ck)
		ck.Close()
		resumed = nil
		if err != nil {
			return res, fmt.Errorf("resume from %s: %w", ck.Dir, err)
		}
		if err := metrics.TruncateAfter(ck.Epoch); err != nil {
			return res, err
		}
		res.Checkpoint = ck.Dir
		fmt.Fprintf(log, "resumed from %s (epoch %d)\n", ck.Dir, ck.Epoch)
	} else {
		before, err := t.evaluate(ctx, log)
		if err != nil {
			return res, err
		}
		res.EvalBefore, beforeImages = &before, &before
		fmt.Fprintf(log, "eval before training: %s\n", before.Summary())
		if err := metrics.Write(runfiles.Line{Eval: evalRecord(before)}); err != nil {
			return res, err
		}
		if err := t.writeSamples(dir, 0, before); err != nil {
			return res, err
		}
	}
	if res.EvalBefore == nil {
		if res.EvalBefore, err = metrics.BaseEval(); err != nil {
			return res, err
		}
	}

	budget := cfg.TimeBudgetDuration()
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	started := now().Add(-time.Duration(t.elapsed * float64(time.Second)))
	spent := func() time.Duration { return now().Sub(started) }
	// saved is the state after the newest epoch whose metrics line is written. An interrupted
	// epoch is discarded and saved is checkpointed instead, so a resumed run redoes that epoch
	// exactly. Saving needs no context: it must work after Ctrl-C.
	saved, err := t.checkpoint()
	if err != nil {
		return res, err
	}
	onDisk := -1 // the epoch of the newest checkpoint written, -1 for none
	if opts.Resume {
		onDisk = saved.Epoch
	}
	save := func() error {
		if saved.Epoch == onDisk {
			return nil
		}
		path, err := ckpt.Save(saved)
		if err != nil {
			return err
		}
		res.Checkpoint, onDisk = path, saved.Epoch
		return nil
	}
	interrupted := func(cause error) (RunResult, error) {
		if err := save(); err != nil {
			return res, errors.Join(cause, err)
		}
		return res, fmt.Errorf("interrupted; checkpoint of epoch %d in %s: %w", saved.Epoch, res.Checkpoint, cause)
	}
	// failed ends the run on an epoch's error (a reward server gone for good, a NaN reward):
	// like an interruption, the last finished epoch is checkpointed, so nothing logged is lost
	// and --resume redoes the failed epoch exactly.
	failed := func(epoch int, cause error) (RunResult, error) {
		cause = fmt.Errorf("epoch %d: %w", epoch, cause)
		if err := save(); err != nil {
			return res, errors.Join(cause, err)
		}
		return res, fmt.Errorf("%w; checkpoint of epoch %d in %s (continue with pipeline run --resume %s)", cause, saved.Epoch, res.Checkpoint, dir)
	}
	bar := progress.New(log, "train", max(cfg.Run.Epochs, 0))
	defer bar.Done()
	for {
		epoch := t.epoch + 1
		if cfg.Run.Epochs > 0 && epoch > cfg.Run.Epochs {
			break
		}
		// The budget is checked when an epoch ends (last, below), so the run ends with the
		// final evaluation even when a periodic one runs past the budget; here it only stops a
		// resumed run whose budget is already spent.
		if res.Epochs == 0 && budget > 0 && spent() >= budget {
			break
		}
		line, err := t.runEpoch(ctx)
		if errors.Is(err, context.Canceled) {
			return interrupted(err)
		}
		if err != nil {
			return failed(epoch, err)
		}
		t.elapsed = spent().Seconds()
		line.Train.ElapsedSeconds = t.elapsed
		last := (cfg.Run.Epochs > 0 && epoch >= cfg.Run.Epochs) || (budget > 0 && spent() >= budget)
		if last || (cfg.Eval.Every > 0 && epoch%cfg.Eval.Every == 0) {
			after, err := t.evaluateEMA(ctx, log)
			if errors.Is(err, context.Canceled) {
				return interrupted(err)
			}
			if err != nil {
				return failed(epoch, err)
			}
			line.Eval = evalRecord(after)
			if err := t.writeSamples(dir, epoch, after); err != nil {
				return res, err
			}
			if last {
				res.EvalAfter = &after
				if err := t.writeBeforeAfter(ctx, dir, beforeImages, after); err != nil {
					if errors.Is(err, context.Canceled) {
						return interrupted(err)
					}
					return failed(epoch, err)
				}
			}
		}
		if err := metrics.Write(line); err != nil {
			return res, err
		}
		res.Epochs = epoch
		if saved, err = t.checkpoint(); err != nil {
			return res, err
		}
		if last || epoch%cfg.Run.CheckpointEvery == 0 {
			if err := save(); err != nil {
				return res, err
			}
		}
		if cfg.Run.SampleEvery > 0 && epoch%cfg.Run.SampleEvery == 0 && !last {
			if err := t.writeRolloutSamples(dir, epoch); err != nil {
				return res, err
			}
		}
		if opts.OnEpoch != nil {
			opts.OnEpoch(epoch, line)
		}
		bar.Add(1)
		tr := line.Train
		bar.SetSuffix(fmt.Sprintf("epoch %d reward %.3f", epoch, tr.RewardMean))
		fmt.Fprintf(log, "epoch %d: reward %.4f ± %.4f, loss %.3g, kl %.3g, %.1f samples/s, %.1fs\n", epoch,
			tr.RewardMean, tr.RewardStd, tr.Loss, tr.KL, tr.SamplesPerSecond, tr.WallSeconds)
		if err := ctx.Err(); err != nil {
			return interrupted(err)
		}
		if last {
			break
		}
	}
	if res.EvalAfter == nil && res.Epochs == 0 {
		return res, fmt.Errorf("run %s: no epoch ran (epochs %d, time budget %s already spent)", dir, cfg.Run.Epochs, cfg.Run.TimeBudget)
	}
	res.Report = filepath.Join(dir, "report.html")
	if err := report.Write(ctx, []string{dir}, res.Report); err != nil {
		return res, err
	}
	return res, nil
}

// finishedRun says why a run whose newest checkpoint ck is already at its end (run.epochs
// done, or run.time_budget spent) is finished, and how to continue it; "" when it is not.
func finishedRun(cfg Config, ck *checkpoint.Stored) (why string, err error) {
	var st trainState
	if err := json.Unmarshal(ck.State, &st); err != nil {
		return "", fmt.Errorf("resume from %s: decode state: %w", ck.Dir, err)
	}
	dir := RunDir(cfg)
	budget := cfg.TimeBudgetDuration()
	elapsed := time.Duration(st.Elapsed * float64(time.Second)).Round(time.Second)
	switch {
	case cfg.Run.Epochs > 0 && ck.Epoch >= cfg.Run.Epochs:
		return fmt.Sprintf("run %s is finished: %d of run.epochs = %d epochs done (%s of training); train on with: pipeline run --resume %s --set run.epochs=%d",
			dir, ck.Epoch, cfg.Run.Epochs, elapsed, dir, 2*ck.Epoch), nil
	case budget > 0 && elapsed >= budget:
		return fmt.Sprintf("run %s is finished: its time budget run.time_budget = %s is spent (%s of training, %d epochs); train on with: pipeline run --resume %s --set run.time_budget=%s",
			dir, cfg.Run.TimeBudget, elapsed, ck.Epoch, dir, shortDuration(2*budget)), nil
	}
	return "", nil
}

// shortDuration is d as a Go duration without zero trailing units: "20m", "1h30m", "45s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// prepareRunDir creates the run directory (or checks it for --resume), saves the resolved
// config, and fails early when the directory is not writable or the disk is nearly full.
func prepareRunDir(cfg Config, dir string, resume bool, ckpt *checkpoint.Checkpointer) error {
	if resume {
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("resume: run directory %s: %w", dir, err)
		}
	} else {
		if _, ok, _ := ckpt.Latest(); ok {
			return fmt.Errorf("run directory %s already holds a run; resume it with --resume %s or set run.name", dir, dir)
		}
		if err := os.MkdirAll(filepath.Join(dir, "samples"), 0o755); err != nil {
			return fmt.Errorf("create run directory: %w", err)
		}
	}
	probe := filepath.Join(dir, ".write-test")
	if err := os.WriteFile(probe, []byte("ok"), 0o644); err != nil {
		return fmt.Errorf("run directory %s is not writable: %w", dir, err)
	}
	os.Remove(probe)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		const minFree = 64 << 20
		if free := st.Bavail * uint64(st.Bsize); free < minFree {
			return fmt.Errorf("run directory %s: only %d MiB free on its disk, want at least %d MiB for checkpoints", dir, free>>20, minFree>>20)
		}
	}
	if resume {
		return nil
	}
	text, err := ResolvedTOML(cfg)
	if err != nil {
		return err
	}
	return atomicfile.WriteBytes(filepath.Join(dir, "config.toml"), text)
}

// ResolvedTOML renders cfg with every path made absolute, so the file reproduces the run from
// any directory (it is what `--resume` reads back).
func ResolvedTOML(cfg Config) ([]byte, error) {
	abs := func(p string) string {
		if p == "" {
			return p
		}
		a, err := filepath.Abs(cfg.Resolve(p))
		if err != nil {
			return cfg.Resolve(p)
		}
		return a
	}
	out := cfg
	out.Run.OutDir = abs(cfg.Run.OutDir)
	out.Model.Config, out.Model.Weights = abs(cfg.Model.Config), abs(cfg.Model.Weights)
	out.Model.Diffusers, out.Model.Snapshot = abs(cfg.Model.Diffusers), abs(cfg.Model.Snapshot)
	out.ONNX.Library = abs(cfg.ONNX.Library)
	out.TextEncoder.Model, out.VAE.Decoder = abs(cfg.TextEncoder.Model), abs(cfg.VAE.Decoder)
	out.Prompts.Train, out.Prompts.Test = abs(cfg.Prompts.Train), abs(cfg.Prompts.Test)
	out.Sampler.Psi = abs(cfg.Sampler.Psi)
	var buf bytes.Buffer
	buf.WriteString("# Resolved configuration of this run (paths absolute). Source: " + cfg.Path + "\n\n")
	if err := toml.NewEncoder(&buf).Encode(out.Sections); err != nil {
		return nil, fmt.Errorf("render resolved config: %w", err)
	}
	// Reward blocks are written as the user wrote them (their defaults depend on the kind),
	// with every file path made absolute.
	for _, arr := range []struct {
		name   string
		blocks []map[string]any
	}{{rewards.Table, cfg.rawRewards}, {rewards.HeldoutTable, cfg.rawHeldout}} {
		if len(arr.blocks) == 0 {
			continue
		}
		out := make([]map[string]any, len(arr.blocks))
		for i, r := range arr.blocks {
			out[i] = absPaths(r, abs)
		}
		buf.WriteString("\n")
		if err := encodeBlocks(&buf, arr.name, out); err != nil {
			return nil, fmt.Errorf("render resolved config [[%s]]: %w", arr.name, err)
		}
	}
	return buf.Bytes(), nil
}

// encodeBlocks writes blocks as the array of tables array ("reward", "eval.reward"). The
// encoder names tables from the root, so a nested array's headers ("[[reward]]",
// "[reward.image]") are re-rooted under it; values never start a line with "[" (the encoder
// writes strings quoted and arrays inline).
func encodeBlocks(buf *bytes.Buffer, array string, blocks []map[string]any) error {
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(map[string]any{"reward": blocks}); err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		switch t := strings.TrimLeft(line, " \t"); {
		case strings.HasPrefix(t, "[[reward]]"):
			line = strings.Replace(line, "[[reward]]", "[["+array+"]]", 1)
		case strings.HasPrefix(t, "[reward."):
			line = strings.Replace(line, "[reward.", "["+array+".", 1)
		}
		buf.WriteString(line)
	}
	return nil
}

// rewardPathKeys are the keys of a `[[reward]]` table (and its sub-tables) that name files.
var rewardPathKeys = map[string]bool{"model": true, "image_model": true, "text_model": true, "detector": true,
	"keys": true, "classes": true, "vocab": true, "merges": true}

// absPaths copies a reward table with its file paths passed through abs.
func absPaths(table map[string]any, abs func(string) string) map[string]any {
	out := make(map[string]any, len(table))
	for k, v := range table {
		switch x := v.(type) {
		case string:
			if rewardPathKeys[k] {
				x = abs(x)
			}
			out[k] = x
		case map[string]any:
			if k == "remote" {
				out[k] = x // [reward.remote] names a served model and its server, no file
				continue
			}
			out[k] = absPaths(x, abs)
		default:
			out[k] = v
		}
	}
	return out
}

// LoadRunConfig reads the resolved config saved in a run directory (for --resume).
func LoadRunConfig(dir string, sets []string) (Config, error) {
	return Load(filepath.Join(dir, "config.toml"), sets)
}

// metricsFile appends one line (runfiles.Line) per epoch, fsynced, so a killed run loses at
// most the line being written.
type metricsFile struct {
	path string
	f    *os.File
	// files rewrites the file (TruncateAfter); tests make it fail.
	files atomicfile.Writer
}

// openMetrics opens path for appending, emptied first when fresh.
func openMetrics(path string, fresh bool) (*metricsFile, error) {
	flags := os.O_CREATE | os.O_RDWR | os.O_APPEND
	if fresh {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open metrics: %w", err)
	}
	return &metricsFile{path: path, f: f}, nil
}

func (m *metricsFile) Write(line runfiles.Line) error {
	data, err := json.Marshal(line)
	if err != nil {
		return fmt.Errorf("write metrics %s: %w", m.path, err)
	}
	if _, err := m.f.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("write metrics %s: %w", m.path, err)
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("write metrics %s: %w", m.path, err)
	}
	return nil
}

// TruncateAfter keeps the lines of epochs <= epoch: a resumed run rewrites what came after its
// checkpoint, so its log equals an uninterrupted run's. The kept lines are rewritten
// atomically; whether or not that succeeds, the file is then open for appending again.
func (m *metricsFile) TruncateAfter(epoch int) error {
	lines, err := runfiles.ReadMetrics(m.path)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, l := range lines {
		if l.Epoch > epoch {
			continue
		}
		data, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("rewrite metrics %s: epoch %d: %w", m.path, l.Epoch, err)
		}
		buf.Write(append(data, '\n'))
	}
	var errs []error
	if err := m.files.WriteBytes(m.path, buf.Bytes()); err != nil {
		errs = append(errs, fmt.Errorf("rewrite metrics: %w", err))
	}
	// A rename may have replaced the file under m.f: append to the one at the path now.
	f, err := os.OpenFile(m.path, os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("reopen metrics: %w", err))...)
	}
	old := m.f
	m.f = f
	if err := old.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close replaced metrics file %s: %w", m.path, err))
	}
	return errors.Join(errs...)
}

// BaseEval returns the evaluation of the base model logged at epoch 0, nil if there is none; a
// metrics file that cannot be read is an error.
func (m *metricsFile) BaseEval() (*EvalResult, error) {
	lines, err := runfiles.ReadMetrics(m.path)
	if err != nil {
		return nil, fmt.Errorf("base evaluation: %w", err)
	}
	for _, l := range lines {
		if l.Epoch == 0 && l.Eval != nil {
			return &EvalResult{N: l.Eval.N, RewardMean: l.Eval.RewardMean, Totals: l.Eval.Totals}, nil
		}
	}
	return nil, nil
}

func (m *metricsFile) Close() error { return m.f.Close() }

// evalRecord is an evaluation as a metrics line records it. The per-prompt totals let a resumed
// run compare its final evaluation with the base one prompt by prompt.
func evalRecord(r EvalResult) *runfiles.Eval {
	e := &runfiles.Eval{RewardMean: r.RewardMean, N: r.N, Totals: r.Totals, Rewards: map[string]float64{}, HeldoutMean: r.HeldoutMean, Heldout: r.Heldout}
	for _, m := range []map[string]float64{r.Rewards, r.Extra} {
		for name, v := range m {
			e.Rewards[name] = v
		}
	}
	return e
}

// newRNG returns the run's generator of prompt order and rollout seeds.
func newRNG(seed int64) (*rand.PCG, *rand.Rand) {
	src := rand.NewPCG(uint64(seed), 0x747261696e) // "train"
	return src, rand.New(src)
}
