package rl

import (
	"context"
	"fmt"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn"
)

// Velocity is the trainable flow model as this package's graphs see it: x [B, …latent dims]
// (float32), timestep [B] = 1000·σ (float32), cond the per-sample conditioning tensors (each
// with leading axis B, e.g. text embeddings [B, L, D] and pooled embeddings [B, D]); it returns
// v [B, …latent dims]. withLoRA = false must give the frozen base model (the KL reference). It
// is called inside GoMLX graph building with a context that has Checked(false), because the
// same model is built several times in one graph (guidance branches, policy and reference).
type Velocity func(ctx *mlctx.Context, x, timestep *Node, cond []*Node, withLoRA bool) *Node

// GraphEngine is the Engine of a GoMLX Velocity whose weights live in a context: the policy
// (withLoRA) or its base model. One graph per input shape, compiled on first use; safe for
// concurrent use.
type GraphEngine struct {
	exec   *mlctx.Exec
	latent []int
}

// NewGraphEngine returns the engine of vel with the weights of ctx for latents of shape latent
// (e.g. [C, H, W]), with or without the adapters.
func NewGraphEngine(backend backends.Backend, ctx *mlctx.Context, vel Velocity, latent []int, withLoRA bool) (*GraphEngine, error) {
	exec, err := mlctx.NewExec(backend, ctx.Checked(false), func(ctx *mlctx.Context, in []*Node) []*Node {
		return []*Node{f32(vel(ctx, in[0], in[1], in[2:], withLoRA))}
	})
	if err != nil {
		return nil, fmt.Errorf("build velocity graph: %w", err)
	}
	return &GraphEngine{exec: exec, latent: append([]int(nil), latent...)}, nil
}

// Velocity implements Engine.
func (e *GraphEngine) Velocity(ctx context.Context, c Conditioning, x, timestep []float32, rows []Row) ([]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := len(rows)
	if len(timestep) != n || len(x) != n*shapeSize(e.latent) {
		return nil, fmt.Errorf("graph velocity: %d latent values and %d timesteps for %d rows, want %d and %d", len(x), len(timestep), n, n*shapeSize(e.latent), n)
	}
	cond, err := c.Gather(rows)
	if err != nil {
		return nil, err
	}
	args := []any{latentTensor(x, n, e.latent), timestep}
	for _, t := range cond {
		args = append(args, tensors.FromFlatDataAndDimensions(t.Data, t.Shape...))
	}
	outs, err := run(e.exec, args...)
	if err != nil {
		return nil, fmt.Errorf("graph velocity: %w", err)
	}
	return outs[0], nil
}

// GuidedVelocity is classifier-free guidance inside a graph, where the training loss needs it
// (the gradient flows through it): vel at x [B, …] with timestep [B], per-sample cond and,
// when w > 0, v = w·v_c + (1−w)·v_u = v_u + w·(v_c − v_u), the conditional and unconditional
// branches running as one batch of 2B (x and the timestep repeated, cond concatenated with
// uncond). Output float32. Guide is the same combination on the host, rounding alike.
func GuidedVelocity(ctx *mlctx.Context, vel Velocity, x, timestep *Node, cond, uncond []*Node, w float64, withLoRA bool) *Node {
	if w == 0 {
		return f32(vel(ctx, x, timestep, cond, withLoRA))
	}
	if len(uncond) != len(cond) {
		panicf("rl: guidance needs one unconditional tensor per conditional tensor, got %d and %d", len(uncond), len(cond))
	}
	b := x.Shape().Dimensions[0]
	both := make([]*Node, len(cond))
	for i := range cond {
		both[i] = Concatenate([]*Node{cond[i], uncond[i]}, 0)
	}
	v := f32(vel(ctx, Concatenate([]*Node{x, x}, 0), Concatenate([]*Node{timestep, timestep}, 0), both, withLoRA))
	// A weighted sum over a leading axis of 2, not Slice: Slice's gradient needs Pad, which
	// SimpleGo does not implement.
	dims := append([]int{2, b}, v.Shape().Dimensions[1:]...)
	coefDims := make([]int, len(dims))
	for i := range coefDims {
		coefDims[i] = 1
	}
	coefDims[0] = 2
	coef := Reshape(Const(x.Graph(), []float32{float32(w), float32(1 - w)}), coefDims...)
	return ReduceSum(Mul(Reshape(v, dims...), coef), 0)
}

// selectRows gives every sample its conditioning row: t [P, …] gathered with idx [B] (int32),
// or a shared t [1, …] broadcast to [B, …].
func selectRows(t, idx *Node) *Node {
	b := idx.Shape().Dimensions[0]
	if t.Rank() == 0 {
		panicf("rl: conditioning tensors need a leading prompt axis, got shape %s", t.Shape())
	}
	if t.Shape().Dimensions[0] == 1 {
		dims := append([]int{b}, t.Shape().Dimensions[1:]...)
		return BroadcastToDims(t, dims...)
	}
	return Gather(t, Reshape(idx, b, 1))
}

// condInputs splits the tail of an Exec's inputs into cond and uncond, selecting rows.
func condInputs(tail []*Node, nCond int, idx *Node) (cond, uncond []*Node) {
	for i, t := range tail {
		if i < nCond {
			cond = append(cond, selectRows(t, idx))
		} else {
			uncond = append(uncond, selectRows(t, idx))
		}
	}
	return cond, uncond
}

// timestepOf returns 1000·σ as [B] for sigma scalar or [B].
func timestepOf(sigma *Node, b int) *Node {
	t := MulScalar(f32(sigma), numTrainTimesteps)
	if t.Rank() == 0 {
		t = BroadcastToDims(t, b)
	}
	return t
}

// run executes exec and copies its outputs to float32 slices, freeing the tensors.
func run(exec *mlctx.Exec, args ...any) (outs [][]float32, err error) {
	defer nn.Recover(&err)
	res, err := exec.Exec(args...)
	if err != nil {
		return nil, err
	}
	outs = make([][]float32, len(res))
	for i, t := range res {
		outs[i], err = tensors.CopyFlatData[float32](t)
		if err != nil {
			return nil, fmt.Errorf("read output %d: %w", i, err)
		}
		t.FinalizeAll()
	}
	return outs, nil
}

// latentTensor wraps flat data of n latents as a [n, …LatentShape] tensor.
func latentTensor(data []float32, n int, shape []int) *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(data, append([]int{n}, shape...)...)
}

func int32s(xs []int) []int32 {
	out := make([]int32, len(xs))
	for i, x := range xs {
		out[i] = int32(x)
	}
	return out
}
