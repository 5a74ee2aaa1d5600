package rl

import (
	"context"
	"fmt"
	"math"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
	"github.com/gomlx/gomlx/pkg/ml/train/optimizers"
)

// accScope is the absolute scope of the gradient accumulators: one per trainable variable, at
// accScope + the variable's scope, with the variable's name.
const accScope = "/grpo_accumulated_gradients"

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
type Trainer struct {
	backend   backends.Backend
	ctx       *mlctx.Context
	vel       Velocity
	cfg       TrainConfig
	opt       gradientOptimizer
	accExec   *mlctx.Exec
	applyExec *mlctx.Exec
	nCond     int
	nUncond   int
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
	return &Trainer{backend: backend, ctx: ctx.Checked(false), vel: vel, cfg: cfg, opt: opt, nCond: -1}, nil
}

// accumulators yields every trainable variable used by g with its accumulator (created if needed).
func accumulators(ctx *mlctx.Context, g *Graph) (vars, accs []*mlctx.Variable) {
	for v := range ctx.IterVariables() {
		if !v.Trainable || !v.InUseByGraph(g) {
			continue
		}
		acc := ctx.Checked(false).InAbsPath(accScope+v.Scope()).WithInitializer(initializers.Zero).
			VariableWithShape(v.Name(), v.Shape()).SetTrainable(false)
		vars, accs = append(vars, v), append(accs, acc)
	}
	return vars, accs
}

func (t *Trainer) buildAccExec() error {
	vel, w, cfg, nCond := t.vel, t.cfg.Guidance, t.cfg.Loss, t.nCond
	exec, err := mlctx.NewExec(t.backend, t.ctx, func(ctx *mlctx.Context, in []*Node) []*Node {
		x, next, sigma, sigmaNext, s, logpOld, adv, weight, idx := in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8]
		cond, uncond := condInputs(in[9:], nCond, idx)
		g := x.Graph()
		ctx.SetTraining(g, true)
		terms := StepObjective(ctx, vel, x, next, sigma, sigmaNext, s, logpOld, adv, cond, uncond, w, cfg)
		grads := ctx.BuildTrainableVariablesGradientsGraph(Mul(terms.Total, f32(weight)))
		_, accs := accumulators(ctx, g)
		if len(accs) != len(grads) {
			panicf("rl: %d gradients for %d trainable variables", len(grads), len(accs))
		}
		for i, acc := range accs {
			acc.SetValueGraph(Add(acc.ValueGraph(g), grads[i]))
		}
		return []*Node{terms.Total, terms.Policy, terms.KL, terms.ApproxKL, terms.ClipFrac, terms.RatioMean}
	})
	if err != nil {
		return fmt.Errorf("build accumulate graph: %w", err)
	}
	t.accExec = exec
	return nil
}

func (t *Trainer) buildApplyExec() error {
	opt, clip := t.opt, t.cfg.GradClip
	exec, err := mlctx.NewExec(t.backend, t.ctx, func(ctx *mlctx.Context, g *Graph) *Node {
		var grads []*Node
		for v := range ctx.IterVariables() {
			if !v.Trainable {
				continue
			}
			acc := ctx.InspectVariable(accScope+v.Scope(), v.Name())
			if acc == nil {
				continue
			}
			_ = v.ValueGraph(g) // marks v as used by g, which the optimizer updates
			grads = append(grads, acc.ValueGraph(g))
			acc.SetValueGraph(ZerosLike(acc.ValueGraph(g)))
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
	t.applyExec = exec
	return nil
}

// Accumulate adds the gradient of weight·L_k for the transitions x_k → x_{k+1} of the given
// samples of tr (a minibatch) to the accumulators. adv[j] is the advantage of samples[j] at
// step k, c the conditioning tr was sampled with. Use weight = 1/(trained steps × minibatches)
// for the mean over an epoch's accumulation. Each distinct minibatch size compiles its graph once.
func (t *Trainer) Accumulate(ctx context.Context, c Conditioning, tr *Trajectories, k int, samples []int, adv []float64, weight float64) (StepStats, error) {
	if err := ctx.Err(); err != nil {
		return StepStats{}, fmt.Errorf("accumulate step %d: %w", k, err)
	}
	if k < 0 || k >= tr.Schedule.Steps() || len(samples) == 0 || len(adv) != len(samples) {
		return StepStats{}, fmt.Errorf("accumulate step %d: %d samples, %d advantages, %d steps; want equal non-zero counts and a step in range", k, len(samples), len(adv), tr.Schedule.Steps())
	}
	nUncond := 0
	if t.cfg.Guidance > 0 {
		nUncond = len(c.Uncond)
	}
	if t.nCond >= 0 && (t.nCond != len(c.Cond) || t.nUncond != nUncond) {
		return StepStats{}, fmt.Errorf("accumulate step %d: got %d cond and %d uncond tensors, want %d and %d as before", k, len(c.Cond), nUncond, t.nCond, t.nUncond)
	}
	t.nCond, t.nUncond = len(c.Cond), nUncond
	if t.accExec == nil {
		if err := t.buildAccExec(); err != nil {
			return StepStats{}, err
		}
	}
	l, n := tr.LatentSize(), len(samples)
	x, next := make([]float32, n*l), make([]float32, n*l)
	logpOld, advs := make([]float32, n), make([]float32, n)
	prompts := make([]int, n)
	for j, i := range samples {
		if i < 0 || i >= tr.Len() {
			return StepStats{}, fmt.Errorf("accumulate step %d: sample %d out of range [0, %d)", k, i, tr.Len())
		}
		copy(x[j*l:], tr.X[k][i*l:(i+1)*l])
		copy(next[j*l:], tr.X[k+1][i*l:(i+1)*l])
		logpOld[j], advs[j], prompts[j] = tr.LogProb[k][i], float32(adv[j]), tr.Prompts[i]
	}
	args := []any{latentTensor(x, n, tr.LatentShape), latentTensor(next, n, tr.LatentShape),
		tr.Schedule.Sigmas[k], tr.Schedule.Sigmas[k+1], tr.S[k], logpOld, advs, float32(weight),
		tensors.FromValue(int32s(prompts))}
	for _, ct := range c.Cond {
		args = append(args, ct)
	}
	if t.cfg.Guidance > 0 {
		for _, ct := range c.Uncond {
			args = append(args, ct)
		}
	}
	outs, err := run(t.accExec, args...)
	if err != nil {
		return StepStats{}, fmt.Errorf("accumulate step %d: %w", k, err)
	}
	return StepStats{Loss: float64(outs[0][0]), Policy: float64(outs[1][0]), KL: float64(outs[2][0]),
		ApproxKL: float64(outs[3][0]), ClipFrac: float64(outs[4][0]), RatioMean: float64(outs[5][0])}, nil
}

// Apply clips the accumulated gradient to the global norm GradClip, takes one AdamW step,
// zeroes the accumulators and returns the gradient norm before clipping.
func (t *Trainer) Apply(ctx context.Context) (float64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("apply gradients: %w", err)
	}
	if t.accExec == nil {
		return 0, fmt.Errorf("apply gradients: nothing accumulated")
	}
	if t.applyExec == nil {
		if err := t.buildApplyExec(); err != nil {
			return 0, fmt.Errorf("apply gradients: %w", err)
		}
	}
	outs, err := run(t.applyExec)
	if err != nil {
		return 0, fmt.Errorf("apply gradients: %w", err)
	}
	norm := float64(outs[0][0])
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, fmt.Errorf("apply gradients: gradient norm is %v", norm)
	}
	return norm, nil
}
