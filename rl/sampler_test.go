package rl

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// linearVelocity is v = m·x with m = cond[0] per sample ([B, 1]): the Euler ODE then has the
// closed form x_T = x_0·Π_k (1 + m·dt_k).
func linearVelocity(_ *mlctx.Context, x, _ *Node, cond []*Node, _ bool) *Node {
	return Mul(x, cond[0])
}

// eulerFactor is Π_{j=from}^{len-2} (1 + m·(σ_{j+1} − σ_j)) over the given sigmas.
func eulerFactor(sigmas []float32, m float64) float64 {
	f := 1.0
	for j := 0; j+1 < len(sigmas); j++ {
		f *= 1 + m*float64(sigmas[j+1]-sigmas[j])
	}
	return f
}

func newTestSampler(t testing.TB, steps int, cfg SamplerConfig) *Sampler {
	t.Helper()
	sched, err := SD3Schedule(steps, DefaultShift)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSampler(nntest.Backend(t), sched, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testFlow is vel with the weights of ctx (the GoMLX engine) and guidance w.
func testFlow(t testing.TB, ctx *mlctx.Context, vel Velocity, latent []int, w float64) Flow {
	t.Helper()
	eng, err := NewGraphEngine(nntest.Backend(t), ctx, vel, latent, true)
	if err != nil {
		t.Fatal(err)
	}
	return Flow{Engine: eng, Guidance: w}
}

// testRollout rolls out vel (weights in ctx) with guidance w along sched.
func testRollout(t testing.TB, ctx *mlctx.Context, vel Velocity, sched Schedule, cfg SamplerConfig, w float64, c Conditioning, seed uint64) *Trajectories {
	t.Helper()
	s, err := NewSampler(nntest.Backend(t), sched, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := s.Rollout(context.Background(), testFlow(t, ctx, vel, cfg.LatentShape, w), c, seed)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// hostLinear is the Engine of linearVelocity written in plain Go: v = m·x with m the row's
// conditioning value. calls counts its calls.
type hostLinear struct{ calls int }

func (h *hostLinear) Velocity(_ context.Context, c Conditioning, x, timestep []float32, rows []Row) ([]float32, error) {
	h.calls++
	cond, err := c.Gather(rows)
	if err != nil {
		return nil, err
	}
	l := len(x) / len(rows)
	v := make([]float32, len(x))
	for j := range rows {
		for e := range l {
			v[j*l+e] = cond[0].Data[j] * x[j*l+e]
		}
	}
	return v, nil
}

func TestSampleODEClosedForm(t *testing.T) {
	// Rows with m = 0.5, 0.5, −1.5; with guidance w = 3 and the shared unconditional m_u = 0.2
	// the effective m is 0.2 + 3·(m_c − 0.2): 1.1, 1.1 and −4.9. Latents 0 and 1 share noise
	// id 7, so they start from the same x_0 and, with the same m, end equal.
	ms := []float32{0.5, 0.5, -1.5}
	cond := Conditioning{
		Cond:   []*tensors.Tensor{tensors.FromValue([][]float32{{ms[0]}, {ms[1]}, {ms[2]}})},
		Uncond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.2}})},
	}
	ids := []int{7, 7, 8}
	sched, _ := SD3Schedule(40, DefaultShift)
	for _, tc := range []struct {
		guidance float64
		m        []float64
	}{{0, []float64{0.5, 0.5, -1.5}}, {3, []float64{1.1, 1.1, -4.9}}} {
		for name, flow := range map[string]Flow{
			"gomlx": testFlow(t, mlctx.New(), linearVelocity, []int{2}, tc.guidance),
			"host":  {Engine: &hostLinear{}, Guidance: tc.guidance},
		} {
			out, err := flow.SampleODE(context.Background(), cond, sched, 42, ids, 2)
			if err != nil {
				t.Fatal(err)
			}
			for j, lat := range out {
				x0 := InitialNoise(42, ids[j], 2)
				f := eulerFactor(sched.Sigmas, tc.m[j])
				for e, got := range lat {
					want := float64(x0[e]) * f
					if math.Abs(float64(got)-want) > 1e-5*math.Max(1, math.Abs(want)) {
						t.Errorf("%s w=%v latent %d elem %d: got %.7g, want %.7g", name, tc.guidance, j, e, got, want)
					}
				}
			}
			if out[0][0] != out[1][0] || out[0][0] == out[2][0] {
				t.Errorf("%s w=%v: latents %v: want 0 and 1 equal (same noise and m), 2 different", name, tc.guidance, out)
			}
		}
	}
}

