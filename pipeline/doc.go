// Package pipeline joins the parts into the product: it reads the TOML configuration, runs
// the staged DenseGRPO epoch (rollout → look-ahead → decode → score → advantages → train) as
// goroutines over bounded channels under one errgroup, and owns the run directory: the
// resolved config, metrics.jsonl, sample grids, atomic checkpoints and ψ.
//
// The algorithm is package rl's; the pipeline supplies what it needs from outside: the engines
// (engine.go: an ONNX export of the policy made at the start of each epoch, by default, which
// on CPU is an order of magnitude faster per call than the GoMLX graph), the text encoder, and
// decoding and scoring between rl.Method.Targets and rl.Method.Rewards (epoch.go). Training
// runs in GoMLX.
package pipeline
