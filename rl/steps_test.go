package rl

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// runGraph executes a graph function once and returns its outputs as float32 slices.
func runGraph(t *testing.T, fn any, args ...any) [][]float32 {
	t.Helper()
	exec, err := graph.NewExecAny(nntest.Backend(t), fn)
	if err != nil {
		t.Fatalf("build exec: %v", err)
	}
	defer exec.Finalize()
	outs, err := exec.Exec(args...)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	res := make([][]float32, len(outs))
	for i, o := range outs {
		res[i], err = tensors.CopyFlatData[float32](o)
		if err != nil {
			t.Fatalf("output %d: %v", i, err)
		}
	}
	return res
}

func checkVec(t *testing.T, name string, got []float32, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values %v, want %d", name, len(got), got, len(want))
	}
	for i := range want {
		if !relClose(float64(got[i]), want[i], 1e-6) {
			t.Errorf("%s[%d] = %.9g, want %.9g", name, i, got[i], want[i])
		}
	}
}

// The shared inputs of the step tests, two samples of two elements:
//
//	x = [[1, 2], [−1, 0.5]], v = [[0.5, −1], [2, 0]], ε = [[1, −2], [0.5, 0]]
//
// so mean(ε²) per sample is 2.5 and 0.125. c = log(sqrt(2π)) = 0.918938533.
var (
	stepX     = [][]float32{{1, 2}, {-1, 0.5}}
	stepV     = [][]float32{{0.5, -1}, {2, 0}}
	stepNoise = [][]float32{{1, -2}, {0.5, 0}}
)

const logSqrt2Pi = 0.91893853320467274

func TestEulerStep(t *testing.T) {
	// x + v·(σ'−σ) with σ=0.5, σ'=0.25: x − 0.25v = [[0.875, 2.25], [−1.5, 0.5]]; dt = 0 (a
	// path that has ended, riding along in its batch) leaves x as it is.
	x := []float32{1, 2, -1, 0.5}
	eulerStep(x, []float32{0.5, -1, 2, 0}, 0.25-0.5)
	checkVec(t, "euler", x, []float64{0.875, 2.25, -1.5, 0.5})
	eulerStep(x, []float32{0.5, -1, 2, 0}, 0)
	checkVec(t, "euler dt = 0", x, []float64{0.875, 2.25, -1.5, 0.5})
}

