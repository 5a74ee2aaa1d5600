package nn_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// productCase is one matrix product under test: the operand shapes and the function building it.
type productCase struct {
	name     string
	operands [][]int // dimensions of each differentiable input
	want     []int   // dimensions of the product
	build    func(in []*graph.Node) *graph.Node
}

// productCases cover the project's wrappers and DotGeneral with batch axes (leading, not leading,
// paired in a different order), several contracting axes paired out of order, transposed
// layouts, an operand without cross axes and an outer product without contracting axes.
var productCases = []productCase{
	{"MatMul/rank3", [][]int{{2, 3, 4}, {4, 5}}, []int{2, 3, 5},
		func(in []*graph.Node) *graph.Node { return nn.MatMul(in[0], in[1]) }},
	{"MatMul/vector", [][]int{{4}, {4, 3}}, []int{3},
		func(in []*graph.Node) *graph.Node { return nn.MatMul(in[0], in[1]) }},
	{"Linear/bias", [][]int{{2, 3, 4}, {5, 4}, {5}}, []int{2, 3, 5},
		func(in []*graph.Node) *graph.Node { return nn.Linear(in[0], in[1], in[2]) }},
	{"Linear/nobias", [][]int{{3, 4}, {2, 4}}, []int{3, 2},
		func(in []*graph.Node) *graph.Node { return nn.Linear(in[0], in[1], nil) }},
	{"BatchMatMul", [][]int{{2, 3, 4, 5}, {2, 3, 5, 6}}, []int{2, 3, 4, 6},
		func(in []*graph.Node) *graph.Node { return nn.BatchMatMul(in[0], in[1], false) }},
	{"BatchMatMul/transposeB", [][]int{{2, 3, 4, 5}, {2, 3, 6, 5}}, []int{2, 3, 4, 6},
		func(in []*graph.Node) *graph.Node { return nn.BatchMatMul(in[0], in[1], true) }},
	// lhs axes 0↔rhs axis 2 (3) and lhs 2↔rhs 0 (5) contracted: out [4, 6].
	{"DotGeneral/two-contracting-crossed", [][]int{{3, 4, 5}, {5, 6, 3}}, []int{4, 6},
		func(in []*graph.Node) *graph.Node {
			return nn.DotGeneral(in[0], []int{0, 2}, nil, in[1], []int{2, 0}, nil)
		}},
	// Batch axis in the middle of lhs, first of rhs; contracting first of lhs, last of rhs: out [2, 3, 5].
	{"DotGeneral/batch-transposed", [][]int{{4, 2, 3}, {2, 5, 4}}, []int{2, 3, 5},
		func(in []*graph.Node) *graph.Node {
			return nn.DotGeneral(in[0], []int{0}, []int{1}, in[1], []int{2}, []int{0})
		}},
	// Two batch axes paired in opposite order (lhs 0↔rhs 1, lhs 1↔rhs 0): out [2, 3, 4, 6].
	{"DotGeneral/batch-pairs-swapped", [][]int{{2, 3, 4, 5}, {3, 2, 5, 6}}, []int{2, 3, 4, 6},
		func(in []*graph.Node) *graph.Node {
			return nn.DotGeneral(in[0], []int{3}, []int{0, 1}, in[1], []int{2}, []int{1, 0})
		}},
	// lhs fully contracted (no cross axes): out [2].
	{"DotGeneral/lhs-no-cross", [][]int{{3, 4}, {4, 3, 2}}, []int{2},
		func(in []*graph.Node) *graph.Node {
			return nn.DotGeneral(in[0], []int{0, 1}, nil, in[1], []int{1, 0}, nil)
		}},
	// Outer product, nothing contracted: out [3, 2].
	{"DotGeneral/outer", [][]int{{3}, {2}}, []int{3, 2},
		func(in []*graph.Node) *graph.Node { return nn.DotGeneral(in[0], nil, nil, in[1], nil, nil) }},
	// Negative axes: same as batch-transposed.
	{"DotGeneral/negative-axes", [][]int{{4, 2, 3}, {2, 5, 4}}, []int{2, 3, 5},
		func(in []*graph.Node) *graph.Node {
			return nn.DotGeneral(in[0], []int{-3}, []int{-2}, in[1], []int{-1}, []int{-3})
		}},
}

// lossOf is the scalar whose gradient the tests take: L = Σ w⊙out + ½Σ out², so that the
// adjoint arriving at the product, w + out, differs per element and depends on the operands.
func lossOf(out, w *graph.Node) *graph.Node {
	return graph.Add(graph.ReduceAllSum(graph.Mul(w, out)),
		graph.MulScalar(graph.ReduceAllSum(graph.Square(out)), 0.5))
}

func randomTensor(rng *rand.Rand, dims []int) ([]float64, *tensors.Tensor) {
	n := 1
	for _, d := range dims {
		n *= d
	}
	data := make([]float64, n)
	for i := range data {
		data[i] = rng.NormFloat64()
	}
	return data, tensors.FromFlatDataAndDimensions(data, dims...)
}