// Paths of different lengths share a batch: the shorter ones take their last steps with dt = 0
// and stay where they ended, so every path has its own closed form x·Π(1 + m·dt) over its
// sigmas, whatever the batch.
func TestIntegrateODEMixedLengths(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})}}
	sched, _ := SD3Schedule(6, DefaultShift)
	var paths []ODEPath
	for i, from := range []int{0, 2, 0, 5, 3, 6} { // 6, 4, 6, 1, 3 and 0 Euler steps
		paths = append(paths, ODEPath{Prompt: i % 2, X: InitialNoise(3, i, 2), Sigmas: sched.Sigmas[from:]})
	}
	for _, batch := range []int{1, 2, 4, 6} {
		eng := &hostLinear{}
		out, err := Flow{Engine: eng}.IntegrateODE(context.Background(), cond, paths, batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range paths {
			f := eulerFactor(p.Sigmas, []float64{0.5, -1.5}[p.Prompt])
			for e := range 2 {
				if want := float64(p.X[e]) * f; math.Abs(float64(out[i][e])-want) > 1e-5*math.Max(1, math.Abs(want)) {
					t.Errorf("batch %d path %d elem %d: got %.7g, want %.7g", batch, i, e, out[i][e], want)
				}
			}
			if cap(out[i]) != 2 {
				t.Errorf("batch %d path %d: capacity %d, want 2 (an append must not write into the next path)", batch, i, cap(out[i]))
			}
		}
		// Longest first: batches of 2 hold (6, 6), (4, 3), (1, 0) steps: 6 + 4 + 1 calls.
		if batch == 2 && eng.calls != 11 {
			t.Errorf("batch 2: %d engine calls, want 11", eng.calls)
		}
	}
}

// Guide combines velocities exactly as the training graph's GuidedVelocity does, to the bit, so
// a rollout's log-probabilities and the loss's recomputation agree.
func TestGuideMatchesGraph(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const b, l = 5, 7
	vc, vu := make([]float32, b*l), make([]float32, l)
	for i := range vc {
		vc[i] = float32(r.NormFloat64() * 3)
	}
	for i := range vu {
		vu[i] = float32(r.NormFloat64() * 3)
	}
	for _, w := range []float64{1.5, 4.5, 7} {
		// The graph model returns cond[0] broadcast to x's shape: v_c rows, then v_u rows.
		vel := func(_ *mlctx.Context, x, _ *Node, cond []*Node, _ bool) *Node { return Add(MulScalar(x, 0), cond[0]) }
		exec, err := mlctx.NewExec(nntest.Backend(t), mlctx.New(), func(ctx *mlctx.Context, x, ts, c, u *Node) *Node {
			return GuidedVelocity(ctx, vel, x, ts, []*Node{c}, []*Node{u}, w, true)
		})
		if err != nil {
			t.Fatal(err)
		}
		uRows := make([]float32, 0, b*l)
		for range b {
			uRows = append(uRows, vu...)
		}
		outs, err := run(exec, tensors.FromFlatDataAndDimensions(make([]float32, b*l), b, l), make([]float32, b),
			tensors.FromFlatDataAndDimensions(vc, b, l), tensors.FromFlatDataAndDimensions(uRows, b, l))
		if err != nil {
			t.Fatal(err)
		}
		host := append([]float32(nil), vc...)
		for j := range b {
			Guide(host[j*l:(j+1)*l], vu, w)
		}
		for i := range host {
			if host[i] != outs[0][i] {
				t.Fatalf("w=%v element %d: Guide %v, graph %v", w, i, host[i], outs[0][i])
			}
		}
	}
}

