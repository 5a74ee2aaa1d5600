package rl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/internal/choice"
	"github.com/densegrpo/densegrpo/models/nn"
)

// Velocity is the trainable flow model as this package sees it: x [B, …latent dims] (float32),
// timestep [B] = 1000·σ (float32), cond the per-sample conditioning tensors (each with leading
// axis B, e.g. text embeddings [B, L, D] and pooled embeddings [B, D]); it returns v [B, …latent
// dims]. withLoRA = false must give the frozen base model (the KL reference). It is called inside
// GoMLX graph building with a context that has Checked(false), because the same model is built
// several times in one graph (guidance branches, policy and reference).
type Velocity func(ctx *mlctx.Context, x, timestep *Node, cond []*Node, withLoRA bool) *Node

// Latent is one sample's latent, e.g. Shape [C, H, W] with Data in row-major order.
type Latent struct {
	Shape []int
	Data  []float32
}

// Conditioning is the conditioning of a batch of prompts: Cond holds the tensors passed to the
// Velocity, each with leading axis P (one row per prompt). With guidance, Uncond holds the
// empty-prompt conditioning, the same tensors with leading axis 1 (shared) or P.
type Conditioning struct {
	Cond   []*tensors.Tensor
	Uncond []*tensors.Tensor
}

// SamplerConfig configures rollouts.
type SamplerConfig struct {
	// Kind is the stochastic sampler of rollouts: KindSDE (default) or KindCPS.
	Kind Kind
	// NoiseLevel is a: 0.7 is Flow-GRPO's default for the SDE, 0.8 for CPS. Must be > 0.
	NoiseLevel float64
	// Psi, if set (SDE only), is the calibrated noise schedule ψ(k), one value per step; the SDE
	// then uses s_k = ψ(k).
	Psi []float32
	// Guidance is the classifier-free guidance scale w (v = v_u + w·(v_c − v_u)); 0 disables
	// guidance, and then Conditioning.Uncond is ignored.
	Guidance float64
	// GroupSize is G, the number of samples per prompt (>= 1).
	GroupSize int
	// SameNoise gives the G samples of a prompt the same initial noise x_0.
	SameNoise bool
	// LatentShape is the shape of one latent, e.g. [C, H, W].
	LatentShape []int
}

// Validate checks the configuration against a schedule of T steps.
func (c SamplerConfig) Validate(steps int) error {
	switch {
	case !c.Kind.Valid():
		return fmt.Errorf("sampler config: field kind: got %q, want %s", c.Kind, choice.Want(Kinds))
	case !(c.NoiseLevel > 0):
		return fmt.Errorf("sampler config: field noise_level: got %v, want > 0", c.NoiseLevel)
	case c.Psi != nil && c.Kind != KindSDE:
		return fmt.Errorf("sampler config: field psi: set for kind %q, want kind %q", c.Kind, KindSDE)
	case c.Psi != nil && len(c.Psi) != steps:
		return fmt.Errorf("sampler config: field psi: got %d values, want %d (one per step)", len(c.Psi), steps)
	case c.Guidance < 0:
		return fmt.Errorf("sampler config: field guidance: got %v, want >= 0", c.Guidance)
	case c.GroupSize < 1:
		return fmt.Errorf("sampler config: field group_size: got %d, want >= 1", c.GroupSize)
	case len(c.LatentShape) == 0:
		return errors.New("sampler config: field latent_shape: empty, want the shape of one latent")
	}
	for i, d := range c.LatentShape {
		if d < 1 {
			return fmt.Errorf("sampler config: field latent_shape[%d]: got %d, want >= 1", i, d)
		}
	}
	return nil
}

// Trajectories are the stored rollouts of a batch of B = P·G samples over T steps.
type Trajectories struct {
	Kind        Kind
	Schedule    Schedule
	LatentShape []int
	// Prompts[i] is sample i's row in the Conditioning it was sampled with (i / G).
	Prompts []int
	// X[k] holds x_k of every sample, [B·L] row-major, for k = 0 … T.
	X [][]float32
	// Mean[k] holds the mean of x_{k+1} given x_k, [B·L], for k = 0 … T−1.
	Mean [][]float32
	// LogProb[k][i] is log p(x_{k+1} | x_k) of sample i under the sampling policy.
	LogProb [][]float32
	// V[k] holds the (guided) velocity at x_k the step used, [B·L], for k = 0 … T−1: the first
	// Euler step of a look-ahead from x_k needs no model call.
	V [][]float32
	// S[k] is the noise level of step k (StepOut.S) and Std[k] the standard deviation of x_{k+1}.
	S, Std []float32
	// VRef[k], when a trainer takes reference velocities (TrainConfig.RefVelocities), holds the
	// reference model's guided velocity at x_k, [B·L], for the trained steps k.
	VRef [][]float32
}

