package pretrain

import (
	"math"
	"math/rand/v2"
)

// ShiftSigma is the SD3 timestep shift: shift·u / (1 + (shift−1)·u). It maps [0, 1] onto itself,
// fixes 0 and 1, and with shift > 1 moves mass towards σ = 1 (more noise).
func ShiftSigma(u, shift float64) float64 {
	return shift * u / (1 + (shift-1)*u)
}

// SampleSigma draws one training noise level: u from the configured density ("logit-normal":
// sigmoid of N(mean, std²); "uniform": U(0, 1)), then σ = ShiftSigma(u, shift), as float32.
func SampleSigma(rng *rand.Rand, c SigmaConfig) float32 {
	var u float64
	switch c.Sampling {
	case "uniform":
		u = rng.Float64()
	default: // "logit-normal"; Validate rejects anything else
		n := c.Mean + c.Std*rng.NormFloat64()
		u = 1 / (1 + math.Exp(-n))
	}
	return float32(ShiftSigma(u, c.Shift))
}

// LearningRate is the learning rate of a step at schedule progress p in [0, 1]:
//
//   - warm-up: lr·(step+1)/warmup for step < warmup (step counts from 0);
//   - "constant": lr afterwards;
//   - "cosine": lr_min + (lr − lr_min)·(1 + cos(π·q))/2 afterwards, where lr_min =
//     lr·min_lr_ratio and q is the progress after warm-up, (p − p_w)/(1 − p_w) with
//     p_w = warmup/steps, clamped to [0, 1].
//
// p is step/steps, or elapsed/budget if that is larger (see TrainConfig.TimeBudget).
func LearningRate(c TrainConfig, step int, p float64) float64 {
	if step < c.WarmupSteps {
		return c.LR * float64(step+1) / float64(c.WarmupSteps)
	}
	if c.Schedule == "constant" {
		return c.LR
	}
	pw := float64(c.WarmupSteps) / float64(c.Steps)
	q := 1.0
	if pw < 1 {
		q = (p - pw) / (1 - pw)
	}
	q = min(max(q, 0), 1)
	low := c.LR * c.MinLRRatio
	return low + (c.LR-low)*0.5*(1+math.Cos(math.Pi*q))
}
