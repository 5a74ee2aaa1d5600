package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := Write(path, map[string]Tensor{
		"a": {Shape: []int{2, 3}, Data: make([]float32, 6)},
		"b": {Shape: []int{4}, Data: make([]float32, 4)},
		"c": {Shape: []int{}, Data: []float32{1}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	half := rawFile(t, `{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"i":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8))
	all := []Want{{"a", []int{2, 3}, ""}, {"b", []int{4}, ""}, {"c", []int{}, ""}}
	cases := []struct {
		name  string
		path  string
		want  []Want
		extra []string
		err   string
	}{
		{"exact", path, all, nil, ""},
		{"extra allowed", path, all[:2], []string{"c", "absent"}, ""},
		{"missing one", path, append(all, Want{"d", []int{1}, ""}), nil, `missing tensor "d" (want [1])`},
		{"missing two", path, append(all, Want{"d", []int{1}, ""}, Want{"e", nil, ""}), nil, `missing tensor "d" (want [1]) and 1 more missing tensors`},
		{"shape", path, []Want{{"a", []int{3, 2}, ""}, all[1], all[2]}, nil, `tensor "a": file has shape [2 3], model wants [3 2]`},
		{"undeclared", path, all[:1], nil, `2 tensors not declared by the model config, e.g. ["b" "c"]`},
		{"half is readable", half, []Want{{"h", []int{2}, ""}}, []string{"i"}, ""},
		{"int32 is not", half, []Want{{"h", []int{2}, ""}, {"i", []int{1}, ""}}, nil, `tensor "i": unsupported dtype "I32"`},
		{"dtype wanted", path, []Want{{"a", []int{2, 3}, "F32"}, {"b", []int{4}, "F32"}, {"c", []int{}, ""}}, nil, ""},
		{"other dtype", half, []Want{{"h", []int{2}, "F32"}}, []string{"i"}, `tensor "h": file has dtype F16, want F32`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Open(c.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = f.Check(c.want, c.extra...)
			if c.err == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("Check error %v, want %q", err, c.err)
			}
		})
	}
}

// TestReadWantedSparse: a file that declares one unrelated 1 GiB tensor besides the one the
// model wants is refused from its header. The file is sparse (a few KB on disk).
func TestReadWantedSparse(t *testing.T) {
	const big = 1 << 30
	header := fmt.Sprintf(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"junk":{"dtype":"F32","shape":[%d],"data_offsets":[8,%d]}}`, big/4, 8+big)
	path := filepath.Join(t.TempDir(), "sparse.safetensors")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	binary.Write(f, binary.LittleEndian, uint64(len(header)))
	f.WriteString(header)
	if err := f.Truncate(int64(8 + len(header) + 8 + big)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, _, err = ReadWanted(path, []Want{{"w", []int{2}, ""}})
	if err == nil || !strings.Contains(err.Error(), `1 tensors not declared by the model config, e.g. ["junk"]`) {
		t.Fatalf("ReadWanted error %v, want the undeclared tensor named", err)
	}
	_, _, err = ReadWanted(path, []Want{{"w", []int{2}, ""}, {"bias", []int{2}, ""}})
	if err == nil || !strings.Contains(err.Error(), `missing tensor "bias" (want [2])`) {
		t.Fatalf("ReadWanted error %v, want the missing tensor named", err)
	}
}

func TestReadWanted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := Write(path, map[string]Tensor{"a": {Shape: []int{2}, Data: []float32{1, 2}}, "b": {Shape: []int{1}, Data: []float32{3}}}, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	ts, meta, err := ReadWanted(path, []Want{{"b", []int{1}, ""}, {"a", []int{2}, ""}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 || ts["a"].Data[1] != 2 || ts["b"].Data[0] != 3 || meta["k"] != "v" {
		t.Errorf("ReadWanted = %v, %v", ts, meta)
	}
}

// TestTensorChunks reads tensors larger than one read chunk, in every decodable dtype, with
// sizes that do not divide the chunk.
func TestTensorChunks(t *testing.T) {
	n := readChunk/2 + 3 // > one chunk of F32 and F64; one chunk and a bit of F16
	var data []byte
	var header strings.Builder
	header.WriteString("{")
	off := 0
	for i, dt := range []string{"F32", "F64", "F16", "BF16"} {
		size := dtypeSize[dt]
		for j := range n {
			v := float32(j%256) - 128 // exact in every dtype (BF16 has 8 significant bits)
			switch dt {
			case "F32":
				data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
			case "F64":
				data = binary.LittleEndian.AppendUint64(data, math.Float64bits(float64(v)))
			case "F16":
				data = binary.LittleEndian.AppendUint16(data, f16Bits(v))
			case "BF16":
				data = binary.LittleEndian.AppendUint16(data, uint16(math.Float32bits(v)>>16))
			}
		}
		if i > 0 {
			header.WriteString(",")
		}
		fmt.Fprintf(&header, `"%s":{"dtype":"%s","shape":[%d],"data_offsets":[%d,%d]}`, dt, dt, n, off, off+n*size)
		off += n * size
	}
	header.WriteString("}")
	path := rawFile(t, header.String(), data)
	ts, _, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	for dt, tensor := range ts {
		if len(tensor.Data) != n {
			t.Fatalf("%s: %d values, want %d", dt, len(tensor.Data), n)
		}
		for j, v := range tensor.Data {
			if want := float32(j%256) - 128; v != want {
				t.Fatalf("%s[%d] = %g, want %g", dt, j, v, want)
			}
		}
	}
}

// f16Bits encodes an integer-valued float32 of magnitude ≤ 256 as binary16 (exact).
func f16Bits(v float32) uint16 {
	var sign uint16
	if v < 0 {
		sign, v = 0x8000, -v
	}
	if v == 0 {
		return sign
	}
	e := 0
	for v >= 2 {
		v /= 2
		e++
	}
	return sign | uint16(e+15)<<10 | uint16((v-1)*1024)
}