// Len returns B, the number of samples.
func (tr *Trajectories) Len() int { return len(tr.Prompts) }

// LatentSize returns L, the number of elements of one latent.
func (tr *Trajectories) LatentSize() int { return shapeSize(tr.LatentShape) }

// Latent returns a copy of sample i's latent at state k (0 … T).
func (tr *Trajectories) Latent(k, i int) Latent {
	l := tr.LatentSize()
	return Latent{Shape: append([]int(nil), tr.LatentShape...), Data: append([]float32(nil), tr.X[k][i*l:(i+1)*l]...)}
}

// Final returns every sample's clean latent x_T.
func (tr *Trajectories) Final() []Latent {
	out := make([]Latent, tr.Len())
	for i := range out {
		out[i] = tr.Latent(tr.Schedule.Steps(), i)
	}
	return out
}

func shapeSize(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Sampler runs the model along a schedule: stochastic rollouts that store everything training
// needs, and deterministic ODE sampling for evaluation and look-ahead. It compiles one step graph
// per distinct input shape (σ, σ_next and s are inputs, so one graph serves every step).
type Sampler struct {
	backend backends.Backend
	ctx     *mlctx.Context
	vel     Velocity
	sched   Schedule
	cfg     SamplerConfig

	// mu guards the lazily built graphs and the conditioning arity: the pipeline's rollout and
	// look-ahead workers share one sampler.
	mu                           sync.Mutex
	stepExec, stepVExec, odeExec *mlctx.Exec
	nCond, nUncond               int
}

// NewSampler returns a sampler of the model vel, whose weights live in ctx, along sched.
func NewSampler(backend backends.Backend, ctx *mlctx.Context, vel Velocity, sched Schedule, cfg SamplerConfig) (*Sampler, error) {
	if cfg.Kind == "" {
		cfg.Kind = KindSDE
	}
	if err := cfg.Validate(sched.Steps()); err != nil {
		return nil, fmt.Errorf("new sampler: %w", err)
	}
	if sched.Steps() < 1 {
		return nil, errors.New("new sampler: empty schedule")
	}
	return &Sampler{backend: backend, ctx: ctx.Checked(false), vel: vel, sched: sched, cfg: cfg, nCond: -1}, nil
}

// Schedule returns the rollout schedule.
func (s *Sampler) Schedule() Schedule { return s.sched }

// Config returns the sampler's configuration.
func (s *Sampler) Config() SamplerConfig { return s.cfg }

// SetPsi replaces the calibrated noise schedule ψ (nil: back to a·sqrt(σ/(1−σ))) without
// recompiling: the noise level is an input of the step graph. Calibration changes ψ every round.
func (s *Sampler) SetPsi(psi []float32) error {
	cfg := s.cfg
	cfg.Psi = psi
	if err := cfg.Validate(s.sched.Steps()); err != nil {
		return fmt.Errorf("set psi: %w", err)
	}
	s.cfg = cfg
	return nil
}

// GuidedVelocity evaluates vel at x [B, …] with timestep [B], per-sample cond and, when
// guidance w > 0, classifier-free guidance v = v_u + w·(v_c − v_u): the conditional and the
// unconditional branch run as one batch of 2B (x and the timestep repeated, cond concatenated
// with uncond). Output float32.
func GuidedVelocity(ctx *mlctx.Context, vel Velocity, x, timestep *Node, cond, uncond []*Node, w float64, withLoRA bool) *Node {
	if w == 0 {
		return f32(vel(ctx, x, timestep, cond, withLoRA))
	}
	if len(uncond) != len(cond) {
		panicf("rl: guidance needs one unconditional tensor per conditional tensor, got %d and %d", len(uncond), len(cond))
	}
	b := x.Shape().Dimensions[0]
	both := make([]*Node, len(cond))
	for i := range cond {
		both[i] = Concatenate([]*Node{cond[i], uncond[i]}, 0)
	}
	v := f32(vel(ctx, Concatenate([]*Node{x, x}, 0), Concatenate([]*Node{timestep, timestep}, 0), both, withLoRA))
	// Combined as w·v_c + (1−w)·v_u = v_u + w·(v_c − v_u) by a weighted sum over a leading axis of
	// 2, not by Slice: Slice's gradient needs Pad, which SimpleGo does not implement.
	dims := append([]int{2, b}, v.Shape().Dimensions[1:]...)
	coefDims := make([]int, len(dims))
	for i := range coefDims {
		coefDims[i] = 1
	}
	coefDims[0] = 2
	coef := Reshape(Const(x.Graph(), []float32{float32(w), float32(1 - w)}), coefDims...)
	return ReduceSum(Mul(Reshape(v, dims...), coef), 0)
}

// selectRows gives every sample its conditioning row: t [P, …] gathered with idx [B] (int32),
// or a shared t [1, …] broadcast to [B, …].
func selectRows(t, idx *Node) *Node {
	b := idx.Shape().Dimensions[0]
	if t.Rank() == 0 {
		panicf("rl: conditioning tensors need a leading prompt axis, got shape %s", t.Shape())
	}
	if t.Shape().Dimensions[0] == 1 {
		dims := append([]int{b}, t.Shape().Dimensions[1:]...)
		return BroadcastToDims(t, dims...)
	}
	return Gather(t, Reshape(idx, b, 1))
}

// condInputs splits the tail of an Exec's inputs into cond and uncond, selecting rows.
func condInputs(tail []*Node, nCond int, idx *Node) (cond, uncond []*Node) {
	for i, t := range tail {
		if i < nCond {
			cond = append(cond, selectRows(t, idx))
		} else {
			uncond = append(uncond, selectRows(t, idx))
		}
	}
	return cond, uncond
}

// timestepOf returns 1000·σ as [B] for sigma scalar or [B].
func timestepOf(sigma *Node, b int) *Node {
	t := MulScalar(f32(sigma), numTrainTimesteps)
	if t.Rank() == 0 {
		t = BroadcastToDims(t, b)
	}
	return t
}

// prepare checks c and returns the graph *exec, built by build on first use.
func (s *Sampler) prepare(c Conditioning, exec **mlctx.Exec, build func() error) (*mlctx.Exec, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkConditioning(c); err != nil {
		return nil, err
	}
	if *exec == nil {
		if err := build(); err != nil {
			return nil, err
		}
	}
	return *exec, nil
}

// checkConditioning validates the conditioning and fixes the number of tensors the graphs
// take. The caller holds s.mu.
func (s *Sampler) checkConditioning(c Conditioning) error {
	// An unconditional model (no Cond tensors) is allowed, without guidance: it gets an empty
	// cond slice.
	if len(c.Cond) == 0 && s.cfg.Guidance > 0 {
		return errors.New("check conditioning: guidance > 0 needs Cond and Uncond tensors")
	}
	nUncond := 0
	if s.cfg.Guidance > 0 {
		if len(c.Uncond) != len(c.Cond) {
			return fmt.Errorf("check conditioning: guidance needs one Uncond tensor per Cond tensor, got %d and %d", len(c.Uncond), len(c.Cond))
		}
		nUncond = len(c.Uncond)
	}
	if s.nCond >= 0 && (s.nCond != len(c.Cond) || s.nUncond != nUncond) {
		return fmt.Errorf("check conditioning: got %d cond and %d uncond tensors, want %d and %d as in earlier calls", len(c.Cond), nUncond, s.nCond, s.nUncond)
	}
	s.nCond, s.nUncond = len(c.Cond), nUncond
	return nil
}

// condArgs returns the conditioning tensors the graphs take (uncond only with guidance).
func (s *Sampler) condArgs(c Conditioning) []any {
	var args []any
	for _, t := range c.Cond {
		args = append(args, t)
	}
	if s.cfg.Guidance > 0 {
		for _, t := range c.Uncond {
			args = append(args, t)
		}
	}
	return args
}

// numPrompts returns P from the conditioning, or fallback when there is none.
func numPrompts(c Conditioning, fallback int) (int, error) {
	if len(c.Cond) == 0 {
		return fallback, nil
	}
	p := c.Cond[0].Shape().Dimensions
	if len(p) == 0 {
		return 0, errors.New("conditioning tensor 0 is a scalar, want a leading prompt axis")
	}
	for i, t := range c.Cond {
		if d := t.Shape().Dimensions; len(d) == 0 || d[0] != p[0] {
			return 0, fmt.Errorf("conditioning tensor %d has shape %v, want leading axis %d", i, d, p[0])
		}
	}
	return p[0], nil
}

// buildStepExec builds the rollout step graph: inputs x, noise [B, …], sigma, sigmaNext, s [],
// prompt index [B] int32, cond…, uncond…; outputs next, mean, logp, v.
func (s *Sampler) buildStepExec() error {
	kind, vel, w, nCond := s.cfg.Kind, s.vel, s.cfg.Guidance, s.nCond
	exec, err := mlctx.NewExec(s.backend, s.ctx, func(ctx *mlctx.Context, in []*Node) []*Node {
		x, noise, sigma, sigmaNext, sd, idx := in[0], in[1], in[2], in[3], in[4], in[5]
		cond, uncond := condInputs(in[6:], nCond, idx)
		v := GuidedVelocity(ctx, vel, x, timestepOf(sigma, x.Shape().Dimensions[0]), cond, uncond, w, true)
		o := StochasticStep(kind, x, v, sigma, sigmaNext, sd, noise)
		return []*Node{o.Next, o.Mean, o.LogProb, v}
	})
	if err != nil {
		return fmt.Errorf("build rollout step graph: %w", err)
	}
	s.stepExec = exec
	return nil
}

// buildStepVExec builds the rollout step graph for a velocity computed outside it: inputs x,
// v, noise [B, …], sigma, sigmaNext, s []; outputs next, mean, logp.
func (s *Sampler) buildStepVExec() error {
	kind := s.cfg.Kind
	exec, err := mlctx.NewExec(s.backend, s.ctx, func(ctx *mlctx.Context, in []*Node) []*Node {
		o := StochasticStep(kind, in[0], in[1], in[3], in[4], in[5], in[2])
		return []*Node{o.Next, o.Mean, o.LogProb}
	})
	if err != nil {
		return fmt.Errorf("build rollout step graph: %w", err)
	}
	s.stepVExec = exec
	return nil
}

// buildODEExec builds the Euler step graph: inputs x [B, …], sigma, sigmaNext [B], prompt index
// [B] int32, cond…, uncond…; output next.
func (s *Sampler) buildODEExec() error {
	vel, w, nCond := s.vel, s.cfg.Guidance, s.nCond
	exec, err := mlctx.NewExec(s.backend, s.ctx, func(ctx *mlctx.Context, in []*Node) []*Node {
		x, sigma, sigmaNext, idx := in[0], in[1], in[2], in[3]
		cond, uncond := condInputs(in[4:], nCond, idx)
		v := GuidedVelocity(ctx, vel, x, timestepOf(sigma, x.Shape().Dimensions[0]), cond, uncond, w, true)
		return []*Node{EulerStep(x, v, sigma, sigmaNext)}
	})
	if err != nil {
		return fmt.Errorf("build ODE step graph: %w", err)
	}
	s.odeExec = exec
	return nil
}

// run executes exec and copies its outputs to float32 slices, freeing the tensors.
func run(exec *mlctx.Exec, args ...any) (outs [][]float32, err error) {
	defer nn.Recover(&err)
	res, err := exec.Exec(args...)
	if err != nil {
		return nil, err
	}
	outs = make([][]float32, len(res))
	for i, t := range res {
		outs[i], err = tensors.CopyFlatData[float32](t)
		if err != nil {
			return nil, fmt.Errorf("read output %d: %w", i, err)
		}
		t.FinalizeAll()
	}
	return outs, nil
}

// latentTensor wraps flat data of n latents as a [n, …LatentShape] tensor.
func latentTensor(data []float32, n int, shape []int) *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(data, append([]int{n}, shape...)...)
}

