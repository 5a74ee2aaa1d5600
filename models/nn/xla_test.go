package nn_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/densegrpo/densegrpo/internal/setupcache"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// xlaCPU returns the XLA backend with the PJRT CPU plugin, skipping the test where no plugin is
// installed (`just setup` puts one in the setup cache).
func xlaCPU(t *testing.T) backends.Backend {
	t.Helper()
	backend, desc, err := nn.NewBackend("xla:cpu")
	if err != nil {
		if _, cacheErr := setupcache.Find(nn.CachedCPUPlugin); cacheErr == nil {
			t.Fatalf("NewBackend(xla:cpu) with the plugin in the setup cache: %v", err)
		}
		t.Skipf("no PJRT CPU plugin (run `just setup`): %v", err)
	}
	if !strings.Contains(desc, "XLA") {
		t.Fatalf("NewBackend(xla:cpu) chose %q", desc)
	}
	t.Cleanup(backend.Finalize)
	return backend
}

// TestXLAProductGradients checks the fast matmul gradient on XLA against SimpleGo: the same
// products and gradients of a batched x·wᵀ and an attention-style a·bᵀ, to float32 rounding.
func TestXLAProductGradients(t *testing.T) {
	xlaBackend := xlaCPU(t)
	f := func(x, w, a, b *graph.Node) []*graph.Node {
		y := graph.Add(graph.ReduceAllSum(graph.Square(nn.Linear(x, w, nil))), graph.ReduceAllSum(graph.Tanh(nn.BatchMatMul(a, b, true))))
		return append([]*graph.Node{y}, graph.Gradient(y, x, w, a, b)...)
	}
	fill := func(n int, f float64) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(math.Sin(float64(i)*f)) * 0.5
		}
		return out
	}
	run := func(b backends.Backend) [][]float32 {
		// A tensor lives on one backend, so each run gets its own.
		args := []any{
			tensors.FromFlatDataAndDimensions(fill(2*5*7, 0.3), 2, 5, 7),
			tensors.FromFlatDataAndDimensions(fill(3*7, 0.7), 3, 7),
			tensors.FromFlatDataAndDimensions(fill(2*4*6*8, 0.11), 2, 4, 6, 8),
			tensors.FromFlatDataAndDimensions(fill(2*4*5*8, 0.13), 2, 4, 5, 8),
		}
		exec, err := graph.NewExec(b, f)
		if err != nil {
			t.Fatalf("new exec on %s: %v", b.Name(), err)
		}
		defer exec.Finalize()
		outs, err := exec.Exec(args...)
		if err != nil {
			t.Fatalf("exec on %s: %v", b.Name(), err)
		}
		res := make([][]float32, len(outs))
		for i, o := range outs {
			res[i] = tensors.MustCopyFlatData[float32](o)
		}
		return res
	}
	want, got := run(nntest.Backend(t)), run(xlaBackend)
	for i := range want {
		for j := range want[i] {
			if d := math.Abs(float64(got[i][j] - want[i][j])); d > 1e-4*(1+math.Abs(float64(want[i][j]))) {
				t.Fatalf("output %d element %d: XLA %v, SimpleGo %v", i, j, got[i][j], want[i][j])
			}
		}
	}
}

// TestXLATrainStep runs AdamW steps of the test transformer on XLA and on SimpleGo from the same
// state (weights, moments, step counter: SimpleGo's after one step, restored into both): the
// losses agree to float32 rounding, step after step. (The backends draw different initial
// weights from the same seed, so the start is copied rather than drawn.)
func TestXLATrainStep(t *testing.T) {
	xlaBackend := xlaCPU(t)
	m := transformer{batch: 2, seq: 8, dim: 32, heads: 2, layers: 2}
	goStep := newTrainStep(t, nntest.Backend(t), m)
	defer goStep.exec.Finalize()
	runWithin(t, goStep, 1, 5*time.Minute) // creates the variables
	floats, ints, err := nn.SnapshotVariables(goStep.ctx, nil)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	losses := func(step *trainStep) []float32 {
		if err := nn.RestoreVariables(step.ctx, floats, ints, nil); err != nil {
			t.Fatalf("restore: %v", err)
		}
		return runWithin(t, step, 3, 5*time.Minute)
	}
	want := losses(goStep)
	xlaStep := newTrainStep(t, xlaBackend, m)
	defer xlaStep.exec.Finalize()
	runWithin(t, xlaStep, 1, 5*time.Minute)
	got := losses(xlaStep)
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); d > 1e-4*math.Abs(float64(want[i])) {
			t.Errorf("step %d: loss on XLA %v, on SimpleGo %v", i, got[i], want[i])
		}
	}
	if !(got[2] < got[0]) {
		t.Errorf("XLA losses %v: want AdamW to lower the loss", got)
	}
}
