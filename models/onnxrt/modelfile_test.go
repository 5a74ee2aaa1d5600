package onnxrt

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/densegrpo/densegrpo/exporters/onnx"
)

// addModel is an ONNX model computing y = x + w for float32 [n] x, y and w, with w's data in
// external data ext.
func addModel(t testing.TB, n int64, ext onnx.ExternalData) []byte {
	g := onnx.NewGraph("add")
	x := g.Input("x", onnx.Float32, onnx.Fixed(n)...)
	w := g.Initializer(onnx.Tensor{Name: "w", DType: onnx.Float32, Shape: []int64{n}, External: &ext})
	g.Node("Add", []string{x, w}, []string{"y"})
	g.Output("y", onnx.Float32, onnx.Fixed(n)...)
	data, err := (&onnx.Model{Graph: g}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Hand-encoded protobuf, for messages the encoder does not write (tensors in attributes,
// sub-graphs, functions).
func pbMessage(b []byte, num protowire.Number, body []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), body)
}

func pbVarint(b []byte, num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

// externalTensor is a float32 [1] TensorProto named name with data_location EXTERNAL at
// name.bin.
func externalTensor(name string) []byte {
	entry := pbMessage(pbMessage(nil, 1, []byte("location")), 2, []byte(name+".bin"))
	t := pbVarint(nil, 1, 1)
	t = pbVarint(t, 2, 1)
	t = pbMessage(t, 8, []byte(name))
	t = pbMessage(t, 13, entry)
	return pbVarint(t, 14, 1)
}

// writeExternal writes model.onnx (y = x + w, w external at location, length 0: to the end)
// into dir and w's 4 float32 values 1, 2, 3, 4 into dir/w.bin.
func writeExternal(t *testing.T, dir, location string, offset, length int64) string {
	t.Helper()
	var w []byte
	for _, v := range []float32{1, 2, 3, 4} {
		w = binary.LittleEndian.AppendUint32(w, math.Float32bits(v))
	}
	if err := os.WriteFile(filepath.Join(dir, "w.bin"), w, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(path, addModel(t, 4, onnx.ExternalData{Location: location, Offset: offset, Length: length}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExternalDataInsideFolder: a model with its weights in a file beside it opens and runs,
// also through a symlink that stays in the folder.
func TestExternalDataInsideFolder(t *testing.T) {
	for _, loc := range []string{"w.bin", "./sub/../w.bin", "link.bin"} {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("w.bin", filepath.Join(dir, "link.bin")); err != nil {
			t.Fatal(err)
		}
		path := writeExternal(t, dir, loc, 0, 16)
		s, err := Open(path, Config{IntraOpThreads: 1})
		if err != nil {
			t.Fatalf("%s: %v", loc, err)
		}
		out, err := s.Run(context.Background(), map[string]Tensor{"x": {Shape: []int64{4}, Float32: []float32{10, 20, 30, 40}}})
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := out["y"].Float32; len(got) != 4 || got[0] != 11 || got[3] != 44 {
			t.Errorf("%s: y = %v, want [11 22 33 44]", loc, got)
		}
	}
}

func TestModelFileRefused(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.bin")
	if err := os.WriteFile(secret, make([]byte, 16), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		setup func(dir string) string // returns the model path
		cfg   Config
		want  string
	}{
		{"parent directory", func(dir string) string {
			return writeExternal(t, dir, "../"+filepath.Base(outside)+"/secret.bin", 0, 16)
		}, Config{}, `tensor "w": external data "../`},
		{"absolute path", func(dir string) string { return writeExternal(t, dir, secret, 0, 16) },
			Config{}, "want a relative path inside the model's folder"},
		{"symlink out of the folder", func(dir string) string {
			if err := os.Symlink(secret, filepath.Join(dir, "link.bin")); err != nil {
				t.Fatal(err)
			}
			return writeExternal(t, dir, "link.bin", 0, 16)
		}, Config{}, "outside the model's folder"},
		{"missing file", func(dir string) string { return writeExternal(t, dir, "nope.bin", 0, 16) },
			Config{}, `external data "nope.bin": no such file or directory`},
		{"a directory", func(dir string) string {
			os.Mkdir(filepath.Join(dir, "d"), 0o755)
			return writeExternal(t, dir, "d", 0, 16)
		}, Config{}, "not a regular file"},
		{"range past the end", func(dir string) string { return writeExternal(t, dir, "w.bin", 8, 16) },
			Config{}, "offset 8 length 16 past the end of the 16-byte file"},
		{"external data over the limit", func(dir string) string {
			path := writeExternal(t, dir, "w.bin", 0, 0)                            // no length: the whole file
			if err := os.Truncate(filepath.Join(dir, "w.bin"), 2<<20); err != nil { // sparse
				t.Fatal(err)
			}
			return path
		}, Config{MaxModelMB: 1}, "2 MiB with its external data (w.bin), want at most onnx.max_model_mb = 1"},
		{"declared length over the limit", func(dir string) string {
			path := writeExternal(t, dir, "w.bin", 1<<20, 2<<20)
			if err := os.Truncate(filepath.Join(dir, "w.bin"), 4<<20); err != nil { // sparse
				t.Fatal(err)
			}
			return path
		}, Config{MaxModelMB: 1}, "2 MiB with its external data (w.bin), want at most onnx.max_model_mb = 1"},
		{"model over the limit", func(dir string) string {
			path := filepath.Join(dir, "big.onnx")
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			os.Truncate(path, 3<<20)
			return path
		}, Config{MaxModelMB: 2}, "3 MiB, want at most onnx.max_model_mb = 2"},
		{"beyond protobuf's limit", func(dir string) string {
			path := filepath.Join(dir, "huge.onnx")
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			os.Truncate(path, 1<<31)
			return path
		}, Config{MaxModelMB: 1 << 20}, "2147483648 bytes, want at most 2147483647 (protobuf's 2 GiB limit"},
		{"not protobuf", func(dir string) string {
			path := filepath.Join(dir, "x.onnx")
			os.WriteFile(path, []byte("\x0a\xff\xff\xff\xff\x0f"), 0o644)
			return path
		}, Config{}, "not a valid ONNX protobuf"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.setup(t.TempDir())
			for _, open := range []func() error{
				func() error { _, err := Open(path, c.cfg); return err },
				func() error { _, _, err := Inspect(path, c.cfg); return err },
			} {
				err := open()
				if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "\n") {
					t.Errorf("error %v, want one line naming %s and saying %q", err, path, c.want)
				}
			}
		})
	}
}

func TestOpenBytesExternalData(t *testing.T) {
	data := addModel(t, 4, onnx.ExternalData{Location: "w.bin"})
	_, err := OpenBytes("in memory", data, Config{})
	if err == nil || !strings.Contains(err.Error(), `open ONNX model in memory: tensor "w" has external data "w.bin"`) {
		t.Errorf("error %v", err)
	}
	if _, err := OpenBytes("in memory", make([]byte, 2<<20), Config{MaxModelMB: 1}); err == nil || !strings.Contains(err.Error(), "2 MiB, want at most onnx.max_model_mb = 1") {
		t.Errorf("error %v", err)
	}
}

// TestScanFindsNestedTensors: external data is found wherever onnx.proto allows a tensor —
// initializers, node attributes (Constant), sparse tensors, sub-graphs of If/Loop, functions.
func TestScanFindsNestedTensors(t *testing.T) {
	m, v, ext := pbMessage, pbVarint, externalTensor
	attr := func(num protowire.Number, body []byte) []byte { return m(nil, 5, m(nil, num, body)) } // NodeProto.attribute
	graph := func(fields ...[]byte) []byte {
		var g []byte
		for _, f := range fields {
			g = append(g, f...)
		}
		return g
	}
	sub := graph(m(nil, 5, ext("in_subgraph")))
	model := graph(
		v(nil, 1, 8),
		m(nil, 7, graph(
			m(nil, 5, ext("initializer")),
			m(nil, 15, m(nil, 1, ext("sparse_values"))),
			m(nil, 1, attr(5, ext("constant"))),
			m(nil, 1, attr(10, ext("in_tensors"))),
			m(nil, 1, attr(6, sub)),
			m(nil, 1, attr(11, graph(m(nil, 5, ext("in_graphs"))))),
		)),
		m(nil, 25, m(nil, 7, attr(5, ext("in_function")))),
		m(nil, 20, m(nil, 2, graph(m(nil, 5, ext("in_training"))))),
	)
	found, err := scanExternal(bytes.NewReader(model), int64(len(model)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range found {
		names = append(names, e.tensor+"@"+e.location)
	}
	want := "initializer@initializer.bin sparse_values@sparse_values.bin constant@constant.bin in_tensors@in_tensors.bin in_subgraph@in_subgraph.bin in_graphs@in_graphs.bin in_function@in_function.bin in_training@in_training.bin"
	if strings.Join(names, " ") != want {
		t.Errorf("found %v\nwant %s", names, want)
	}
	// A tensor with external_data entries but the default data_location keeps its data inline.
	inline := externalTensor("w")
	inline = m(nil, 7, m(nil, 5, inline[:len(inline)-2])) // without data_location
	if found, err := scanExternal(bytes.NewReader(inline), int64(len(inline))); err != nil || len(found) != 0 {
		t.Errorf("inline tensor: found %v, %v", found, err)
	}
	// Nesting is bounded.
	deep := m(nil, 5, ext("deep")) // a graph with an initializer, inside If's graph 150 times
	for range 150 {
		deep = m(nil, 1, attr(6, deep))
	}
	if _, err := scanExternal(bytes.NewReader(m(nil, 7, deep)), int64(len(m(nil, 7, deep)))); err == nil || !strings.Contains(err.Error(), "nested more than 100 deep") {
		t.Errorf("deep nesting: error %v", err)
	}
}

// FuzzScanExternal: arbitrary bytes never panic the scans (external data, signature), and
// what they report is well formed.
func FuzzScanExternal(f *testing.F) {
	f.Add(addModel(f, 4, onnx.ExternalData{Location: "w.bin", Length: 16}))
	f.Add(addModel(f, 2, onnx.ExternalData{Location: "../../etc/passwd", Offset: 8}))
	if data, err := os.ReadFile(filepath.Join("..", "tinyocr", "onnx", "text_encoder.onnx")); err == nil {
		f.Add(data)
	}
	for _, m := range edgeModels() {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ins, outs, err := scanSignature(bytes.NewReader(data), int64(len(data)))
		if err == nil {
			for _, info := range append(ins, outs...) {
				if info.Type == "" || info.Dims == nil || slices.ContainsFunc(info.Dims, func(d int64) bool { return d < -1 }) {
					t.Fatalf("signature scan reported %+v", info)
				}
			}
		}
		found, err := scanExternal(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for _, e := range found {
			if e.location == "" || e.offset < 0 || e.length < -1 {
				t.Fatalf("scan reported %+v", e)
			}
		}
	})
}