func int32s(xs []int) []int32 {
	out := make([]int32, len(xs))
	for i, x := range xs {
		out[i] = int32(x)
	}
	return out
}

// normals fills a slice with n standard normal float32 draws from rng.
func normals(rng *rand.Rand, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64())
	}
	return out
}

// initialNoise draws x_0 for p prompts × g samples (shared within a group when same is set).
func initialNoise(rng *rand.Rand, p, g, l int, same bool) []float32 {
	x := make([]float32, p*g*l)
	for pi := range p {
		var shared []float32
		if same {
			shared = normals(rng, l)
		}
		for gi := range g {
			dst := x[(pi*g+gi)*l : (pi*g+gi+1)*l]
			if same {
				copy(dst, shared)
			} else {
				copy(dst, normals(rng, l))
			}
		}
	}
	return x
}

// Rollout samples G trajectories per prompt of c with the stochastic sampler and stores x_k,
// the means, the log-probabilities and the noise levels. Noise comes from a PCG generator
// seeded with seed (x_0 first, prompt by prompt, then each step's noise), so a rollout is
// reproducible from (weights, conditioning, seed). An unconditional model (no Cond tensors)
// gets one prompt.
func (s *Sampler) Rollout(ctx context.Context, c Conditioning, seed uint64) (*Trajectories, error) {
	return s.RolloutWith(ctx, c, seed, nil)
}

