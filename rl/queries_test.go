package rl

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// SDPO's own code (exporters/sdpo/reference.py runs its lines on random latents) chooses the
// anchor argmin(sim_first + sim_last) and predicts every step's reward as the raw-cosine-weighted
// average of the first, anchor and last rewards: K = 3 here must choose the same anchors and
// give the same rewards. The fixture has negative cosines, so clipping them would differ.
func TestQueriesMatchSDPO(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "sdpo_reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Latents [][][]float64
		Rewards [][]float64
		Anchor  []int
		Dense   [][]float64
	}
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatal(err)
	}
	if len(ref.Latents) == 0 {
		t.Fatal("empty fixture")
	}
	for b, steps := range ref.Latents {
		latents := make([][]float32, len(steps))
		for k, x := range steps {
			for _, v := range x {
				latents[k] = append(latents[k], float32(v))
			}
		}
		q, err := SelectQueries(latents, 3)
		if err != nil {
			t.Fatal(err)
		}
		last := len(steps) - 1
		if want := []int{0, last, ref.Anchor[b]}; !slices.Equal(q.Queried, want) {
			t.Errorf("trajectory %d: queried %v, want first, last and SDPO's anchor %v", b, q.Queried, want)
		}
		// SDPO's reward columns are (first, anchor, last); Queried is (first, last, anchor).
		r := ref.Rewards[b]
		got, err := q.Predict([]float64{r[0], r[2], r[1]})
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range ref.Dense[b] {
			// The latents were rounded to float32 for Go; the cosines then differ by ~1e-8.
			if math.Abs(got[k]-want) > 1e-6 {
				t.Errorf("trajectory %d step %d: predicted %.9f, SDPO %.9f", b, k, got[k], want)
			}
		}
	}
}

// unit returns the 2-vector at angle deg degrees: the cosine of two such is cos(Δangle).
func unit(deg float64) []float32 {
	r := deg * math.Pi / 180
	return []float32{float32(math.Cos(r)), float32(math.Sin(r))}
}

func cosd(deg float64) float64 { return math.Cos(deg * math.Pi / 180) }

// States at angles 0°, 20°, 45°, 60°, 90°. First and last are 0 and 4; summed similarity to them:
// state 1 cos20 + cos70 = 1.282, state 2 cos45 + cos45 = 1.414, state 3 cos60 + cos30 = 1.366,
// so K = 3 adds state 1. K = 4 adds the cosine to 20°: state 2 1.414 + cos25 = 2.320, state 3
// 1.366 + cos40 = 2.132, so state 3. The prediction of state 2 (45°) from rewards r of states 0,
// 4, 1, 3 is Σ cos(45° − θ_j)·r_j / Σ cos(45° − θ_j).
func TestSelectQueriesGreedy(t *testing.T) {
	angles := []float64{0, 20, 45, 60, 90}
	latents := make([][]float32, len(angles))
	for s, a := range angles {
		latents[s] = unit(a)
	}
	for k, want := range map[int][]int{2: {0, 4}, 3: {0, 4, 1}, 4: {0, 4, 1, 3}, 5: {0, 4, 1, 3, 2}} {
		q, err := SelectQueries(latents, k)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(q.Queried, want) {
			t.Errorf("K = %d: queried %v, want %v", k, q.Queried, want)
		}
	}
	q, _ := SelectQueries(latents, 4)
	r := []float64{0.1, 0.9, 0.3, 0.6} // states 0, 4, 1, 3
	got, err := q.Predict(r)
	if err != nil {
		t.Fatal(err)
	}
	w := []float64{cosd(45), cosd(45), cosd(25), cosd(15)}
	want := (w[0]*r[0] + w[1]*r[1] + w[2]*r[2] + w[3]*r[3]) / (w[0] + w[1] + w[2] + w[3])
	if math.Abs(got[2]-want) > 1e-7 {
		t.Errorf("predicted R of 45°: %v, want %v", got[2], want)
	}
	for s, v := range map[int]float64{0: 0.1, 4: 0.9, 1: 0.3, 3: 0.6} {
		if got[s] != v {
			t.Errorf("queried state %d: %v, want its score %v", s, got[s], v)
		}
	}
	// K = 2: R̂ of 45° = (cos45·0.1 + cos45·0.9) / (2·cos45) = 0.5, the plain mean.
	q2, _ := SelectQueries(latents, 2)
	if got, _ := q2.Predict([]float64{0.1, 0.9}); math.Abs(got[2]-0.5) > 1e-7 {
		t.Errorf("K = 2: R̂ of 45° = %v, want 0.5", got[2])
	}
}

