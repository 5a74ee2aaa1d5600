package pipeline

import (
	"context"
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/densegrpo/densegrpo/exporters/transformer"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rl"
)

// Values of pipeline.ode_engine.
const (
	ODEEngineONNX  = "onnx"
	ODEEngineGoMLX = "gomlx"
)

// odeIntegrator integrates deterministic Euler paths under rl.Sampler.IntegrateODE's contract
// (clean latents in the order of paths): the look-ahead of dense rewards and evaluation.
type odeIntegrator interface {
	IntegrateODE(ctx context.Context, c rl.Conditioning, paths []rl.ODEPath, batch int) ([][]float32, error)
}

// newODE returns the integrator pipeline.ode_engine selects for the policy's current weights:
// the GoMLX sampler itself, or an ONNX Runtime session of the velocity with the adapters folded
// in. The ONNX one is a snapshot of the weights — build a new one after they change — and must
// be closed.
func newODE(cfg Config, policy *Policy, sampler *rl.Sampler, latent []int) (odeIntegrator, func(), error) {
	if cfg.Pipeline.ODEEngine == ODEEngineGoMLX {
		return sampler, func() {}, nil
	}
	o, err := newONNXODE(cfg, policy, latent)
	if err != nil {
		return nil, nil, fmt.Errorf("pipeline.ode_engine %q: %w", cfg.Pipeline.ODEEngine, err)
	}
	return o, func() { o.sess.Close() }, nil
}

// onnxODE integrates with the policy's velocity in ONNX Runtime (exporters/transformer).
type onnxODE struct {
	sess     *onnxrt.Session
	guidance float64
	latent   []int
}

func newONNXODE(cfg Config, policy *Policy, latent []int) (*onnxODE, error) {
	merged, err := policy.Model.MergedTensors(policy.Ctx)
	if err != nil {
		return nil, err
	}
	model, err := transformer.Model(policy.Model.Config, latent, merged)
	if err != nil {
		return nil, err
	}
	data, err := model.Marshal()
	if err != nil {
		return nil, fmt.Errorf("export velocity: %w", err)
	}
	sess, err := onnxrt.OpenBytes("policy velocity (exported)", data, cfg.ONNX)
	if err != nil {
		return nil, err
	}
	return &onnxODE{sess: sess, guidance: Guidance(cfg), latent: latent}, nil
}

// hostRows is a conditioning tensor on the host: rows of width row values each.
type hostRows struct {
	shape []int64 // of one row
	row   int
	data  []float32
}

func toHostRows(t *tensors.Tensor) (hostRows, error) {
	dims := t.Shape().Dimensions
	if len(dims) < 1 || dims[0] < 1 {
		return hostRows{}, fmt.Errorf("conditioning tensor of shape %v: want a leading prompt axis", dims)
	}
	data, err := tensors.CopyFlatData[float32](t)
	if err != nil {
		return hostRows{}, fmt.Errorf("conditioning tensor: %w", err)
	}
	h := hostRows{row: len(data) / dims[0], data: data}
	for _, d := range dims[1:] {
		h.shape = append(h.shape, int64(d))
	}
	return h, nil
}

// gather stacks row idx[j] of h for every j (a single row is shared by all) after dst.
func (h hostRows) gather(dst []float32, idx []int) []float32 {
	for _, i := range idx {
		if len(h.data) == h.row {
			i = 0
		}
		dst = append(dst, h.data[i*h.row:(i+1)*h.row]...)
	}
	return dst
}

// IntegrateODE runs the paths in batches of at most batch paths, longest first; a path shorter
// than the longest of its batch stays where it ended (its steps have dt = 0), as in GoMLX.
func (o *onnxODE) IntegrateODE(ctx context.Context, c rl.Conditioning, paths []rl.ODEPath, batch int) ([][]float32, error) {
	if batch < 1 {
		return nil, fmt.Errorf("integrate ODE: batch: got %d, want >= 1", batch)
	}
	if len(c.Cond) != 2 || (o.guidance > 0 && len(c.Uncond) != 2) {
		return nil, fmt.Errorf("integrate ODE: got %d cond and %d uncond tensors, want 2 (prompt_embeds, pooled_prompt_embeds) each (uncond with guidance only)", len(c.Cond), len(c.Uncond))
	}
	l := o.latent[0] * o.latent[1] * o.latent[2]
	for i, p := range paths {
		if len(p.X) != l || len(p.Sigmas) < 1 {
			return nil, fmt.Errorf("integrate ODE: path %d: %d latent values and %d sigmas, want %d and >= 1", i, len(p.X), len(p.Sigmas), l)
		}
	}
	var cond, uncond [2]hostRows
	for i := range 2 {
		var err error
		if cond[i], err = toHostRows(c.Cond[i]); err != nil {
			return nil, fmt.Errorf("integrate ODE: %w", err)
		}
		if o.guidance > 0 {
			if uncond[i], err = toHostRows(c.Uncond[i]); err != nil {
				return nil, fmt.Errorf("integrate ODE: %w", err)
			}
		}
	}
	out := make([][]float32, len(paths))
	for bi, members := range rl.ODEBatches(paths, batch) {
		n := len(members)
		prompts := make([]int, n)
		x := make([]float32, 0, n*l)
		steps := 0
		for j, pi := range members {
			prompts[j] = paths[pi].Prompt
			x = append(x, paths[pi].X...)
			steps = max(steps, len(paths[pi].Sigmas)-1)
		}
		rows := n
		emb, pooled := cond[0].gather(nil, prompts), cond[1].gather(nil, prompts)
		if o.guidance > 0 { // conditional rows, then unconditional ones
			rows = 2 * n
			emb, pooled = uncond[0].gather(emb, prompts), uncond[1].gather(pooled, prompts)
		}
		in := map[string]onnxrt.Tensor{
			transformer.InputPromptEmbeds: {Shape: append([]int64{int64(rows)}, cond[0].shape...), Float32: emb},
			transformer.InputPooled:       {Shape: append([]int64{int64(rows)}, cond[1].shape...), Float32: pooled},
		}
		for step := range steps {
			dt := make([]float32, n)
			ts := make([]float32, rows)
			for j, pi := range members {
				if sg := paths[pi].Sigmas; step+1 < len(sg) {
					dt[j] = sg[step+1] - sg[step]
					ts[j] = sg[step] * 1000
				}
			}
			copy(ts[n:], ts[:n])
			xs := x
			if o.guidance > 0 {
				xs = append(append(make([]float32, 0, 2*len(x)), x...), x...)
			}
			in[transformer.InputLatents] = onnxrt.Tensor{Shape: []int64{int64(rows), int64(o.latent[0]), int64(o.latent[1]), int64(o.latent[2])}, Float32: xs}
			in[transformer.InputTimestep] = onnxrt.Tensor{Shape: []int64{int64(rows)}, Float32: ts}
			res, err := o.sess.Run(ctx, in, transformer.OutputVelocity)
			if err != nil {
				return nil, fmt.Errorf("integrate ODE: step %d of batch %d: %w", step, bi, err)
			}
			v := res[transformer.OutputVelocity].Float32
			w := float32(o.guidance)
			for j := range n {
				for i := j * l; i < (j+1)*l; i++ {
					vi := v[i]
					if o.guidance > 0 {
						vi = v[n*l+i] + w*(vi-v[n*l+i]) // v_u + w·(v_c − v_u)
					}
					x[i] += dt[j] * vi
				}
			}
		}
		for j, pi := range members {
			out[pi] = x[j*l : (j+1)*l : (j+1)*l]
		}
	}
	return out, nil
}
