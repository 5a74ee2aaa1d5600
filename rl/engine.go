package rl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Engine computes the flow model's raw velocity: one model call, no guidance and no step
// maths — rl owns both (Flow), so an engine is a small adapter: the GoMLX graph of the policy
// (GraphEngine), an ONNX Runtime session of its export (package pipeline), any other runtime.
type Engine interface {
	// Velocity returns v [n·L] of the n latents x [n·L] (row-major, L the latent size) at the
	// model's timesteps timestep [n] (1000·σ); latent j is conditioned on rows[j]. It must
	// not keep x, timestep or the returned slice.
	Velocity(ctx context.Context, c Conditioning, x, timestep []float32, rows []Row) ([]float32, error)
}

// Row selects one latent's conditioning: row Prompt of Conditioning.Cond, or of
// Conditioning.Uncond when Uncond is set (a shared unconditional row [1, …] serves every
// prompt).
type Row struct {
	Prompt int
	Uncond bool
}

// Conditioning is the conditioning of a batch of prompts: Cond holds the tensors passed to the
// model, each with leading axis P (one row per prompt). With guidance, Uncond holds the
// empty-prompt conditioning, the same tensors with leading axis 1 (shared) or P.
type Conditioning struct {
	Cond   []*tensors.Tensor
	Uncond []*tensors.Tensor
}

// HostTensor is a float32 tensor on the host, row-major.
type HostTensor struct {
	Shape []int
	Data  []float32
}

// Gather returns, for each conditioning tensor, the rows rows selects stacked into one
// [len(rows), …] tensor: what an engine feeds its model for a batch of latents.
func (c Conditioning) Gather(rows []Row) ([]HostTensor, error) {
	needUncond := false
	for _, r := range rows {
		needUncond = needUncond || r.Uncond
	}
	if needUncond && len(c.Uncond) != len(c.Cond) {
		return nil, fmt.Errorf("gather conditioning: guidance needs one unconditional tensor per conditional tensor, got %d and %d", len(c.Uncond), len(c.Cond))
	}
	out := make([]HostTensor, len(c.Cond))
	for i := range c.Cond {
		cond, err := hostRows(c.Cond[i])
		if err != nil {
			return nil, fmt.Errorf("gather conditioning tensor %d: %w", i, err)
		}
		var uncond HostTensor
		if needUncond {
			if uncond, err = hostRows(c.Uncond[i]); err != nil {
				return nil, fmt.Errorf("gather unconditional tensor %d: %w", i, err)
			}
			if !slices.Equal(uncond.Shape[1:], cond.Shape[1:]) {
				return nil, fmt.Errorf("gather conditioning tensor %d: unconditional rows %v, conditional rows %v, want equal", i, uncond.Shape[1:], cond.Shape[1:])
			}
		}
		width := len(cond.Data) / cond.Shape[0]
		t := HostTensor{Shape: append([]int{len(rows)}, cond.Shape[1:]...), Data: make([]float32, 0, len(rows)*width)}
		for j, r := range rows {
			src := cond
			if r.Uncond {
				src = uncond
			}
			p := r.Prompt
			if src.Shape[0] == 1 {
				p = 0
			}
			if p < 0 || p >= src.Shape[0] {
				return nil, fmt.Errorf("gather conditioning tensor %d: latent %d wants prompt row %d of %d", i, j, r.Prompt, src.Shape[0])
			}
			t.Data = append(t.Data, src.Data[p*width:(p+1)*width]...)
		}
		out[i] = t
	}
	return out, nil
}

// hostRows copies a conditioning tensor to the host, checking its leading prompt axis.
func hostRows(t *tensors.Tensor) (HostTensor, error) {
	dims := t.Shape().Dimensions
	if len(dims) < 1 || dims[0] < 1 {
		return HostTensor{}, fmt.Errorf("shape %v: want a leading prompt axis", dims)
	}
	data, err := tensors.CopyFlatData[float32](t)
	if err != nil {
		return HostTensor{}, err
	}
	return HostTensor{Shape: append([]int(nil), dims...), Data: data}, nil
}

// numPrompts returns P from the conditioning, or fallback when there is none (an
// unconditional model).
func numPrompts(c Conditioning, fallback int) (int, error) {
	if len(c.Cond) == 0 {
		return fallback, nil
	}
	p := c.Cond[0].Shape().Dimensions
	if len(p) == 0 {
		return 0, errors.New("conditioning tensor 0 is a scalar, want a leading prompt axis")
	}
	for i, t := range c.Cond {
		if d := t.Shape().Dimensions; len(d) == 0 || d[0] != p[0] {
			return 0, fmt.Errorf("conditioning tensor %d has shape %v, want leading axis %d", i, d, p[0])
		}
	}
	return p[0], nil
}

// Flow is the model as rl's host-side loops use it: an engine plus classifier-free guidance.
// Every gradient-free pass — rollouts, look-aheads, evaluation, the KL reference — computes
// its velocities through Flow.Velocity, so guidance and the model's timestep convention are
// applied in one place whatever the engine.
type Flow struct {
	Engine Engine
	// Guidance is the classifier-free guidance scale w; 0 disables guidance (Conditioning.Uncond
	// is then not read).
	Guidance float64
}

