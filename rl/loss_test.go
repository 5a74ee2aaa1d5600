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

// Two samples, ε = 0.2. Sample 0: Δlogp = log 1.5, A = 1; sample 1: Δlogp = log 1.5, A = −1.
// ratio = 1.5, clip(ratio) = 1.2:
//
//	sample 0: max(−1.5, −1.2) = −1.2;  sample 1: max(1.5, 1.2) = 1.5 → policy = 0.15
//	clip fraction = 1, approx KL = 0.5·log(1.5)², mean ratio 1.5
//
// mean_θ − mean_ref = [[1, 2], [0, 0]] (elements): per-sample mean of squares [2.5, 0];
// SDE with s = 0.5: [2.5/(2·0.25), 0] = [5, 0] → KL = 2.5; CPS: [2.5, 0] → KL = 1.25.
// β = 0.1: total = 0.15 + 0.25 (SDE), 0.15 + 0.125 (CPS).
func TestGRPOLoss(t *testing.T) {
	l15 := float32(math.Log(1.5))
	args := []any{[]float32{l15 - 1, l15 + 2}, []float32{-1, 2}, []float32{1, -1},
		[][]float32{{1, 2}, {3, 4}}, [][]float32{{0, 0}, {3, 4}}, float32(0.5)}
	for _, tc := range []struct {
		kind      Kind
		kl, total float64
	}{{KindSDE, 2.5, 0.4}, {KindCPS, 1.25, 0.275}} {
		cfg := LossConfig{Kind: tc.kind, ClipRange: 0.2, Beta: 0.1}
		out := runGraph(t, func(lp, lpOld, adv, mt, mr, s *Node) []*Node {
			l := GRPOLoss(lp, lpOld, adv, mt, mr, s, nil, cfg)
			return []*Node{l.Total, l.Policy, l.KL, l.ApproxKL, l.ClipFrac, l.RatioMean}
		}, args...)
		// The same two rows and a padding row of other values, masked out: the same terms.
		masked := runGraph(t, func(lp, lpOld, adv, mt, mr, s, valid *Node) []*Node {
			l := GRPOLoss(lp, lpOld, adv, mt, mr, s, valid, cfg)
			return []*Node{l.Total, l.Policy, l.KL, l.ApproxKL, l.ClipFrac, l.RatioMean}
		}, []float32{l15 - 1, l15 + 2, 3}, []float32{-1, 2, 0}, []float32{1, -1, 7},
			[][]float32{{1, 2}, {3, 4}, {9, 9}}, [][]float32{{0, 0}, {3, 4}, {0, 0}}, float32(0.5), []float32{1, 1, 0})
		lg := math.Log(1.5)
		for _, o := range [][][]float32{out, masked} {
			checkVec(t, string(tc.kind)+" total", o[0], []float64{tc.total})
			checkVec(t, string(tc.kind)+" policy", o[1], []float64{0.15})
			checkVec(t, string(tc.kind)+" kl", o[2], []float64{tc.kl})
			checkVec(t, string(tc.kind)+" approx kl", o[3], []float64{0.5 * lg * lg})
			checkVec(t, string(tc.kind)+" clip frac", o[4], []float64{1})
			checkVec(t, string(tc.kind)+" ratio", o[5], []float64{1.5})
		}
	}
}

// scaledVelocity is v = x·(w + d) + m·x with trainable w [1, 2] and a LoRA-like delta d (zero at
// start) that withLoRA = false leaves out, and m = cond[0] per sample.
func scaledVelocity(ctx *mlctx.Context, x, _ *Node, cond []*Node, withLoRA bool) *Node {
	w := ctx.In("lin").VariableWithValue("w", [][]float32{{0.5, -0.25}}).ValueGraph(x.Graph())
	if withLoRA {
		w = Add(w, ctx.In("lin").VariableWithValue("d", [][]float32{{0, 0}}).ValueGraph(x.Graph()))
	}
	return Add(Mul(x, w), Mul(x, cond[0]))
}