// Where the raw cosines sum to zero or less SDPO's average is undefined; the state then takes
// its most similar query's reward. A negative weight with a positive sum is kept, as SDPO does.
func TestPredictNonPositiveWeights(t *testing.T) {
	q := Queries{Queried: []int{0, 1}, Cos: [][]float64{{1, -0.2}, {-0.2, 1}, {-0.5, -0.3}, {0.8, -0.3}}}
	got, err := q.Predict([]float64{2, 4})
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{2, 4, 4, (0.8*2 - 0.3*4) / 0.5}
	for s := range want {
		if math.Abs(got[s]-want[s]) > 1e-12 {
			t.Errorf("state %d: %v, want %v", s, got[s], want[s])
		}
	}
}

func TestSelectQueriesBadInput(t *testing.T) {
	two := [][]float32{{1, 0}, {0, 1}, {1, 1}}
	for _, tc := range []struct {
		latents [][]float32
		k       int
		want    string
	}{
		{two, 1, "1 of 3 states, want 2 … 3"},
		{two, 4, "4 of 3 states"},
		{[][]float32{{1}, {1, 2}}, 2, "state 1 has 2 values"},
	} {
		if _, err := SelectQueries(tc.latents, tc.k); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("K = %d: got %v, want %q", tc.k, err, tc.want)
		}
	}
}

func TestMethodValidateQueries(t *testing.T) {
	// 8 steps, 7 trained: look-aheads from x_0 … x_7 and x_8, 9 states.
	if got := RewardStates(8, 7); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Errorf("RewardStates(8, 7) = %v", got)
	}
	if got := RewardStates(8, 3); !slices.Equal(got, []int{0, 1, 2, 3, 8}) {
		t.Errorf("RewardStates(8, 3) = %v", got)
	}
	adv := AdvantageConfig{Std: StdGlobal, Clip: 5}
	for q, ok := range map[int]bool{0: true, 2: true, 9: true, 1: false, -1: false, 10: false} {
		err := Method{Dense: true, Trained: 7, Queries: q, Advantage: adv}.Validate(8)
		if ok != (err == nil) {
			t.Errorf("queries %d: got %v, want ok = %v", q, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "want 0 (score every state) or 2 … 9") {
			t.Errorf("queries %d: error %q does not say what is allowed", q, err)
		}
	}
}

// queryAccuracy on hand values: two samples, states 0 … 2 (trained 2). Sample 0 used
// (0, 0.5, 1) vs full (0, 0.2, 1); sample 1 used (1, 0.5, 0) vs full (1, 0.8, 0). R_1 used
// 0.5, 0.5 is constant: correlation NaN; MAE (0.3 + 0.3)/2 = 0.3. ΔR_0: used +0.5 / full +0.2
// agree, used −0.5 / full −0.2 agree; ΔR_1 likewise: all 1. Two points with opposite ΔR on
// both sides correlate exactly: 1; no scored ΔR is 0, so the agreement among moved ones is
// the agreement: 1.
func TestQueryAccuracyHand(t *testing.T) {
	used := [][]float64{{0, 0.5, 1}, {1, 0.5, 0}}
	full := [][]float64{{0, 0.2, 1}, {1, 0.8, 0}}
	queried := [][]bool{{true, false, true}, {true, true, true}}
	a := queryAccuracy(used, full, queried, 2)
	if a.RCorr[0] != 1 || !math.IsNaN(a.RCorr[1]) || math.Abs(a.RMAE[1]-0.3) > 1e-12 || a.RMAE[0] != 0 {
		t.Errorf("RCorr %v RMAE %v, want [1 NaN 1], [0 0.3 0]", a.RCorr, a.RMAE)
	}
	if !slices.Equal(a.DeltaSign, []float64{1, 1}) || !slices.Equal(a.Queried, []float64{1, 0.5, 1}) ||
		math.Abs(a.DeltaCorr[0]-1) > 1e-12 || math.Abs(a.DeltaCorr[1]-1) > 1e-12 || !slices.Equal(a.DeltaZero, []float64{0, 0}) {
		t.Errorf("DeltaSign %v DeltaCorr %v DeltaZero %v Queried %v, want [1 1], [1 1], [0 0], [1 0.5 1]", a.DeltaSign, a.DeltaCorr, a.DeltaZero, a.Queried)
	}
	if !slices.Equal(a.DeltaSignMoved, []float64{1, 1}) {
		t.Errorf("DeltaSignMoved %v, want [1 1]", a.DeltaSignMoved)
	}
	// A zero step scored against a non-zero prediction disagrees.
	b := queryAccuracy([][]float64{{0, 0.1}}, [][]float64{{0, 0}}, [][]bool{{true, false}}, 1)
	if b.DeltaSign[0] != 0 || b.DeltaZero[0] != 1 || !math.IsNaN(b.DeltaCorr[0]) || !math.IsNaN(b.DeltaSignMoved[0]) {
		t.Errorf("sign(+0.1) vs sign(0): agreement %v, zero %v, corr %v, among moved %v; want 0, 1, NaN, NaN (none moved)",
			b.DeltaSign[0], b.DeltaZero[0], b.DeltaCorr[0], b.DeltaSignMoved[0])
	}
	// Five samples, one step: scored ΔR 0, 0, +0.25, −0.5, +1 against used +0.1, 0, +0.2,
	// +0.1, +0.3. Agreement over all: samples 1 (0 = 0), 2 and 4 (+ = +), 3/5 = 0.6; zero 2/5 =
	// 0.4; among the three that moved, samples 2 and 4 agree: 2/3. A zero step counts there
	// neither when it agrees (sample 1) nor when it does not (sample 0).
	c := queryAccuracy([][]float64{{0, 0.1}, {0, 0}, {0, 0.2}, {0, 0.1}, {0, 0.3}}, [][]float64{{0, 0}, {0, 0}, {0, 0.25}, {0, -0.5}, {0, 1}},
		[][]bool{{true, false}, {true, false}, {true, false}, {true, false}, {true, false}}, 1)
	if c.DeltaSign[0] != 0.6 || c.DeltaZero[0] != 0.4 || c.DeltaSignMoved[0] != 2.0/3 {
		t.Errorf("agreement %v, zero %v, among moved %v; want 0.6, 0.4, 2/3", c.DeltaSign[0], c.DeltaZero[0], c.DeltaSignMoved[0])
	}
}

