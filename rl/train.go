package rl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/distributed"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
	"github.com/gomlx/gomlx/pkg/ml/train/optimizers"

	"github.com/densegrpo/densegrpo/models/nn"
)

// accScope is the absolute scope of the gradient accumulators: one per trainable variable and
// worker, at accScopeOf(worker) + the variable's scope, with the variable's name.
const accScope = "/grpo_accumulated_gradients"

// accScopeOf is worker w's accumulator scope; worker 0 keeps the single-worker name, so
// checkpoints written before there were workers restore into it.
func accScopeOf(w int) string {
	if w == 0 {
		return accScope
	}
	return fmt.Sprintf("%s_%d", accScope, w)
}

// optScope holds the AdamW state of GRPO updates (moments under /optScope/…, the step counter and
// learning rate in /optScope), apart from any optimizer that pretrained the model in the same
// context.
const optScope = "grpo_adamw"

// TrainConfig configures policy updates.
type TrainConfig struct {
	Loss LossConfig
	// Guidance is the CFG scale used when recomputing velocities (as in the rollout); 0 = off.
	Guidance float64
	// LearningRate of AdamW (Flow-GRPO: 3e-4); must be > 0.
	LearningRate float64
	// WeightDecay of AdamW (Flow-GRPO: 1e-4); >= 0.
	WeightDecay float64
	// GradClip is the max global gradient norm (Flow-GRPO: 1.0); 0 disables clipping.
	GradClip float64
	// Workers is how many gradient computations AccumulateSteps runs at once, each into its own
	// accumulators (SimpleGo runs most ops of one computation on one core); 0 means 1.
	Workers int
	// Devices is how many devices of the backend share each gradient computation, data-parallel:
	// the minibatch's rows are split evenly over them (padded with masked rows to a multiple of
	// Devices), the model's variables replicated on each, and XLA's SPMD partitioner sums the
	// partial gradients across the devices (an all-reduce) before they are accumulated; every
	// device then takes the same AdamW step. 0 or 1 means one device. More than one needs a
	// backend with that many devices (XLA) and Workers <= 1.
	Devices int
	// MaxRows is the most samples the caller accumulates at once (its minibatch), 0 if unknown.
	// Where compiling a graph is expensive (XLA) each accumulation is padded with masked rows
	// to a few sizes so that they share graphs: the next power of two, but at least half of
	// MaxRows (as a power of two) and at most MaxRows — so a minibatch of at most MaxRows needs
	// two graphs per worker at most, and never more rows or memory than a full one.
	MaxRows int
	// RefVelocities makes AccumulateSteps take the reference model's velocities from
	// Trajectories.VRef (computed outside the graph, e.g. in ONNX Runtime) instead of running the
	// model without adapters in the training graph. Only read with Loss.Beta > 0.
	RefVelocities bool
}

// Validate checks the configuration.
func (c TrainConfig) Validate() error {
	if err := c.Loss.Validate(); err != nil {
		return fmt.Errorf("train config: %w", err)
	}
	switch {
	case !(c.LearningRate > 0):
		return fmt.Errorf("train config: field learning_rate: got %v, want > 0", c.LearningRate)
	case c.WeightDecay < 0:
		return fmt.Errorf("train config: field weight_decay: got %v, want >= 0", c.WeightDecay)
	case c.GradClip < 0:
		return fmt.Errorf("train config: field grad_clip: got %v, want >= 0", c.GradClip)
	case c.Guidance < 0:
		return fmt.Errorf("train config: field guidance: got %v, want >= 0", c.Guidance)
	case c.Workers < 0:
		return fmt.Errorf("train config: field workers: got %d, want >= 0", c.Workers)
	case c.MaxRows < 0:
		return fmt.Errorf("train config: field max_rows: got %d, want >= 0", c.MaxRows)
	case c.Devices < 0:
		return fmt.Errorf("train config: field devices: got %d, want >= 0", c.Devices)
	case c.Devices > 1 && c.Workers > 1:
		return fmt.Errorf("train config: field workers: got %d with %d devices, want 1: the devices already share each computation", c.Workers, c.Devices)
	}
	return nil
}

