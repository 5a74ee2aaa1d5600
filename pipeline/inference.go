package pipeline

import (
	"context"
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/densegrpo/densegrpo/exporters/transformer"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/rl"
)

// odeIntegrator integrates deterministic Euler paths under rl.Sampler.IntegrateODE's contract
// (clean latents in the order of paths): the look-ahead of dense rewards and evaluation.
type odeIntegrator interface {
	IntegrateODE(ctx context.Context, c rl.Conditioning, paths []rl.ODEPath, batch int) ([][]float32, error)
}

// inference runs the policy's gradient-free passes — rollouts, look-aheads, evaluation — for
// one snapshot of its weights.
type inference struct {
	ode odeIntegrator
	// velocity feeds rollouts (rl.Sampler.RolloutWith); nil uses the sampler's own graph.
	velocity rl.HostVelocity
	close    func()
}

// newInference returns the inference pipeline.inference_engine selects for the policy's current
// weights: the GoMLX sampler itself, or an ONNX Runtime session of the velocity with the
// adapters folded in. The ONNX one is a snapshot — build a new one after the weights change —
// and must be closed.
func newInference(cfg Config, policy *Policy, sampler *rl.Sampler, latent []int) (inference, error) {
	if cfg.Pipeline.InferenceEngine == EngineGoMLX {
		return inference{ode: sampler, close: func() {}}, nil
	}
	merged, err := policy.Model.MergedTensors(policy.Ctx)
	if err != nil {
		return inference{}, err
	}
	o, err := newONNXPolicy(cfg, policy, latent, merged)
	if err != nil {
		return inference{}, fmt.Errorf("pipeline.inference_engine %q: %w", cfg.Pipeline.InferenceEngine, err)
	}
	return inference{ode: o, velocity: o.Velocity, close: func() { o.sess.Close() }}, nil
}

// onnxPolicy runs a velocity of the policy's model — with the adapters folded in, or the base
// model alone (the KL reference) — in ONNX Runtime (exporters/transformer).
type onnxPolicy struct {
	sess     *onnxrt.Session
	guidance float64
	latent   []int
}

