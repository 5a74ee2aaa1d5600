package onnx

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// modelWith is a ModelProto with opset 13 whose graph has the given encoded fields.
func modelWith(graph []byte) []byte {
	m := appendVarint(nil, modelIRVersion, 8)
	m = appendMessage(m, modelGraph, graph)
	return appendMessage(m, modelOpsetImport, appendVarint(nil, opsetVersion, 13))
}

// TestUnmarshalBounds: what a file declares is checked against what it holds, and what
// decoding allocates is bounded by a multiple of the file.
func TestUnmarshalBounds(t *testing.T) {
	tensor := func(dims []uint64, body func([]byte) []byte) []byte {
		var b []byte
		for _, d := range dims {
			b = appendVarint(b, tensorDims, d)
		}
		b = appendVarint(b, tensorDataType, uint64(Float32))
		b = appendString(b, tensorName, "w")
		return appendMessage(nil, graphInitializer, body(b))
	}
	raw := func(n int) func([]byte) []byte {
		return func(b []byte) []byte { return appendMessage(b, tensorRawData, make([]byte, n)) }
	}
	cases := []struct {
		name  string
		graph []byte
		want  string
	}{
		{"raw_data shorter than dims", tensor([]uint64{4, 4}, raw(60)), "float32 [4 4] needs 64 bytes of raw_data, got 60"},
		{"raw_data for a huge shape", tensor([]uint64{1 << 40, 1 << 40}, raw(4)), "more elements than a protobuf can hold"},
		{"negative dimension", tensor([]uint64{1<<64 - 1}, raw(4)), "negative dimension"},
		{"no data", tensor([]uint64{3}, func(b []byte) []byte { return b }), "float32 tensor of 3 elements holds 0 values"},
		{"typed list too short", tensor([]uint64{1000000}, func(b []byte) []byte {
			return appendMessage(b, tensorFloatData, make([]byte, 8))
		}), "float32 tensor of 1000000 elements holds 2 values"},
		{"a million empty nodes", bytes.Repeat([]byte{0x0a, 0x00}, 1<<20), "decoded structures exceed 16 times the size of the file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Unmarshal(modelWith(c.graph))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Unmarshal error %v, want %q", err, c.want)
			}
		})
	}
	// The same tensors with the data they declare decode.
	m, err := Unmarshal(modelWith(tensor([]uint64{4, 4}, raw(64))))
	if err != nil || len(m.Graph.Initializers) != 1 || len(m.Graph.Initializers[0].Raw) != 64 {
		t.Fatalf("valid tensor: %v", err)
	}
}

func TestReadFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.onnx")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<31); err != nil { // sparse
		t.Fatal(err)
	}
	_, err := ReadFile(path)
	if err == nil || !strings.Contains(err.Error(), path+": 2147483648 bytes, want at most 2147483647 (protobuf's 2 GiB limit)") {
		t.Fatalf("ReadFile error %v", err)
	}
}

// FuzzUnmarshal: arbitrary bytes never panic the decoder; a model it accepts re-encodes and
// decodes to the same bytes once it validates.
func FuzzUnmarshal(f *testing.F) {
	full, err := fullModel().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	f.Add(modelWith(appendMessage(nil, graphInitializer, appendMessage(appendVarint(appendVarint(nil, tensorDims, 2), tensorDataType, uint64(Int64)), tensorInt64Data, []byte{1, 2}))))
	f.Add(modelWith(bytes.Repeat([]byte{0x0a, 0x00}, 64)))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Unmarshal(data)
		if err != nil || m.Validate() != nil {
			return
		}
		b1, err := m.Marshal()
		if err != nil {
			t.Fatalf("valid decoded model does not marshal: %v", err)
		}
		m2, err := Unmarshal(b1)
		if err != nil {
			t.Fatalf("re-encoded model does not decode: %v", err)
		}
		b2, err := m2.Marshal()
		if err != nil || !bytes.Equal(b1, b2) {
			t.Fatalf("decode(encode(m)) re-encodes differently (err %v)", err)
		}
	})
}