// StepStats are the diagnostics of one accumulated minibatch at one step.
type StepStats struct {
	Loss, Policy, KL, ApproxKL, ClipFrac, RatioMean float64
}

// Trainer accumulates the gradients of GRPO step objectives over minibatches and trained steps
// (in context variables, so no gradient leaves the graph) and applies them with AdamW after
// clipping their global norm: Flow-GRPO's gradient accumulation over timesteps.
//
// With several workers, each accumulates into its own variables and Apply sums them. Graph
// building writes to the shared context, so a call that compiles a graph runs alone (buildMu
// held for writing); calls of compiled graphs only read the model's variables and write their
// own worker's accumulators, so they run together.
type Trainer struct {
	backend   backends.Backend
	ctx       *mlctx.Context
	vel       Velocity
	cfg       TrainConfig
	opt       gradientOptimizer
	accExecs  []*mlctx.Exec // one per worker
	applyExec *mlctx.Exec
	nCond     int
	nUncond   int
	// mesh is the devices of data-parallel training (nil: one device); rows shards a tensor's
	// first axis over them, replicated copies it to each.
	mesh             *distributed.DeviceMesh
	rows, replicated *distributed.ShardingSpec

	// bucketed pads each accumulation's rows up to a bucket size (paddedRows) with masked
	// rows: set where compiling a graph costs seconds (XLA on the tiny-ocr model: 8–26 s for a
	// new minibatch size, per worker), so minibatches of a few sizes share graphs. SimpleGo
	// builds graphs cheaply and keeps exact sizes, and with them its bit-for-bit results.
	bucketed bool

	buildMu sync.RWMutex
	// compiled holds the (worker, padded row count) pairs whose graph exists; under buildMu.
	compiled map[[2]int]bool
}

// gradientOptimizer is an optimizer that applies precomputed gradients (GoMLX's Adam is one).
type gradientOptimizer interface {
	UpdateGraphWithGradients(ctx *mlctx.Context, grads []*Node, lossDType dtypes.DType)
}

// NewTrainer returns a trainer of the trainable variables of ctx that vel uses.
func NewTrainer(backend backends.Backend, ctx *mlctx.Context, vel Velocity, cfg TrainConfig) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new trainer: %w", err)
	}
	opt, ok := optimizers.Adam().Scope(optScope).LearningRate(cfg.LearningRate).WeightDecay(cfg.WeightDecay).Done().(gradientOptimizer)
	if !ok {
		return nil, fmt.Errorf("new trainer: GoMLX's AdamW does not take precomputed gradients")
	}
	_, cheapBuild := backend.(*simplego.Backend)
	t := &Trainer{backend: backend, ctx: ctx.Checked(false), vel: vel, cfg: cfg, opt: opt, nCond: -1,
		bucketed: !cheapBuild, compiled: map[[2]int]bool{}}
	if cfg.Devices > 1 {
		var err error
		if n := backend.NumDevices(); n < cfg.Devices {
			return nil, fmt.Errorf("new trainer: %d devices asked, the backend %s has %d", cfg.Devices, backend.Name(), n)
		}
		if t.mesh, err = distributed.NewDeviceMesh([]int{cfg.Devices}, []string{"data"}); err != nil {
			return nil, fmt.Errorf("new trainer: %w", err)
		}
		if t.rows, err = distributed.BuildSpec(t.mesh).S("data").Done(); err != nil {
			return nil, fmt.Errorf("new trainer: %w", err)
		}
		t.replicated = distributed.NewReplicatedShardingSpec(t.mesh)
	}
	return t, nil
}

// devices is the number of devices each computation runs on.
func (t *Trainer) devices() int { return max(1, t.cfg.Devices) }

