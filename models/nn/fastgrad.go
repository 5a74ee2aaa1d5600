package nn

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"weak"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// Global state of the fast gradient, kept to the minimum GoMLX's design allows.
//
// GoMLX looks the gradient of a node up by node type in graph.VJPRegistration, and the VJP it
// calls only sees the *graph.Node, whose DotGeneral axes are unexported. So this package:
//   - replaces graph.VJPRegistration[graph.NodeTypeDotGeneral] once, at init, by dispatchDotGeneralVJP;
//   - records the axes of every DotGeneral it builds (while fast gradients are enabled) in
//     fastDots, keyed by a weak pointer to the node, so the entry disappears with the graph;
//   - dispatchDotGeneralVJP uses the fast VJP for recorded nodes and GoMLX's original VJP for
//     every other DotGeneral (graph.Dot, graph.Einsum, GoMLX layers, nodes built while disabled).
var (
	// fastGradients is read when a DotGeneral node is built, not when its gradient is built.
	fastGradients atomic.Bool

	// fastDots maps weak.Pointer[graph.Node] of a DotGeneral built here to its dotAxes.
	fastDots sync.Map

	// defaultDotGeneralVJP is GoMLX's own DotGeneral gradient, used for nodes not in fastDots.
	defaultDotGeneralVJP graph.VJP
)

func init() {
	fastGradients.Store(true)
	defaultDotGeneralVJP = graph.VJPRegistration[graph.NodeTypeDotGeneral]
	graph.VJPRegistration[graph.NodeTypeDotGeneral] = dispatchDotGeneralVJP
}

// SetFastGradients enables (the default) or disables the two-DotGeneral gradient for the
// DotGenerals that MatMul, Linear, BatchMatMul, DotGeneral and Dense build from now on, and
// returns the previous setting. Nodes already built keep the gradient they were built with, so
// a graph's gradient is decided when its forward pass is built. Both settings give the same
// gradient values (up to float rounding); the switch exists to measure the speed difference.
// Safe for concurrent use.
func SetFastGradients(enabled bool) (previous bool) {
	return fastGradients.Swap(enabled)
}

// FastGradients reports whether DotGenerals built now get the fast gradient.
func FastGradients() bool {
	return fastGradients.Load()
}

// dotAxes are the (non-negative) axes of a DotGeneral, as passed to graph.DotGeneral.
type dotAxes struct {
	lhsContracting, lhsBatch, rhsContracting, rhsBatch []int
}

// registerFastDot records node (a DotGeneral) so that its gradient is built by fastDotGeneralVJP.
func registerFastDot(node *graph.Node, axes dotAxes) {
	key := weak.Make(node)
	fastDots.Store(key, axes)
	runtime.AddCleanup(node, func(k weak.Pointer[graph.Node]) { fastDots.Delete(k) }, key)
}

// dispatchDotGeneralVJP is the VJP installed for graph.NodeTypeDotGeneral.
func dispatchDotGeneralVJP(node *graph.Node, vjpOutputs []*graph.Node, outputShape shapes.Shape) []*graph.Node {
	if axes, ok := fastDots.Load(weak.Make(node)); ok {
		return fastDotGeneralVJP(node, vjpOutputs[0], axes.(dotAxes))
	}
	return defaultDotGeneralVJP(node, vjpOutputs, outputShape)
}

// fastDotGeneralVJP returns the gradients with respect to lhs and rhs of
// node = DotGeneral(lhs, axes.lhsContracting, axes.lhsBatch, rhs, axes.rhsContracting, axes.rhsBatch),
// given v, the gradient with respect to node (same shape as node).
//
// The output of DotGeneral is laid out [batch..., lhsCross..., rhsCross...], where the cross axes
// are each operand's remaining axes in increasing order. With out = Σ_c lhs[b,l,c]·rhs[b,c,r]:
//
//	∂/∂lhs[b,l,c] = Σ_r v[b,l,r]·rhs[b,c,r]  — a DotGeneral of v and rhs contracting rhsCross
//	∂/∂rhs[b,c,r] = Σ_l v[b,l,r]·lhs[b,l,c]  — a DotGeneral of v and lhs contracting lhsCross
//
// each followed by the transpose (if any) back to the operand's own axis order.
func fastDotGeneralVJP(node, v *graph.Node, axes dotAxes) []*graph.Node {
	inputs := node.Inputs()
	lhs, rhs := inputs[0], inputs[1]
	lhsCross := crossAxes(lhs.Rank(), axes.lhsContracting, axes.lhsBatch)
	rhsCross := crossAxes(rhs.Rank(), axes.rhsContracting, axes.rhsBatch)
	numBatch := len(axes.lhsBatch)
	vBatch := axisRange(0, numBatch)
	vLhsCross := axisRange(numBatch, len(lhsCross))
	vRhsCross := axisRange(numBatch+len(lhsCross), len(rhsCross))

	lhsGrad := operandGradient(v, vBatch, vLhsCross, vRhsCross,
		operandAxes{rank: lhs.Rank(), batch: axes.lhsBatch, cross: lhsCross, contracting: axes.lhsContracting},
		rhs, operandAxes{rank: rhs.Rank(), batch: axes.rhsBatch, cross: rhsCross, contracting: axes.rhsContracting})
	rhsGrad := operandGradient(v, vBatch, vRhsCross, vLhsCross,
		operandAxes{rank: rhs.Rank(), batch: axes.rhsBatch, cross: rhsCross, contracting: axes.rhsContracting},
		lhs, operandAxes{rank: lhs.Rank(), batch: axes.lhsBatch, cross: lhsCross, contracting: axes.lhsContracting})
	return []*graph.Node{lhsGrad, rhsGrad}
}