func TestSDESteps(t *testing.T) {
	// Calibrated, σ=0.5, σ'=0.25, s=0.5: dt = −0.25, s² = 0.25,
	//   x coefficient 1 + 0.25/(2·0.5)·(−0.25) = 0.9375, v coefficient (1 + 0.25·0.5/1)·(−0.25) = −0.28125
	//   mean = [[0.796875, 2.15625], [−1.5, 0.46875]], std = 0.5·sqrt(0.25) = 0.25
	//   next = mean + 0.25ε = [[1.046875, 1.65625], [−1.375, 0.46875]]
	//   logp = −mean(ε²)/2 − log 0.25 − c = [−1.25 + 1.386294361 − c, −0.0625 + 1.386294361 − c]
	out := runGraph(t, func(x, v, n, s, sn, sd *graph.Node) (*graph.Node, *graph.Node, *graph.Node, *graph.Node, *graph.Node) {
		o := SDEStep(x, v, s, sn, sd, n)
		return o.Next, o.Mean, o.S, o.Std, o.LogProb
	}, stepX, stepV, stepNoise, float32(0.5), float32(0.25), float32(0.5))
	checkVec(t, "calibrated next", out[0], []float64{1.046875, 1.65625, -1.375, 0.46875})
	checkVec(t, "calibrated mean", out[1], []float64{0.796875, 2.15625, -1.5, 0.46875})
	checkVec(t, "calibrated s", out[2], []float64{0.5})
	checkVec(t, "calibrated std", out[3], []float64{0.25})
	lpA := []float64{-1.25 + math.Log(4) - logSqrt2Pi, -0.0625 + math.Log(4) - logSqrt2Pi}
	checkVec(t, "calibrated logp", out[4], lpA)

	// First step, σ=1 rule: σ=1, σ'=0.75, σ_1=0.75, a=0.5: s = 0.5·sqrt(1/(1−0.75)) = 1,
	//   dt = −0.25, x coefficient 1 + 1/2·(−0.25) = 0.875, v coefficient (1 + 0)·(−0.25) = −0.25
	//   mean = [[0.75, 2], [−1.375, 0.4375]], std = 1·sqrt(0.25) = 0.5
	//   next = mean + 0.5ε = [[1.25, 1], [−1.125, 0.4375]]
	//   logp = −mean(ε²)/2 − log 0.5 − c
	first := Schedule{Sigmas: []float32{1, 0.75, 0}, Timesteps: []float32{1000, 750}}
	s1 := first.SDEStd(0, 0.5)
	checkVec(t, "σ=1 SDEStd", []float32{s1}, []float64{1})
	out = runGraph(t, func(x, v, n, s, sn, sd *graph.Node) (*graph.Node, *graph.Node, *graph.Node, *graph.Node, *graph.Node) {
		o := SDEStep(x, v, s, sn, sd, n)
		return o.Next, o.Mean, o.S, o.Std, o.LogProb
	}, stepX, stepV, stepNoise, float32(1), float32(0.75), s1)
	checkVec(t, "σ=1 next", out[0], []float64{1.25, 1, -1.125, 0.4375})
	checkVec(t, "σ=1 mean", out[1], []float64{0.75, 2, -1.375, 0.4375})
	checkVec(t, "σ=1 s", out[2], []float64{1})
	checkVec(t, "σ=1 std", out[3], []float64{0.5})
	lpB := []float64{-1.25 + math.Log(2) - logSqrt2Pi, -0.0625 + math.Log(2) - logSqrt2Pi}
	checkVec(t, "σ=1 logp", out[4], lpB)

	// Per-sample parameters: sample 0 takes the calibrated case, sample 1 the σ=1 case
	// (σ = [0.5, 1], σ' = [0.25, 0.75], s = [0.5, 1]).
	out = runGraph(t, func(x, v, n, s, sn, sd *graph.Node) (*graph.Node, *graph.Node, *graph.Node, *graph.Node) {
		o := SDEStep(x, v, s, sn, sd, n)
		recomputed, _ := TransitionLogProb(KindSDE, x, v, s, sn, o.S, o.Next)
		return o.Mean, o.S, o.LogProb, recomputed
	}, stepX, stepV, stepNoise, []float32{0.5, 1}, []float32{0.25, 0.75}, []float32{0.5, 1})
	checkVec(t, "per-sample mean", out[0], []float64{0.796875, 2.15625, -1.375, 0.4375})
	checkVec(t, "per-sample s", out[1], []float64{0.5, 1})
	checkVec(t, "per-sample logp", out[2], []float64{lpA[0], lpB[1]})
	checkVec(t, "recomputed logp", out[3], []float64{lpA[0], lpB[1]})
}

func TestCPSStep(t *testing.T) {
	// σ=0.75, σ'=0.625, s=0.375, so sqrt(σ'² − s²) = 0.5 (a 3-4-5 triangle scaled by 1/8):
	//   x̂0 = x − 0.75v = [[0.625, 2.75], [−2.5, 0.5]], x̂1 = x + 0.25v = [[1.125, 1.75], [−0.5, 0.5]]
	//   mean = 0.375·x̂0 + 0.5·x̂1 = [[0.796875, 1.90625], [−1.1875, 0.4375]]
	//   next = mean + 0.375ε = [[1.171875, 1.15625], [−1, 0.4375]]
	//   logp = −0.375²·mean(ε²) = [−0.140625·2.5, −0.140625·0.125] = [−0.3515625, −0.017578125]
	out := runGraph(t, func(x, v, n, s, sn, sd *graph.Node) (*graph.Node, *graph.Node, *graph.Node, *graph.Node, *graph.Node) {
		o := CPSStep(x, v, s, sn, sd, n)
		recomputed, _ := TransitionLogProb(KindCPS, x, v, s, sn, sd, o.Next)
		return o.Next, o.Mean, o.Std, o.LogProb, recomputed
	}, stepX, stepV, stepNoise, float32(0.75), float32(0.625), float32(0.375))
	checkVec(t, "cps next", out[0], []float64{1.171875, 1.15625, -1, 0.4375})
	checkVec(t, "cps mean", out[1], []float64{0.796875, 1.90625, -1.1875, 0.4375})
	checkVec(t, "cps std", out[2], []float64{0.375})
	checkVec(t, "cps logp", out[3], []float64{-0.3515625, -0.017578125})
	checkVec(t, "cps recomputed logp", out[4], []float64{-0.3515625, -0.017578125})

	// Schedule.CPSStd derives s = σ'·sin(aπ/2): a = 1/3 → sin(π/6) = 1/2 → s = 0.3125.
	cps := Schedule{Sigmas: []float32{0.75, 0.625, 0}, Timesteps: []float32{750, 625}}
	checkVec(t, "cps s from a", []float32{cps.CPSStd(0, 1.0/3)}, []float64{0.3125})
}