// distribute makes exec data-parallel over t.mesh (a no-op on one device): the inputs whose
// entry of batched is true are split by rows, the others replicated, as are the variables and
// the outputs.
func (t *Trainer) distribute(exec *mlctx.Exec, batched []bool, outputs int) (*mlctx.Exec, error) {
	if t.mesh == nil {
		return exec, nil
	}
	in := make([]*distributed.ShardingSpec, len(batched))
	for i, b := range batched {
		in[i] = t.replicated
		if b {
			in[i] = t.rows
		}
	}
	exec = exec.AutoSharding(t.mesh).WithInputShardingSpecs(in...).WithOutputShardingSpecs(slices.Repeat([]*distributed.ShardingSpec{t.replicated}, outputs)...)
	if err := exec.SetDefaultShardingSpec(t.replicated); err != nil {
		return nil, err
	}
	return exec, nil
}

// StateShapes returns the shapes of the variables the trainer keeps beside the model's, keyed
// as nn.SnapshotVariables keys them: per trainable variable of its context, AdamW's two moments,
// the learning rate, and the gradient accumulators among names (the keys of a checkpoint's
// trainer state) — those of any worker, so that a run resumed with fewer workers than it saved
// with still loads (Apply left them zero). A resumed run checks a checkpoint's trainer state
// against it before reading a tensor.
func (t *Trainer) StateShapes(names []string) map[string][]int {
	out := nn.AdamMoments(t.ctx, optScope)
	out[nn.VariableKey(mlctx.RootScope+optScope+mlctx.ScopeSeparator+optimizers.Scope, optimizers.ParamLearningRate)] = []int{}
	trainable := nn.VariableShapes(t.ctx, func(v *mlctx.Variable) bool { return v.Trainable })
	for _, name := range names {
		if key, ok := accumulated(name); ok {
			if shape, ok := trainable[key]; ok {
				out[name] = shape
			}
		}
	}
	return out
}

// accumulated returns the key of the variable whose accumulator key is (of any worker).
func accumulated(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, accScope)
	if !ok {
		return "", false
	}
	if w, ok := strings.CutPrefix(rest, "_"); ok {
		i := strings.Index(w, mlctx.ScopeSeparator)
		if i < 0 {
			return "", false
		}
		if n, err := strconv.Atoi(w[:i]); err != nil || n < 1 || accScopeOf(n) != accScope+"_"+w[:i] {
			return "", false
		}
		rest = w[i:]
	}
	return rest, strings.HasPrefix(rest, mlctx.ScopeSeparator)
}

// masked reports whether the accumulation graphs take the valid input, which marks the rows
// padded to a multiple of the devices or to a bucket size.
func (t *Trainer) masked() bool { return t.mesh != nil || t.bucketed }

// paddedRows is the number of rows an accumulation of n samples runs with: n rounded up to a
// multiple of the devices, and where bucketed first to a bucket size as TrainConfig.MaxRows says.
func (t *Trainer) paddedRows(n int) int {
	if t.bucketed {
		b := nextPow2(n)
		if m := t.cfg.MaxRows; n <= m {
			b = min(max(b, nextPow2((m+1)/2)), m)
		}
		n = b
	}
	d := t.devices()
	return (n + d - 1) / d * d
}

// nextPow2 is the least power of two >= n.
func nextPow2(n int) int {
	p := 1
	for p < n {
		p *= 2
	}
	return p
}

// refInput reports whether the accumulation graphs take the reference velocity as an input.
func (t *Trainer) refInput() bool { return t.cfg.RefVelocities && t.cfg.Loss.Beta > 0 }

// workers is the number of accumulating workers.
func (t *Trainer) workers() int { return max(1, t.cfg.Workers) }

// accumulator returns worker w's accumulator of the trainable variable v, created (zero) if needed.
func accumulator(ctx *mlctx.Context, w int, v *mlctx.Variable) *mlctx.Variable {
	return ctx.Checked(false).InAbsPath(accScopeOf(w)+v.Scope()).WithInitializer(initializers.Zero).
		VariableWithShape(v.Name(), v.Shape()).SetTrainable(false)
}

// accumulators yields every trainable variable used by g with worker w's accumulator of it.
func accumulators(ctx *mlctx.Context, g *Graph, w int) (vars, accs []*mlctx.Variable) {
	for v := range ctx.IterVariables() {
		if !v.Trainable || !v.InUseByGraph(g) {
			continue
		}
		vars = append(vars, v)
	}
	for _, v := range vars {
		accs = append(accs, accumulator(ctx, w, v))
	}
	return vars, accs
}

