package rl

import (
	"fmt"
	"math"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
)

// The graph functions in this file share these shapes (all step maths is float32: inputs of
// other float dtypes are converted first):
//
//   - x, v, noise, next, mean: [B, d1, …, dn] with n >= 1 (the latent of each sample; v is the
//     model's velocity at x).
//   - sigma, sigmaNext, s, std: either scalars [] (one value for the whole batch, as in a
//     rollout step) or [B] (one value per sample, as in a batched look-ahead where samples sit
//     at different steps).
//   - log-probabilities: [B], the mean over the latent elements of each sample.
//
// They panic, as GoMLX graph building does, on shape errors, naming both shapes.

// StepOut is the result of one stochastic sampling step.
type StepOut struct {
	// Next is x_{k+1} = Mean + Std·ε, shape of x.
	Next *Node
	// Mean is the mean of x_{k+1} given x_k, shape of x.
	Mean *Node
	// S is the step's noise level: s_k for the Flow-SDE (a·sqrt(σ/(1−σ)) or ψ(k)), σ_{k+1}·sin(aπ/2)
	// for CPS. Shape of sigma.
	S *Node
	// Std is the standard deviation of x_{k+1} given x_k: s_k·sqrt(−dt) for the Flow-SDE, S for CPS.
	Std *Node
	// LogProb is the step's log-probability of Next, [B] (see SDELogProb and CPSLogProb).
	LogProb *Node
}

// f32 converts x to float32 if it is not already.
func f32(x *Node) *Node {
	if x.DType() != dtypes.Float32 {
		return ConvertDType(x, dtypes.Float32)
	}
	return x
}

// perSample reshapes a scalar or [B] parameter p so it broadcasts against x [B, …]: a scalar
// stays a scalar, [B] becomes [B, 1, …, 1].
func perSample(p, x *Node) *Node {
	p = f32(p)
	switch {
	case p.Rank() == 0:
		return p
	case p.Rank() == 1 && p.Shape().Dimensions[0] == x.Shape().Dimensions[0]:
		dims := make([]int, x.Rank())
		for i := range dims {
			dims[i] = 1
		}
		dims[0] = p.Shape().Dimensions[0]
		return Reshape(p, dims...)
	default:
		panicf("rl: per-step parameter must be a scalar or [B] for x of shape %s, got shape %s", x.Shape(), p.Shape())
		return nil
	}
}

// checkLatent panics unless x has a batch axis and at least one latent axis.
func checkLatent(name string, x *Node) {
	if x.Rank() < 2 {
		panicf("rl: %s must have shape [B, d1, …], got %s", name, x.Shape())
	}
}

// checkSame panics unless a and b have the same dimensions.
func checkSame(aName string, a *Node, bName string, b *Node) {
	if !slices.Equal(a.Shape().Dimensions, b.Shape().Dimensions) {
		panicf("rl: %s has shape %s but %s has shape %s, want equal dimensions", aName, a.Shape(), bName, b.Shape())
	}
}

// meanPerSample averages t [B, …] over every axis but the batch axis, giving [B].
func meanPerSample(t *Node) *Node {
	axes := make([]int, t.Rank()-1)
	for i := range axes {
		axes[i] = i + 1
	}
	return ReduceMean(t, axes...)
}

// SDEMean is the Flow-SDE mean of x_{k+1}:
//
//	mean = x·(1 + s²/(2σ)·dt) + v·(1 + s²·(1−σ)/(2σ))·dt,  dt = sigmaNext − sigma.
func SDEMean(x, v, sigma, sigmaNext, s *Node) *Node {
	checkLatent("x", x)
	checkSame("x", x, "v", v)
	x, v = f32(x), f32(v)
	sig, s2 := perSample(sigma, x), Square(perSample(s, x))
	dt := Sub(perSample(sigmaNext, x), sig)
	twoSigma := MulScalar(sig, 2)
	xCoef := AddScalar(Mul(Div(s2, twoSigma), dt), 1)
	vCoef := Mul(AddScalar(Div(Mul(s2, OneMinus(sig)), twoSigma), 1), dt)
	return Add(Mul(x, xCoef), Mul(v, vCoef))
}

// SDEStdDev is the standard deviation s·sqrt(−dt) of a Flow-SDE step (shape of s and sigma).
func SDEStdDev(sigma, sigmaNext, s *Node) *Node {
	return Mul(f32(s), Sqrt(Neg(Sub(f32(sigmaNext), f32(sigma)))))
}

// SDELogProb is the Gaussian log-density of next under N(mean, std²) per element,
//
//	−(next−mean)²/(2·std²) − log(std) − log(sqrt(2π)),
//
// averaged (not summed) over the latent elements of each sample: [B]. std is a scalar or [B].
func SDELogProb(next, mean, std *Node) *Node {
	checkLatent("next", next)
	checkSame("next", next, "mean", mean)
	next, mean = f32(next), f32(mean)
	sd := perSample(std, next)
	sq := Square(Sub(next, mean))
	lp := Sub(Neg(Div(sq, MulScalar(Square(sd), 2))), Log(sd))
	lp = AddScalar(lp, -math.Log(math.Sqrt(2*math.Pi)))
	return meanPerSample(lp)
}

