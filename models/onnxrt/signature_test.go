package onnxrt

import (
	"bytes"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/encoding/protowire"
)

// Hand-encoded ONNX messages for the corners of the signature scan.

func pbString(b []byte, num protowire.Number, s string) []byte { return pbMessage(b, num, []byte(s)) }

// valueInfo is a ValueInfoProto of a tensor of ONNX element type elem. dims holds int64 sizes,
// strings (symbolic) and nil (unknown); shapeless leaves the shape out.
func valueInfo(name string, elem uint64, shapeless bool, dims ...any) []byte {
	tensor := pbVarint(nil, 1, elem)
	if !shapeless {
		var shape []byte
		for _, d := range dims {
			var dim []byte
			switch d := d.(type) {
			case int64:
				dim = pbVarint(nil, 1, uint64(d))
			case string:
				dim = pbString(nil, 2, d)
			}
			shape = pbMessage(shape, 1, dim)
		}
		tensor = pbMessage(tensor, 2, shape)
	}
	return pbMessage(pbString(nil, 1, name), 2, pbMessage(nil, 1, tensor))
}

func node(op string, inputs, outputs []string) []byte {
	var n []byte
	for _, in := range inputs {
		n = pbString(n, 1, in)
	}
	for _, out := range outputs {
		n = pbString(n, 2, out)
	}
	return pbString(n, 4, op)
}

// floatTensor is a float32 TensorProto named name with the given values (dims [len]).
func floatTensor(name string, values ...float32) []byte {
	t := pbVarint(nil, 1, uint64(len(values)))
	t = pbVarint(t, 2, 1)
	for _, v := range values {
		t = protowire.AppendFixed32(protowire.AppendTag(t, 4, protowire.Fixed32Type), math.Float32bits(v))
	}
	return pbString(t, 8, name)
}

func model(ir, opset uint64, graph ...[]byte) []byte {
	m := pbVarint(nil, 1, ir)
	m = pbMessage(m, 8, pbVarint(nil, 2, opset))
	return pbMessage(m, 7, bytes.Join(append([][]byte{pbString(nil, 2, "g")}, graph...), nil))
}

// edgeModels are graphs for what the scan must get right as ONNX Runtime does: an IR 3 graph
// listing its initializer as an input (not an input for ONNX Runtime), symbolic, unknown and
// absent dimensions, other element types, a sparse initializer also listed as an input.
func edgeModels() map[string][]byte {
	const float, uint8, i64, float16, boolean = 1, 2, 7, 10, 9
	return map[string][]byte{
		"ir3 initializer as input": model(3, 8,
			pbMessage(nil, 1, node("Add", []string{"x", "w"}, []string{"y"})),
			pbMessage(nil, 5, floatTensor("w", 1, 2, 3)),
			pbMessage(nil, 11, valueInfo("x", float, false, "batch", int64(3))),
			pbMessage(nil, 11, valueInfo("w", float, false, int64(3))),
			pbMessage(nil, 12, valueInfo("y", float, false, "batch", int64(3))),
		),
		"types and shapes": model(8, 17,
			pbMessage(nil, 1, node("Identity", []string{"ids"}, []string{"ids_out"})),
			pbMessage(nil, 1, node("Identity", []string{"h"}, []string{"h_out"})),
			pbMessage(nil, 1, node("Not", []string{"b"}, []string{"not_b"})),
			pbMessage(nil, 1, node("Identity", []string{"u"}, []string{"u_out"})),
			pbMessage(nil, 1, node("Add", []string{"f", "s"}, []string{"f_out"})),
			pbMessage(nil, 15, pbMessage(pbMessage(pbVarint(nil, 3, 4), 1, floatTensor("s", 5)), 2, pbVarint(pbVarint(pbVarint(pbString(nil, 8, "s_idx"), 2, i64), 1, 1), 7, 2))),
			pbMessage(nil, 11, valueInfo("ids", i64, false, nil, int64(7))),
			pbMessage(nil, 11, valueInfo("h", float16, true)),
			pbMessage(nil, 11, valueInfo("b", boolean, false, int64(2))),
			pbMessage(nil, 11, valueInfo("u", uint8, false, "n", "m")),
			pbMessage(nil, 11, valueInfo("f", float, false, int64(4))),
			pbMessage(nil, 11, valueInfo("s", float, false, int64(4))),
			pbMessage(nil, 12, valueInfo("ids_out", i64, false, nil, int64(7))),
			pbMessage(nil, 12, valueInfo("h_out", float16, true)),
			pbMessage(nil, 12, valueInfo("not_b", boolean, false, int64(2))),
			pbMessage(nil, 12, valueInfo("u_out", uint8, false, "n", "m")),
			pbMessage(nil, 12, valueInfo("f_out", float, false, int64(4))),
		),
	}
}

