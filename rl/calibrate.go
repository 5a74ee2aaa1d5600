package rl

import (
	"context"
	"fmt"
	"math"
)

// CalibrateConfig configures DenseGRPO's exploration-space calibration (Algorithm 1).
type CalibrateConfig struct {
	// Iterations is the number of calibration rounds (>= 1).
	Iterations int
	// NoiseLevel is a of the starting point ψ(k) = a·sqrt(σ_k/(1−σ_k)) (σ=1 rule as in SDEStd).
	NoiseLevel float64
	// Eps1 is the balance threshold ε1: a step is balanced when |#{ΔR>0} − #{ΔR<0}| < ε1
	// (paper: 2).
	Eps1 float64
	// Eps2 is the step size ε2 of ψ (paper: 0.01).
	Eps2 float64
}

// DefaultCalibrateConfig returns the paper's ε1 = 2, ε2 = 0.01 with a = 0.7 and the given
// number of iterations.
func DefaultCalibrateConfig(iterations int) CalibrateConfig {
	return CalibrateConfig{Iterations: iterations, NoiseLevel: 0.7, Eps1: 2, Eps2: 0.01}
}

// DeltaFunc samples N trajectories (one per prompt) with the SDE noise schedule psi and returns
// their step rewards ΔR[i][k]; a row may cover only the leading steps (the others keep ψ).
type DeltaFunc func(ctx context.Context, iteration int, psi []float32) ([][]float64, error)

// CalibrationRound records one round: the ψ it sampled with and, per step, how many ΔR_k were
// positive and negative.
type CalibrationRound struct {
	Psi      []float32 `json:"psi"`
	Positive []int     `json:"positive"`
	Negative []int     `json:"negative"`
}

// Calibration is the result of Calibrate: the calibrated ψ and every round.
type Calibration struct {
	Psi    []float32          `json:"psi"`
	Rounds []CalibrationRound `json:"rounds"`
}

// Calibrate runs DenseGRPO Algorithm 1 on sched: starting from ψ(k) = a·sqrt(σ_k/(1−σ_k)), each
// round samples with ψ through deltas and, for every step k, raises ψ(k) by ε2 when the signs
// of ΔR_k are balanced (|#pos − #neg| < ε1: the step explores both ways) and lowers it by ε2
// otherwise. ψ is kept >= ε2, because a zero noise level has no log-probability.
func Calibrate(ctx context.Context, sched Schedule, cfg CalibrateConfig, deltas DeltaFunc) (Calibration, error) {
	switch {
	case cfg.Iterations < 1:
		return Calibration{}, fmt.Errorf("calibrate: field iterations: got %d, want >= 1", cfg.Iterations)
	case !(cfg.NoiseLevel > 0):
		return Calibration{}, fmt.Errorf("calibrate: field noise_level: got %v, want > 0", cfg.NoiseLevel)
	case !(cfg.Eps1 > 0):
		return Calibration{}, fmt.Errorf("calibrate: field eps1: got %v, want > 0", cfg.Eps1)
	case !(cfg.Eps2 > 0):
		return Calibration{}, fmt.Errorf("calibrate: field eps2: got %v, want > 0", cfg.Eps2)
	}
	steps := sched.Steps()
	psi := sched.InitialPsi(cfg.NoiseLevel)
	var out Calibration
	for it := range cfg.Iterations {
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("calibrate round %d: %w", it, err)
		}
		d, err := deltas(ctx, it, append([]float32(nil), psi...))
		if err != nil {
			return out, fmt.Errorf("calibrate round %d: %w", it, err)
		}
		if len(d) == 0 {
			return out, fmt.Errorf("calibrate round %d: no trajectories", it)
		}
		round := CalibrationRound{Psi: append([]float32(nil), psi...), Positive: make([]int, steps), Negative: make([]int, steps)}
		covered := steps
		for i, row := range d {
			if len(row) > steps {
				return out, fmt.Errorf("calibrate round %d: trajectory %d has %d step rewards, want <= %d", it, i, len(row), steps)
			}
			covered = min(covered, len(row))
		}
		for _, row := range d {
			for k := range covered {
				switch {
				case row[k] > 0:
					round.Positive[k]++
				case row[k] < 0:
					round.Negative[k]++
				}
			}
		}
		for k := range covered {
			if math.Abs(float64(round.Positive[k]-round.Negative[k])) < cfg.Eps1 {
				psi[k] = float32(float64(psi[k]) + cfg.Eps2)
			} else {
				psi[k] = float32(math.Max(float64(psi[k])-cfg.Eps2, cfg.Eps2))
			}
		}
		out.Rounds = append(out.Rounds, round)
	}
	out.Psi = psi
	return out, nil
}
