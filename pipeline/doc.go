// Package pipeline joins the parts into the product: it reads the TOML configuration, runs
// the staged DenseGRPO epoch (rollout → look-ahead → decode → score → advantages → train) as
// goroutines over bounded channels under one errgroup, and owns the run directory: the
// resolved config, metrics.jsonl, sample grids, atomic checkpoints and ψ.
package pipeline
