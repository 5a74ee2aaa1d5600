package onnx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// linearModel is y = x·W + b for x [batch, k] with its initializers passed through place.
func linearModel(t *testing.T, k, n int, place func(Tensor) (Tensor, error)) *Model {
	t.Helper()
	g := NewGraph("linear")
	x := g.Input("x", Float32, Sym("batch"), Dim{Value: int64(k)})
	add := func(tt Tensor) string {
		p, err := place(tt)
		if err != nil {
			t.Fatal(err)
		}
		return g.Initializer(p)
	}
	w := add(TensorF32("W", []int64{int64(k), int64(n)}, ramp(k*n, 0.3)))
	b := add(TensorF32("b", []int64{int64(n)}, ramp(n, 0.7)))
	g.Node("Add", []string{g.Op("MatMul", []string{x, w}), b}, []string{"y"})
	g.Output("y", Float32, Sym("batch"), Dim{Value: int64(n)})
	return &Model{Graph: g}
}

// TestExternalWriter: tensors of at least 1 KiB go to the data file one after another (offset
// = the bytes before them, length = their size), smaller ones stay inline, and ONNX Runtime
// computes the same outputs from the model with external data as from the one-file model.
func TestExternalWriter(t *testing.T) {
	const k, n = 32, 24 // W: 3072 bytes, external; b: 96 bytes, inline
	dir := t.TempDir()
	const location = "linear.onnx.data"
	var model *Model
	var size int64
	err := atomicfile.Write(filepath.Join(dir, location), func(w io.Writer) error {
		ext := NewExternalWriter(w, location)
		model = linearModel(t, k, n, ext.Add)
		// A second large tensor lands right after the first.
		extra, err := ext.Add(TensorF32("extra", []int64{300}, ramp(300, 0.1)))
		if err != nil {
			return err
		}
		if e := extra.External; e == nil || e.Offset != 4*k*n || e.Length != 1200 {
			t.Errorf("second tensor: external %+v, want offset %d length 1200", e, 4*k*n)
		}
		size = ext.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	w, b := model.Graph.Initializers[0], model.Graph.Initializers[1]
	if w.External == nil || *w.External != (ExternalData{Location: location, Offset: 0, Length: 4 * k * n}) || w.Raw != nil {
		t.Fatalf("W: external %+v with %d raw bytes, want %s at 0, length %d, no raw bytes", w.External, len(w.Raw), location, 4*k*n)
	}
	if b.External != nil || len(b.Raw) != 4*n {
		t.Fatalf("b: external %+v with %d raw bytes, want inline %d bytes", b.External, len(b.Raw), 4*n)
	}
	data, err := os.ReadFile(filepath.Join(dir, location))
	if err != nil {
		t.Fatal(err)
	}
	inFile := linearModel(t, k, n, func(t Tensor) (Tensor, error) { return t, nil })
	if want := append(append([]byte{}, inFile.Graph.Initializers[0].Raw...), TensorF32("", []int64{300}, ramp(300, 0.1)).Raw...); !bytes.Equal(data, want) || size != int64(len(want)) {
		t.Fatalf("data file holds %d bytes (Size %d), want W's and extra's %d bytes in order", len(data), size, len(want))
	}

	path := filepath.Join(dir, "linear.onnx")
	if err := model.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	x := ramp(3*k, 0.5)
	got := runFile(t, path, map[string]onnxrt.Tensor{"x": f32([]int64{3, k}, x)})
	want := runModel(t, inFile, map[string]onnxrt.Tensor{"x": f32([]int64{3, k}, x)})
	checkF32(t, "y", got["y"], want["y"].Shape, want["y"].Float32)
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestExternalWriterErrors: a failed write and a tensor whose data does not match its shape
// are errors naming the tensor and the file.
func TestExternalWriterErrors(t *testing.T) {
	big := TensorF32("W", []int64{16, 16}, make([]float32, 256))
	if _, err := NewExternalWriter(failingWriter{}, "m.data").Add(big); err == nil || err.Error() != `write tensor "W" to m.data: disk full` {
		t.Errorf("failed write: got %v", err)
	}
	short := big
	short.Shape = []int64{16, 17}
	_, err := NewExternalWriter(io.Discard, "m.data").Add(short)
	if want := fmt.Sprintf(`write tensor "W" to m.data: 1024 bytes of data for float32 [16 17], want %d`, 16*17*4); err == nil || err.Error() != want {
		t.Errorf("short data: got %v, want %s", err, want)
	}
}