func TestTrainerFirstUpdateRatio(t *testing.T) {
	cond := Conditioning{
		Cond:   []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})},
		Uncond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.1}})},
	}
	for _, kind := range []Kind{KindSDE, KindCPS} {
		ctx := mlctx.New()
		sched, _ := SD3Schedule(4, DefaultShift)
		backend := nntest.Backend(t)
		// The rollout's velocities come from the engine with guidance applied on the host (Guide);
		// the loss recomputes them in its graph (GuidedVelocity).
		tr := testRollout(t, ctx, scaledVelocity, sched, SamplerConfig{Kind: kind, NoiseLevel: 0.7, GroupSize: 3,
			LatentShape: []int{2}}, 2, cond, 17)
		tn, err := NewTrainer(backend, ctx, scaledVelocity, TrainConfig{Loss: LossConfig{Kind: kind, ClipRange: 1e-4, Beta: 0.04},
			Guidance: 2, LearningRate: 0.05, GradClip: 1})
		if err != nil {
			t.Fatal(err)
		}
		all := []int{0, 1, 2, 3, 4, 5}
		// Unchanged weights: the recomputed log-probabilities equal the rollout's bit for bit, so
		// the ratio is exactly 1; with zero advantages (and a zero KL, as policy = reference) the
		// gradient is exactly zero.
		for k := range 3 {
			st, err := tn.Accumulate(context.Background(), cond, tr, k, all, make([]float64, 6), 1.0/3)
			if err != nil {
				t.Fatal(err)
			}
			if st.RatioMean != 1 || st.ClipFrac != 0 || st.ApproxKL != 0 || st.Loss != 0 || st.KL != 0 {
				t.Errorf("%s step %d: %+v, want ratio exactly 1 and zero loss, KL, clip fraction", kind, k, st)
			}
		}
		norm, err := tn.Apply(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if norm != 0 {
			t.Errorf("%s: gradient norm with zero advantages = %v, want 0", kind, norm)
		}
		// Non-zero advantages move the policy: the next recomputation has ratio ≠ 1.
		adv := []float64{1, -1, 0.5, -0.5, 2, -2}
		for k := range 3 {
			if _, err := tn.Accumulate(context.Background(), cond, tr, k, all, adv, 1.0/3); err != nil {
				t.Fatal(err)
			}
		}
		if norm, err = tn.Apply(context.Background()); err != nil || !(norm > 0) {
			t.Fatalf("%s: gradient norm %v (err %v), want > 0", kind, norm, err)
		}
		st, err := tn.Accumulate(context.Background(), cond, tr, 0, all, adv, 1)
		if err != nil {
			t.Fatal(err)
		}
		if st.RatioMean == 1 || !(st.KL > 0) {
			t.Errorf("%s: after an update ratio mean %v and KL %v, want ≠ 1 and > 0", kind, st.RatioMean, st.KL)
		}
	}
}

// Spreading the steps of an update over workers, each with its own accumulators, changes only
// the order of the gradient sum: every step's stats are identical and the updated weights agree
// to float rounding with one worker's; a second update (after the accumulators were zeroed)
// agrees too.
func TestTrainerWorkersMatchOneWorker(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})}}
	sched, _ := SD3Schedule(4, DefaultShift)
	backend := nntest.Backend(t)
	adv := [][]float64{{1, -1, 0.5, -0.5, 2, -2}, {-1, 1, 0, 0.25, 1, -2}, {0.5, 0.5, -1, -1, 2, 0}}
	ks, all := []int{0, 1, 2}, []int{0, 1, 2, 3, 4, 5}
	type result struct {
		stats   []StepStats
		norms   []float64
		weights [][]float32
	}
	train := func(workers int) result {
		ctx := mlctx.New()
		tr := testRollout(t, ctx, scaledVelocity, sched, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{2}}, 0, cond, 5)
		tn, err := NewTrainer(backend, ctx, scaledVelocity, TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-4, Beta: 0.04},
			LearningRate: 0.05, GradClip: 1, Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		var r result
		for range 2 {
			st, err := tn.AccumulateSteps(context.Background(), cond, tr, ks, all, adv, 1.0/3)
			if err != nil {
				t.Fatal(err)
			}
			norm, err := tn.Apply(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			r.stats, r.norms = append(r.stats, st...), append(r.norms, norm)
		}
		for _, name := range []string{"w", "d"} {
			v, err := ctx.InspectVariable("/lin", name).Value()
			if err != nil {
				t.Fatal(err)
			}
			w, _ := tensors.CopyFlatData[float32](v)
			r.weights = append(r.weights, w)
		}
		return r
	}
	one := train(1)
	for _, workers := range []int{2, 3} {
		got := train(workers)
		for i := range one.stats {
			if got.stats[i] != one.stats[i] {
				t.Errorf("%d workers: stats of call %d %+v, want %+v", workers, i, got.stats[i], one.stats[i])
			}
		}
		for i := range one.norms {
			if math.Abs(got.norms[i]-one.norms[i]) > 1e-6*one.norms[i] || !(one.norms[i] > 0) {
				t.Errorf("%d workers: gradient norm of update %d %v, want %v (> 0)", workers, i, got.norms[i], one.norms[i])
			}
		}
		for i := range one.weights {
			for j := range one.weights[i] {
				if d := math.Abs(float64(got.weights[i][j] - one.weights[i][j])); d > 1e-6 {
					t.Errorf("%d workers: weight %d[%d] %v, want %v", workers, i, j, got.weights[i][j], one.weights[i][j])
				}
			}
		}
	}
}

// TestAccumulateStepsFreshConditioning: conditioning tensors that were never on the device (a
// rollout whose velocity came from outside the graph leaves them so) are shared by the train
// workers; moving them to the device must not race (GoMLX's first move is not guarded).
func TestAccumulateStepsFreshConditioning(t *testing.T) {
	sched, _ := SD3Schedule(4, DefaultShift)
	backend := nntest.Backend(t)
	ctx := mlctx.New()
	fresh := func() Conditioning {
		return Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}}), tensors.FromValue([][]float32{{0.25}})}}
	}
	tr := testRollout(t, ctx, scaledVelocity, sched, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{2}}, 0, fresh(), 5)
	tn, err := NewTrainer(backend, ctx, scaledVelocity, TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-4, Beta: 0.04},
		LearningRate: 0.05, GradClip: 1, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	adv := [][]float64{{1, -1, 0.5}, {-1, 1, 0}, {0.5, 0.5, -1}, {1, 0, -1}}
	for i := range 50 {
		if _, err := tn.AccumulateSteps(context.Background(), fresh(), tr, []int{0, 1, 2, 3}, []int{0, 1, 2}, adv, 0.25); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}

