package onnxrt

import (
	"context"
	"errors"
	"github.com/densegrpo/densegrpo/exporters/onnx"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// recModel is the PP-OCRv4 recogniser from the setup cache: a real third-party graph with a
// dynamic batch and width, which is what this layer must handle.
func recModel(t *testing.T) string {
	t.Helper()
	p, err := FindCached("ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		t.Fatalf("%v (CPU ONNX Runtime tests never skip)", err)
	}
	return p
}

func TestInspectRecogniser(t *testing.T) {
	ins, outs, err := Inspect(recModel(t), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) != 1 || ins[0].String() != "x float32 [-1,3,48,-1]" {
		t.Errorf("inputs = %v, want [x float32 [-1,3,48,-1]]", ins)
	}
	if len(outs) != 1 || outs[0].Type != "float32" || FormatDims(outs[0].Dims) != "[-1,-1,6625]" {
		t.Errorf("outputs = %v, want one float32 [-1,-1,6625]", outs)
	}
}

func TestRunConcurrent(t *testing.T) {
	s, err := Open(recModel(t), Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A 48×64 grey ramp: any input works; what matters is shape, softmax rows and that
	// concurrent calls agree with a sequential one.
	const n, w = 2, 64
	in := Tensor{Shape: []int64{n, 3, 48, w}, Float32: make([]float32, n*3*48*w)}
	for i := range in.Float32 {
		in.Float32[i] = float32(i%w)/w*2 - 1
	}
	ref, err := s.Run(context.Background(), map[string]Tensor{"x": in})
	if err != nil {
		t.Fatal(err)
	}
	out := ref[s.Outputs()[0].Name]
	if len(out.Shape) != 3 || out.Shape[0] != n || out.Shape[2] != 6625 {
		t.Fatalf("output shape %v, want [2 T 6625]", out.Shape)
	}
	for row := 0; row < int(out.Shape[0]*out.Shape[1]); row++ {
		var sum float64
		for _, p := range out.Float32[row*6625 : (row+1)*6625] {
			sum += float64(p)
		}
		if math.Abs(sum-1) > 1e-3 {
			t.Fatalf("row %d sums to %v, want 1 (softmax)", row, sum)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for g := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := s.Run(context.Background(), map[string]Tensor{"x": in})
			if err != nil {
				errs[g] = err
				return
			}
			for i, v := range got[s.Outputs()[0].Name].Float32 {
				if v != out.Float32[i] {
					errs[g] = errors.New("concurrent run differs from sequential run")
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRunInputErrors(t *testing.T) {
	s, err := Open(recModel(t), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		name   string
		inputs map[string]Tensor
		want   string
	}{
		{"missing input", map[string]Tensor{}, `missing input "x" (want float32 [-1,3,48,-1])`},
		{"wrong height", map[string]Tensor{"x": {Shape: []int64{1, 3, 32, 8}, Float32: make([]float32, 3*32*8)}},
			`input "x": got shape [1,3,32,8], want [-1,3,48,-1]`},
		{"short data", map[string]Tensor{"x": {Shape: []int64{1, 3, 48, 8}, Float32: make([]float32, 5)}},
			`got 5 float32 values for shape [1,3,48,8] (1152 elements)`},
		{"unknown input", map[string]Tensor{"x": {Shape: []int64{1, 3, 48, 8}, Float32: make([]float32, 3*48*8)}, "y": {}},
			`unknown input "y"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Run(context.Background(), tc.inputs)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), s.Path()) {
				t.Fatalf("error %v, want it to name %s and contain %q", err, s.Path(), tc.want)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = s.Run(ctx, map[string]Tensor{"x": {Shape: []int64{1, 3, 48, 8}, Float32: make([]float32, 3*48*8)}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: error %v, want context.Canceled", err)
	}
}

func TestOpenBadFiles(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(recModel(t))
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.onnx")
	if err := os.WriteFile(truncated, data[:len(data)/3], 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nope.onnx")
	for _, path := range []string{missing, truncated, dir} {
		_, err := Open(path, Config{})
		if err == nil {
			t.Fatalf("Open(%s) succeeded, want error", path)
		}
		if msg := err.Error(); !strings.Contains(msg, path) || strings.Contains(msg, "\n") {
			t.Errorf("Open(%s) error %q: want one line naming the file", path, msg)
		}
	}
	// The same model from memory runs; truncated bytes are an error naming the model.
	s, err := OpenBytes("recogniser in memory", data, Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Inputs()) != 1 || s.Path() != "recogniser in memory" {
		t.Errorf("OpenBytes: inputs %v, name %q", s.Inputs(), s.Path())
	}
	s.Close()
	_, err = OpenBytes("half a model", data[:len(data)/3], Config{})
	if err == nil || !strings.Contains(err.Error(), "half a model") || strings.Contains(err.Error(), "\n") {
		t.Errorf("OpenBytes of truncated bytes: error %v, want one line naming the model", err)
	}
}

func TestCheckShape(t *testing.T) {
	info := TensorInfo{Name: "x", Type: "float32", Dims: []int64{-1, 3, 48, -1}}
	tests := []struct {
		shape []int64
		ok    bool
	}{
		{[]int64{1, 3, 48, 320}, true},
		{[]int64{7, 3, 48, 1}, true},
		{[]int64{1, 3, 48}, false},
		{[]int64{1, 1, 48, 320}, false},
		{[]int64{1, 3, 48, 320, 1}, false},
	}
	for _, tc := range tests {
		if err := CheckShape(info, tc.shape); (err == nil) != tc.ok {
			t.Errorf("CheckShape(%v) = %v, want ok=%v", tc.shape, err, tc.ok)
		}
	}
}

func TestProviderCUDAUnavailableIsAnError(t *testing.T) {
	_, err := Open(recModel(t), Config{Provider: "cuda"})
	if err == nil {
		t.Skip("a CUDA provider is available on this machine")
	}
	if !strings.Contains(err.Error(), "cuda") {
		t.Fatalf("error %q, want it to say cuda is unavailable", err)
	}
}

// TestProviderCUDAOnCPULibrary: with the CPU build loaded, a model asking for CUDA gets an
// error naming the model, the provider and the library, never a crash or a CPU session.
func TestProviderCUDAOnCPULibrary(t *testing.T) {
	s, err := Open(recModel(t), Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = Open(recModel(t), Config{Provider: "cuda", DeviceID: 1})
	if err == nil {
		t.Skip("a CUDA provider is available on this machine")
	}
	for _, want := range []string{recModel(t), "provider cuda (device_id 1) requested but unavailable in " + LoadedLibrary() + ": Failed to load library"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q, want it to contain %q", err, want)
		}
	}
	t.Log(err)
}

// TestMissingLibrary runs this test binary again in a clean environment where no library can
// be found (the library is process-global, so this must happen in another process).
func TestMissingLibrary(t *testing.T) {
	if os.Getenv("ONNXRT_TEST_CHILD") == "1" {
		_, err := Open(filepath.Join(os.Getenv("ONNXRT_TEST_DIR"), "model.onnx"), Config{})
		if err == nil {
			os.Exit(3)
		}
		os.Stderr.WriteString(err.Error())
		os.Exit(0)
	}
	dir := t.TempDir()
	// A valid model passes the file check, so the library is looked for.
	g := onnx.NewGraph("identity")
	g.Node("Identity", []string{g.Input("x", onnx.Float32, onnx.Fixed(2)...)}, []string{"y"})
	g.Output("y", onnx.Float32, onnx.Fixed(2)...)
	if err := (&onnx.Model{Graph: g}).WriteFile(filepath.Join(dir, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "onnxrt.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestMissingLibrary$")
	cmd.Dir = dir
	cmd.Env = []string{"ONNXRT_TEST_CHILD=1", "ONNXRT_TEST_DIR=" + dir, "ONNXRUNTIME_LIB=" + filepath.Join(dir, "libonnxruntime.so.1"), "DENSEGRPO_CACHE=" + filepath.Join(dir, "cache"), "PATH=/usr/bin:/bin"}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v (stderr %s)", err, stderr.String())
	}
	msg := stderr.String()
	for _, want := range []string{"ONNX Runtime library not found", filepath.Join(dir, "libonnxruntime.so.1"), "just setup"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q: want it to contain %q", msg, want)
		}
	}
}

// A rank-0 output (CLIP's logit_scale is often one) comes back as a scalar tensor.
func TestRunScalarOutput(t *testing.T) {
	g := onnx.NewGraph("scalar")
	x := g.Input("x", onnx.Float32, onnx.Sym("n"), onnx.Dim{Value: 2})
	sum := g.Op("ReduceSum", []string{x}, onnx.AttrInt("keepdims", 0))
	g.Node("Identity", []string{sum}, []string{"total"})
	g.Output("total", onnx.Float32)
	g.Node("Identity", []string{x}, []string{"same"})
	g.Output("same", onnx.Float32, onnx.Sym("n"), onnx.Dim{Value: 2})
	path := filepath.Join(t.TempDir(), "scalar.onnx")
	if err := (&onnx.Model{Graph: g}).WriteFile(path); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(context.Background(), map[string]Tensor{"x": {Shape: []int64{2, 2}, Float32: []float32{1, 2, 3, 4.5}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := out["total"]; len(got.Shape) != 0 || len(got.Float32) != 1 || got.Float32[0] != 10.5 {
		t.Errorf("total = %+v, want scalar 10.5 (1+2+3+4.5)", got)
	}
	if got := out["same"]; len(got.Float32) != 4 || got.Float32[3] != 4.5 {
		t.Errorf("same = %+v, want the input back", got)
	}
}
