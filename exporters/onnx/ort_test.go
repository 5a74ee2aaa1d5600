package onnx

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/onnxrt/onnxrttest"
)

func TestMain(m *testing.M) { onnxrttest.Main(m, "exporters/onnx") }

// runModel writes m with WriteFile, opens it in ONNX Runtime and runs it on inputs.
func runModel(t *testing.T, m *Model, inputs map[string]onnxrt.Tensor) map[string]onnxrt.Tensor {
	t.Helper()
	path := filepath.Join(t.TempDir(), m.Graph.Name+".onnx")
	if err := m.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return runFile(t, path, inputs)
}

func runFile(t *testing.T, path string, inputs map[string]onnxrt.Tensor) map[string]onnxrt.Tensor {
	t.Helper()
	s, err := onnxrt.Open(path, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(context.Background(), inputs)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkF32 compares an output with the Go reference: same shape, |got-want| <= 1e-5·max(1,|want|).
func checkF32(t *testing.T, name string, got onnxrt.Tensor, wantShape []int64, want []float32) {
	t.Helper()
	if fmt.Sprint(got.Shape) != fmt.Sprint(wantShape) {
		t.Fatalf("%s: shape %v, want %v", name, got.Shape, wantShape)
	}
	if len(got.Float32) != len(want) {
		t.Fatalf("%s: %d float32 values, want %d", name, len(got.Float32), len(want))
	}
	for i := range want {
		tol := 1e-5 * math.Max(1, math.Abs(float64(want[i])))
		if d := math.Abs(float64(got.Float32[i] - want[i])); d > tol || math.IsNaN(float64(got.Float32[i])) {
			t.Fatalf("%s[%d] = %v, want %v (|diff| %g > %g)", name, i, got.Float32[i], want[i], d, tol)
		}
	}
}

// ramp returns n deterministic values in [-1, 1) that are not symmetric, so that a wrong
// index or axis changes the result.
func ramp(n int, seed float32) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(math.Sin(float64(seed)+1.7*float64(i))) * float32(1+i%3) / 3
	}
	return out
}

func f32(shape []int64, data []float32) onnxrt.Tensor {
	return onnxrt.Tensor{Shape: shape, Float32: data}
}

