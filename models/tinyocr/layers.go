package tinyocr

import (
	"fmt"
	"math"
	"strings"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn"
)

// VariableKey is the checkpoint key of a GoMLX variable: its scope path without the leading
// "/", with "/" replaced by ".", then the variable name. The scope
// /decoder/mid_block/resnets/0/conv1 and name "weight" give "decoder.mid_block.resnets.0.conv1.weight".
func VariableKey(scope, name string) string {
	s := strings.TrimPrefix(scope, mlctx.ScopeSeparator)
	if s == "" {
		return name
	}
	return strings.ReplaceAll(s, mlctx.ScopeSeparator, ".") + "." + name
}

// ScopeOfKey inverts VariableKey: "a.b.0.weight" gives scope "/a/b/0" and name "weight".
func ScopeOfKey(key string) (scope, name string) {
	i := strings.LastIndexByte(key, '.')
	if i < 0 {
		return mlctx.RootScope, key
	}
	return mlctx.ScopeSeparator + strings.ReplaceAll(key[:i], ".", mlctx.ScopeSeparator), key[i+1:]
}

// silu is x·σ(x) (ONNX: Mul(x, Sigmoid(x))).
func silu(x *Node) *Node { return Mul(x, Sigmoid(x)) }

// scaledNormal returns an initializer drawing N(0, std²).
func scaledNormal(ctx *mlctx.Context, std float64) mlctx.VariableInitializer {
	return func(g *Graph, shape shapes.Shape) *Node {
		return MulScalar(ctx.RandomNormal(g, shape), std)
	}
}

func zerosInit(g *Graph, shape shapes.Shape) *Node { return Zeros(g, shape) }

func onesInit(g *Graph, shape shapes.Shape) *Node { return Ones(g, shape) }

// conv2D is a stride-1, "same"-padded 2-D convolution of x [B,H,W,Cin] (channels last) with the
// variables "weight" [Cout,Cin,k,k] (torch/ONNX layout) and "bias" [Cout] of ctx's scope; the
// result is [B,H,W,Cout]. It is computed as im2col (k² shifted slices of the zero-padded input,
// stacked so the feature order is (Cin, ky, kx)) followed by one nn.Linear, because SimpleGo's
// ConvGeneral is a scalar loop while nn's matmul has a fast gradient. initStd is the standard
// deviation of new weights (0: zero-initialised).
func conv2D(ctx *mlctx.Context, x *Node, cout, k int, initStd float64) *Node {
	if x.Rank() != 4 || k%2 != 1 {
		panic(fmt.Errorf("conv2D in scope %s: want x [B,H,W,C] and odd k, got x %s and k %d", ctx.Scope(), x.Shape(), k))
	}
	g := x.Graph()
	cin := x.Shape().Dim(3)
	wInit := mlctx.VariableInitializer(zerosInit)
	if initStd > 0 {
		wInit = scaledNormal(ctx, initStd)
	}
	weight := ctx.WithInitializer(wInit).VariableWithShape("weight", shapes.Make(x.DType(), cout, cin, k, k)).ValueGraph(g)
	bias := ctx.WithInitializer(zerosInit).VariableWithShape("bias", shapes.Make(x.DType(), cout)).ValueGraph(g)
	cols := x
	if k > 1 {
		cols = im2col(x, k)
	}
	// As a 2-D product [B·H·W, Cin·k²]×[Cin·k², Cout]: SimpleGo runs its blocked kernel on
	// single-axis contractions, also in the gradient.
	dims := x.Shape().Dimensions
	y := nn.Linear(Reshape(cols, dims[0]*dims[1]*dims[2], cin*k*k), Reshape(weight, cout, cin*k*k), bias)
	return Reshape(y, dims[0], dims[1], dims[2], cout)
}