// TestStepMoments draws 20000 transitions from one state and compares the sample mean and
// variance of x_{k+1} with the formulas. x = 0.3, v = −0.7, σ = 0.6, σ' = 0.4, dt = −0.2.
//
// Flow-SDE, a = 0.7: s² = 0.49·0.6/0.4 = 0.735;
//
//	mean = 0.3·(1 + 0.735/1.2·(−0.2)) + (−0.7)·(1 + 0.735·0.4/1.2)·(−0.2) = 0.26325 + 0.1743 = 0.43755
//	var  = s²·0.2 = 0.147
//
// CPS, a = 0.8: s = 0.4·sin(0.4π) = 0.380422607, s² = 0.144721360;
//
//	mean = 0.6·(0.3 + 0.6·0.7) + sqrt(0.16 − s²)·(0.3 − 0.4·0.7) = 0.432 + 0.123606798·0.02 = 0.434472136
//	var  = s² = 0.144721360
//
// Tolerances are 4 standard errors: sqrt(var/n) for the mean, var·sqrt(2/n) for the variance.
func TestStepMoments(t *testing.T) {
	const n = 20000
	rng := rand.New(rand.NewPCG(7, 11))
	x, v, noise := make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range n {
		x[i], v[i], noise[i] = 0.3, -0.7, float32(rng.NormFloat64())
	}
	xt := tensors.FromFlatDataAndDimensions(x, n, 1)
	vt := tensors.FromFlatDataAndDimensions(v, n, 1)
	nt := tensors.FromFlatDataAndDimensions(noise, n, 1)
	sched := Schedule{Sigmas: []float32{0.6, 0.4}, Timesteps: []float32{600}}
	tests := []struct {
		kind            Kind
		a               float64
		wantMean, wantV float64
	}{
		{KindSDE, 0.7, 0.43755, 0.147},
		{KindCPS, 0.8, 0.434472136, 0.144721360},
	}
	for _, tc := range tests {
		fn := func(x, v, n, s, sn, sd *graph.Node) *graph.Node {
			return StochasticStep(tc.kind, x, v, s, sn, sd, n).Next
		}
		sd := StepStd(tc.kind, sched, 0, tc.a, nil)
		next := runGraph(t, fn, xt, vt, nt, float32(0.6), float32(0.4), sd)[0]
		var sum, sum2 float64
		for _, y := range next {
			sum += float64(y)
		}
		mean := sum / n
		for _, y := range next {
			sum2 += (float64(y) - mean) * (float64(y) - mean)
		}
		variance := sum2 / (n - 1)
		if tol := 4 * math.Sqrt(tc.wantV/n); math.Abs(mean-tc.wantMean) > tol {
			t.Errorf("%s: sample mean %.5f, want %.5f ± %.5f", tc.kind, mean, tc.wantMean, tol)
		}
		if tol := 4 * tc.wantV * math.Sqrt(2.0/n); math.Abs(variance-tc.wantV) > tol {
			t.Errorf("%s: sample variance %.5f, want %.5f ± %.5f", tc.kind, variance, tc.wantV, tol)
		}
	}
}