// HostVelocity computes the guided velocity of the n = len(prompts) latents x ([n, …LatentShape]
// row-major) at noise level sigma, latent j conditioned on row prompts[j] of c, outside the
// sampler's graphs (in ONNX Runtime, say).
type HostVelocity func(ctx context.Context, c Conditioning, x []float32, sigma float32, prompts []int) ([]float32, error)

// RolloutWith is Rollout with the velocity of every step from hv; nil uses the sampler's own
// graph. The step itself — mean, noise, log-probability — is the same graph either way, so the
// trajectories differ only by the velocities' rounding.
func (s *Sampler) RolloutWith(ctx context.Context, c Conditioning, seed uint64, hv HostVelocity) (*Trajectories, error) {
	exec, build := &s.stepExec, s.buildStepExec
	if hv != nil {
		exec, build = &s.stepVExec, s.buildStepVExec
	}
	stepExec, err := s.prepare(c, exec, build)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	p, err := numPrompts(c, 1)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	g, shape, steps := s.cfg.GroupSize, s.cfg.LatentShape, s.sched.Steps()
	b, l := p*g, shapeSize(shape)
	rng := rand.New(rand.NewPCG(seed, 0x6a09e667f3bcc908))
	tr := &Trajectories{
		Kind: s.cfg.Kind, Schedule: s.sched, LatentShape: append([]int(nil), shape...),
		Prompts: make([]int, b),
		X:       [][]float32{initialNoise(rng, p, g, l, s.cfg.SameNoise)},
		S:       make([]float32, steps), Std: make([]float32, steps),
	}
	for i := range tr.Prompts {
		tr.Prompts[i] = i / g
	}
	idx := tensors.FromValue(int32s(tr.Prompts))
	condArgs := s.condArgs(c)
	for k := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("rollout step %d: %w", k, err)
		}
		sigma, sigmaNext := s.sched.Sigmas[k], s.sched.Sigmas[k+1]
		sd := StepStd(s.cfg.Kind, s.sched, k, s.cfg.NoiseLevel, s.cfg.Psi)
		tr.S[k] = sd
		tr.Std[k] = sd
		if s.cfg.Kind == KindSDE {
			tr.Std[k] = float32(float64(sd) * math.Sqrt(float64(sigma-sigmaNext)))
		}
		noise := latentTensor(normals(rng, b*l), b, shape)
		var outs [][]float32
		if hv == nil {
			args := append([]any{latentTensor(tr.X[k], b, shape), noise, sigma, sigmaNext, sd, idx}, condArgs...)
			outs, err = run(stepExec, args...)
		} else {
			var v []float32
			if v, err = hv(ctx, c, tr.X[k], sigma, tr.Prompts); err == nil && len(v) != b*l {
				err = fmt.Errorf("host velocity: got %d values, want %d", len(v), b*l)
			}
			if err == nil {
				outs, err = run(stepExec, latentTensor(tr.X[k], b, shape), latentTensor(v, b, shape), noise, sigma, sigmaNext, sd)
				outs = append(outs, v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("rollout step %d: %w", k, err)
		}
		tr.X = append(tr.X, outs[0])
		tr.Mean = append(tr.Mean, outs[1])
		tr.LogProb = append(tr.LogProb, outs[2])
		tr.V = append(tr.V, outs[3])
	}
	return tr, nil
}

