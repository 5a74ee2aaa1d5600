// Package rl owns the algorithm core of DenseGRPO / Flow-GRPO: the SD3 sigma schedule, the ODE,
// Flow-SDE and CPS sampling steps with their log-probabilities, trajectory sampling, dense
// rewards by ODE look-ahead, sparse and dense GRPO advantages, the clipped GRPO loss with its KL
// term, gradient accumulation with AdamW, and the exploration-space calibration of DenseGRPO
// (Algorithm 1). It runs the trainable model through GoMLX and never imports ONNX Runtime: the
// model comes in as a Velocity function and the frozen decoder plus reward models come in as a
// Scorer.
//
// # Sign convention (the one used everywhere in this package)
//
// A latent at noise level σ is x_σ = (1−σ)·x0 + σ·x1, where x0 is the clean latent and x1 the
// Gaussian noise: σ = 1 is pure noise, σ = 0 is clean. The model predicts the velocity
// v = x1 − x0 = dx_σ/dσ, and is fed the timestep 1000·σ. Sampling walks the schedule from
// σ_0 = 1 down to σ_T = 0, so every step has dt_k = σ_{k+1} − σ_k < 0 and the Euler step is
// x_{k+1} = x_k + v·dt_k. (The GoMLX flow-matching example uses the opposite time direction;
// this package does not.)
//
// Step indices: trajectories store x_0 … x_T; step k is the transition x_k → x_{k+1} taken at
// σ_k with timestep 1000·σ_k. All step maths is float32, whatever the model's precision.
package rl