// Gather stacks each latent's row: per-prompt rows, a shared unconditional row, and errors
// naming what is missing.
func TestConditioningGather(t *testing.T) {
	c := Conditioning{
		Cond:   []*tensors.Tensor{tensors.FromValue([][]float32{{1, 2}, {3, 4}}), tensors.FromValue([]float32{5, 6})},
		Uncond: []*tensors.Tensor{tensors.FromValue([][]float32{{-1, -2}}), tensors.FromValue([]float32{-5})},
	}
	got, err := c.Gather([]Row{{Prompt: 1}, {Prompt: 0}, {Prompt: 1, Uncond: true}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []float32{3, 4, 1, 2, -1, -2}; !slices.Equal(got[0].Data, want) || !slices.Equal(got[0].Shape, []int{3, 2}) {
		t.Errorf("tensor 0: %+v, want %v of shape [3 2]", got[0], want)
	}
	if want := []float32{6, 5, -5}; !slices.Equal(got[1].Data, want) || !slices.Equal(got[1].Shape, []int{3}) {
		t.Errorf("tensor 1: %+v, want %v of shape [3]", got[1], want)
	}
	for _, tc := range []struct {
		c    Conditioning
		rows []Row
		want string
	}{
		{c, []Row{{Prompt: 2}}, "wants prompt row 2 of 2"},
		{Conditioning{Cond: c.Cond}, []Row{{Uncond: true}}, "guidance needs one unconditional tensor per conditional tensor, got 0 and 2"},
		{Conditioning{Cond: c.Cond[:1], Uncond: []*tensors.Tensor{tensors.FromValue([][]float32{{1, 2, 3}})}}, []Row{{Uncond: true}}, "unconditional rows [3], conditional rows [2]"},
	} {
		if _, err := tc.c.Gather(tc.rows); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Gather(%v): got %v, want an error containing %q", tc.rows, err, tc.want)
		}
	}
}

func TestRollout(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})}}
	for _, kind := range []Kind{KindSDE, KindCPS} {
		s := newTestSampler(t, 4, SamplerConfig{Kind: kind, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}})
		flow := testFlow(t, mlctx.New(), linearVelocity, []int{3}, 0)
		tr, err := s.Rollout(context.Background(), flow, cond, 9)
		if err != nil {
			t.Fatal(err)
		}
		again, err := s.Rollout(context.Background(), flow, cond, 9)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Len() != 4 || len(tr.X) != 5 || len(tr.Mean) != 4 || len(tr.LogProb) != 4 {
			t.Fatalf("%s: got B=%d, %d states, %d means, %d logps", kind, tr.Len(), len(tr.X), len(tr.Mean), len(tr.LogProb))
		}
		sched := tr.Schedule
		for k := range 4 {
			sig, sn, sd := float64(sched.Sigmas[k]), float64(sched.Sigmas[k+1]), float64(tr.S[k])
			dt := sn - sig
			for i := range 4 {
				m := []float64{0.5, -1.5}[tr.Prompts[i]]
				var lp float64
				for e := range 3 {
					x := float64(tr.X[k][i*3+e])
					// The mean formulas of DESIGN §3 for v = m·x.
					var mean float64
					if kind == KindSDE {
						mean = x*(1+sd*sd/(2*sig)*dt) + m*x*(1+sd*sd*(1-sig)/(2*sig))*dt
					} else {
						mean = (1-sn)*(x-sig*m*x) + math.Sqrt(sn*sn-sd*sd)*(x+(1-sig)*m*x)
					}
					if got := float64(tr.Mean[k][i*3+e]); math.Abs(got-mean) > 1e-5*math.Max(1, math.Abs(mean)) {
						t.Errorf("%s k=%d i=%d: mean %.7g, want %.7g", kind, k, i, got, mean)
					}
					r := float64(tr.X[k+1][i*3+e]) - float64(tr.Mean[k][i*3+e])
					if kind == KindSDE {
						std := float64(tr.Std[k])
						lp += -r*r/(2*std*std) - math.Log(std) - logSqrt2Pi
					} else {
						lp += -r * r
					}
				}
				lp /= 3
				if got := float64(tr.LogProb[k][i]); math.Abs(got-lp) > 1e-4*math.Max(1, math.Abs(lp)) {
					t.Errorf("%s k=%d i=%d: logp %.7g, want %.7g", kind, k, i, got, lp)
				}
				if tr.X[k+1][i*3] != again.X[k+1][i*3] {
					t.Errorf("%s k=%d i=%d: same seed gave a different rollout", kind, k, i)
				}
			}
		}
	}
}