func (t *Trainer) buildAccExec(worker int) (*mlctx.Exec, error) {
	vel, w, cfg, nCond, refIn, masked := t.vel, t.cfg.Guidance, t.cfg.Loss, t.nCond, t.refInput(), t.masked()
	exec, err := mlctx.NewExec(t.backend, t.ctx, func(ctx *mlctx.Context, in []*Node) []*Node {
		x, next, sigma, sigmaNext, s, logpOld, adv, weight, idx := in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8]
		in = in[9:]
		var valid, vRef *Node
		if masked {
			valid, in = in[0], in[1:]
		}
		if refIn {
			vRef, in = in[0], in[1:]
		}
		cond, uncond := condInputs(in, nCond, idx)
		g := x.Graph()
		ctx.SetTraining(g, true)
		terms := StepObjective(ctx, vel, x, next, sigma, sigmaNext, s, logpOld, adv, vRef, valid, cond, uncond, w, cfg)
		grads := ctx.BuildTrainableVariablesGradientsGraph(Mul(terms.Total, f32(weight)))
		_, accs := accumulators(ctx, g, worker)
		if len(accs) != len(grads) {
			panicf("rl: %d gradients for %d trainable variables", len(grads), len(accs))
		}
		for i, acc := range accs {
			acc.SetValueGraph(Add(acc.ValueGraph(g), grads[i]))
		}
		return []*Node{terms.Total, terms.Policy, terms.KL, terms.ApproxKL, terms.ClipFrac, terms.RatioMean}
	})
	if err != nil {
		return nil, fmt.Errorf("build accumulate graph: %w", err)
	}
	if exec, err = t.distribute(exec, t.accBatched(), 6); err != nil {
		return nil, fmt.Errorf("build accumulate graph: %w", err)
	}
	return exec, nil
}

func (t *Trainer) buildApplyExec() error {
	opt, clip := t.opt, t.cfg.GradClip
	workers := t.workers()
	exec, err := mlctx.NewExec(t.backend, t.ctx, func(ctx *mlctx.Context, g *Graph) *Node {
		// The variables some worker accumulated for; every worker's accumulator of them is
		// summed (created zero here if that worker has not run yet, so it is summed later).
		var vars []*mlctx.Variable
		for v := range ctx.IterVariables() {
			if !v.Trainable {
				continue
			}
			for w := range workers {
				if ctx.InspectVariable(accScopeOf(w)+v.Scope(), v.Name()) != nil {
					vars = append(vars, v)
					break
				}
			}
		}
		var grads []*Node
		for _, v := range vars {
			_ = v.ValueGraph(g) // marks v as used by g, which the optimizer updates
			var sum *Node
			for w := range workers {
				acc := accumulator(ctx, w, v)
				value := acc.ValueGraph(g)
				if sum == nil {
					sum = value
				} else {
					sum = Add(sum, value)
				}
				acc.SetValueGraph(ZerosLike(value))
			}
			grads = append(grads, sum)
		}
		if len(grads) == 0 {
			panicf("rl: no accumulated gradients to apply")
		}
		sumSq := ReduceAllSum(Square(grads[0]))
		for _, gr := range grads[1:] {
			sumSq = Add(sumSq, ReduceAllSum(Square(gr)))
		}
		norm := Sqrt(sumSq)
		if clip > 0 {
			scale := Min(OnesLike(norm), Div(Scalar(g, norm.DType(), clip), AddScalar(norm, 1e-6)))
			for i := range grads {
				grads[i] = Mul(grads[i], scale)
			}
		}
		opt.UpdateGraphWithGradients(ctx.InAbsPath("/"+optScope), grads, norm.DType())
		return norm
	})
	if err != nil {
		return fmt.Errorf("build apply graph: %w", err)
	}
	// On several devices each applies the same (all-reduced) gradients to its replica.
	if exec, err = t.distribute(exec, nil, 1); err != nil {
		return fmt.Errorf("build apply graph: %w", err)
	}
	t.applyExec = exec
	return nil
}