// MatMul + Add + Relu with a symbolic batch: y = relu(x·W + b), x [batch,3], W [3,4], b [4].
// Run at two batch sizes through the same file.
func TestMatMulAddReluSymbolicBatch(t *testing.T) {
	const k, n = 3, 4
	w := ramp(k*n, 0.3)
	b := []float32{0.1, -0.2, 0.3, -0.4}
	g := NewGraph("linear_relu")
	x := g.Input("x", Float32, Sym("batch"), Dim{Value: k})
	mm := g.Op("MatMul", []string{x, g.InitializerF32("W", []int64{k, n}, w)})
	add := g.Op("Add", []string{mm, g.InitializerF32("b", []int64{n}, b)})
	g.Node("Relu", []string{add}, []string{"y"})
	g.Output("y", Float32, Sym("batch"), Dim{Value: n})
	m := &Model{Graph: g, ProducerName: "densegrpo-test"}

	path := filepath.Join(t.TempDir(), "linear_relu.onnx")
	if err := m.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	ins, outs, err := onnxrt.Inspect(path, onnxrt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if ins[0].String() != "x float32 [-1,3]" || outs[0].String() != "y float32 [-1,4]" {
		t.Errorf("declared %v -> %v, want x float32 [-1,3] -> y float32 [-1,4]", ins, outs)
	}
	for _, batch := range []int{1, 5} {
		xs := ramp(batch*k, float32(batch))
		want := make([]float32, batch*n)
		for r := 0; r < batch; r++ {
			for c := 0; c < n; c++ {
				s := b[c]
				for i := 0; i < k; i++ {
					s += xs[r*k+i] * w[i*n+c]
				}
				want[r*n+c] = max(s, 0)
			}
		}
		got := runFile(t, path, map[string]onnxrt.Tensor{"x": f32([]int64{int64(batch), k}, xs)})
		checkF32(t, fmt.Sprintf("y(batch=%d)", batch), got["y"], []int64{int64(batch), n}, want)
	}
}

// conv2D is the reference NCHW convolution (group 1, dilation 1):
// y[o,co,i,j] = B[co] + Σ_{ci,ki,kj} x[o,ci, i·s−pt+ki, j·s−pl+kj]·W[co,ci,ki,kj], zero outside.
func conv2D(x []float32, n, c, h, w int, wt []float32, co, kh, kw int, bias []float32,
	pads [4]int, stride [2]int) ([]float32, int, int) {
	oh := (h+pads[0]+pads[2]-kh)/stride[0] + 1
	ow := (w+pads[1]+pads[3]-kw)/stride[1] + 1
	out := make([]float32, n*co*oh*ow)
	for b := 0; b < n; b++ {
		for o := 0; o < co; o++ {
			for i := 0; i < oh; i++ {
				for j := 0; j < ow; j++ {
					s := bias[o]
					for ci := 0; ci < c; ci++ {
						for ki := 0; ki < kh; ki++ {
							for kj := 0; kj < kw; kj++ {
								y, xx := i*stride[0]-pads[0]+ki, j*stride[1]-pads[1]+kj
								if y < 0 || y >= h || xx < 0 || xx >= w {
									continue
								}
								s += x[((b*c+ci)*h+y)*w+xx] * wt[((o*c+ci)*kh+ki)*kw+kj]
							}
						}
					}
					out[((b*co+o)*oh+i)*ow+j] = s
				}
			}
		}
	}
	return out, oh, ow
}

func TestConv(t *testing.T) {
	const n, c, h, w, co, k = 2, 2, 5, 6, 3, 3
	tests := []struct {
		name   string
		pads   [4]int // top, left, bottom, right (ONNX order: x1_begin, x2_begin, x1_end, x2_end)
		stride [2]int
	}{
		{"same-pads-stride1", [4]int{1, 1, 1, 1}, [2]int{1, 1}},
		{"pads1-stride2", [4]int{1, 1, 1, 1}, [2]int{2, 2}},
		{"asymmetric-pads-stride-2x1", [4]int{0, 2, 1, 0}, [2]int{2, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			xs, wt, bias := ramp(n*c*h*w, 0.1), ramp(co*c*k*k, 0.7), []float32{0.5, -0.25, 0.125}
			want, oh, ow := conv2D(xs, n, c, h, w, wt, co, k, k, bias, tc.pads, tc.stride)
			g := NewGraph("conv")
			x := g.Input("x", Float32, Fixed(n, c, h, w)...)
			g.Node("Conv", []string{x, g.InitializerF32("W", []int64{co, c, k, k}, wt), g.InitializerF32("B", []int64{co}, bias)},
				[]string{"y"},
				AttrInts("kernel_shape", k, k),
				AttrInts("pads", int64(tc.pads[0]), int64(tc.pads[1]), int64(tc.pads[2]), int64(tc.pads[3])),
				AttrInts("strides", int64(tc.stride[0]), int64(tc.stride[1])))
			g.Output("y", Float32, Fixed(n, co, int64(oh), int64(ow))...)
			got := runModel(t, &Model{Graph: g}, map[string]onnxrt.Tensor{"x": f32([]int64{n, c, h, w}, xs)})
			checkF32(t, "y", got["y"], []int64{n, co, int64(oh), int64(ow)}, want)
		})
	}
}

// resizeAxis maps output index o of an axis of input length in and scale s = out/in to the
// input coordinate with ONNX's default half_pixel transform: x = (o+0.5)/s − 0.5.
func resizeCoord(o int, in, out int) float64 {
	s := float64(out) / float64(in)
	return (float64(o)+0.5)/s - 0.5
}

// resizeRef is the reference NCHW Resize over H and W. nearest uses the default nearest_mode
// round_prefer_floor (ties go down); linear interpolates between the two neighbours, with
// neighbour indices clamped to the edge.
func resizeRef(x []float32, n, c, h, w, oh, ow int, mode string) []float32 {
	clamp := func(i, size int) int { return min(max(i, 0), size-1) }
	nearest := func(v float64, size int) int {
		f := math.Floor(v)
		if v-f > 0.5 {
			f++
		}
		return clamp(int(f), size)
	}
	out := make([]float32, n*c*oh*ow)
	for p := 0; p < n*c; p++ {
		plane := x[p*h*w : (p+1)*h*w]
		for i := 0; i < oh; i++ {
			for j := 0; j < ow; j++ {
				y, xx := resizeCoord(i, h, oh), resizeCoord(j, w, ow)
				var v float32
				if mode == "nearest" {
					v = plane[nearest(y, h)*w+nearest(xx, w)]
				} else {
					y0, x0 := math.Floor(y), math.Floor(xx)
					fy, fx := float32(y-y0), float32(xx-x0)
					ya, yb := clamp(int(y0), h), clamp(int(y0)+1, h)
					xa, xb := clamp(int(x0), w), clamp(int(x0)+1, w)
					top := plane[ya*w+xa]*(1-fx) + plane[ya*w+xb]*fx
					bot := plane[yb*w+xa]*(1-fx) + plane[yb*w+xb]*fx
					v = top*(1-fy) + bot*fy
				}
				out[(p*oh+i)*ow+j] = v
			}
		}
	}
	return out
}

func TestResize(t *testing.T) {
	const n, c, h, w = 1, 2, 4, 4
	tests := []struct {
		mode   string
		scales bool // true: scales input [1,1,oh/h,ow/w]; false: sizes input
		oh, ow int
	}{
		{"nearest", true, 8, 8},
		{"linear", true, 8, 8},
		{"nearest", false, 3, 5},
		{"linear", false, 3, 5},
		{"linear", false, 2, 2},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s-%dx%d", tc.mode, tc.oh, tc.ow)
		t.Run(name, func(t *testing.T) {
			xs := ramp(n*c*h*w, 2.1)
			g := NewGraph("resize")
			x := g.Input("x", Float32, Fixed(n, c, h, w)...)
			// Resize-13+ inputs: X, roi (unused with half_pixel), scales, sizes; exactly one of
			// scales and sizes is given, the other is skipped with "".
			ins := []string{x, "", "", ""}
			if tc.scales {
				ins[2] = g.ConstF32("scales", []int64{4}, []float32{1, 1, float32(tc.oh) / h, float32(tc.ow) / w})
			} else {
				ins[3] = g.ConstI64("sizes", []int64{4}, []int64{n, c, int64(tc.oh), int64(tc.ow)})
			}
			g.Node("Resize", ins, []string{"y"}, AttrString("mode", tc.mode))
			g.Output("y", Float32, Fixed(n, c, int64(tc.oh), int64(tc.ow))...)
			got := runModel(t, &Model{Graph: g}, map[string]onnxrt.Tensor{"x": f32([]int64{n, c, h, w}, xs)})
			checkF32(t, "y", got["y"], []int64{n, c, int64(tc.oh), int64(tc.ow)},
				resizeRef(xs, n, c, h, w, tc.oh, tc.ow, tc.mode))
		})
	}
}

// LayerNormalization (opset 17) and its decomposition in one graph, both against
// y = (x − mean)/sqrt(var + eps)·γ + β over the last axis, var the biased variance.
func TestLayerNormAndDecomposition(t *testing.T) {
	const b, s, d = 2, 3, 8
	const eps = 1e-5
	xs := ramp(b*s*d, 0.9)
	for i := range xs {
		xs[i] = 3*xs[i] + float32(i%d) // a mean and spread that differ per row
	}
	gamma, beta := ramp(d, 1.3), ramp(d, 4.2)
	want := make([]float32, len(xs))
	for r := 0; r < b*s; r++ {
		row := xs[r*d : (r+1)*d]
		var mean, v float64
		for _, e := range row {
			mean += float64(e)
		}
		mean /= d
		for _, e := range row {
			v += (float64(e) - mean) * (float64(e) - mean)
		}
		v /= d
		for i, e := range row {
			want[r*d+i] = float32((float64(e)-mean)/math.Sqrt(v+eps))*gamma[i] + beta[i]
		}
	}

	g := NewGraph("layernorm")
	x := g.Input("x", Float32, Sym("batch"), Dim{Value: s}, Dim{Value: d})
	gm := g.InitializerF32("gamma", []int64{d}, gamma)
	bt := g.InitializerF32("beta", []int64{d}, beta)
	g.Node("LayerNormalization", []string{x, gm, bt}, []string{"y_ln"},
		AttrInt("axis", -1), AttrFloat("epsilon", eps))
	// Decomposition; ReduceMean takes axes as an attribute up to opset 17.
	mean := g.Op("ReduceMean", []string{x}, AttrInts("axes", -1), AttrInt("keepdims", 1))
	centred := g.Op("Sub", []string{x, mean})
	sq := g.Op("Pow", []string{centred, g.ConstF32("two", []int64{}, []float32{2})})
	variance := g.Op("ReduceMean", []string{sq}, AttrInts("axes", -1), AttrInt("keepdims", 1))
	std := g.Op("Sqrt", []string{g.Op("Add", []string{variance, g.ConstF32("eps", []int64{}, []float32{eps})})})
	normed := g.Op("Div", []string{centred, std})
	g.Node("Add", []string{g.Op("Mul", []string{normed, gm}), bt}, []string{"y_dec"})
	g.Output("y_ln", Float32, Sym("batch"), Dim{Value: s}, Dim{Value: d})
	g.Output("y_dec", Float32, Sym("batch"), Dim{Value: s}, Dim{Value: d})

	got := runModel(t, &Model{Graph: g, Opset: 17}, map[string]onnxrt.Tensor{"x": f32([]int64{b, s, d}, xs)})
	checkF32(t, "y_ln", got["y_ln"], []int64{b, s, d}, want)
	checkF32(t, "y_dec", got["y_dec"], []int64{b, s, d}, want)
}

// Embedding lookup: Gather(E [V,D], ids [batch,seq] int64, axis 0) -> [batch,seq,D], where a
// negative id counts from the end (−1 is row V−1). The values are copied, so equality is exact.
func TestGatherEmbedding(t *testing.T) {
	const vocab, dim = 6, 3
	table := ramp(vocab*dim, 0.2)
	ids := []int64{0, 5, 2, 2, -1, 3}
	g := NewGraph("embedding")
	in := g.Input("ids", Int64, Sym("batch"), Sym("seq"))
	g.Node("Gather", []string{g.InitializerF32("E", []int64{vocab, dim}, table), in}, []string{"emb"}, AttrInt("axis", 0))
	g.Output("emb", Float32, Sym("batch"), Sym("seq"), Dim{Value: dim})
	got := runModel(t, &Model{Graph: g}, map[string]onnxrt.Tensor{"ids": {Shape: []int64{2, 3}, Int64: ids}})
	var want []float32
	for _, id := range ids {
		if id < 0 {
			id += vocab
		}
		want = append(want, table[id*dim:(id+1)*dim]...)
	}
	checkF32(t, "emb", got["emb"], []int64{2, 3, dim}, want)
}

// Softmax (opset 13+: along one axis) of x + bias, the bias a Constant node built from a floats
// attribute: y = exp(z − max z)/Σ exp(z − max z) along axis.
func TestSoftmax(t *testing.T) {
	tests := []struct {
		shape []int64
		axis  int
	}{
		{[]int64{2, 5}, -1},
		{[]int64{2, 3, 4}, 1},
		{[]int64{2, 3, 4}, 0},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%v-axis%d", tc.shape, tc.axis), func(t *testing.T) {
			size := 1
			for _, d := range tc.shape {
				size *= int(d)
			}
			xs := ramp(size, 0.5)
			for i := range xs {
				xs[i] *= 4
			}
			g := NewGraph("softmax")
			x := g.Input("x", Float32, Fixed(tc.shape...)...)
			bias := g.Op("Constant", nil, AttrFloats("value_floats", 0.25))
			g.Node("Softmax", []string{g.Op("Add", []string{x, bias})}, []string{"y"}, AttrInt("axis", int64(tc.axis)))
			g.Output("y", Float32, Fixed(tc.shape...)...)
			got := runModel(t, &Model{Graph: g}, map[string]onnxrt.Tensor{"x": f32(tc.shape, xs)})

			axis := (tc.axis + len(tc.shape)) % len(tc.shape)
			inner := 1
			for _, d := range tc.shape[axis+1:] {
				inner *= int(d)
			}
			n := int(tc.shape[axis])
			want := make([]float32, size)
			for outer := 0; outer < size/(n*inner); outer++ {
				for in := 0; in < inner; in++ {
					at := func(k int) int { return (outer*n+k)*inner + in }
					m := math.Inf(-1)
					for k := 0; k < n; k++ {
						m = math.Max(m, float64(xs[at(k)]+0.25))
					}
					var sum float64
					for k := 0; k < n; k++ {
						sum += math.Exp(float64(xs[at(k)]+0.25) - m)
					}
					for k := 0; k < n; k++ {
						want[at(k)] = float32(math.Exp(float64(xs[at(k)]+0.25)-m) / sum)
					}
				}
			}
			checkF32(t, "y", got["y"], tc.shape, want)
		})
	}
}

