// Package pipeline joins the parts into the product: it reads the TOML configuration, runs
// the staged DenseGRPO epoch (rollout → look-ahead → decode → score → advantages → train) as
// goroutines over bounded channels under one errgroup, and owns the run directory: the
// resolved config, metrics.jsonl, sample grids, atomic checkpoints and ψ.
//
// Training runs in GoMLX. The passes that need no gradient — rollouts, look-aheads, evaluation
// and the KL reference — run by default on an ONNX export of the policy made at the start of
// each epoch (inference.go), which on CPU is an order of magnitude faster per call.
package pipeline
