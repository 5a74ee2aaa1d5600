package rl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/layers/activations"
	"github.com/gomlx/gomlx/pkg/ml/train/optimizers"

	"github.com/densegrpo/densegrpo/models/nn"
)

// The toy problem that shows GRPO learning end to end on a 2-D flow model: the data is a
// mixture of two Gaussians at (±ToyModeOffset, 0) with std ToyModeStd, a small MLP velocity is
// pretrained on it by flow matching, and the reward R(x) = sigmoid(x·e1) prefers the right mode.
// Sparse (Flow-GRPO) and dense (DenseGRPO) training start from the same pretrained weights.
const (
	ToyModeOffset = 1.5
	ToyModeStd    = 0.4
)

// ToyConfig configures RunToy. Zero fields take the defaults of DefaultToyConfig.
type ToyConfig struct {
	// Seed drives data, initial weights, rollouts and evaluation.
	Seed uint64
	// Backend runs the graphs; nil creates nn.NewBackend("go").
	Backend backends.Backend
	// Hidden is the MLP width (3 Dense layers of this width, then a Dense to 2).
	Hidden int
	// PretrainSteps and PretrainBatch of flow matching, PretrainLR its Adam learning rate.
	PretrainSteps, PretrainBatch int
	PretrainLR                   float64
	// Epochs of GRPO; each epoch is one rollout of GroupSize samples and one AdamW update.
	Epochs    int
	GroupSize int
	// Steps T of the SD3 schedule; the first ⌊T·0.99⌋ are trained.
	Steps int
	// NoiseLevel a of the Flow-SDE.
	NoiseLevel float64
	// LearningRate and GradClip of the GRPO AdamW.
	LearningRate, GradClip float64
	// EvalEvery epochs the mean reward of EvalSamples ODE samples (fixed noise) is recorded.
	EvalEvery, EvalSamples int
}

// DefaultToyConfig returns the configuration of BenchmarkToyDenseVsSparse.
func DefaultToyConfig(seed uint64) ToyConfig {
	return ToyConfig{Seed: seed, Hidden: 64, PretrainSteps: 1500, PretrainBatch: 256, PretrainLR: 2e-3,
		Epochs: 50, GroupSize: 32, Steps: 10, NoiseLevel: 0.7, LearningRate: 2e-3, GradClip: 1,
		EvalEvery: 2, EvalSamples: 512}
}

func (c *ToyConfig) fill() {
	d := DefaultToyConfig(c.Seed)
	setInt := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	setF := func(p *float64, v float64) {
		if *p == 0 {
			*p = v
		}
	}
	setInt(&c.Hidden, d.Hidden)
	setInt(&c.PretrainSteps, d.PretrainSteps)
	setInt(&c.PretrainBatch, d.PretrainBatch)
	setF(&c.PretrainLR, d.PretrainLR)
	setInt(&c.Epochs, d.Epochs)
	setInt(&c.GroupSize, d.GroupSize)
	setInt(&c.Steps, d.Steps)
	setF(&c.NoiseLevel, d.NoiseLevel)
	setF(&c.LearningRate, d.LearningRate)
	setF(&c.GradClip, d.GradClip)
	setInt(&c.EvalEvery, d.EvalEvery)
	setInt(&c.EvalSamples, d.EvalSamples)
}

// ToyCurve is the learning curve of one method.
type ToyCurve struct {
	// EvalEpochs[j] is the number of updates before evaluation j; Eval[j] its mean reward.
	EvalEpochs []int
	Eval       []float64
	// Train[e] is the mean reward of epoch e's rollouts (SDE samples).
	Train []float64
	// Seconds of wall time for the whole run.
	Seconds float64
}

// Final returns the mean of the last three evaluations (fewer if there are fewer).
func (c ToyCurve) Final() float64 {
	n := min(3, len(c.Eval))
	var s float64
	for _, v := range c.Eval[len(c.Eval)-n:] {
		s += v
	}
	return s / float64(n)
}

// EpochsToReach returns the first evaluated epoch count whose reward is >= target, or -1.
func (c ToyCurve) EpochsToReach(target float64) int {
	for j, v := range c.Eval {
		if v >= target {
			return c.EvalEpochs[j]
		}
	}
	return -1
}

// ToyResult is the outcome of RunToy for one seed.
type ToyResult struct {
	Seed uint64
	// PretrainLoss is the flow-matching loss of the last pretraining step.
	PretrainLoss float64
	// BaseReward is the pretrained model's mean evaluation reward.
	BaseReward    float64
	Sparse, Dense ToyCurve
}