func TestSamplerConfigErrors(t *testing.T) {
	sched, _ := SD3Schedule(4, DefaultShift)
	base := SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}}
	bad := []SamplerConfig{}
	for _, mod := range []func(*SamplerConfig){
		func(c *SamplerConfig) { c.Kind = "ddim" },
		func(c *SamplerConfig) { c.NoiseLevel = 0 },
		func(c *SamplerConfig) { c.GroupSize = 0 },
		func(c *SamplerConfig) { c.LatentShape = nil },
		func(c *SamplerConfig) { c.Psi = []float32{1} },
		func(c *SamplerConfig) { c.Kind, c.Psi = KindCPS, []float32{1, 1, 1, 1} },
	} {
		c := base
		mod(&c)
		bad = append(bad, c)
	}
	for i, c := range bad {
		if err := c.Validate(sched.Steps()); err == nil {
			t.Errorf("config %d (%+v): want an error", i, c)
		}
	}
	if err := base.Validate(sched.Steps()); err != nil {
		t.Errorf("base config: %v", err)
	}
}

// SetPsi changes the noise levels of the next rollout to ψ itself (s_k = ψ(k)) without a new
// sampler; the wrong length is refused.
func TestSetPsi(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}})}}
	s := newTestSampler(t, 3, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 1, LatentShape: []int{2}})
	psi := []float32{0.11, 0.22, 0.33}
	if err := s.SetPsi(psi); err != nil {
		t.Fatal(err)
	}
	tr, err := s.Rollout(context.Background(), Flow{Engine: &hostLinear{}}, cond, 1)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range psi {
		if tr.S[k] != want {
			t.Errorf("s_%d = %v, want ψ(%d) = %v", k, tr.S[k], k, want)
		}
	}
	if err := s.SetPsi([]float32{0.1}); err == nil {
		t.Error("SetPsi with 1 value for 3 steps: no error")
	}
}

// TestRolloutEngines: the same rollout from two engines — the GoMLX graph of linearVelocity and
// the same model in plain Go — gives the same trajectories (noise, means, log-probabilities,
// stored velocities), with and without guidance; an engine that returns the wrong number of
// values stops the rollout naming the step.
func TestRolloutEngines(t *testing.T) {
	cond := Conditioning{
		Cond:   []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})},
		Uncond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.2}})},
	}
	for _, kind := range []Kind{KindSDE, KindCPS} {
		for _, w := range []float64{0, 2.5} {
			s := newTestSampler(t, 4, SamplerConfig{Kind: kind, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}})
			want, err := s.Rollout(context.Background(), testFlow(t, mlctx.New(), linearVelocity, []int{3}, w), cond, 9)
			if err != nil {
				t.Fatal(err)
			}
			host := &hostLinear{}
			got, err := s.Rollout(context.Background(), Flow{Engine: host, Guidance: w}, cond, 9)
			if err != nil {
				t.Fatal(err)
			}
			if host.calls != 4 {
				t.Errorf("%s w=%v: engine called %d times, want once per step (4)", kind, w, host.calls)
			}
			for k := range 4 {
				for name, pair := range map[string][2][]float32{
					"x": {got.X[k+1], want.X[k+1]}, "mean": {got.Mean[k], want.Mean[k]},
					"logp": {got.LogProb[k], want.LogProb[k]}, "v": {got.V[k], want.V[k]},
				} {
					for i := range pair[1] {
						if d := math.Abs(float64(pair[0][i] - pair[1][i])); d > 1e-6*math.Max(1, math.Abs(float64(pair[1][i]))) {
							t.Fatalf("%s w=%v step %d %s[%d]: host %v, graph %v", kind, w, k, name, i, pair[0][i], pair[1][i])
						}
					}
				}
			}
		}
		s := newTestSampler(t, 4, SamplerConfig{Kind: kind, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}})
		_, err := s.Rollout(context.Background(), Flow{Engine: shortEngine{}}, cond, 9)
		if err == nil || !strings.Contains(err.Error(), "rollout step 0: velocity: engine returned 5 values for 12") {
			t.Errorf("%s: wrong-size engine gave %v", kind, err)
		}
	}
}

// shortEngine returns 5 values whatever it is asked.
type shortEngine struct{}

func (shortEngine) Velocity(context.Context, Conditioning, []float32, []float32, []Row) ([]float32, error) {
	return make([]float32, 5), nil
}