// newONNXPolicy exports the policy's model with the weights ts (checkpoint keys).
func newONNXPolicy(cfg Config, policy *Policy, latent []int, ts map[string]safetensors.Tensor) (*onnxPolicy, error) {
	model, err := transformer.Model(policy.Model.Config, latent, ts)
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
	return &onnxPolicy{sess: sess, guidance: Guidance(cfg), latent: latent}, nil
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

// text is the conditioning of one call, on the host.
type text struct {
	cond, uncond [2]hostRows
}

func (o *onnxPolicy) hostText(c rl.Conditioning) (text, error) {
	var t text
	if len(c.Cond) != 2 || (o.guidance > 0 && len(c.Uncond) != 2) {
		return t, fmt.Errorf("got %d cond and %d uncond tensors, want 2 (prompt_embeds, pooled_prompt_embeds) each (uncond with guidance only)", len(c.Cond), len(c.Uncond))
	}
	for i := range 2 {
		var err error
		if t.cond[i], err = toHostRows(c.Cond[i]); err != nil {
			return t, err
		}
		if o.guidance > 0 {
			if t.uncond[i], err = toHostRows(c.Uncond[i]); err != nil {
				return t, err
			}
		}
	}
	return t, nil
}

// rows returns the model's text inputs for latents conditioned on rows prompts: n rows, or with
// guidance 2n — the conditional ones, then the unconditional ones.
func (o *onnxPolicy) rows(t text, prompts []int) map[string]onnxrt.Tensor {
	emb, pooled := t.cond[0].gather(nil, prompts), t.cond[1].gather(nil, prompts)
	rows := len(prompts)
	if o.guidance > 0 {
		rows *= 2
		emb, pooled = t.uncond[0].gather(emb, prompts), t.uncond[1].gather(pooled, prompts)
	}
	return map[string]onnxrt.Tensor{
		transformer.InputPromptEmbeds: {Shape: append([]int64{int64(rows)}, t.cond[0].shape...), Float32: emb},
		transformer.InputPooled:       {Shape: append([]int64{int64(rows)}, t.cond[1].shape...), Float32: pooled},
	}
}

// guided returns the guided velocity v_u + w·(v_c − v_u) (v_c without guidance) of the n
// latents x at per-latent noise levels sigma; in holds their text rows (see rows).
func (o *onnxPolicy) guided(ctx context.Context, in map[string]onnxrt.Tensor, x, sigma []float32) ([]float32, error) {
	n, l := len(sigma), len(x)/len(sigma)
	rows := n
	ts := make([]float32, n, 2*n)
	for j, sg := range sigma {
		ts[j] = sg * 1000
	}
	if o.guidance > 0 {
		rows = 2 * n
		ts = append(ts, ts...)
		x = append(append(make([]float32, 0, 2*len(x)), x...), x...)
	}
	in[transformer.InputLatents] = onnxrt.Tensor{Shape: []int64{int64(rows), int64(o.latent[0]), int64(o.latent[1]), int64(o.latent[2])}, Float32: x}
	in[transformer.InputTimestep] = onnxrt.Tensor{Shape: []int64{int64(rows)}, Float32: ts}
	res, err := o.sess.Run(ctx, in, transformer.OutputVelocity)
	if err != nil {
		return nil, err
	}
	v := res[transformer.OutputVelocity].Float32
	if o.guidance == 0 {
		return v, nil
	}
	w := float32(o.guidance)
	for i := range n * l {
		v[i] = v[n*l+i] + w*(v[i]-v[n*l+i])
	}
	return v[:n*l], nil
}

// Velocity is the guided velocity of latents x at noise level sigma (an rl.HostVelocity).
func (o *onnxPolicy) Velocity(ctx context.Context, c rl.Conditioning, x []float32, sigma float32, prompts []int) ([]float32, error) {
	t, err := o.hostText(c)
	if err != nil {
		return nil, fmt.Errorf("velocity: %w", err)
	}
	if l := o.latent[0] * o.latent[1] * o.latent[2]; len(x) != len(prompts)*l {
		return nil, fmt.Errorf("velocity: %d latent values for %d prompts, want %d each", len(x), len(prompts), l)
	}
	sigmas := make([]float32, len(prompts))
	for j := range sigmas {
		sigmas[j] = sigma
	}
	v, err := o.guided(ctx, o.rows(t, prompts), x, sigmas)
	if err != nil {
		return nil, fmt.Errorf("velocity: %w", err)
	}
	return v, nil
}

// IntegrateODE runs the paths in batches of at most batch paths, longest first; a path shorter
// than the longest of its batch stays where it ended (its steps have dt = 0), as in GoMLX.
func (o *onnxPolicy) IntegrateODE(ctx context.Context, c rl.Conditioning, paths []rl.ODEPath, batch int) ([][]float32, error) {
	if batch < 1 {
		return nil, fmt.Errorf("integrate ODE: batch: got %d, want >= 1", batch)
	}
	t, err := o.hostText(c)
	if err != nil {
		return nil, fmt.Errorf("integrate ODE: %w", err)
	}
	l := o.latent[0] * o.latent[1] * o.latent[2]
	for i, p := range paths {
		if len(p.X) != l || len(p.Sigmas) < 1 {
			return nil, fmt.Errorf("integrate ODE: path %d: %d latent values and %d sigmas, want %d and >= 1", i, len(p.X), len(p.Sigmas), l)
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
		in := o.rows(t, prompts)
		for step := range steps {
			sigma, dt := make([]float32, n), make([]float32, n)
			for j, pi := range members {
				if sg := paths[pi].Sigmas; step+1 < len(sg) {
					sigma[j], dt[j] = sg[step], sg[step+1]-sg[step]
				}
			}
			v, err := o.guided(ctx, in, x, sigma)
			if err != nil {
				return nil, fmt.Errorf("integrate ODE: step %d of batch %d: %w", step, bi, err)
			}
			for j := range n {
				for i := j * l; i < (j+1)*l; i++ {
					x[i] += dt[j] * v[i]
				}
			}
		}
		for j, pi := range members {
			out[pi] = x[j*l : (j+1)*l : (j+1)*l]
		}
	}
	return out, nil
}