// operandAxes describes one DotGeneral operand: its rank and its batch, cross (kept) and
// contracting axes; batch[i] pairs with the other operand's batch[i], contracting likewise.
type operandAxes struct {
	rank                      int
	batch, cross, contracting []int
}

// operandGradient returns the gradient with respect to "this" operand (described by this) of a
// DotGeneral whose other operand is other, given v, the gradient with respect to its output.
// vThisCross and vOtherCross are the positions of each operand's cross axes in v.
//
// The gradient is DotGeneral(v, other) contracting the other operand's cross axes, batch axes
// aligned. It yields [batch..., thisCross..., otherRest...] (or, operands swapped,
// [batch..., otherRest..., thisCross...]), where otherRest are the other operand's contracting
// axes in increasing order; each pairs with one of this operand's contracting axes. Of the two
// operand orders, the one whose result already has this operand's layout is chosen, so that the
// common layouts (x·w, x·wᵀ, gradient of w in x·w) need no transpose at all.
func operandGradient(v *graph.Node, vBatch, vThisCross, vOtherCross []int, this operandAxes, other *graph.Node, otherAx operandAxes) *graph.Node {
	// otherRest: the other operand's contracting axes, in the order DotGeneral outputs them.
	otherRest := slices.Clone(otherAx.contracting)
	slices.Sort(otherRest)
	// restPos[k]: position within otherRest of the axis paired with this.contracting[k].
	restPos := make([]int, len(this.contracting))
	for k, axis := range otherAx.contracting {
		restPos[k] = slices.Index(otherRest, axis)
	}
	numBatch, numCross, numRest := len(this.batch), len(this.cross), len(otherRest)

	// Order A: DotGeneral(v, other) -> [batch, thisCross, otherRest].
	permA := make([]int, this.rank)
	// Order B: DotGeneral(other, v) -> [batch, otherRest, thisCross].
	permB := make([]int, this.rank)
	for i, axis := range this.batch {
		permA[axis], permB[axis] = i, i
	}
	for j, axis := range this.cross {
		permA[axis] = numBatch + j
		permB[axis] = numBatch + numRest + j
	}
	for k, axis := range this.contracting {
		permA[axis] = numBatch + numCross + restPos[k]
		permB[axis] = numBatch + restPos[k]
	}

	var grad *graph.Node
	var perm []int
	if isIdentity(permB) && !isIdentity(permA) {
		grad = graph.DotGeneral(other, otherAx.cross, otherAx.batch, v, vOtherCross, vBatch)
		perm = permB
	} else {
		grad = graph.DotGeneral(v, vOtherCross, vBatch, other, otherAx.cross, otherAx.batch)
		perm = permA
	}
	if !isIdentity(perm) {
		grad = graph.TransposeAllAxes(grad, perm...)
	}
	return grad
}

// crossAxes returns, in increasing order, the axes of a rank-rank operand that are neither
// contracting nor batch.
func crossAxes(rank int, contracting, batch []int) []int {
	cross := make([]int, 0, rank)
	for axis := range rank {
		if !slices.Contains(contracting, axis) && !slices.Contains(batch, axis) {
			cross = append(cross, axis)
		}
	}
	return cross
}

// axisRange returns [start, start+1, …, start+n-1].
func axisRange(start, n int) []int {
	r := make([]int, n)
	for i := range r {
		r[i] = start + i
	}
	return r
}

func isIdentity(perm []int) bool {
	for i, p := range perm {
		if i != p {
			return false
		}
	}
	return true
}
