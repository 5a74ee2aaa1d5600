package nn

import (
	"fmt"
	"math"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// DotGeneral is graph.DotGeneral with the fast gradient (see SetFastGradients): the output is
// [batch..., lhsCross..., rhsCross...], where batch axes pair lhsBatchAxes[i] with
// rhsBatchAxes[i], contracting axes pair likewise and are summed over, and the cross axes are
// each operand's remaining axes in increasing order. Negative axes count from the end.
// It panics (graph building) if the axes are invalid or paired dimensions differ.
func DotGeneral(lhs *graph.Node, lhsContractingAxes, lhsBatchAxes []int, rhs *graph.Node, rhsContractingAxes, rhsBatchAxes []int) *graph.Node {
	axes := dotAxes{
		lhsContracting: normalizeAxes(lhs, lhsContractingAxes),
		lhsBatch:       normalizeAxes(lhs, lhsBatchAxes),
		rhsContracting: normalizeAxes(rhs, rhsContractingAxes),
		rhsBatch:       normalizeAxes(rhs, rhsBatchAxes),
	}
	out := graphDotGeneral(lhs, axes, rhs)
	if fastGradients.Load() {
		registerFastDot(out, axes)
	}
	return out
}

// graphDotGeneral calls graph.DotGeneral, adding both operand shapes to its panic message.
func graphDotGeneral(lhs *graph.Node, axes dotAxes, rhs *graph.Node) *graph.Node {
	defer func() {
		if r := recover(); r != nil {
			panic(fmt.Errorf("DotGeneral(lhs %s, contracting %v, batch %v; rhs %s, contracting %v, batch %v): %v",
				lhs.Shape(), axes.lhsContracting, axes.lhsBatch, rhs.Shape(), axes.rhsContracting, axes.rhsBatch, r))
		}
	}()
	return graph.DotGeneral(lhs, slices.Clone(axes.lhsContracting), slices.Clone(axes.lhsBatch),
		rhs, slices.Clone(axes.rhsContracting), slices.Clone(axes.rhsBatch))
}

// normalizeAxes returns axes with negative values counted from the end of x's axes.
func normalizeAxes(x *graph.Node, axes []int) []int {
	out := make([]int, len(axes))
	for i, axis := range axes {
		if axis < -x.Rank() || axis >= x.Rank() {
			panic(fmt.Errorf("axis %d out of range for operand shape %s", axis, x.Shape()))
		}
		out[i] = graph.AdjustAxisToOperandRank(x, axis)
	}
	return out
}

// MatMul returns x·w for x [..., K] and w [K, N]: the result is [..., N], same dtype.
// It panics if x's last dimension differs from w's first or w is not rank 2.
func MatMul(x, w *graph.Node) *graph.Node {
	if w.Rank() != 2 || x.Rank() < 1 || x.Shape().Dim(-1) != w.Shape().Dim(0) {
		panic(fmt.Errorf("MatMul: want x [..., K] and w [K, N], got x %s and w %s", x.Shape(), w.Shape()))
	}
	return DotGeneral(x, []int{x.Rank() - 1}, nil, w, []int{0}, nil)
}

// Linear applies a torch/diffusers linear layer: x·weightᵀ + bias for x [..., in],
// weight [out, in] and bias [out] (or nil for none); the result is [..., out], x's dtype.
// It panics if the shapes do not fit.
func Linear(x, weight, bias *graph.Node) *graph.Node {
	if weight.Rank() != 2 || x.Rank() < 1 || x.Shape().Dim(-1) != weight.Shape().Dim(1) {
		panic(fmt.Errorf("Linear: want x [..., in] and weight [out, in], got x %s and weight %s", x.Shape(), weight.Shape()))
	}
	y := DotGeneral(x, []int{x.Rank() - 1}, nil, weight, []int{1}, nil)
	if bias != nil {
		if bias.Rank() != 1 || bias.Shape().Dim(0) != weight.Shape().Dim(0) {
			panic(fmt.Errorf("Linear: want bias [%d] for weight %s, got bias %s", weight.Shape().Dim(0), weight.Shape(), bias.Shape()))
		}
		y = graph.Add(y, graph.ExpandLeftToRank(bias, y.Rank()))
	}
	return y
}

// BatchMatMul returns a·b for a [B..., M, K] and b [B..., K, N] (or, if transposeB, a·bᵀ for
// b [B..., N, K]); the result is [B..., M, N]. The batch dimensions B... must be equal (no
// broadcasting). Used for attention scores (q·kᵀ) and attention·values.
// It panics if the shapes do not fit.
func BatchMatMul(a, b *graph.Node, transposeB bool) *graph.Node {
	rank := a.Rank()
	if rank < 2 || b.Rank() != rank || !slices.Equal(a.Shape().Dimensions[:rank-2], b.Shape().Dimensions[:rank-2]) {
		panic(fmt.Errorf("BatchMatMul: want a [B..., M, K] and b with the same rank and batch dimensions, got a %s and b %s (transposeB=%v)",
			a.Shape(), b.Shape(), transposeB))
	}
	batch := axisRange(0, rank-2)
	bContracting := rank - 2
	if transposeB {
		bContracting = rank - 1
	}
	if a.Shape().Dim(-1) != b.Shape().Dim(bContracting) {
		panic(fmt.Errorf("BatchMatMul: contracting dimensions differ: a %s, b %s (transposeB=%v)", a.Shape(), b.Shape(), transposeB))
	}
	return DotGeneral(a, []int{rank - 1}, batch, b, []int{bContracting}, batch)
}

// Dense creates (or, if they exist, reuses) the variables "weight" [out, in] and — if useBias —
// "bias" [out] in ctx's current scope and returns Linear(x, weight, bias) for x [..., in]:
// [..., out]. The variables take x's dtype. New weights are drawn from a Xavier/Glorot normal
// distribution, stddev √(2/(in+out)), from ctx's random state; new biases are zero. Call it as
// Dense(ctx.In("to_q"), x, d, true) so the scope path equals the checkpoint key.
func Dense(ctx *mlctx.Context, x *graph.Node, out int, useBias bool) *graph.Node {
	if x.Rank() < 1 || out < 1 {
		panic(fmt.Errorf("Dense: want x [..., in] and out >= 1, got x %s and out %d", x.Shape(), out))
	}
	in := x.Shape().Dim(-1)
	dtype := x.DType()
	wCtx := ctx.WithInitializer(func(g *graph.Graph, shape shapes.Shape) *graph.Node {
		stddev := math.Sqrt(2.0 / float64(in+out))
		return graph.MulScalar(ctx.RandomNormal(g, shape), stddev)
	})
	weight := wCtx.VariableWithShape("weight", shapes.Make(dtype, out, in)).ValueGraph(x.Graph())
	var bias *graph.Node
	if useBias {
		bCtx := ctx.WithInitializer(func(g *graph.Graph, shape shapes.Shape) *graph.Node { return graph.Zeros(g, shape) })
		bias = bCtx.VariableWithShape("bias", shapes.Make(dtype, out)).ValueGraph(x.Graph())
	}
	return Linear(x, weight, bias)
}