// ToyVelocity is the toy's velocity MLP: features [x, σ, sin πσ, cos πσ, sin 2πσ, cos 2πσ] (σ =
// timestep/1000), three nn.Dense layers of width hidden with Swish, and a Dense to 2. The toy
// trains these weights directly, so withLoRA is ignored (β = 0: no reference model).
func ToyVelocity(hidden int) Velocity {
	return func(ctx *mlctx.Context, x, timestep *Node, _ []*Node, _ bool) *Node {
		b := x.Shape().Dimensions[0]
		sigma := Reshape(DivScalar(f32(timestep), numTrainTimesteps), b, 1)
		feats := []*Node{f32(x), sigma}
		for _, f := range []float64{math.Pi, 2 * math.Pi} {
			feats = append(feats, Sin(MulScalar(sigma, f)), Cos(MulScalar(sigma, f)))
		}
		h := Concatenate(feats, 1)
		for i := range 3 {
			h = activations.Swish(nn.Dense(ctx.In("toy").In(fmt.Sprintf("layer%d", i)), h, hidden, true))
		}
		return nn.Dense(ctx.In("toy").In("out"), h, 2, true)
	}
}

// toyReward is R(x) = sigmoid(x·e1).
func toyReward(x []float32) float64 { return 1 / (1 + math.Exp(-float64(x[0]))) }

// toyRewards scores latents with toyReward.
func toyRewards(latents [][]float32) []float64 {
	out := make([]float64, len(latents))
	for i, l := range latents {
		out[i] = toyReward(l)
	}
	return out
}

// pretrainToy trains the velocity by flow matching on the two-mode mixture and returns the last
// loss.
func pretrainToy(ctx context.Context, backend backends.Backend, mctx *mlctx.Context, vel Velocity, cfg ToyConfig) (float64, error) {
	opt := optimizers.Adam().Scope("toy_pretrain_adam").LearningRate(cfg.PretrainLR).Done()
	exec, err := mlctx.NewExec(backend, mctx.Checked(false), func(ctx *mlctx.Context, x0, x1, sigma *Node) *Node {
		b := x0.Shape().Dimensions[0]
		s := Reshape(sigma, b, 1)
		xs := Add(Mul(OneMinus(s), x0), Mul(s, x1))
		v := vel(ctx, xs, MulScalar(sigma, numTrainTimesteps), nil, true)
		loss := ReduceAllMean(Square(Sub(v, Sub(x1, x0))))
		opt.UpdateGraph(ctx.In("toy_pretrain"), x0.Graph(), loss)
		return loss
	})
	if err != nil {
		return 0, fmt.Errorf("pretrain toy: %w", err)
	}
	defer exec.Finalize()
	rng := rand.New(rand.NewPCG(cfg.Seed, 1))
	bs := cfg.PretrainBatch
	var loss float64
	for step := range cfg.PretrainSteps {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("pretrain toy step %d: %w", step, err)
		}
		x0, x1, sig := make([]float32, 2*bs), normals(rng, 2*bs), make([]float32, bs)
		for i := range bs {
			side := 1.0
			if rng.IntN(2) == 0 {
				side = -1
			}
			x0[2*i] = float32(side*ToyModeOffset + ToyModeStd*rng.NormFloat64())
			x0[2*i+1] = float32(ToyModeStd * rng.NormFloat64())
			sig[i] = float32(rng.Float64())
		}
		outs, err := run(exec, latentTensor(x0, bs, []int{2}), latentTensor(x1, bs, []int{2}), sig)
		if err != nil {
			return 0, fmt.Errorf("pretrain toy step %d: %w", step, err)
		}
		loss = float64(outs[0][0])
	}
	return loss, nil
}

// evalToy returns the mean reward of n ODE samples from fixed noise (images 0 … n−1 of the
// ODE noise stream of seed).
func evalToy(ctx context.Context, flow Flow, sched Schedule, seed uint64, n int) (float64, error) {
	ids := make([]int, n)
	for i := range ids {
		ids[i] = i
	}
	lat, err := flow.SampleODE(ctx, Conditioning{}, sched, int64(seed), ids, 2)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, r := range toyRewards(lat) {
		sum += r
	}
	return sum / float64(n), nil
}

// toyFlow is the toy velocity with the weights of mctx as a Flow (no guidance).
func toyFlow(backend backends.Backend, mctx *mlctx.Context, vel Velocity) (Flow, error) {
	eng, err := NewGraphEngine(backend, mctx, vel, []int{2}, true)
	return Flow{Engine: eng}, err
}

