package rl

import (
	"context"
	"math"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// scorerFunc adapts a function to Scorer.
type scorerFunc func(l Latent, prompt int) float64

func (f scorerFunc) Score(_ context.Context, latents []Latent, prompts []int) ([]float64, error) {
	out := make([]float64, len(latents))
	for i, l := range latents {
		out[i] = f(l, prompts[i])
	}
	return out, nil
}

func sumReward(l Latent, _ int) float64 {
	var s float64
	for _, v := range l.Data {
		s += float64(v)
	}
	return s
}

func TestLookaheadSigmas(t *testing.T) {
	sched := Schedule{Sigmas: []float32{1, 0.8, 0.6, 0.4, 0.2, 0}, Timesteps: make([]float32, 5)}
	tests := []struct {
		k, n int
		want []float32
	}{
		{0, 0, []float32{1, 0.8, 0.6, 0.4, 0.2, 0}}, // remaining steps
		{3, 0, []float32{0.4, 0.2, 0}},
		{3, 5, []float32{0.4, 0.2, 0}},    // cap above the remaining steps
		{0, 1, []float32{1, 0}},           // one-step x̂0 prediction
		{1, 2, []float32{0.8, 0.4, 0}},    // indices 1 + round(j·4/2) = 1, 3, 5
		{0, 2, []float32{1, 0.4, 0}},      // indices round(j·5/2) = 0, 3 (2.5 rounds up), 5
		{0, 3, []float32{1, 0.6, 0.4, 0}}, // indices round(j·5/3) = 0, 2 (1.67), 3 (3.33), 5
		{4, 1, []float32{0.2, 0}},
	}
	for _, tc := range tests {
		got := LookaheadSigmas(sched, tc.k, tc.n)
		if len(got) != len(tc.want) {
			t.Errorf("k=%d n=%d: got %v, want %v", tc.k, tc.n, got, tc.want)
			continue
		}
		for j := range got {
			if got[j] != tc.want[j] {
				t.Errorf("k=%d n=%d: got %v, want %v", tc.k, tc.n, got, tc.want)
				break
			}
		}
	}
}

// With v = m·x and R = sum of the latent, the look-ahead from x_k has the closed form
// R_k = Σ x_k · Π_{j>=k} (1 + m·dt_j) (remaining steps) or Σ x_k·(1 − m·σ_k) (n = 1).
func TestDenseRewardsClosedForm(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})}}
	for _, look := range []int{0, 1} {
		s := newTestSampler(t, linearVelocity, 5, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}})
		tr, err := s.Rollout(context.Background(), cond, 3)
		if err != nil {
			t.Fatal(err)
		}
		d, err := ComputeDenseRewards(context.Background(), s, cond, tr, scorerFunc(sumReward), nil, DenseConfig{Lookahead: look, Batch: 3})
		if err != nil {
			t.Fatal(err)
		}
		sched := tr.Schedule
		for i := range tr.Len() {
			m := []float64{0.5, -1.5}[tr.Prompts[i]]
			for k := 0; k <= 5; k++ {
				var sum float64
				for _, v := range tr.X[k][i*3 : i*3+3] {
					sum += float64(v)
				}
				want := sum
				if k < 5 {
					want = sum * eulerFactor(LookaheadSigmas(sched, k, look), m)
				}
				if got := d.R[i][k]; math.Abs(got-want) > 1e-5*math.Max(1, math.Abs(want)) {
					t.Errorf("lookahead %d: R[%d][%d] = %.7g, want %.7g", look, i, k, got, want)
				}
			}
			if d.Final()[i] != d.R[i][5] {
				t.Errorf("Final()[%d] = %v, want R_T %v", i, d.Final()[i], d.R[i][5])
			}
		}
	}
}

