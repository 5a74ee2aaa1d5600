package rl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/internal/choice"
)

// SamplerConfig configures rollouts.
type SamplerConfig struct {
	// Kind is the stochastic sampler of rollouts: KindSDE (default) or KindCPS.
	Kind Kind
	// NoiseLevel is a: 0.7 is Flow-GRPO's default for the SDE, 0.8 for CPS. Must be > 0.
	NoiseLevel float64
	// Psi, if set (SDE only), is the calibrated noise schedule ψ(k), one value per step; the SDE
	// then uses s_k = ψ(k).
	Psi []float32
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

// Latent returns sample i's latent at state k (0 … T), a view into X[k] (capacity L).
func (tr *Trajectories) Latent(k, i int) []float32 {
	l := tr.LatentSize()
	return tr.X[k][i*l : (i+1)*l : (i+1)*l]
}

func shapeSize(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Sampler draws stochastic rollouts along a schedule and stores everything training needs.
// Velocities come from a Flow (any engine); the step itself — mean, noise, log-probability —
// is one GoMLX graph (StochasticStep), the same ops the training loss recomputes the
// log-probability with (TransitionLogProb), so a rollout's log p and the loss's agree to the bit
// when the velocities do. σ, σ_next and s are inputs, so one graph serves every step.
type Sampler struct {
	backend backends.Backend
	sched   Schedule
	cfg     SamplerConfig

	// mu guards the lazily built step graph: the pipeline's rollouts may share one sampler.
	mu       sync.Mutex
	stepExec *mlctx.Exec
}

// NewSampler returns a sampler along sched whose step graph runs on backend.
func NewSampler(backend backends.Backend, sched Schedule, cfg SamplerConfig) (*Sampler, error) {
	if cfg.Kind == "" {
		cfg.Kind = KindSDE
	}
	if sched.Steps() < 1 {
		return nil, errors.New("new sampler: empty schedule")
	}
	if err := cfg.Validate(sched.Steps()); err != nil {
		return nil, fmt.Errorf("new sampler: %w", err)
	}
	return &Sampler{backend: backend, sched: sched, cfg: cfg}, nil
}

// Schedule returns the rollout schedule.
func (s *Sampler) Schedule() Schedule { return s.sched }

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

// step returns the rollout step graph: inputs x, v, noise [B, …], sigma, sigmaNext, s [];
// outputs next, mean, logp.
func (s *Sampler) step() (*mlctx.Exec, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stepExec != nil {
		return s.stepExec, nil
	}
	kind := s.cfg.Kind
	exec, err := mlctx.NewExec(s.backend, mlctx.New(), func(ctx *mlctx.Context, in []*Node) []*Node {
		o := StochasticStep(kind, in[0], in[1], in[3], in[4], in[5], in[2])
		return []*Node{o.Next, o.Mean, o.LogProb}
	})
	if err != nil {
		return nil, fmt.Errorf("build rollout step graph: %w", err)
	}
	s.stepExec = exec
	return exec, nil
}

// Rollout samples G trajectories per prompt of c with the stochastic sampler, velocities from
// flow, and stores x_k, the means, the log-probabilities, the velocities and the noise levels.
// Noise comes from the rollout stream seeded with seed (x_0 first, prompt by prompt, then each
// step's noise), so a rollout is reproducible from (weights, conditioning, seed). An
// unconditional model (no Cond tensors) gets one prompt.
func (s *Sampler) Rollout(ctx context.Context, flow Flow, c Conditioning, seed uint64) (*Trajectories, error) {
	stepExec, err := s.step()
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	p, err := numPrompts(c, 1)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	cfg := s.cfg
	g, shape, steps := cfg.GroupSize, cfg.LatentShape, s.sched.Steps()
	b, l := p*g, shapeSize(shape)
	rng := rolloutRNG(seed)
	tr := &Trajectories{
		Kind: cfg.Kind, Schedule: s.sched, LatentShape: append([]int(nil), shape...),
		Prompts: make([]int, b),
		X:       [][]float32{initialNoise(rng, p, g, l, cfg.SameNoise)},
		S:       make([]float32, steps), Std: make([]float32, steps),
	}
	for i := range tr.Prompts {
		tr.Prompts[i] = i / g
	}
	sigmas := make([]float32, b)
	for k := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("rollout step %d: %w", k, err)
		}
		sigma, sigmaNext := s.sched.Sigmas[k], s.sched.Sigmas[k+1]
		sd := StepStd(cfg.Kind, s.sched, k, cfg.NoiseLevel, cfg.Psi)
		tr.S[k] = sd
		tr.Std[k] = sd
		if cfg.Kind == KindSDE {
			tr.Std[k] = float32(float64(sd) * math.Sqrt(float64(sigma-sigmaNext)))
		}
		noise := latentTensor(normals(rng, b*l), b, shape)
		for i := range sigmas {
			sigmas[i] = sigma
		}
		v, err := flow.Velocity(ctx, c, tr.X[k], sigmas, tr.Prompts)
		if err != nil {
			return nil, fmt.Errorf("rollout step %d: %w", k, err)
		}
		outs, err := run(stepExec, latentTensor(tr.X[k], b, shape), latentTensor(v, b, shape), noise, sigma, sigmaNext, sd)
		if err != nil {
			return nil, fmt.Errorf("rollout step %d: %w", k, err)
		}
		tr.X = append(tr.X, outs[0])
		tr.Mean = append(tr.Mean, outs[1])
		tr.LogProb = append(tr.LogProb, outs[2])
		tr.V = append(tr.V, v)
	}
	return tr, nil
}

// AddReference stores in tr.VRef the reference model's guided velocity at x_k for the first
// steps steps (what a Trainer with TrainConfig.RefVelocities reads); c must be the
// conditioning tr was sampled with.
func (tr *Trajectories) AddReference(ctx context.Context, ref Flow, c Conditioning, steps int) error {
	tr.VRef = tr.VRef[:0]
	sigmas := make([]float32, tr.Len())
	for k := range steps {
		for i := range sigmas {
			sigmas[i] = tr.Schedule.Sigmas[k]
		}
		v, err := ref.Velocity(ctx, c, tr.X[k], sigmas, tr.Prompts)
		if err != nil {
			return fmt.Errorf("reference velocity at step %d: %w", k, err)
		}
		tr.VRef = append(tr.VRef, v)
	}
	return nil
}