// Transpose(perm [2,0,1]) of x [2,3,4] gives t [4,2,3] with t[k,i,j] = x[i,j,k]; Reshape to
// [4,-1] (the shape a Constant node with a tensor attribute) flattens the last two axes:
// y[k, i·3+j] = x[i,j,k].
func TestTransposeReshape(t *testing.T) {
	xs := ramp(24, 3.3)
	g := NewGraph("transpose_reshape")
	x := g.Input("x", Float32, Fixed(2, 3, 4)...)
	tr := g.Op("Transpose", []string{x}, AttrInts("perm", 2, 0, 1))
	shape := g.Op("Constant", nil, AttrTensor("value", TensorI64("", []int64{2}, []int64{4, -1})))
	g.Node("Reshape", []string{tr, shape}, []string{"y"})
	g.Node("Identity", []string{tr}, []string{"t"})
	g.Output("y", Float32, Fixed(4, 6)...)
	g.Output("t", Float32, Fixed(4, 2, 3)...)
	got := runModel(t, &Model{Graph: g}, map[string]onnxrt.Tensor{"x": f32([]int64{2, 3, 4}, xs)})
	want := make([]float32, 24)
	for i := 0; i < 2; i++ {
		for j := 0; j < 3; j++ {
			for k := 0; k < 4; k++ {
				want[k*6+i*3+j] = xs[(i*3+j)*4+k]
			}
		}
	}
	checkF32(t, "t", got["t"], []int64{4, 2, 3}, want)
	checkF32(t, "y", got["y"], []int64{4, 6}, want)
}

// Split (opset 13+: sizes as an input) of x [2,6] along axis 1 into widths 1, 2, 3, each
// piece named by Ops: piece p holds columns [start_p, start_p+width_p) of every row.
func TestSplitOps(t *testing.T) {
	xs := ramp(12, 5.5)
	g := NewGraph("split")
	x := g.Input("x", Float32, Fixed(2, 6)...)
	parts := g.Ops("Split", []string{x, g.ConstI64("split", []int64{3}, []int64{1, 2, 3})}, 3, AttrInt("axis", 1))
	widths := []int{1, 2, 3}
	for i, p := range parts {
		g.Output(p, Float32, Fixed(2, int64(widths[i]))...)
	}
	got := runModel(t, &Model{Graph: g}, map[string]onnxrt.Tensor{"x": f32([]int64{2, 6}, xs)})
	start := 0
	for i, p := range parts {
		var want []float32
		for r := 0; r < 2; r++ {
			want = append(want, xs[r*6+start:r*6+start+widths[i]]...)
		}
		checkF32(t, p, got[p], []int64{2, int64(widths[i])}, want)
		start += widths[i]
	}
}