// Through Method: with K queries only K latents per trajectory are scored, the queried states
// keep their scores and the others get predictions; an audited epoch scores them all and
// measures the predictions; K = all states predicts nothing, so it equals K = 0 exactly.
func TestMethodQueries(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-0.8}})}}
	s := newTestSampler(t, 5, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{4}})
	flow := testFlow(t, mlctx.New(), linearVelocity, []int{4}, 0)
	tr, err := s.Rollout(context.Background(), flow, cond, 9)
	if err != nil {
		t.Fatal(err)
	}
	adv := AdvantageConfig{Std: StdGlobal, Clip: 5}
	r := func(x []float32, _ int) float64 { return math.Tanh(float64(x[0]-x[1])) + float64(x[2]) }
	groups := []int{0, 1}
	full, nFull := denseRewards(t, Method{Dense: true, Trained: 4, Advantage: adv}, flow, cond, tr, r, groups)
	if nFull != 6*6 {
		t.Fatalf("K = 0 scored %d latents, want 6 samples × 6 states", nFull)
	}
	for _, k := range []int{2, 3, 4} {
		m := Method{Dense: true, Trained: 4, Queries: k, Advantage: adv}
		got, n := denseRewards(t, m, flow, cond, tr, r, groups)
		if n != 6*k {
			t.Errorf("K = %d: scored %d latents, want %d", k, n, 6*k)
		}
		targets, _ := m.Targets(context.Background(), flow, cond, tr)
		for i, q := range targets.Queries {
			for _, st := range q.Queried {
				step := RewardStates(5, 4)[st]
				if got.R[i][step] != full.R[i][step] {
					t.Errorf("K = %d sample %d: queried x_%d has %v, want its score %v", k, i, step, got.R[i][step], full.R[i][step])
				}
			}
		}
		if got.Accuracy != nil || len(got.Delta) != 6 || len(got.Delta[0]) != 4 {
			t.Errorf("K = %d: accuracy %v, %d×%d ΔR; want none (not audited), 6×4", k, got.Accuracy, len(got.Delta), len(got.Delta[0]))
		}
		m.Audit = true
		audited, n := denseRewards(t, m, flow, cond, tr, r, groups)
		if n != nFull || audited.Accuracy == nil {
			t.Fatalf("K = %d audited: scored %d, accuracy %v; want %d and a measurement", k, n, audited.Accuracy, nFull)
		}
		for i := range got.R {
			if !slices.Equal(audited.R[i], got.R[i]) {
				t.Errorf("K = %d sample %d: audited R %v, want the same predictions as unaudited %v", k, i, audited.R[i], got.R[i])
			}
		}
		a := audited.Accuracy
		if a.Queried[0] != 1 || a.RMAE[0] != 0 || len(a.DeltaSign) != 4 || len(a.RCorr) != 5 {
			t.Errorf("K = %d: accuracy %+v; want x_0 always queried and exact, 4 steps of ΔR, 5 of R", k, a)
		}
	}
	all := Method{Dense: true, Trained: 4, Queries: MaxQueries(5, 4), Audit: true, Advantage: adv}
	got, _ := denseRewards(t, all, flow, cond, tr, r, groups)
	for i := range got.R {
		for k := 0; k <= 5; k++ {
			if got.R[i][k] != full.R[i][k] && !(math.IsNaN(got.R[i][k]) && math.IsNaN(full.R[i][k])) {
				t.Errorf("K = all, sample %d x_%d: %v, want %v", i, k, got.R[i][k], full.R[i][k])
			}
		}
	}
	for k, v := range got.Accuracy.DeltaSign {
		if v != 1 || got.Accuracy.RMAE[k] != 0 {
			t.Errorf("K = all, step %d: sign agreement %v MAE %v, want 1 and 0", k, v, got.Accuracy.RMAE[k])
		}
	}
}