// Velocity returns the guided velocity of the n = len(prompts) latents x [n·L] at noise levels
// sigma [n], latent j conditioned on prompt row prompts[j]: the conditional velocity alone
// without guidance; with guidance one engine call of 2n rows (the conditional rows, then the
// unconditional ones) combined by Guide.
func (f Flow) Velocity(ctx context.Context, c Conditioning, x, sigma []float32, prompts []int) ([]float32, error) {
	n := len(prompts)
	if n == 0 || len(sigma) != n || len(x)%n != 0 {
		return nil, fmt.Errorf("velocity: %d latent values, %d sigmas, %d prompts; want n sigmas and n whole latents for n prompts", len(x), len(sigma), n)
	}
	rows := make([]Row, n, 2*n)
	ts := make([]float32, n, 2*n)
	for j, p := range prompts {
		rows[j] = Row{Prompt: p}
		ts[j] = sigma[j] * numTrainTimesteps
	}
	if f.Guidance > 0 {
		for _, p := range prompts {
			rows = append(rows, Row{Prompt: p, Uncond: true})
		}
		ts = append(ts, ts...)
		x = append(append(make([]float32, 0, 2*len(x)), x...), x...)
	}
	v, err := f.Engine.Velocity(ctx, c, x, ts, rows)
	if err != nil {
		return nil, err
	}
	if len(v) != len(x) {
		return nil, fmt.Errorf("velocity: engine returned %d values for %d", len(v), len(x))
	}
	if f.Guidance == 0 {
		return v, nil
	}
	half := len(x) / 2
	Guide(v[:half], v[half:], f.Guidance)
	return v[:half:half], nil
}

// Guide applies classifier-free guidance in place: vc ← w·v_c + (1−w)·v_u, which is
// v_u + w·(v_c − v_u) computed in the order the training graph computes it (GuidedVelocity),
// so a velocity computed here rounds exactly as the one the loss recomputes.
func Guide(vc, vu []float32, w float64) {
	wc, wu := float32(w), float32(1-w)
	for i := range vc {
		vc[i] = float32(wc*vc[i]) + float32(wu*vu[i])
	}
}

// eulerStep is the deterministic ODE step x ← x + v·dt (dt = σ_{k+1} − σ_k < 0), in place, in
// float32. dt = 0 leaves x unchanged: that is how a path that has ended rides along in a batch.
func eulerStep(x, v []float32, dt float32) {
	for i := range x {
		x[i] += float32(dt * v[i])
	}
}

// ODEPath is one deterministic integration: conditioning row Prompt, starting latent X (L
// values) and the sigmas to visit, Sigmas[0] = σ of X … Sigmas[n] = 0.
type ODEPath struct {
	Prompt int
	X      []float32
	Sigmas []float32
}

// IntegrateODE runs Euler paths in batches of at most batch paths, longest first (ODEBatches):
// every step of a batch is one Velocity call for all its paths, and a path shorter than the
// longest of its batch takes its remaining steps with σ = 0 and dt = 0, which leave it where
// it ended. It returns the clean latents in the order of paths (each with capacity L, so an
// append never writes into another).
func (f Flow) IntegrateODE(ctx context.Context, c Conditioning, paths []ODEPath, batch int) ([][]float32, error) {
	if batch < 1 {
		return nil, fmt.Errorf("integrate ODE: batch: got %d, want >= 1", batch)
	}
	if len(paths) == 0 {
		return nil, nil
	}
	l := len(paths[0].X)
	for i, p := range paths {
		if len(p.X) != l || l == 0 || len(p.Sigmas) < 1 {
			return nil, fmt.Errorf("integrate ODE: path %d: %d latent values and %d sigmas, want %d (as path 0) and >= 1", i, len(p.X), len(p.Sigmas), l)
		}
	}
	out := make([][]float32, len(paths))
	for bi, members := range ODEBatches(paths, batch) {
		n := len(members)
		prompts := make([]int, n)
		x := make([]float32, 0, n*l)
		steps := 0
		for j, pi := range members {
			prompts[j] = paths[pi].Prompt
			x = append(x, paths[pi].X...)
			steps = max(steps, len(paths[pi].Sigmas)-1)
		}
		for step := range steps {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("integrate ODE: %w", err)
			}
			sigma, dt := make([]float32, n), make([]float32, n)
			for j, pi := range members {
				if sg := paths[pi].Sigmas; step+1 < len(sg) {
					sigma[j], dt[j] = sg[step], sg[step+1]-sg[step]
				}
			}
			v, err := f.Velocity(ctx, c, x, sigma, prompts)
			if err != nil {
				return nil, fmt.Errorf("integrate ODE: step %d of batch %d: %w", step, bi, err)
			}
			for j := range n {
				eulerStep(x[j*l:(j+1)*l], v[j*l:(j+1)*l], dt[j])
			}
		}
		for j, pi := range members {
			out[pi] = x[j*l : (j+1)*l : (j+1)*l]
		}
	}
	return out, nil
}

// ODEBatches splits the indices of paths into batches of at most batch paths, longest paths
// first (stable), so the paths of a batch have similar lengths and few steps are padding.
func ODEBatches(paths []ODEPath, batch int) [][]int {
	order := make([]int, len(paths))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(paths[order[a]].Sigmas) > len(paths[order[b]].Sigmas) })
	var out [][]int
	for start := 0; start < len(order); start += batch {
		out = append(out, order[start:min(start+batch, len(order))])
	}
	return out
}

// SampleODE draws clean latents of size L by the deterministic Euler ODE along sched, all in
// one batch: latent j starts from InitialNoise(seed, noiseIDs[j], size) and is conditioned on
// row j of c. It is evaluation's and `sample`'s sampler.
func (f Flow) SampleODE(ctx context.Context, c Conditioning, sched Schedule, seed int64, noiseIDs []int, size int) ([][]float32, error) {
	paths := make([]ODEPath, len(noiseIDs))
	for j, id := range noiseIDs {
		paths[j] = ODEPath{Prompt: j, X: InitialNoise(seed, id, size), Sigmas: sched.Sigmas}
	}
	out, err := f.IntegrateODE(ctx, c, paths, max(1, len(paths)))
	if err != nil {
		return nil, fmt.Errorf("sample ODE: %w", err)
	}
	return out, nil
}
