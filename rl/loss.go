package rl

import (
	"fmt"
	"slices"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/internal/choice"
)

// LossConfig configures the GRPO objective of one trained step.
type LossConfig struct {
	// Kind is the sampler the transitions came from; it decides the log-probability and the KL
	// form (CPS: no division by 2s²).
	Kind Kind
	// ClipRange is ε of the clipped ratio (Flow-GRPO: 1e-4); must be > 0.
	ClipRange float64
	// Beta weights the KL term; 0 skips the reference model entirely.
	Beta float64
}

// Validate checks the configuration.
func (c LossConfig) Validate() error {
	switch {
	case !c.Kind.Valid():
		return fmt.Errorf("loss config: field kind: got %q, want %s", c.Kind, choice.Want(Kinds))
	case !(c.ClipRange > 0):
		return fmt.Errorf("loss config: field clip_range: got %v, want > 0", c.ClipRange)
	case c.Beta < 0:
		return fmt.Errorf("loss config: field beta: got %v, want >= 0", c.Beta)
	}
	return nil
}

// LossTerms are the scalar outputs of the GRPO loss (all float32 scalars).
type LossTerms struct {
	// Total = Policy + β·KL, the value to minimise.
	Total *Node
	// Policy = mean over samples of max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)).
	Policy *Node
	// KL = mean over samples and elements of (mean_θ − mean_ref)²/(2s²) (CPS: without the
	// division); zero when there is no reference.
	KL *Node
	// ApproxKL = 0.5·mean((logp_θ − logp_old)²), a diagnostic.
	ApproxKL *Node
	// ClipFrac is the fraction of samples with |ratio − 1| > ε, a diagnostic.
	ClipFrac *Node
	// RatioMean is the mean ratio, a diagnostic (exactly 1 on the first update of an epoch).
	RatioMean *Node
}

// GRPOLoss builds the GRPO loss of one trained step k from:
//
//   - logp, logpOld, adv: [B] — log p_θ(x_{k+1}|x_k), the sampling policy's log p, A_k;
//   - meanTheta, meanRef: [B, …] — the means of x_{k+1} under the policy and the reference;
//     meanRef may be nil when cfg.Beta = 0;
//   - s: the step's noise level s_k, scalar or [B].
//
// ratio = exp(logp − logpOld); L = mean(max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε))) + β·KL.
//
// valid, if not nil, is [B] with 1 for the rows that count and 0 for padding: every mean is then
// over the valid rows only, and padded rows (which must hold finite values) get no gradient.
// Data-parallel training pads a minibatch to a multiple of its devices this way.
func GRPOLoss(logp, logpOld, adv, meanTheta, meanRef, s, valid *Node, cfg LossConfig) LossTerms {
	logp, logpOld, adv = f32(logp), f32(logpOld), f32(adv)
	if logp.Rank() != 1 || !slices.Equal(logp.Shape().Dimensions, logpOld.Shape().Dimensions) || !slices.Equal(logp.Shape().Dimensions, adv.Shape().Dimensions) {
		panicf("rl: GRPOLoss wants logp, logpOld and adv of shape [B], got %s, %s and %s", logp.Shape(), logpOld.Shape(), adv.Shape())
	}
	g := logp.Graph()
	mean := ReduceAllMean
	if valid != nil {
		valid = f32(valid)
		checkSame("logp", logp, "valid", valid)
		mean = func(x *Node) *Node { return Div(ReduceAllSum(Mul(x, valid)), ReduceAllSum(valid)) }
	}
	diff := Sub(logp, logpOld)
	ratio := Exp(diff)
	eps := cfg.ClipRange
	unclipped := Neg(Mul(adv, ratio))
	clipped := Neg(Mul(adv, ClipScalar(ratio, 1-eps, 1+eps)))
	policy := mean(Max(unclipped, clipped))
	kl := ScalarZero(g, policy.DType())
	if meanRef != nil {
		checkSame("meanTheta", meanTheta, "meanRef", meanRef)
		sq := meanPerSample(Square(Sub(f32(meanTheta), f32(meanRef))))
		if cfg.Kind != KindCPS {
			sd := f32(s)
			sq = Div(sq, MulScalar(Square(sd), 2))
		}
		kl = mean(sq)
	}
	total := policy
	if cfg.Beta != 0 {
		total = Add(policy, MulScalar(kl, cfg.Beta))
	}
	clipFrac := mean(ConvertDType(GreaterThan(Abs(AddScalar(ratio, -1)), Scalar(g, ratio.DType(), eps)), ratio.DType()))
	return LossTerms{
		Total:     total,
		Policy:    policy,
		KL:        kl,
		ApproxKL:  MulScalar(mean(Square(diff)), 0.5),
		ClipFrac:  clipFrac,
		RatioMean: mean(ratio),
	}
}

// StepObjective builds the loss of one trained step for a batch of stored transitions x → next
// (both [B, …]) at sigma, sigmaNext (scalars or [B]) with noise level s: it evaluates the policy
// velocity (withLoRA = true, with guidance w when w > 0), recomputes logp_θ and mean_θ, and — when
// cfg.Beta > 0 — the reference velocity (withLoRA = false, gradient stopped) for the KL term.
// logpOld and adv are [B]; cond and uncond are per-sample ([B, …]).
//
// vRef, if not nil, is the reference model's guided velocity at x, computed outside the graph;
// nil computes it here (vel without LoRA). valid masks padding rows as in GRPOLoss (nil: none).
func StepObjective(ctx *mlctx.Context, vel Velocity, x, next, sigma, sigmaNext, s, logpOld, adv, vRef, valid *Node, cond, uncond []*Node, w float64, cfg LossConfig) LossTerms {
	b := x.Shape().Dimensions[0]
	t := timestepOf(sigma, b)
	v := GuidedVelocity(ctx, vel, x, t, cond, uncond, w, true)
	logp, meanTheta := TransitionLogProb(cfg.Kind, x, v, sigma, sigmaNext, s, next)
	var meanRef *Node
	if cfg.Beta > 0 {
		if vRef == nil {
			vRef = GuidedVelocity(ctx, vel, x, t, cond, uncond, w, false)
		}
		_, meanRef = TransitionLogProb(cfg.Kind, x, StopGradient(f32(vRef)), sigma, sigmaNext, s, next)
	}
	return GRPOLoss(logp, logpOld, adv, meanTheta, meanRef, s, valid, cfg)
}
