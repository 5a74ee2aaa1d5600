// Package nn owns the project's GoMLX building blocks that every trainable layer is made of:
// backend selection (NewBackend: XLA where a PJRT plugin is installed — on CPU the one `just
// setup` puts in the setup cache — else SimpleGo), the matrix products MatMul, Linear, BatchMatMul and DotGeneral
// with a fast reverse-mode gradient, the Dense layer, and the Try/Recover helpers that turn a
// graph-building panic into an error.
//
// # Two traps of GoMLX v0.26.0 on small CPUs, and how this package avoids them
//
// Deadlock: SimpleGo's default worker pool holds a worker slot while an op runs, and a large
// DotGeneral then waits for more slots for its batch splits; on 2 cores (4 slots) a few
// DotGenerals running side by side wait for each other forever. NewBackend("go") configures the
// backend so that this cannot happen (see NewBackend); tests get the same backend from
// package nntest.
//
// Slow gradient: GoMLX's own reverse-mode gradient of DotGeneral is a broadcast Mul followed by a
// ReduceSum, which materialises a [batch, M, N, K] tensor. The DotGenerals built by this package
// (MatMul, Linear, BatchMatMul, DotGeneral, Dense) instead get a gradient made of two DotGenerals
// and at most one transpose per operand. It is on by default; SetFastGradients switches it, for
// the nodes built afterwards, so benchmarks can compare both in one process. DotGenerals built
// directly with graph.DotGeneral, graph.Dot or graph.Einsum keep GoMLX's default gradient.
//
// Graph-building functions here panic on shape errors, as GoMLX's do (the message names both
// shapes); wrap graph construction in Try, or defer Recover, to get an error instead.
package nn