// trainToy runs GRPO from the weights in mctx with sparse or dense advantages: the same calls
// the pipeline makes (Sampler.Rollout, Method.Targets, Method.Rewards, Method.Advantages,
// Trainer), with the toy reward in place of decoding and reward models.
func trainToy(ctx context.Context, backend backends.Backend, mctx *mlctx.Context, vel Velocity, sched Schedule, cfg ToyConfig, dense bool) (ToyCurve, error) {
	start := time.Now()
	flow, err := toyFlow(backend, mctx, vel)
	if err != nil {
		return ToyCurve{}, err
	}
	sampler, err := NewSampler(backend, sched, SamplerConfig{Kind: KindSDE, NoiseLevel: cfg.NoiseLevel,
		GroupSize: cfg.GroupSize, LatentShape: []int{2}})
	if err != nil {
		return ToyCurve{}, err
	}
	trainer, err := NewTrainer(backend, mctx, vel, TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-4},
		LearningRate: cfg.LearningRate, WeightDecay: 1e-4, GradClip: cfg.GradClip})
	if err != nil {
		return ToyCurve{}, err
	}
	trained := int(math.Floor(float64(cfg.Steps) * 0.99))
	method := Method{Dense: dense, Trained: trained, Advantage: AdvantageConfig{Std: StdGlobal, Clip: 5}}
	if err := method.Validate(sched.Steps()); err != nil {
		return ToyCurve{}, err
	}
	evalSeed := cfg.Seed ^ 0x5eed
	var curve ToyCurve
	record := func(epoch int) error {
		r, err := evalToy(ctx, flow, sched, evalSeed, cfg.EvalSamples)
		if err != nil {
			return fmt.Errorf("evaluate after %d epochs: %w", epoch, err)
		}
		curve.EvalEpochs = append(curve.EvalEpochs, epoch)
		curve.Eval = append(curve.Eval, r)
		return nil
	}
	if err := record(0); err != nil {
		return curve, err
	}
	for epoch := range cfg.Epochs {
		fail := func(err error) (ToyCurve, error) { return curve, fmt.Errorf("epoch %d: %w", epoch, err) }
		tr, err := sampler.Rollout(ctx, flow, Conditioning{}, cfg.Seed*1_000_003+uint64(epoch))
		if err != nil {
			return fail(err)
		}
		targets, err := method.Targets(ctx, flow, Conditioning{}, tr)
		if err != nil {
			return fail(err)
		}
		rw, err := method.Rewards([]Scored{{Traj: tr, Slots: targets.Slots, Scores: toyRewards(targets.Latents), Groups: []int{0}}})
		if err != nil {
			return fail(err)
		}
		mean, _ := MeanStd(rw.Final())
		curve.Train = append(curve.Train, mean)
		adv, err := method.Advantages(rw)
		if err != nil {
			return fail(err)
		}
		kept, _ := DropZeroAdvantages(adv)
		if len(kept) > 0 {
			for k := range trained {
				a := make([]float64, len(kept))
				for j, i := range kept {
					a[j] = adv[i][k]
				}
				if _, err := trainer.Accumulate(ctx, Conditioning{}, tr, k, kept, a, 1/float64(trained)); err != nil {
					return fail(err)
				}
			}
			if _, err := trainer.Apply(ctx); err != nil {
				return fail(err)
			}
		}
		if (epoch+1)%cfg.EvalEvery == 0 || epoch+1 == cfg.Epochs {
			if err := record(epoch + 1); err != nil {
				return curve, err
			}
		}
	}
	curve.Seconds = time.Since(start).Seconds()
	return curve, nil
}

// RunToy pretrains the toy velocity MLP by flow matching, then trains one copy with sparse GRPO
// (Flow-GRPO advantages) and one with dense GRPO (DenseGRPO look-ahead advantages), both with
// global-std advantages, one AdamW update per epoch over the ⌊0.99·T⌋ trained steps, β = 0.
func RunToy(ctx context.Context, cfg ToyConfig) (res ToyResult, err error) {
	defer nn.Recover(&err)
	cfg.fill()
	res.Seed = cfg.Seed
	backend := cfg.Backend
	if backend == nil {
		if backend, _, err = nn.NewBackend("go"); err != nil {
			return res, fmt.Errorf("run toy: %w", err)
		}
	}
	sched, err := SD3Schedule(cfg.Steps, DefaultShift)
	if err != nil {
		return res, fmt.Errorf("run toy: %w", err)
	}
	vel := ToyVelocity(cfg.Hidden)
	base := mlctx.New()
	base.SetParam(mlctx.ParamInitialSeed, int64(cfg.Seed))
	if res.PretrainLoss, err = pretrainToy(ctx, backend, base, vel, cfg); err != nil {
		return res, fmt.Errorf("run toy: %w", err)
	}
	baseFlow, err := toyFlow(backend, base, vel)
	if err != nil {
		return res, fmt.Errorf("run toy: %w", err)
	}
	if res.BaseReward, err = evalToy(ctx, baseFlow, sched, cfg.Seed^0x5eed, cfg.EvalSamples); err != nil {
		return res, fmt.Errorf("run toy: evaluate base: %w", err)
	}
	for _, dense := range []bool{false, true} {
		mctx, err := base.Clone()
		if err != nil {
			return res, fmt.Errorf("run toy: clone pretrained weights: %w", err)
		}
		curve, err := trainToy(ctx, backend, mctx, vel, sched, cfg, dense)
		if err != nil {
			return res, fmt.Errorf("run toy (dense=%v): %w", dense, err)
		}
		if dense {
			res.Dense = curve
		} else {
			res.Sparse = curve
		}
	}
	return res, nil
}