// TestTrainerRefVelocities: a trainer that takes the reference model's velocities from the
// trajectories (computed outside the graph — here on the host, for scaledVelocity without its
// adapter) trains exactly as one that runs the reference model in its graph: same losses, KL,
// gradient norms and weights over two updates; without them it is an error naming the step.
func TestTrainerRefVelocities(t *testing.T) {
	ms := []float32{0.5, -1.5}
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{ms[0]}, {ms[1]}})}}
	sched, _ := SD3Schedule(4, DefaultShift)
	backend := nntest.Backend(t)
	adv := [][]float64{{1, -1, 0.5, -0.5, 2, -2}, {-1, 1, 0, 0.25, 1, -2}, {0.5, 0.5, -1, -1, 2, 0}}
	ks, all := []int{0, 1, 2}, []int{0, 1, 2, 3, 4, 5}
	type result struct {
		stats []StepStats
		norms []float64
		w     []float32
	}
	train := func(ref bool) (result, error) {
		ctx := mlctx.New()
		tr := testRollout(t, ctx, scaledVelocity, sched, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{2}}, 0, cond, 5)
		// The reference is scaledVelocity without its adapter d: x·(w + m), with the current w
		// (trainable here, unlike a real base model, so it is read before every accumulation).
		setRef := func() {
			wv, err := ctx.InspectVariable("/lin", "w").Value()
			if err != nil {
				t.Fatal(err)
			}
			base, _ := tensors.CopyFlatData[float32](wv)
			tr.VRef = nil
			for k := range 3 {
				v := make([]float32, len(tr.X[k]))
				for i := range tr.Len() {
					for e := range 2 {
						v[i*2+e] = tr.X[k][i*2+e] * (base[e] + ms[tr.Prompts[i]])
					}
				}
				tr.VRef = append(tr.VRef, v)
			}
		}
		tn, err := NewTrainer(backend, ctx, scaledVelocity, TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-4, Beta: 0.5},
			LearningRate: 0.05, GradClip: 1, Workers: 2, RefVelocities: true})
		if err != nil {
			t.Fatal(err)
		}
		if !ref {
			tn.cfg.RefVelocities = false
		}
		var r result
		for range 2 {
			if ref {
				setRef()
			}
			st, err := tn.AccumulateSteps(context.Background(), cond, tr, ks, all, adv, 1.0/3)
			if err != nil {
				return r, err
			}
			norm, err := tn.Apply(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			r.stats, r.norms = append(r.stats, st...), append(r.norms, norm)
		}
		v, err := ctx.InspectVariable("/lin", "d").Value()
		if err != nil {
			t.Fatal(err)
		}
		r.w, _ = tensors.CopyFlatData[float32](v)
		return r, nil
	}
	inGraph, err := train(false)
	if err != nil {
		t.Fatal(err)
	}
	given, err := train(true)
	if err != nil {
		t.Fatal(err)
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-5*math.Max(1e-3, math.Abs(b)) }
	for i, want := range inGraph.stats {
		got := given.stats[i]
		if !close(got.Loss, want.Loss) || !close(got.KL, want.KL) || !close(got.Policy, want.Policy) {
			t.Errorf("step stats %d: given %+v, in graph %+v", i, got, want)
		}
	}
	if !(inGraph.stats[len(inGraph.stats)-1].KL > 0) {
		t.Errorf("the KL term stayed 0 (%+v): the test would not see a wrong reference", inGraph.stats)
	}
	for i := range inGraph.norms {
		if !close(given.norms[i], inGraph.norms[i]) {
			t.Errorf("gradient norm %d: given %v, in graph %v", i, given.norms[i], inGraph.norms[i])
		}
	}
	for i := range inGraph.w {
		if !close(float64(given.w[i]), float64(inGraph.w[i])) {
			t.Errorf("adapter %d: given %v, in graph %v", i, given.w[i], inGraph.w[i])
		}
	}
	ctx := mlctx.New()
	tr := testRollout(t, ctx, scaledVelocity, sched, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{2}}, 0, cond, 5)
	tn, _ := NewTrainer(backend, ctx, scaledVelocity, TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-4, Beta: 0.5},
		LearningRate: 0.05, GradClip: 1, RefVelocities: true})
	if _, err := tn.AccumulateSteps(context.Background(), cond, tr, ks, all, adv, 1); err == nil ||
		!strings.Contains(err.Error(), "accumulate step 0: the trainer takes reference velocities but the trajectories hold none") {
		t.Errorf("trajectories without VRef: got %v", err)
	}
}
