package rl

import (
	"context"
	"math"
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

func newTestSampler(t *testing.T, vel Velocity, steps int, cfg SamplerConfig) *Sampler {
	t.Helper()
	sched, err := SD3Schedule(steps, DefaultShift)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSampler(nntest.Backend(t), mlctx.New(), vel, sched, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSampleODEClosedForm(t *testing.T) {
	// Two prompts with m = 0.5 and −1.5; with guidance w = 3 and the shared unconditional
	// m_u = 0.2 the effective m is 0.2 + 3·(m_c − 0.2): 1.1 and −4.9.
	cond := Conditioning{
		Cond:   []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})},
		Uncond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.2}})},
	}
	for _, tc := range []struct {
		guidance float64
		m        [2]float64
	}{{0, [2]float64{0.5, -1.5}}, {3, [2]float64{1.1, -4.9}}} {
		s := newTestSampler(t, linearVelocity, 10, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3,
			SameNoise: true, LatentShape: []int{2}, Guidance: tc.guidance})
		sched, _ := SD3Schedule(40, DefaultShift)
		out, err := s.SampleODE(context.Background(), cond, sched, 42)
		if err != nil {
			t.Fatal(err)
		}
		// The same seed gives the same x_0, which IntegrateODE with an all-zero schedule returns.
		x0, err := s.SampleODE(context.Background(), cond, Schedule{Sigmas: []float32{0}}, 42)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 6 {
			t.Fatalf("got %d samples, want 6", len(out))
		}
		for i, lat := range out {
			f := eulerFactor(sched.Sigmas, tc.m[i/3])
			for e, got := range lat.Data {
				want := float64(x0[i].Data[e]) * f
				if math.Abs(float64(got)-want) > 1e-5*math.Max(1, math.Abs(want)) {
					t.Errorf("w=%v sample %d elem %d: got %.7g, want %.7g", tc.guidance, i, e, got, want)
				}
			}
			if i%3 != 0 && (x0[i].Data[0] != x0[i-1].Data[0] || x0[i].Data[1] != x0[i-1].Data[1]) {
				t.Errorf("sample %d: same-noise group has a different x_0", i)
			}
		}
		if x0[0].Data[0] == x0[3].Data[0] {
			t.Error("two prompts got the same x_0")
		}
	}
}

func TestRollout(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})}}
	for _, kind := range []Kind{KindSDE, KindCPS} {
		s := newTestSampler(t, linearVelocity, 4, SamplerConfig{Kind: kind, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}})
		tr, err := s.Rollout(context.Background(), cond, 9)
		if err != nil {
			t.Fatal(err)
		}
		again, err := s.Rollout(context.Background(), cond, 9)
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
	s := newTestSampler(t, linearVelocity, 3, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 1, LatentShape: []int{2}})
	psi := []float32{0.11, 0.22, 0.33}
	if err := s.SetPsi(psi); err != nil {
		t.Fatal(err)
	}
	tr, err := s.Rollout(context.Background(), cond, 1)
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

// TestRolloutWithHostVelocity: a rollout whose velocities come from outside the graph (here
// v = m·x on the host, the same model as linearVelocity) gives the trajectories of the
// in-graph rollout — the same noise, means, log-probabilities and stored velocities — and a
// host velocity error stops it naming the step.
func TestRolloutWithHostVelocity(t *testing.T) {
	ms := []float32{0.5, -1.5}
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{ms[0]}, {ms[1]}})}}
	calls := 0
	host := func(_ context.Context, c Conditioning, x []float32, sigma float32, prompts []int) ([]float32, error) {
		calls++
		v := make([]float32, len(x))
		l := len(x) / len(prompts)
		for j, p := range prompts {
			for e := range l {
				v[j*l+e] = ms[p] * x[j*l+e]
			}
		}
		return v, nil
	}
	for _, kind := range []Kind{KindSDE, KindCPS} {
		s := newTestSampler(t, linearVelocity, 4, SamplerConfig{Kind: kind, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}})
		want, err := s.Rollout(context.Background(), cond, 9)
		if err != nil {
			t.Fatal(err)
		}
		calls = 0
		got, err := s.RolloutWith(context.Background(), cond, 9, host)
		if err != nil {
			t.Fatal(err)
		}
		if calls != 4 {
			t.Errorf("%s: host velocity called %d times, want once per step (4)", kind, calls)
		}
		for k := range 4 {
			for name, pair := range map[string][2][]float32{
				"x": {got.X[k+1], want.X[k+1]}, "mean": {got.Mean[k], want.Mean[k]},
				"logp": {got.LogProb[k], want.LogProb[k]}, "v": {got.V[k], want.V[k]},
			} {
				for i := range pair[1] {
					if d := math.Abs(float64(pair[0][i] - pair[1][i])); d > 1e-6*math.Max(1, math.Abs(float64(pair[1][i]))) {
						t.Fatalf("%s step %d %s[%d]: host %v, graph %v", kind, k, name, i, pair[0][i], pair[1][i])
					}
				}
			}
		}
		_, err = s.RolloutWith(context.Background(), cond, 9, func(context.Context, Conditioning, []float32, float32, []int) ([]float32, error) {
			return make([]float32, 5), nil
		})
		if err == nil || !strings.Contains(err.Error(), "rollout step 0: host velocity: got 5 values, want 12") {
			t.Errorf("%s: wrong-size host velocity gave %v", kind, err)
		}
	}
}
