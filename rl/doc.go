// Package rl owns the algorithm of DenseGRPO / Flow-GRPO: the SD3 sigma schedule, the ODE,
// Flow-SDE and CPS sampling steps with their log-probabilities, classifier-free guidance,
// rollouts, dense rewards by ODE look-ahead, sparse and dense GRPO advantages, the clipped GRPO
// loss with its KL term, gradient accumulation with AdamW, and the exploration-space
// calibration of DenseGRPO (Algorithm 1). It never imports ONNX Runtime.
//
// # The seam between the algorithm and the engines
//
// A model comes in as an Engine: raw velocities for a batch of latents, timesteps and
// conditioning rows — one model call, nothing else. Everything around that call is here, once:
// Flow adds guidance and runs the Euler loop (with its batching and the first-step reuse of the
// look-ahead), Sampler runs rollouts (the step maths is one GoMLX graph), Method is the
// dense/sparse choice and owns the look-ahead targets, R_k/ΔR_k and the advantages, and the
// random streams are in noise.go. GraphEngine is the GoMLX adapter (the trainable policy,
// whose weights live in a GoMLX context); package pipeline adds the ONNX Runtime one, supplies
// decoding and scoring between Method.Targets and Method.Rewards, and runs the stages. Training
// needs gradients, so it builds its own graph around the Velocity function (Trainer).
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
//
// # Where each formula lives
//
//	formula                                 function                                   file
//	SD3 schedule σ_k, timesteps 1000·σ_k    SD3Schedule                                schedule.go
//	Flow-SDE noise s_k = a·sqrt(σ/(1−σ))    Schedule.SDEStd; ψ(k) instead: StepStd     schedule.go, steps.go
//	Flow-SDE step: mean, std, log p         SDEMean, SDEStdDev, SDELogProb, SDEStep    steps.go
//	CPS step: s, mean, log p                Schedule.CPSStd, CPSMean, CPSLogProb,      schedule.go, steps.go
//	                                        CPSStep
//	ODE (Euler) step x + v·dt               eulerStep, looped by Flow.IntegrateODE     engine.go
//	classifier-free guidance                Guide (host, every engine);                engine.go,
//	                                        GuidedVelocity (the training graph)        graphengine.go
//	rollout: x_0, noise, x_k, log p         Sampler.Rollout                            sampler.go
//	look-ahead (first step reused)          LookaheadSigmas, LookaheadPaths,           dense.go
//	                                        Method.Targets
//	R_k, ΔR_k = R_{k+1} − R_k               Method.Rewards, StepRewards                dense.go
//	SDPO queries: K scored states per       RewardStates, SelectQueries,               queries.go,
//	trajectory, the rest predicted by       Queries.Predict, Method.Targets/Rewards    dense.go
//	cosine-weighted average; accuracy       QueryAccuracy
//	advantages (group/global std, clip)     SparseAdvantages, DenseAdvantages,         advantages.go,
//	                                        Method.Advantages                          dense.go
//	GRPO loss: clipped ratio + β·KL         GRPOLoss, StepObjective                    loss.go
//	gradient accumulation, clip, AdamW      Trainer.AccumulateSteps, Trainer.Apply     train.go
//	calibration of ψ (Algorithm 1)          Calibrate                                  calibrate.go
//	noise streams (rollout, ODE sampling)   rolloutRNG, InitialNoise                   noise.go
package rl
