package rl

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// rewardFunc is a reward of one clean latent and its conditioning row.
type rewardFunc func(x []float32, prompt int) float64

func sumReward(x []float32, _ int) float64 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return s
}

// denseRewards is what an epoch does with one rollout batch: the method's targets, scored by r,
// assembled into R_k and ΔR_k; groups[p] is the group of conditioning row p.
func denseRewards(t *testing.T, m Method, flow Flow, c Conditioning, tr *Trajectories, r rewardFunc, groups []int) (Rewards, int) {
	t.Helper()
	targets, err := m.Targets(context.Background(), flow, c, tr)
	if err != nil {
		t.Fatal(err)
	}
	scores := make([]float64, len(targets.Latents))
	for j, x := range targets.Latents {
		scores[j] = r(x, tr.Prompts[targets.Slots[j].Sample])
	}
	rw, err := m.Rewards([]Scored{{Traj: tr, Slots: targets.Slots, Scores: scores, Groups: groups, Queries: targets.Queries}})
	if err != nil {
		t.Fatal(err)
	}
	return rw, len(scores)
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
		s := newTestSampler(t, 5, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{3}})
		flow := testFlow(t, mlctx.New(), linearVelocity, []int{3}, 0)
		tr, err := s.Rollout(context.Background(), flow, cond, 3)
		if err != nil {
			t.Fatal(err)
		}
		m := Method{Dense: true, Lookahead: look, Trained: 5, Advantage: AdvantageConfig{Std: StdGlobal, Clip: 5}}
		d, _ := denseRewards(t, m, flow, cond, tr, sumReward, []int{0, 1})
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
	s := newTestSampler(t, 6, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{2}})
	flow := testFlow(t, mlctx.New(), linearVelocity, []int{2}, 0)
	tr, err := s.Rollout(context.Background(), flow, cond, 5)
	if err != nil {
		t.Fatal(err)
	}
	rewards := map[string]rewardFunc{
		"dyadic": func(x []float32, _ int) float64 { return math.Floor(1024*sumReward(x, 0)) / 1024 },
		"sum":    sumReward,
		"prompt-dependent": func(x []float32, p int) float64 {
			return math.Sin(float64(x[0])*float64(p+1)) + 1/(1+math.Exp(-float64(x[1])))
		},
	}
	m := Method{Dense: true, Trained: 6, Advantage: AdvantageConfig{Std: StdGlobal, Clip: 5}}
	for name, r := range rewards {
		d, _ := denseRewards(t, m, flow, cond, tr, r, []int{7, 11})
		if !slices.Equal(d.Group, []int{7, 7, 7, 11, 11, 11}) {
			t.Errorf("groups %v, want each sample its prompt's group", d.Group)
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
	s := newTestSampler(t, 4, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{2}})
	flow := testFlow(t, mlctx.New(), linearVelocity, []int{2}, 0)
	tr, err := s.Rollout(context.Background(), flow, cond, 1)
	if err != nil {
		t.Fatal(err)
	}
	adv := AdvantageConfig{Std: StdGlobal, Clip: 5}
	d, n := denseRewards(t, Method{Dense: true, Trained: 2, Advantage: adv}, flow, cond, tr, sumReward, []int{0})
	// Look-aheads from x_0, x_1, x_2 for 2 samples plus the 2 final latents.
	if n != 8 || len(d.Delta[0]) != 2 || !math.IsNaN(d.R[0][3]) {
		t.Errorf("got %d scores, %d deltas, R_3 = %v; want 8, 2, NaN", n, len(d.Delta[0]), d.R[0][3])
	}
	// Sparse scores the final latents only and has no ΔR; its advantages broadcast R_T.
	sparse := Method{Trained: 2, Advantage: adv}
	d, n = denseRewards(t, sparse, flow, cond, tr, sumReward, []int{0})
	if n != 2 || d.Delta != nil || !math.IsNaN(d.R[0][0]) {
		t.Errorf("sparse: %d scores, deltas %v, R_0 = %v; want 2, none, NaN", n, d.Delta, d.R[0][0])
	}
	a, err := sparse.Advantages(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(a[0]) != 2 || a[0][0] != a[0][1] || a[0][0] != -a[1][0] {
		t.Errorf("sparse advantages %v, want ±A broadcast to both steps", a)
	}
}

// A reward that is not finite stops the assembly, naming the sample and the state.
func TestRewardsNotFinite(t *testing.T) {
	tr := &Trajectories{Schedule: Schedule{Sigmas: []float32{1, 0.5, 0}, Timesteps: []float32{1000, 500}}, Prompts: []int{0, 0}}
	_, err := Method{Dense: true, Trained: 1}.Rewards([]Scored{{Traj: tr, Slots: []Slot{{0, 0}, {1, 0}, {0, 2}, {1, 2}},
		Scores: []float64{1, math.Inf(1), 0, 0}, Groups: []int{0}}})
	if err == nil || !strings.Contains(err.Error(), "sample 1 at x_0: reward is +Inf") {
		t.Errorf("got %v, want an error naming sample 1 at x_0", err)
	}
}

// The rollout keeps the velocity of each step (v = m·x for the linear field), and a look-ahead
// path from x_k starts one Euler step later: x_k + v_k·(σ' − σ_k), at its second sigma; a
// one-step look-ahead is then already clean (Sigmas = [0]).
func TestLookaheadPathsReuseRolloutVelocity(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}})}}
	s := newTestSampler(t, 3, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 2, LatentShape: []int{2}})
	tr, err := s.Rollout(context.Background(), testFlow(t, mlctx.New(), linearVelocity, []int{2}, 0), cond, 5)
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

func TestDeltaStats(t *testing.T) {
	// Three samples, two steps: step 0 has ΔR = 1, −1, 0 (one positive: 1/3, mean 0,
	// population std sqrt(2/3)); step 1 has 0.5 each (all positive, std 0).
	pos, mean, std := DeltaStats([][]float64{{1, 0.5}, {-1, 0.5}, {0, 0.5}})
	want := [][]float64{{1.0 / 3, 1}, {0, 0.5}, {math.Sqrt(2.0 / 3), 0}}
	for i, got := range [][]float64{pos, mean, std} {
		for k := range got {
			if math.Abs(got[k]-want[i][k]) > 1e-12 {
				t.Errorf("stat %d step %d: got %v, want %v", i, k, got[k], want[i][k])
			}
		}
	}
}