// The step rewards telescope: Σ_k ΔR_k = R_T − R_0. For a reward with dyadic values (multiples
// of 1/1024 below 2^20) every difference and partial sum is exact in float64, so the identity
// holds exactly; for a continuous reward it holds to rounding.
func TestDenseRewardsTelescope(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})}}
	s := newTestSampler(t, linearVelocity, 6, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{2}})
	tr, err := s.Rollout(context.Background(), cond, 5)
	if err != nil {
		t.Fatal(err)
	}
	rewards := map[string]scorerFunc{
		"dyadic": func(l Latent, _ int) float64 { return math.Floor(1024*sumReward(l, 0)) / 1024 },
		"sum":    sumReward,
		"prompt-dependent": func(l Latent, p int) float64 {
			return math.Sin(float64(l.Data[0])*float64(p+1)) + 1/(1+math.Exp(-float64(l.Data[1])))
		},
	}
	for name, r := range rewards {
		d, err := ComputeDenseRewards(context.Background(), s, cond, tr, r, []int{7, 11}, DenseConfig{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range tr.Len() {
			var sum float64
			for _, dr := range d.Delta[i] {
				sum += dr
			}
			want := d.R[i][6] - d.R[i][0]
			tol := 0.0
			if name != "dyadic" {
				tol = 1e-12 * 6 * math.Max(1, math.Abs(d.R[i][0])+math.Abs(d.R[i][6]))
			}
			if math.Abs(sum-want) > tol {
				t.Errorf("%s sample %d: Σ ΔR = %.17g, want R_T − R_0 = %.17g", name, i, sum, want)
			}
		}
	}
}

func TestDenseRewardsPartialSteps(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}})}}
	s := newTestSampler(t, linearVelocity, 4, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{2}})
	tr, err := s.Rollout(context.Background(), cond, 1)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	d, err := ComputeDenseRewards(context.Background(), s, cond, tr, scorerFunc(func(l Latent, p int) float64 {
		calls++
		return sumReward(l, p)
	}), nil, DenseConfig{Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Look-aheads from x_0, x_1, x_2 for 2 samples plus the 2 final latents.
	if calls != 8 || len(d.Delta[0]) != 2 || !math.IsNaN(d.R[0][3]) {
		t.Errorf("got %d scores, %d deltas, R_3 = %v; want 8, 2, NaN", calls, len(d.Delta[0]), d.R[0][3])
	}
}

// The rollout keeps the velocity of each step (v = m·x for the linear field), and a look-ahead
// path from x_k starts one Euler step later: x_k + v_k·(σ' − σ_k), at its second sigma; a
// one-step look-ahead is then already clean (Sigmas = [0]).
func TestLookaheadPathsReuseRolloutVelocity(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}})}}
	s := newTestSampler(t, linearVelocity, 3, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{2}})
	tr, err := s.Rollout(context.Background(), cond, 5)
	if err != nil {
		t.Fatal(err)
	}
	for k := range 3 {
		for e, x := range tr.X[k] {
			if want := 0.5 * x; math.Abs(float64(tr.V[k][e]-want)) > 1e-6 {
				t.Errorf("V[%d][%d] = %v, want m·x = %v", k, e, tr.V[k][e], want)
			}
		}
	}
	paths, slots := LookaheadPaths(tr, 3, 0)
	if len(paths) != 6 || slots[5] != (Slot{Sample: 1, Step: 2}) {
		t.Fatalf("%d paths, last slot %+v: want 6 (2 samples × x_0, x_1, x_2), last {1 2}", len(paths), slots[len(slots)-1])
	}
	sig := tr.Schedule.Sigmas
	for j, p := range paths {
		k, i := slots[j].Step, slots[j].Sample
		if len(p.Sigmas) != 3-k || p.Sigmas[0] != sig[k+1] {
			t.Errorf("path %d from x_%d: sigmas %v, want σ_%d … σ_3", j, k, p.Sigmas, k+1)
		}
		for e := range p.X {
			x := float64(tr.X[k][i*2+e])
			want := x + 0.5*x*float64(sig[k+1]-sig[k])
			if math.Abs(float64(p.X[e])-want) > 1e-6*math.Max(1, math.Abs(want)) {
				t.Errorf("path %d elem %d starts at %v, want %v", j, e, p.X[e], want)
			}
		}
	}
	if one, _ := LookaheadPaths(tr, 1, 1); len(one[0].Sigmas) != 1 || one[0].Sigmas[0] != 0 {
		t.Errorf("one-step look-ahead sigmas %v, want [0]", one[0].Sigmas)
	}
}