// ODEPath is one deterministic integration: sample Prompt's conditioning row, starting latent
// X (L values) and the sigmas to visit, Sigmas[0] = σ of X … Sigmas[n] = 0.
type ODEPath struct {
	Prompt int
	X      []float32
	Sigmas []float32
}

// IntegrateODE runs Euler paths in batches of batch paths (padding the last batch by repeating
// a path, so every batch has the same shape and the graph compiles once); paths with fewer
// steps than the longest in their batch take padding steps with σ = σ_next = 0, which leave them
// unchanged. Paths are sorted by length first so little work is padding. It returns the clean
// latents in the order of paths.
func (s *Sampler) IntegrateODE(ctx context.Context, c Conditioning, paths []ODEPath, batch int) ([][]float32, error) {
	odeExec, err := s.prepare(c, &s.odeExec, s.buildODEExec)
	if err != nil {
		return nil, fmt.Errorf("integrate ODE: %w", err)
	}
	if batch < 1 {
		return nil, fmt.Errorf("integrate ODE: batch: got %d, want >= 1", batch)
	}
	shape := s.cfg.LatentShape
	l := shapeSize(shape)
	for i, p := range paths {
		if len(p.X) != l || len(p.Sigmas) < 1 {
			return nil, fmt.Errorf("integrate ODE: path %d: %d latent values and %d sigmas, want %d and >= 1", i, len(p.X), len(p.Sigmas), l)
		}
	}
	out := make([][]float32, len(paths))
	condArgs := s.condArgs(c)
	for bi, chunk := range ODEBatches(paths, batch) {
		members := make([]int, batch)
		for j := range members {
			members[j] = chunk[min(j, len(chunk)-1)]
		}
		x := make([]float32, batch*l)
		prompts := make([]int, batch)
		n := 0
		for j, pi := range members {
			copy(x[j*l:], paths[pi].X)
			prompts[j] = paths[pi].Prompt
			n = max(n, len(paths[pi].Sigmas)-1)
		}
		idx := tensors.FromValue(int32s(prompts))
		for step := range n {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("integrate ODE: %w", err)
			}
			sig, sigNext := make([]float32, batch), make([]float32, batch)
			for j, pi := range members {
				if sg := paths[pi].Sigmas; step+1 < len(sg) {
					sig[j], sigNext[j] = sg[step], sg[step+1]
				}
			}
			args := append([]any{latentTensor(x, batch, shape), sig, sigNext, idx}, condArgs...)
			outs, err := run(odeExec, args...)
			if err != nil {
				return nil, fmt.Errorf("integrate ODE: step %d of batch %d: %w", step, bi, err)
			}
			x = outs[0]
		}
		for j, pi := range chunk {
			out[pi] = append([]float32(nil), x[j*l:(j+1)*l]...)
		}
	}
	return out, nil
}

