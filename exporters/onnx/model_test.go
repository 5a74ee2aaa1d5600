package onnx

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"google.golang.org/protobuf/encoding/protowire"
)

// validGraph is x [2] → Relu → y, the base each invalid case breaks in one way.
func validGraph() *Graph {
	g := NewGraph("g")
	g.Input("x", Float32, Fixed(2)...)
	g.Node("Relu", []string{"x"}, []string{"y"})
	g.Output("y", Float32, Fixed(2)...)
	return g
}

func TestMarshalRejects(t *testing.T) {
	tests := []struct {
		name  string
		build func(m *Model)
		want  string
	}{
		{"undefined input", func(m *Model) {
			m.Graph.Node("Add", []string{"y", "nope"}, []string{"z"})
		}, `validate ONNX graph "g": node 1 (Add "Add"): input "nope" is not defined (no graph input, initializer or node output has this name)`},
		{"input defined by a later node", func(m *Model) {
			m.Graph.Node("Neg", []string{"late"}, []string{"z"})
			m.Graph.Node("Relu", []string{"x"}, []string{"late"})
		}, `node 1 (Neg "Neg"): input "late" is produced by later node 2 (Relu "Relu_1"); nodes must be in topological order`},
		{"duplicate node output", func(m *Model) {
			m.Graph.Node("Neg", []string{"x"}, []string{"y"})
		}, `node 1 (Neg "Neg"): output "y" is already defined by node 0 (Relu "Relu")`},
		{"node output shadows an input", func(m *Model) {
			m.Graph.Node("Neg", []string{"y"}, []string{"x"})
		}, `output "x" is already defined by a graph input`},
		{"duplicate graph output", func(m *Model) {
			m.Graph.Output("y", Float32, Fixed(2)...)
		}, `validate ONNX graph "g": output "y" is declared twice`},
		{"graph output not produced", func(m *Model) {
			m.Graph.Output("z", Float32, Fixed(2)...)
		}, `output "z" is not produced by any node, input or initializer`},
		{"no graph outputs", func(m *Model) { m.Graph.Outputs = nil }, `no graph outputs`},
		{"duplicate input", func(m *Model) { m.Graph.Input("x", Float32) }, `input "x" is declared twice`},
		{"duplicate initializer", func(m *Model) {
			m.Graph.InitializerF32("w", []int64{1}, []float32{1})
			m.Graph.InitializerF32("w", []int64{1}, []float32{2})
		}, `initializer "w" is defined twice (already an initializer)`},
		{"initializer data size", func(m *Model) {
			m.Graph.InitializerF32("w", []int64{2, 3}, []float32{1, 2, 3})
		}, `tensor "w": 12 bytes of data for float32 [2 3], want 24`},
		{"unsupported dtype", func(m *Model) { m.Graph.Input("s", DType(8)) }, `"s": unsupported element type dtype(8)`},
		{"dim with size and name", func(m *Model) {
			m.Graph.Input("s", Float32, Dim{Value: 2, Param: "batch"})
		}, `"s": dim 0 has both size 2 and name "batch"`},
		{"negative dim", func(m *Model) { m.Graph.Input("s", Float32, Dim{Value: -3}) }, `"s": dim 0 is -3`},
		{"duplicate attribute", func(m *Model) {
			m.Graph.Node("Softmax", []string{"y"}, []string{"z"}, AttrInt("axis", 0), AttrInt("axis", 1))
		}, `node 1 (Softmax "Softmax"): attribute "axis" given twice`},
		{"tensor attribute without tensor", func(m *Model) {
			m.Graph.Node("Constant", nil, []string{"z"}, Attr{Name: "value", Type: AttrTypeTensor})
		}, `attribute "value": tensor attribute without a tensor`},
		{"empty op", func(m *Model) { m.Graph.Node("", []string{"x"}, []string{"z"}) }, `node 1 (""): empty op type`},
		{"node without outputs", func(m *Model) { m.Graph.Node("Relu", []string{"x"}, nil) }, `node 1 (Relu "Relu_1"): no outputs`},
		{"unimported domain", func(m *Model) {
			m.Graph.Nodes[0].Domain = "com.microsoft"
		}, `domain "com.microsoft" is not imported`},
		{"no graph", func(m *Model) { m.Graph = nil }, `validate ONNX model: no graph`},
		{"old IR version", func(m *Model) { m.IRVersion = 2 }, `IR version 2, want >= 3`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &Model{Graph: validGraph()}
			if _, err := m.Marshal(); err != nil {
				t.Fatalf("base model: %v", err)
			}
			tc.build(m)
			b, err := m.Marshal()
			if err == nil {
				t.Fatalf("Marshal accepted the model (%d bytes), want error containing %q", len(b), tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// An initializer may also be listed as a graph input (its default value), as exporters
// for IR version 3 write; that is not a duplicate.
func TestInitializerAsInputDefault(t *testing.T) {
	g := validGraph()
	g.Input("w", Float32, Fixed(2)...)
	g.InitializerF32("w", []int64{2}, []float32{1, 2})
	g.Node("Add", []string{"y", "w"}, []string{"z"})
	g.Output("z", Float32, Fixed(2)...)
	if _, err := (&Model{Graph: g}).Marshal(); err != nil {
		t.Fatal(err)
	}
}

func TestUnique(t *testing.T) {
	g := NewGraph("g")
	g.Input("x", Float32)
	g.InitializerF32("w_1", []int64{}, []float32{1})
	got := []string{g.Unique("x"), g.Unique("w"), g.Unique("w"), g.Unique("w")}
	// "x" is an input, so x_1; "w" is free; "w_1" is an initializer, so w_2 and w_3 follow.
	want := []string{"x_1", "w", "w_2", "w_3"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Unique = %v, want %v", got, want)
	}
	// Names made by Op and Node never collide with each other or with what a caller added.
	a := g.Op("Relu", []string{"x"})
	g.Node("Relu", []string{a}, []string{"Relu_out_1"})
	b := g.Op("Relu", []string{"x"})
	if a != "Relu_out" || b != "Relu_out_2" {
		t.Errorf("Op outputs %q, %q, want Relu_out, Relu_out_2", a, b)
	}
	g.Output(b, Float32)
	if _, err := (&Model{Graph: g}).Marshal(); err != nil {
		t.Fatal(err)
	}
}

// fullModel uses every encoded feature: all attribute kinds, metadata, another opset,
// symbolic, fixed, unknown dims and an unknown shape, and initializers of several types.
func fullModel() *Model {
	g := NewGraph("full")
	x := g.Input("x", Float32, Sym("batch"), Dim{Value: 3}, Dim{Value: -1})
	g.Input("mask", Bool, Fixed(2, 2)...)
	g.Input("anything", Float16)
	g.Inputs[len(g.Inputs)-1].UnknownShape = true
	w := g.InitializerF32("w", []int64{3, 3}, []float32{1, -2, 3, -4, 5, -6, 7, -8, 9.5})
	ids := g.InitializerI64("ids", []int64{3}, []int64{-1, 0, 1 << 40})
	g.Initializer(Tensor{Name: "bytes", DType: Uint8, Shape: []int64{2}, Raw: []byte{7, 255}})
	g.Initializer(Tensor{Name: "scalar", DType: Float64, Shape: []int64{}, Raw: make([]byte, 8)})
	g.Node("Custom", []string{x, "", w, ids}, []string{"y", ""},
		AttrInt("i", -7), AttrFloat("f", 0.5), AttrString("s", "nearest"),
		AttrTensor("t", TensorF32("", []int64{1}, []float32{2})),
		AttrInts("is", 1, -1, 1<<50), AttrFloats("fs", -1.5, 2),
		AttrStrings("ss", "a", "", "c"), AttrInts("empty"))
	g.Nodes[0].Domain = "com.example"
	g.Output("y", Float32, Sym("batch"))
	return &Model{
		Graph: g, ProducerName: "densegrpo", ProducerVersion: "test", Domain: "ai.densegrpo",
		ModelVersion: 3, DocString: "doc",
		OtherOpsets: []OpsetID{{Domain: "com.example", Version: 1}},
		Metadata:    map[string]string{"b": "2", "a": "1"},
	}
}

func TestMarshalUnmarshalRoundTrip(t *testing.T) {
	m := fullModel()
	b1, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := m.Marshal()
	if err != nil || !bytes.Equal(b1, again) {
		t.Fatalf("Marshal is not deterministic (err %v)", err)
	}
	d, err := Unmarshal(b1)
	if err != nil {
		t.Fatal(err)
	}
	if d.IRVersion != DefaultIRVersion || d.Opset != DefaultOpset {
		t.Errorf("decoded IR %d opset %d, want the defaults %d, %d", d.IRVersion, d.Opset, DefaultIRVersion, DefaultOpset)
	}
	// With the defaults made explicit, every field must survive.
	m.IRVersion, m.Opset = DefaultIRVersion, DefaultOpset
	for _, pair := range []struct {
		name      string
		got, want any
	}{
		{"header", []any{d.ProducerName, d.ProducerVersion, d.Domain, d.ModelVersion, d.DocString},
			[]any{m.ProducerName, m.ProducerVersion, m.Domain, m.ModelVersion, m.DocString}},
		{"opsets", d.OtherOpsets, m.OtherOpsets},
		{"metadata", d.Metadata, m.Metadata},
		{"graph name", d.Graph.Name, m.Graph.Name},
		{"inputs", d.Graph.Inputs, m.Graph.Inputs},
		{"outputs", d.Graph.Outputs, m.Graph.Outputs},
		{"initializers", d.Graph.Initializers, m.Graph.Initializers},
		{"nodes", d.Graph.Nodes, m.Graph.Nodes},
	} {
		if !reflect.DeepEqual(pair.got, pair.want) {
			t.Errorf("%s: decoded %+v\nwant %+v", pair.name, pair.got, pair.want)
		}
	}
	b2, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b1, b2) {
		t.Errorf("re-encoding the decoded model changed it: %d bytes, want %d", len(b2), len(b1))
	}
	w, err := d.Graph.Initializers[0].Float32s()
	if err != nil || !reflect.DeepEqual(w, []float32{1, -2, 3, -4, 5, -6, 7, -8, 9.5}) {
		t.Errorf("w.Float32s() = %v, %v", w, err)
	}
	ids, err := d.Graph.Initializers[1].Int64s()
	if err != nil || !reflect.DeepEqual(ids, []int64{-1, 0, 1 << 40}) {
		t.Errorf("ids.Int64s() = %v, %v", ids, err)
	}
	if _, err := d.Graph.Initializers[1].Float32s(); err == nil {
		t.Error("Float32s of an int64 tensor: no error")
	}
}

func TestUnmarshalRejectsGarbage(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated", []byte{0x3a, 0x10, 0x01}, "decode ModelProto: field 7"},
		{"no graph", []byte{0x08, 0x08}, "no graph"},
		{"no opset", []byte{0x3a, 0x00}, "no opset_import"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Unmarshal(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Unmarshal error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// The PP-OCRv4 recogniser, written by paddle2onnx, is a third-party encoding of the format
// (typed data lists, value_info, doc strings). Decoding it must agree with what ONNX Runtime
// reports, and re-encoding it with this package must give a model that computes exactly the
// same output.
func TestThirdPartyModelRoundTrip(t *testing.T) {
	src, err := onnxrt.FindCached("ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		t.Fatalf("%v; run scripts/setup.sh", err)
	}
	m, err := ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	ins, outs, err := onnxrt.Inspect(src, onnxrt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	declared := func(vs []ValueInfo) []string {
		var out []string
		for _, v := range vs {
			dims := make([]int64, len(v.Dims))
			for i, d := range v.Dims {
				dims[i] = d.Value
				if d.Param != "" {
					dims[i] = -1
				}
			}
			out = append(out, onnxrt.TensorInfo{Name: v.Name, Type: v.DType.String(), Dims: dims}.String())
		}
		return out
	}
	infos := func(ts []onnxrt.TensorInfo) []string {
		var out []string
		for _, t := range ts {
			out = append(out, t.String())
		}
		return out
	}
	// ORT lists only inputs that are not initializers; so does the recogniser.
	if got, want := declared(m.Graph.Inputs), infos(ins); !reflect.DeepEqual(got, want) {
		t.Errorf("decoded inputs %v, ONNX Runtime says %v", got, want)
	}
	if got, want := declared(m.Graph.Outputs), infos(outs); !reflect.DeepEqual(got, want) {
		t.Errorf("decoded outputs %v, ONNX Runtime says %v", got, want)
	}
	// paddle2onnx stores the weights as Constant nodes with tensor attributes.
	if len(m.Graph.Nodes) < 100 {
		t.Errorf("decoded %d nodes, want a full network (>= 100)", len(m.Graph.Nodes))
	}

	copyPath := filepath.Join(t.TempDir(), "rec.onnx")
	if err := m.WriteFile(copyPath); err != nil {
		t.Fatal(err)
	}
	const w = 64
	x := onnxrt.Tensor{Shape: []int64{1, 3, 48, w}, Float32: ramp(3*48*w, 0.4)}
	want := runFile(t, src, map[string]onnxrt.Tensor{"x": x})
	got := runFile(t, copyPath, map[string]onnxrt.Tensor{"x": x})
	for name, wt := range want {
		if !reflect.DeepEqual(got[name].Shape, wt.Shape) || !reflect.DeepEqual(got[name].Float32, wt.Float32) {
			t.Errorf("output %q of the re-encoded model differs from the original", name)
		}
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.onnx")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &Model{Graph: validGraph()}
	if err := m.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	want, _ := m.Marshal()
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file holds %d bytes (err %v), want the %d marshalled bytes", len(got), err, len(want))
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	onlyFile := func() {
		t.Helper()
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 || entries[0].Name() != "m.onnx" {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("directory holds %v, want only m.onnx (no temporary files left)", names)
		}
	}
	onlyFile()

	// An invalid model writes nothing and leaves the old file.
	bad := &Model{Graph: validGraph()}
	bad.Graph.Output("missing", Float32)
	if err := bad.WriteFile(path); err == nil || !strings.Contains(err.Error(), "write ONNX model "+path) {
		t.Errorf("invalid model: error %v, want one naming %s", err, path)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Error("invalid model replaced the file")
	}
	onlyFile()

	// A failing write (the temp file opened read-only) removes the temporary file and keeps
	// the old one.
	files.CreateTemp = func(d, pattern string) (atomicfile.File, error) {
		f, err := os.CreateTemp(d, pattern)
		if err != nil {
			return nil, err
		}
		f.Close()
		return os.Open(f.Name())
	}
	defer func() { files = atomicfile.Writer{} }()
	if err := (&Model{Graph: fullModel().Graph, OtherOpsets: fullModel().OtherOpsets}).WriteFile(path); err == nil {
		t.Error("write to a read-only temp file: no error")
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Error("failed write replaced the file")
	}
	onlyFile()

	files.CreateTemp = func(string, string) (atomicfile.File, error) { return nil, errors.New("disk full") }
	if err := m.WriteFile(path); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("create failure: error %v, want disk full", err)
	}
}

// The written file opens in ONNX Runtime with the IR version and opset recorded.
func TestHeaderAcceptedByRuntime(t *testing.T) {
	for _, opset := range []int64{13, 17} {
		m := &Model{Graph: validGraph(), Opset: opset}
		got := runModel(t, m, map[string]onnxrt.Tensor{"x": f32([]int64{2}, []float32{-1, 2})})
		checkF32(t, "y", got["y"], []int64{2}, []float32{0, 2})
	}
	// The runtime must honour the opset in the header: Mish exists from opset 18 on.
	// mish(x) = x·tanh(ln(1+eˣ)): mish(0) = 0, mish(1) = tanh(ln(1+e)) = 0.8650984.
	for _, opset := range []int64{17, 18} {
		g := NewGraph("mish")
		x := g.Input("x", Float32, Fixed(2)...)
		g.Node("Mish", []string{x}, []string{"y"})
		g.Output("y", Float32, Fixed(2)...)
		path := filepath.Join(t.TempDir(), "mish.onnx")
		if err := (&Model{Graph: g, Opset: opset}).WriteFile(path); err != nil {
			t.Fatal(err)
		}
		s, err := onnxrt.Open(path, onnxrt.Config{})
		var out map[string]onnxrt.Tensor
		if err == nil {
			out, err = s.Run(context.Background(), map[string]onnxrt.Tensor{"x": f32([]int64{2}, []float32{0, 1})})
			s.Close()
		}
		switch {
		case opset == 17 && err == nil:
			t.Error("Mish ran at opset 17; the opset in the header was not honoured")
		case opset == 18 && err != nil:
			t.Errorf("Mish at opset 18: %v", err)
		case opset == 18:
			checkF32(t, "mish", out["y"], []int64{2}, []float32{0, 0.8650984})
		}
	}
}

// Other writers store tensor data in typed lists instead of raw_data; the decoder turns them
// into the same raw little-endian bytes. Messages are hand-encoded per onnx.proto.
func TestDecodeTypedTensorData(t *testing.T) {
	tensor := func(dt DType, body func(b []byte) []byte) []byte {
		b := appendVarint(nil, tensorDims, 2)
		b = appendVarint(b, tensorDataType, uint64(dt))
		b = appendString(b, tensorName, "t")
		return body(b)
	}
	packed := func(num protowire.Number, elems ...func([]byte) []byte) func([]byte) []byte {
		return func(b []byte) []byte {
			var p []byte
			for _, e := range elems {
				p = e(p)
			}
			return appendMessage(b, num, p)
		}
	}
	fixed32 := func(v uint32) func([]byte) []byte {
		return func(b []byte) []byte { return protowire.AppendFixed32(b, v) }
	}
	varint := func(v uint64) func([]byte) []byte {
		return func(b []byte) []byte { return protowire.AppendVarint(b, v) }
	}
	tests := []struct {
		name string
		msg  []byte
		want Tensor
	}{
		{"float_data packed", tensor(Float32, packed(tensorFloatData, fixed32(math.Float32bits(1.5)), fixed32(math.Float32bits(-2)))),
			TensorF32("t", []int64{2}, []float32{1.5, -2})},
		{"int64_data unpacked", tensor(Int64, func(b []byte) []byte {
			neg := int64(-3)
			b = appendVarint(b, tensorInt64Data, uint64(neg))
			return appendVarint(b, tensorInt64Data, 1<<40)
		}), TensorI64("t", []int64{2}, []int64{-3, 1 << 40})},
		// float16 as bits in int32_data: 0x3c00 is 1.0, 0xc000 is −2.0.
		{"float16 in int32_data", tensor(Float16, packed(tensorInt32Data, varint(0x3c00), varint(0xc000))),
			Tensor{Name: "t", DType: Float16, Shape: []int64{2}, Raw: []byte{0x00, 0x3c, 0x00, 0xc0}}},
		{"bool in int32_data", tensor(Bool, packed(tensorInt32Data, varint(1), varint(0))),
			Tensor{Name: "t", DType: Bool, Shape: []int64{2}, Raw: []byte{1, 0}}},
		{"double_data", tensor(Float64, packed(tensorDoubleData,
			func(b []byte) []byte { return protowire.AppendFixed64(b, math.Float64bits(0.25)) },
			func(b []byte) []byte { return protowire.AppendFixed64(b, math.Float64bits(-1)) })),
			Tensor{Name: "t", DType: Float64, Shape: []int64{2}, Raw: []byte{0, 0, 0, 0, 0, 0, 0xd0, 0x3f, 0, 0, 0, 0, 0, 0, 0xf0, 0xbf}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := (&decoder{left: 1 << 20}).tensor(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
	// A float32 tensor whose data sits in int64_data is malformed.
	if _, err := (&decoder{left: 1 << 20}).tensor(tensor(Float32, func(b []byte) []byte { return appendVarint(b, tensorInt64Data, 1) })); err == nil ||
		!strings.Contains(err.Error(), "float32 data in field 7, want field 4") {
		t.Errorf("float32 in int64_data: error %v", err)
	}
	if _, err := (&decoder{left: 1 << 20}).tensor(tensor(Float32, func(b []byte) []byte { return appendVarint(b, tensorDataLocation, 1) })); err == nil ||
		!strings.Contains(err.Error(), "external data is not supported") {
		t.Errorf("external data: error %v", err)
	}
}
