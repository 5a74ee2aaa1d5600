package tinyocr

import (
	"math/rand/v2"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// BenchmarkConv compares one 3×3, 32→32 convolution on the VAE's 8×32 grid (batch 8) built two
// ways: conv2D (im2col by Gather, then one nn.Linear) and GoMLX's Convolve (SimpleGo's
// ConvGeneral), forward only ("-fwd") and with the gradient of the input ("-grad"). Convolve's
// gradient cannot run on SimpleGo v0.26.0 (it needs the op Reverse, not implemented), so only
// conv2D has a "-grad" variant.
func BenchmarkConv(b *testing.B) {
	backend := nntest.Backend(b)
	const n, h, w, c = 8, LatentHeight, LatentWidth, 32
	r := rand.New(rand.NewPCG(1, 1))
	x := tensors.FromFlatDataAndDimensions(randomData(r, n*h*w*c), n, h, w, c)
	for _, variant := range []string{"im2col-fwd", "convolve-fwd", "im2col-grad"} {
		b.Run(variant, func(b *testing.B) {
			mctx := mlctx.New()
			exec, err := mlctx.NewExec(backend, mctx, func(ctx *mlctx.Context, x *Node) []*Node {
				var y *Node
				if variant != "convolve-fwd" {
					y = conv2D(ctx.In("conv"), x, c, 3, fanInStd(9*c))
				} else {
					k := ctx.In("conv").WithInitializer(scaledNormal(ctx, fanInStd(9*c))).
						VariableWithShape("kernel", shapes.Make(x.DType(), 3, 3, c, c)).ValueGraph(x.Graph())
					y = Convolve(x, k).Strides(1).PadSame().Done()
				}
				loss := ReduceAllSum(Square(y))
				if variant != "im2col-grad" {
					return []*Node{loss}
				}
				return []*Node{loss, Gradient(loss, x)[0]}
			})
			if err != nil {
				b.Fatal(err)
			}
			defer exec.Finalize()
			for b.Loop() {
				outs, err := exec.Exec(x)
				if err != nil {
					b.Fatal(err)
				}
				for _, o := range outs {
					o.FinalizeAll()
				}
			}
		})
	}
}