// ODEBatches splits the indices of paths into batches of at most batch paths, longest paths
// first (stable), so the paths of a batch have similar lengths and little work is padding.
func ODEBatches(paths []ODEPath, batch int) [][]int {
	order := make([]int, len(paths))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(paths[order[a]].Sigmas) > len(paths[order[b]].Sigmas) })
	var out [][]int
	for start := 0; start < len(order); start += batch {
		out = append(out, order[start:min(start+batch, len(order))])
	}
	return out
}

// SampleODE draws G samples per prompt by the deterministic Euler ODE along sched (e.g. the
// 40-step evaluation schedule), from seeded initial noise, and returns the clean latents in
// sample order (prompt-major).
func (s *Sampler) SampleODE(ctx context.Context, c Conditioning, sched Schedule, seed uint64) ([]Latent, error) {
	p, err := numPrompts(c, 1)
	if err != nil {
		return nil, fmt.Errorf("sample ODE: %w", err)
	}
	g, shape := s.cfg.GroupSize, s.cfg.LatentShape
	l := shapeSize(shape)
	rng := rand.New(rand.NewPCG(seed, 0x6a09e667f3bcc908))
	x0 := initialNoise(rng, p, g, l, s.cfg.SameNoise)
	paths := make([]ODEPath, p*g)
	for i := range paths {
		paths[i] = ODEPath{Prompt: i / g, X: x0[i*l : (i+1)*l], Sigmas: sched.Sigmas}
	}
	res, err := s.IntegrateODE(ctx, c, paths, p*g)
	if err != nil {
		return nil, fmt.Errorf("sample ODE: %w", err)
	}
	out := make([]Latent, len(res))
	for i, d := range res {
		out[i] = Latent{Shape: append([]int(nil), shape...), Data: d}
	}
	return out, nil
}