// im2col returns the k×k neighbourhoods of x [B,H,W,C] with zero padding ("same"), as
// [B,H,W,C·k·k] in feature order (C, ky, kx). It gathers rows of x (viewed as [H·W, B, C] with
// one extra zero row for out-of-image neighbours) with constant indices: slicing would be
// simpler, but the gradient of Slice is Pad, which SimpleGo v0.26.0 does not implement, while
// the gradient of Gather (ScatterSum) is.
func im2col(x *Node, k int) *Node {
	g := x.Graph()
	b, h, w, c := x.Shape().Dim(0), x.Shape().Dim(1), x.Shape().Dim(2), x.Shape().Dim(3)
	rows := Reshape(TransposeAllDims(x, 1, 2, 0, 3), h*w, b, c)
	rows = Concatenate([]*Node{rows, Zeros(g, shapes.Make(x.DType(), 1, b, c))}, 0)
	idx := make([]int32, 0, h*w*k*k)
	p := k / 2
	for y := range h {
		for xx := range w {
			for ky := range k {
				for kx := range k {
					sy, sx := y+ky-p, xx+kx-p
					if sy < 0 || sy >= h || sx < 0 || sx >= w {
						idx = append(idx, int32(h*w)) // the zero row
					} else {
						idx = append(idx, int32(sy*w+sx))
					}
				}
			}
		}
	}
	gathered := Gather(rows, Const(g, tensors.FromFlatDataAndDimensions(idx, h, w, k*k, 1))) // [H,W,K,B,C]
	return Reshape(TransposeAllDims(gathered, 3, 0, 1, 4, 2), b, h, w, c*k*k)
}

// fanInStd is the He-style initial standard deviation 1/√fanIn, for layers followed by SiLU.
func fanInStd(fanIn int) float64 { return 1 / math.Sqrt(float64(fanIn)) }

// spaceToDepth turns x [B,H,W,C] into [B,H/f,W/f,C·f·f] with the feature order (C, fy, fx)
// (the order of torch's pixel_unshuffle and ONNX DepthToSpace mode CRD).
func spaceToDepth(x *Node, f int) *Node {
	b, h, w, c := x.Shape().Dim(0), x.Shape().Dim(1), x.Shape().Dim(2), x.Shape().Dim(3)
	x = Reshape(x, b, h/f, f, w/f, f, c)      // [B, H', fy, W', fx, C]
	x = TransposeAllDims(x, 0, 1, 3, 5, 2, 4) // [B, H', W', C, fy, fx]
	return Reshape(x, b, h/f, w/f, c*f*f)
}

// depthToSpace inverts spaceToDepth: [B,H',W',C·f·f] → [B,H'·f,W'·f,C].
func depthToSpace(x *Node, f int) *Node {
	b, h, w, cff := x.Shape().Dim(0), x.Shape().Dim(1), x.Shape().Dim(2), x.Shape().Dim(3)
	c := cff / (f * f)
	x = Reshape(x, b, h, w, c, f, f)          // [B, H', W', C, fy, fx]
	x = TransposeAllDims(x, 0, 1, 4, 2, 5, 3) // [B, H', fy, W', fx, C]
	return Reshape(x, b, h*f, w*f, c)
}

// layerNorm normalises the last axis of x and applies the variables "weight" and "bias" [D]
// of ctx's scope: (x − mean)/√(var + eps)·weight + bias, variance biased (torch's LayerNorm).
func layerNorm(ctx *mlctx.Context, x *Node) *Node {
	g := x.Graph()
	d := x.Shape().Dim(-1)
	weight := ctx.WithInitializer(onesInit).VariableWithShape("weight", shapes.Make(x.DType(), d)).ValueGraph(g)
	bias := ctx.WithInitializer(zerosInit).VariableWithShape("bias", shapes.Make(x.DType(), d)).ValueGraph(g)
	mean := ReduceAndKeep(x, ReduceMean, -1)
	centred := Sub(x, mean)
	variance := ReduceAndKeep(Square(centred), ReduceMean, -1)
	y := Div(centred, Sqrt(AddScalar(variance, LayerNormEpsilon)))
	return Add(Mul(y, ExpandLeftToRank(weight, y.Rank())), ExpandLeftToRank(bias, y.Rank()))
}

// LayerNormEpsilon is the ε of every layer norm of the package (torch's default).
const LayerNormEpsilon = 1e-5
