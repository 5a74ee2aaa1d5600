package mmdit

import (
	"math"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// sgdStep builds one plain SGD step on the MSE between the prediction and
// target (inputs: latents, timestep, enc, pooled, target) and returns the loss
// before the step.
func sgdStep(m *Model, withLoRA bool, lr float64) func(ctx *mlctx.Context, in []*Node) *Node {
	return func(ctx *mlctx.Context, in []*Node) *Node {
		g := in[0].Graph()
		pred := m.Forward(ctx, in[0], in[1], in[2], in[3], withLoRA)
		loss := ReduceAllMean(Square(Sub(pred, in[4])))
		grads := ctx.BuildTrainableVariablesGradientsGraph(loss)
		i := 0
		for v := range ctx.IterVariables() {
			if v.Trainable && v.InUseByGraph(g) {
				v.SetValueGraph(Sub(v.ValueGraph(g), MulScalar(grads[i], lr)))
				i++
			}
		}
		return loss
	}
}

// TestPretrainStepLowersLoss: without LoRA every base weight is trainable, the
// gradient graph builds on SimpleGo, and a small SGD step lowers the loss.
func TestPretrainStepLowersLoss(t *testing.T) {
	m, err := New(smallConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	randomizeBase(t, ctx, m, 3)
	in := makeInputs(m.Config, 2, 4, 8, 5, 2)
	target := makeInputs(m.Config, 2, 4, 8, 5, 9).latents
	exec, err := mlctx.NewExec(nntest.Backend(t), ctx, sgdStep(m, false, 1e-3))
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	var losses []float32
	for range 2 {
		var out *tensors.Tensor
		if err := execErr(func() error {
			var err error
			out, err = exec.Exec1(in.latents, in.timestep, in.enc, in.pooled, target)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		losses = append(losses, flat(t, out)[0])
	}
	if !(losses[1] < losses[0]) || math.IsNaN(float64(losses[1])) {
		t.Errorf("loss before/after one SGD step: %g → %g, want a decrease", losses[0], losses[1])
	}
}

// TestJointAttentionEqualsConcatenatedQueries checks the per-stream query
// formulation against diffusers' literal one: concatenate image and text
// queries, attend, split the rows.
func TestJointAttentionEqualsConcatenatedQueries(t *testing.T) {
	m, err := New(smallConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	randomizeBase(t, ctx, m, 3)
	in := makeInputs(m.Config, 2, 4, 8, 5, 2)
	exec, err := mlctx.NewExec(nntest.Backend(t), ctx, func(ctx *mlctx.Context, lat, enc *Node) []*Node {
		b := m.newBuilder(ctx, lat.Graph(), false)
		x := b.patchEmbed(lat)
		txt := b.linear("context_embedder", enc)
		const mod = "transformer_blocks.0.attn"
		gotX, gotTxt := b.jointAttention(mod, x, txt, false)

		q, k, v := b.qkv(mod, "to_q", "to_k", "to_v", "norm_q", "norm_k", x)
		tq, tk, tv := b.qkv(mod, "add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k", txt)
		joint := b.attention(Concatenate([]*Node{q, tq}, 2), Concatenate([]*Node{k, tk}, 2), Concatenate([]*Node{v, tv}, 2))
		n := x.Shape().Dim(1)
		wantX := b.linear(mod+".to_out.0", SliceAxis(joint, 1, AxisRange(0, n)))
		wantTxt := b.linear(mod+".to_add_out", SliceAxis(joint, 1, AxisRangeToEnd(n)))
		return []*Node{
			ReduceAllMax(Abs(Sub(gotX, wantX))), ReduceAllMax(Abs(Sub(gotTxt, wantTxt))),
			ReduceAllMax(Abs(wantX)),
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	var outs []*tensors.Tensor
	if err := execErr(func() error {
		var err error
		outs, err = exec.Exec(in.latents, in.enc)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	dx, dt, scale := flat(t, outs[0])[0], flat(t, outs[1])[0], flat(t, outs[2])[0]
	if scale == 0 || dx > 1e-5*scale || dt > 1e-5*scale {
		t.Errorf("max |difference| image %g, text %g (output scale %g)", dx, dt, scale)
	}
}

// BenchmarkTinyTrainStep times forward, a LoRA training step and a full
// pretraining step of the tiny config (testdata/tiny.json) at batch 8 on
// latents 4×8×32 with 16 text tokens.
func BenchmarkTinyTrainStep(b *testing.B) {
	cfg, err := LoadConfig("testdata/tiny.json")
	if err != nil {
		b.Fatal(err)
	}
	in := makeInputs(cfg, 8, 8, 32, 16, 1)
	target := makeInputs(cfg, 8, 8, 32, 16, 2).latents
	for _, mode := range []string{"forward", "lora-step", "full-step"} {
		b.Run(mode, func(b *testing.B) {
			var lora *LoRAConfig
			if mode == "lora-step" {
				lora = &LoRAConfig{Rank: 8, Alpha: 8}
			}
			m, err := New(cfg, lora)
			if err != nil {
				b.Fatal(err)
			}
			ctx := mlctx.New()
			if err := m.Init(ctx, 1); err != nil {
				b.Fatal(err)
			}
			if lora != nil {
				if err := m.InitLoRA(ctx, 2); err != nil {
					b.Fatal(err)
				}
			}
			var fn any = sgdStep(m, lora != nil, 1e-4)
			args := []any{in.latents, in.timestep, in.enc, in.pooled, target}
			if mode == "forward" {
				fn = func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
					return m.Forward(ctx, lat, ts, enc, pooled, false)
				}
				args = args[:4]
			}
			exec, err := mlctx.NewExecAny(nntest.Backend(b), ctx, fn)
			if err != nil {
				b.Fatal(err)
			}
			defer exec.Finalize()
			run := func() {
				if err := execErr(func() error { _, err := exec.Exec(args...); return err }); err != nil {
					b.Fatal(err)
				}
			}
			run() // compile
			b.ResetTimer()
			for range b.N {
				run()
			}
			b.ReportMetric(float64(m.NumParams()), "params")
		})
	}
}