// TestSignatureMatchesONNXRuntime: the inputs and outputs the Go scan reads from a file are
// those ONNX Runtime reports once it has loaded the model (GetInputOutputInfo), for every model
// at hand — the PP-OCRv4 recogniser and detector (Paddle's exporter), the committed CLIP,
// GenEval-detector and SD3.5 exports (torch.onnx), the tiny-ocr exports when present — and for
// the hand-made corners of edgeModels.
func TestSignatureMatchesONNXRuntime(t *testing.T) {
	if err := Init(Config{}); err != nil {
		t.Fatalf("%v (CPU ONNX Runtime tests never skip)", err)
	}
	paths := []string{recModel(t)}
	if det, err := FindCached("ocr/ch_PP-OCRv4_det_infer.onnx"); err == nil {
		paths = append(paths, det)
	}
	for _, pattern := range []string{"../../rewards/testdata/*/*.onnx", "../../testdata/sd3-tiny/export/*.onnx", "../tinyocr/onnx/*.onnx"} {
		found, _ := filepath.Glob(pattern)
		paths = append(paths, found...)
	}
	if len(paths) < 9 {
		t.Fatalf("found %d models (%v), want the recogniser, 4 committed reward models and 4 SD3.5 exports", len(paths), paths)
	}
	type declared struct{ ins, outs []TensorInfo }
	check := func(name string, got declared, err error, ortIns, ortOuts []ort.InputOutputInfo, ortErr error) {
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		if ortErr != nil {
			t.Fatalf("%s: ONNX Runtime: %v", name, ortErr)
		}
		if want := ortInfos(ortIns); !reflect.DeepEqual(got.ins, want) {
			t.Errorf("%s: inputs\n got %v\nwant %v (ONNX Runtime)", name, got.ins, want)
		}
		if want := ortInfos(ortOuts); !reflect.DeepEqual(got.outs, want) {
			t.Errorf("%s: outputs\n got %v\nwant %v (ONNX Runtime)", name, got.outs, want)
		}
	}
	for _, p := range paths {
		var got declared
		var err error
		got.ins, got.outs, err = Inspect(p, Config{})
		ortIns, ortOuts, ortErr := ort.GetInputOutputInfo(p)
		check(p, got, err, ortIns, ortOuts, ortErr)
	}
	for name, data := range edgeModels() {
		var got declared
		var err error
		got.ins, got.outs, err = scanSignature(bytes.NewReader(data), int64(len(data)))
		ortIns, ortOuts, ortErr := ort.GetInputOutputInfoWithONNXData(data)
		check(name, got, err, ortIns, ortOuts, ortErr)
	}
}

// ortInfos converts ONNX Runtime's declarations as the scan reports them.
func ortInfos(in []ort.InputOutputInfo) []TensorInfo {
	out := make([]TensorInfo, len(in))
	for i, info := range in {
		dims := []int64{}
		for _, d := range info.Dimensions {
			dims = append(dims, max(d, -1))
		}
		typ := elementTypeName(info.DataType)
		if info.OrtValueType != ort.ONNXTypeTensor {
			typ = strings.ToLower(strings.TrimPrefix(info.OrtValueType.String(), "ONNX_TYPE_"))
		}
		out[i] = TensorInfo{Name: info.Name, Type: typ, Dims: dims}
	}
	return out
}

// Malformed declarations are one-line errors naming what is wrong; none panics.
func TestSignatureRefused(t *testing.T) {
	const float = 1
	big := valueInfo(strings.Repeat("x", maxValueInfoBytes), float, false, int64(1))
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"no graph", pbVarint(nil, 1, 8), "the model has no graph"},
		{"two graphs", append(model(8, 17), pbMessage(nil, 7, nil)...), "more than one graph"},
		{"untyped input", model(8, 17, pbMessage(nil, 11, pbString(nil, 1, "x"))), `graph input 0: "x" declares no type`},
		{"huge declaration", model(8, 17, pbMessage(nil, 12, big)), "bytes, want at most 65536"},
		{"bad shape", model(8, 17, pbMessage(nil, 11, pbMessage(pbString(nil, 1, "x"), 2, pbMessage(nil, 1, []byte{0x12, 0x05, 0x0a})))), `graph input 0: "x":`},
	} {
		_, _, err := scanSignature(bytes.NewReader(c.data), int64(len(c.data)))
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line saying %q", c.name, err, c.want)
		}
	}
}