// Accumulate adds the gradient of weight·L_k for the transitions x_k → x_{k+1} of the given
// samples of tr (a minibatch) to the accumulators. adv[j] is the advantage of samples[j] at
// step k, c the conditioning tr was sampled with. Use weight = 1/(trained steps × minibatches)
// for the mean over an epoch's accumulation. Each distinct minibatch size (on XLA, each bucket
// size of TrainConfig.MaxRows) compiles its graph once per worker.
func (t *Trainer) Accumulate(ctx context.Context, c Conditioning, tr *Trajectories, k int, samples []int, adv []float64, weight float64) (StepStats, error) {
	st, err := t.AccumulateSteps(ctx, c, tr, []int{k}, samples, [][]float64{adv}, weight)
	if err != nil {
		return StepStats{}, err
	}
	return st[0], nil
}

// AccumulateSteps is Accumulate for the steps ks of the same samples (adv[i] holds the
// advantages at step ks[i]), spread over the workers: step ks[i] always goes to worker
// i mod Workers, so the summed gradient does not depend on timing. It returns each step's
// stats in the order of ks; on error, what was accumulated stays until the next Apply.
func (t *Trainer) AccumulateSteps(ctx context.Context, c Conditioning, tr *Trajectories, ks []int, samples []int, adv [][]float64, weight float64) ([]StepStats, error) {
	if len(adv) != len(ks) {
		return nil, fmt.Errorf("accumulate steps %v: %d advantage lists, want one per step", ks, len(adv))
	}
	if err := t.prepare(c); err != nil {
		return nil, fmt.Errorf("accumulate steps %v: %w", ks, err)
	}
	// The workers share c's tensors. GoMLX moves a host tensor to the device on first use without
	// guarding against a second goroutine doing the same (one of them then finds it neither
	// local nor on the device), so it is moved here, before they start. On several devices it
	// is copied to each once, for all the steps.
	var pre map[*tensors.Tensor]*distributed.Tensor
	for _, ct := range append(slices.Clip(c.Cond), c.Uncond...) {
		if t.mesh != nil {
			d, err := distributed.ShardTensor(t.replicated, ct)
			if err != nil {
				return nil, fmt.Errorf("accumulate steps %v: conditioning: %w", ks, err)
			}
			if pre == nil {
				pre = map[*tensors.Tensor]*distributed.Tensor{}
			}
			pre[ct] = d
			defer finalizeShards(d)
			continue
		}
		if err := ct.MaterializeOnDevice(t.backend, true, 0); err != nil {
			return nil, fmt.Errorf("accumulate steps %v: conditioning: %w", ks, err)
		}
	}
	stats := make([]StepStats, len(ks))
	workers := min(t.workers(), len(ks))
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(ks); i += workers {
				if stats[i], errs[w] = t.accumulate(ctx, w, c, pre, tr, ks[i], samples, adv[i], weight); errs[w] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return stats, nil
}

// prepare checks c against the conditioning of earlier calls and creates the workers' executables.
func (t *Trainer) prepare(c Conditioning) error {
	nUncond := 0
	if t.cfg.Guidance > 0 {
		nUncond = len(c.Uncond)
	}
	if t.nCond >= 0 && (t.nCond != len(c.Cond) || t.nUncond != nUncond) {
		return fmt.Errorf("got %d cond and %d uncond tensors, want %d and %d as before", len(c.Cond), nUncond, t.nCond, t.nUncond)
	}
	t.nCond, t.nUncond = len(c.Cond), nUncond
	for w := len(t.accExecs); w < t.workers(); w++ {
		exec, err := t.buildAccExec(w)
		if err != nil {
			return err
		}
		t.accExecs = append(t.accExecs, exec)
	}
	return nil
}

// accumulate is one step's accumulation by worker w.
func (t *Trainer) accumulate(ctx context.Context, w int, c Conditioning, pre map[*tensors.Tensor]*distributed.Tensor, tr *Trajectories, k int, samples []int, adv []float64, weight float64) (StepStats, error) {
	if err := ctx.Err(); err != nil {
		return StepStats{}, fmt.Errorf("accumulate step %d: %w", k, err)
	}
	if k < 0 || k >= tr.Schedule.Steps() || len(samples) == 0 || len(adv) != len(samples) {
		return StepStats{}, fmt.Errorf("accumulate step %d: %d samples, %d advantages, %d steps; want equal non-zero counts and a step in range", k, len(samples), len(adv), tr.Schedule.Steps())
	}
	for _, i := range samples {
		if i < 0 || i >= tr.Len() {
			return StepStats{}, fmt.Errorf("accumulate step %d: sample %d out of range [0, %d)", k, i, tr.Len())
		}
	}
	// The rows are padded (to a multiple of the devices, to a bucket size) with copies of the
	// first sample, masked out of the loss (valid = 0): every mean is over the valid rows and
	// the padded ones get exactly zero gradient.
	n := t.paddedRows(len(samples))
	valid := make([]float32, n)
	for j := range samples {
		valid[j] = 1
	}
	for len(samples) < n {
		samples = append(slices.Clip(samples), samples[0])
		adv = append(slices.Clip(adv), 0)
	}
	l := tr.LatentSize()
	x, next := make([]float32, n*l), make([]float32, n*l)
	logpOld, advs := make([]float32, n), make([]float32, n)
	prompts := make([]int, n)
	for j, i := range samples {
		copy(x[j*l:], tr.X[k][i*l:(i+1)*l])
		copy(next[j*l:], tr.X[k+1][i*l:(i+1)*l])
		logpOld[j], advs[j], prompts[j] = tr.LogProb[k][i], float32(adv[j]), tr.Prompts[i]
	}
	args := []any{latentTensor(x, n, tr.LatentShape), latentTensor(next, n, tr.LatentShape),
		tr.Schedule.Sigmas[k], tr.Schedule.Sigmas[k+1], tr.S[k], logpOld, advs, float32(weight),
		tensors.FromValue(int32s(prompts))}
	if t.masked() {
		args = append(args, valid)
	}
	if t.refInput() {
		if k >= len(tr.VRef) || len(tr.VRef[k]) != tr.Len()*l {
			return StepStats{}, fmt.Errorf("accumulate step %d: the trainer takes reference velocities but the trajectories hold none for this step", k)
		}
		vRef := make([]float32, n*l)
		for j, i := range samples {
			copy(vRef[j*l:], tr.VRef[k][i*l:(i+1)*l])
		}
		args = append(args, latentTensor(vRef, n, tr.LatentShape))
	}
	for _, ct := range c.Cond {
		args = append(args, ct)
	}
	if t.cfg.Guidance > 0 {
		for _, ct := range c.Uncond {
			args = append(args, ct)
		}
	}
	args, fresh, err := t.shard(args, pre)
	if err != nil {
		return StepStats{}, fmt.Errorf("accumulate step %d: %w", k, err)
	}
	outs, err := t.runLocked(w, n, args)
	for _, d := range fresh {
		finalizeShards(d)
	}
	if err != nil {
		return StepStats{}, fmt.Errorf("accumulate step %d: %w", k, err)
	}
	return StepStats{Loss: float64(outs[0][0]), Policy: float64(outs[1][0]), KL: float64(outs[2][0]),
		ApproxKL: float64(outs[3][0]), ClipFrac: float64(outs[4][0]), RatioMean: float64(outs[5][0])}, nil
}

// runLocked runs worker w's executable on a minibatch of n rows: alone if this compiles its graph,
// alongside the other workers otherwise.
func (t *Trainer) runLocked(w, n int, args []any) ([][]float32, error) {
	key := [2]int{w, n}
	t.buildMu.RLock()
	compiled := t.compiled[key]
	if compiled {
		defer t.buildMu.RUnlock()
		return run(t.accExecs[w], args...)
	}
	t.buildMu.RUnlock()
	t.buildMu.Lock()
	defer t.buildMu.Unlock()
	outs, err := t.run(t.accExecs[w], args...)
	if err == nil {
		t.compiled[key] = true
	}
	return outs, err
}

// accBatched tells which inputs of the accumulation graph have a row per sample (the others,
// scalars and conditioning per prompt, are replicated on every device): x, next, σ, σ', s,
// logp_old, A, weight, prompt index, valid, [v_ref], conditioning…
func (t *Trainer) accBatched() []bool {
	batched := []bool{true, true, false, false, false, true, true, false, true, true}
	if t.refInput() {
		batched = append(batched, true)
	}
	return append(batched, make([]bool, t.nCond+t.nUncond)...)
}

// shard turns the arguments of an accumulation into distributed tensors laid out as
// accBatched says, taking those in pre (the conditioning, sharded once per call) from there;
// on one device it returns them unchanged. fresh are the tensors it made, for the caller to free.
func (t *Trainer) shard(args []any, pre map[*tensors.Tensor]*distributed.Tensor) (out []any, fresh []*distributed.Tensor, err error) {
	if t.mesh == nil {
		return args, nil, nil
	}
	batched := t.accBatched()
	if len(batched) != len(args) {
		return nil, nil, fmt.Errorf("%d arguments for %d graph inputs", len(args), len(batched))
	}
	out = make([]any, len(args))
	for i, a := range args {
		spec := t.replicated
		if batched[i] {
			spec = t.rows
		}
		v, ok := a.(*tensors.Tensor)
		if !ok {
			v = tensors.FromAnyValue(a)
		} else if d := pre[v]; d != nil {
			out[i] = d
			continue
		}
		d, err := distributed.ShardTensor(spec, v)
		if err != nil {
			for _, f := range fresh {
				finalizeShards(f)
			}
			return nil, nil, fmt.Errorf("argument %d: %w", i, err)
		}
		out[i] = d
		fresh = append(fresh, d)
	}
	return out, fresh, nil
}

// run is the package's run on one device; on several it runs exec on distributed arguments
// and reads the first device's copy of each (replicated) output.
func (t *Trainer) run(exec *mlctx.Exec, args ...any) (outs [][]float32, err error) {
	if t.mesh == nil {
		return run(exec, args...)
	}
	defer nn.Recover(&err)
	res, err := exec.DistributedExec(args...)
	if err != nil {
		return nil, err
	}
	outs = make([][]float32, len(res))
	for i, d := range res {
		outs[i], err = tensors.CopyFlatData[float32](d.Shards()[0])
		if err != nil {
			return nil, fmt.Errorf("read output %d: %w", i, err)
		}
		finalizeShards(d)
	}
	return outs, nil
}

// finalizeShards frees d's copies on the devices and the host now rather than at garbage collection.
func finalizeShards(d *distributed.Tensor) {
	for _, s := range d.Shards() {
		s.FinalizeAll()
	}
}

// Apply clips the accumulated gradient to the global norm GradClip, takes one AdamW step,
// zeroes the accumulators and returns the gradient norm before clipping.
func (t *Trainer) Apply(ctx context.Context) (float64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("apply gradients: %w", err)
	}
	if len(t.accExecs) == 0 {
		return 0, fmt.Errorf("apply gradients: nothing accumulated")
	}
	if t.applyExec == nil {
		if err := t.buildApplyExec(); err != nil {
			return 0, fmt.Errorf("apply gradients: %w", err)
		}
	}
	outs, err := t.run(t.applyExec)
	if err != nil {
		return 0, fmt.Errorf("apply gradients: %w", err)
	}
	if t.mesh != nil {
		// The updated variables now live on the devices only; their value on the host is
		// gathered here, once, rather than lazily by whichever reader (rollout, export,
		// checkpoint) comes first, possibly several at once.
		for v := range t.ctx.IterVariables() {
			if v.Trainable {
				if _, err := v.Value(); err != nil {
					return 0, fmt.Errorf("apply gradients: %w", err)
				}
			}
		}
	}
	norm := float64(outs[0][0])
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, fmt.Errorf("apply gradients: gradient norm is %v", norm)
	}
	return norm, nil
}