// gradients returns the loss and its gradients with respect to the operands, with the fast
// gradient enabled or not while the graph is built.
func gradients(t *testing.T, c productCase, fast bool, args []any) (float64, [][]float64) {
	t.Helper()
	previous := nn.SetFastGradients(fast)
	defer nn.SetFastGradients(previous)
	var got []int
	exec, err := graph.NewExec(nntest.Backend(t), func(in []*graph.Node) []*graph.Node {
		operands, w := in[:len(in)-1], in[len(in)-1]
		out := c.build(operands)
		got = out.Shape().Dimensions
		return append([]*graph.Node{lossOf(out, w)}, graph.Gradient(lossOf(out, w), operands...)...)
	})
	if err != nil {
		t.Fatalf("new exec: %v", err)
	}
	defer exec.Finalize()
	outputs, err := exec.Exec(args...)
	if err != nil {
		t.Fatalf("exec (fast=%v): %v", fast, err)
	}
	if fmt.Sprint(got) != fmt.Sprint(c.want) {
		t.Fatalf("product shape %v, want %v", got, c.want)
	}
	grads := make([][]float64, len(outputs)-1)
	for i, o := range outputs[1:] {
		grads[i] = tensors.MustCopyFlatData[float64](o)
	}
	return tensors.MustCopyFlatData[float64](outputs[0])[0], grads
}

// TestProductGradients checks, for every productCase in float64, that the fast gradient equals
// GoMLX's default one and central finite differences (L is quadratic in each operand, so the
// central difference (L(x+h)−L(x−h))/2h is exact up to rounding).
func TestProductGradients(t *testing.T) {
	for _, c := range productCases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(len(c.name))))
			data := make([][]float64, len(c.operands))
			args := make([]any, 0, len(c.operands)+1)
			for i, dims := range c.operands {
				var tensor *tensors.Tensor
				data[i], tensor = randomTensor(rng, dims)
				args = append(args, tensor)
			}
			_, w := randomTensor(rng, c.want)
			args = append(args, w)

			_, fastGrads := gradients(t, c, true, args)
			_, defaultGrads := gradients(t, c, false, args)

			lossExec, err := graph.NewExec(nntest.Backend(t), func(in []*graph.Node) *graph.Node {
				return lossOf(c.build(in[:len(in)-1]), in[len(in)-1])
			})
			if err != nil {
				t.Fatalf("new exec: %v", err)
			}
			defer lossExec.Finalize()
			lossAt := func(operand, index int, value float64) float64 {
				perturbed := append([]float64(nil), data[operand]...)
				perturbed[index] = value
				a := append([]any(nil), args...)
				a[operand] = tensors.FromFlatDataAndDimensions(perturbed, c.operands[operand]...)
				out, err := lossExec.Exec(a...)
				if err != nil {
					t.Fatalf("exec loss: %v", err)
				}
				return tensors.MustCopyFlatData[float64](out[0])[0]
			}

			const h = 1e-4
			for op := range c.operands {
				if len(fastGrads[op]) != len(data[op]) {
					t.Fatalf("operand %d: gradient has %d values, want %d", op, len(fastGrads[op]), len(data[op]))
				}
				for i, x := range data[op] {
					fd := (lossAt(op, i, x+h) - lossAt(op, i, x-h)) / (2 * h)
					if !near(fastGrads[op][i], defaultGrads[op][i], 1e-12) {
						t.Errorf("operand %d [%d]: fast gradient %.15g, default %.15g", op, i, fastGrads[op][i], defaultGrads[op][i])
					}
					if !near(fastGrads[op][i], fd, 1e-7) {
						t.Errorf("operand %d [%d]: fast gradient %.15g, finite difference %.15g", op, i, fastGrads[op][i], fd)
					}
				}
			}
		})
	}
}

// near reports |a−b| ≤ tol·max(1, |a|, |b|).
func near(a, b, tol float64) bool {
	return math.Abs(a-b) <= tol*math.Max(1, math.Max(math.Abs(a), math.Abs(b)))
}

// TestFastGradientStructure checks that the fast gradient of a batched product is built from
// DotGenerals without any intermediate larger than the operands and output, while GoMLX's
// default gradient materialises the [batch, M, N, K] product this package exists to avoid.
func TestFastGradientStructure(t *testing.T) {
	const b, m, k, n = 2, 8, 16, 4 // broadcast product: b·m·n·k = 1024 > any operand (256)
	for _, tc := range []struct {
		fast        bool
		wantLargest int
	}{
		{true, b * m * k},      // largest is the lhs [b, m, k] itself
		{false, b * m * n * k}, // the broadcast Mul of the default VJP
	} {
		previous := nn.SetFastGradients(tc.fast)
		g := graph.NewGraph(nntest.Backend(t), "structure")
		lhs := graph.Parameter(g, "lhs", shapesOf(b, m, k))
		rhs := graph.Parameter(g, "rhs", shapesOf(b, k, n))
		out := nn.BatchMatMul(lhs, rhs, false)
		grads := graph.Gradient(graph.ReduceAllSum(out), lhs, rhs)
		nn.SetFastGradients(previous)
		largest := 0
		for _, node := range g.Nodes() {
			if node.NumOutputs() == 1 {
				largest = max(largest, node.Shape().Size())
			}
		}
		if largest != tc.wantLargest {
			t.Errorf("fast=%v: largest tensor in graph has %d elements, want %d", tc.fast, largest, tc.wantLargest)
		}
		if tc.fast {
			for i, grad := range grads {
				if grad.Type() != graph.NodeTypeDotGeneral {
					t.Errorf("fast gradient of operand %d is a %s, want a DotGeneral (no transpose for this layout)", i, grad.Type())
				}
			}
		}
		g.Finalize()
	}
}

func TestSetFastGradients(t *testing.T) {
	previous := nn.SetFastGradients(false)
	defer nn.SetFastGradients(previous)
	if !previous {
		t.Errorf("fast gradients off before the test, want on by default")
	}
	if nn.FastGradients() {
		t.Errorf("FastGradients() = true after SetFastGradients(false)")
	}
	if got := nn.SetFastGradients(true); got {
		t.Errorf("SetFastGradients(true) returned previous=true, want false")
	}
}

func shapesOf(dims ...int) shapes.Shape { return shapes.Make(dtypes.Float32, dims...) }