// SDEStep is the Flow-SDE step with noise level s (s_k = a·sqrt(σ/(1−σ)) from
// Schedule.SDEStd, or DenseGRPO's calibrated ψ(k)): next = SDEMean + s·sqrt(−dt)·noise, with
// noise ~ N(0, I) of the shape of x.
func SDEStep(x, v, sigma, sigmaNext, s, noise *Node) StepOut {
	checkSame("x", x, "noise", noise)
	mean := SDEMean(x, v, sigma, sigmaNext, s)
	std := SDEStdDev(sigma, sigmaNext, s)
	next := Add(mean, Mul(perSample(std, mean), f32(noise)))
	return StepOut{Next: next, Mean: mean, S: f32(s), Std: std, LogProb: SDELogProb(next, mean, std)}
}

// CPSMean is the CPS mean of x_{k+1}: with x̂0 = x − σ·v and x̂1 = x + (1−σ)·v,
//
//	mean = (1−σ_{k+1})·x̂0 + sqrt(σ_{k+1}² − s²)·x̂1.
func CPSMean(x, v, sigma, sigmaNext, s *Node) *Node {
	checkLatent("x", x)
	checkSame("x", x, "v", v)
	x, v = f32(x), f32(v)
	sig, sigNext, sd := perSample(sigma, x), perSample(sigmaNext, x), perSample(s, x)
	x0 := Sub(x, Mul(sig, v))
	x1 := Add(x, Mul(OneMinus(sig), v))
	return Add(Mul(OneMinus(sigNext), x0), Mul(Sqrt(Sub(Square(sigNext), Square(sd))), x1))
}

// CPSLogProb is CPS's log-probability surrogate −mean over elements of (next − mean)², [B]
// (no variance term).
func CPSLogProb(next, mean *Node) *Node {
	checkLatent("next", next)
	checkSame("next", next, "mean", mean)
	return Neg(meanPerSample(Square(Sub(f32(next), f32(mean)))))
}

// CPSStep is the CPS step with noise level s (Schedule.CPSStd): next = CPSMean + s·noise.
func CPSStep(x, v, sigma, sigmaNext, s, noise *Node) StepOut {
	checkSame("x", x, "noise", noise)
	mean := CPSMean(x, v, sigma, sigmaNext, s)
	next := Add(mean, Mul(perSample(s, mean), f32(noise)))
	return StepOut{Next: next, Mean: mean, S: f32(s), Std: f32(s), LogProb: CPSLogProb(next, mean)}
}

// Kind selects the stochastic sampler of a rollout.
type Kind string

// The stochastic samplers.
const (
	// KindSDE is the Flow-GRPO SDE (s_k = a·sqrt(σ/(1−σ)), or ψ(k) when calibrated).
	KindSDE Kind = "sde"
	// KindCPS is coefficient-preserving sampling.
	KindCPS Kind = "cps"
)

// Kinds lists the stochastic samplers (the values of sampler.kind).
var Kinds = []Kind{KindSDE, KindCPS}

// Valid reports whether k names a known sampler.
func (k Kind) Valid() bool { return slices.Contains(Kinds, k) }

// StochasticStep dispatches to SDEStep or CPSStep; s is the step's noise level
// as StepOut.S defines it.
func StochasticStep(kind Kind, x, v, sigma, sigmaNext, s, noise *Node) StepOut {
	switch kind {
	case KindSDE:
		return SDEStep(x, v, sigma, sigmaNext, s, noise)
	case KindCPS:
		return CPSStep(x, v, sigma, sigmaNext, s, noise)
	default:
		panicf("rl: unknown sampler kind %q, want %q or %q", kind, KindSDE, KindCPS)
		return StepOut{}
	}
}

// TransitionLogProb recomputes, for a stored transition x → next, the mean of next under the
// velocity v and its log-probability [B] — what training needs for logp_θ and for the KL term.
func TransitionLogProb(kind Kind, x, v, sigma, sigmaNext, s, next *Node) (logProb, mean *Node) {
	switch kind {
	case KindSDE:
		mean = SDEMean(x, v, sigma, sigmaNext, s)
		return SDELogProb(next, mean, SDEStdDev(sigma, sigmaNext, s)), mean
	case KindCPS:
		mean = CPSMean(x, v, sigma, sigmaNext, s)
		return CPSLogProb(next, mean), mean
	default:
		panicf("rl: unknown sampler kind %q, want %q or %q", kind, KindSDE, KindCPS)
		return nil, nil
	}
}

// StepStd returns the Go-side noise level of step k for a sampler (what StochasticStep takes
// as s): ψ(k) when psi is given (calibrated SDE), else Schedule.SDEStd or Schedule.CPSStd.
func StepStd(kind Kind, sched Schedule, k int, a float64, psi []float32) float32 {
	if kind == KindCPS {
		return sched.CPSStd(k, a)
	}
	if psi != nil {
		return psi[k]
	}
	return sched.SDEStd(k, a)
}

// panicf panics with an error, the way GoMLX graph building reports shape errors.
func panicf(format string, args ...any) {
	panic(fmt.Errorf(format, args...))
}
