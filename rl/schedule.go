package rl

import (
	"fmt"
	"math"
)

// DefaultShift is the timestep shift of SD3 / SD3.5 (diffusers' scheduler config "shift").
const DefaultShift = 3.0

// numTrainTimesteps is diffusers' num_train_timesteps for SD3: the model is fed 1000·σ.
const numTrainTimesteps = 1000

// Schedule is the noise schedule of one sampling run with T steps.
type Schedule struct {
	// Sigmas holds σ_0 = 1 > σ_1 > … > σ_{T−1} > σ_T = 0 (T+1 values).
	Sigmas []float32
	// Timesteps holds the model's timestep input 1000·σ_k for k = 0 … T−1 (T values).
	Timesteps []float32
}

// SD3Schedule builds the T-step schedule exactly as diffusers' FlowMatchEulerDiscreteScheduler
// builds it for SD3/SD3.5 (use_dynamic_shifting off), so that sampling matches a real checkpoint
// bit for bit:
//
//  1. At construction diffusers shifts its 1000 training sigmas in float32 torch arithmetic;
//     σ_min is the last of them, shift(1/1000) = shift·0.001/(1 + (shift−1)·0.001), each
//     operation rounded to float32.
//  2. set_timesteps takes np.linspace(1000·1, 1000·σ_min, T) in float64 (numpy: start + i·step,
//     the last point set to stop exactly), divides by 1000 (u_i), and shifts a second time in
//     float64: σ_i = shift·u_i / (1 + (shift−1)·u_i).
//  3. The sigmas are cast to float32, the timesteps are 1000·σ_i in float32, and σ_T = 0 is
//     appended.
//
// With shift = 3, σ_min = 1/334 and σ_{T−1} = shift(1/334) = 1/112 (the raw 1/1000 shifted
// twice: shift_a∘shift_b = shift_{a·b}, 9·0.001/(1+8·0.001) = 1/112).
func SD3Schedule(steps int, shift float64) (Schedule, error) {
	if steps < 1 {
		return Schedule{}, fmt.Errorf("build SD3 schedule: steps: got %d, want >= 1", steps)
	}
	if !(shift > 0) || math.IsInf(shift, 0) {
		return Schedule{}, fmt.Errorf("build SD3 schedule: shift: got %v, want a finite value > 0", shift)
	}
	// Step 1, float32 like torch: sigmas = t/1000 with t = 1, then shifted.
	shift32 := float32(shift)
	u32 := float32(1) / float32(numTrainTimesteps)
	sigmaMin := float32(float32(shift32*u32) / float32(1+float32((shift32-1)*u32)))

	// Step 2, float64 like numpy.
	start := float64(1) * numTrainTimesteps // _sigma_to_t(sigma_max), sigma_max = shift(1) = 1
	stop := float64(sigmaMin) * numTrainTimesteps
	sched := Schedule{
		Sigmas:    make([]float32, steps+1),
		Timesteps: make([]float32, steps),
	}
	step := 0.0
	if steps > 1 {
		step = (stop - start) / float64(steps-1)
	}
	for i := range steps {
		t := float64(float64(i)*step) + start
		if i == steps-1 && steps > 1 {
			t = stop
		}
		u := t / numTrainTimesteps
		sigma := float64(shift*u) / float64(1+float64((shift-1)*u))
		// Step 3, float32.
		sched.Sigmas[i] = float32(sigma)
		sched.Timesteps[i] = float32(sched.Sigmas[i] * numTrainTimesteps)
	}
	sched.Sigmas[steps] = 0
	return sched, nil
}

// Steps returns T, the number of sampling steps.
func (s Schedule) Steps() int { return len(s.Timesteps) }

// Dt returns dt_k = σ_{k+1} − σ_k (negative), in float32.
func (s Schedule) Dt(k int) float32 { return s.Sigmas[k+1] - s.Sigmas[k] }

// SDEStd returns the Flow-SDE noise level s_k = a·sqrt(σ_k/(1−σ_k)) of step k. When σ_k = 1 the
// denominator uses σ_1 instead (1−σ_1), as Flow-GRPO does, so the first step stays finite.
// Computed in float64 from the float32 sigmas and rounded once to float32.
func (s Schedule) SDEStd(k int, a float64) float32 {
	sigma := float64(s.Sigmas[k])
	den := sigma
	if s.Sigmas[k] == 1 {
		den = float64(s.Sigmas[1])
	}
	return float32(a * math.Sqrt(sigma/(1-den)))
}

// CPSStd returns the CPS noise level s = σ_{k+1}·sin(a·π/2) of step k, in float32.
func (s Schedule) CPSStd(k int, a float64) float32 {
	return float32(float64(s.Sigmas[k+1]) * math.Sin(a*math.Pi/2))
}

// InitialPsi returns the starting point of calibration, ψ(k) = SDEStd(k, a) for every step.
func (s Schedule) InitialPsi(a float64) []float32 {
	psi := make([]float32, s.Steps())
	for k := range psi {
		psi[k] = s.SDEStd(k, a)
	}
	return psi
}
