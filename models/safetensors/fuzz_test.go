package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to the header validation and, for files it accepts, reads
// every tensor. Nothing may panic; an accepted file's tensors lie inside it, back to back,
// and read with as many values as their shapes declare; a file written back from what was
// read reads the same.
func FuzzOpen(f *testing.F) {
	seed := func(header string, data int) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
		return append(append(b, header...), make([]byte, data)...)
	}
	f.Add(seed(`{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"format":"pt"}}`, 16))
	f.Add(seed(`{"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[6,8]},"d":{"dtype":"F64","shape":[],"data_offsets":[8,16]}}`, 16))
	f.Add(seed(`{"q":{"dtype":"F4","shape":[4],"data_offsets":[0,2]},"i":{"dtype":"I64","shape":[1],"data_offsets":[2,10]}}`, 10))
	f.Add(seed(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4))
	f.Add(seed(`{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}`, 0))
	f.Add(seed(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4))
	f.Add(seed(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":[{"y":null}]}}  `, 0))
	f.Add(seed(`{}`, 0))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := newFile(bytes.NewReader(data), int64(len(data)), "fuzz")
		if err != nil {
			return
		}
		names := file.Names()
		infos := make([]Info, len(names))
		for i, n := range names {
			infos[i] = file.infos[n]
		}
		slices.SortFunc(infos, func(a, b Info) int { return cmp.Or(cmp.Compare(a.Begin, b.Begin), cmp.Compare(a.End, b.End)) })
		end := int64(0)
		for _, info := range infos {
			if info.Begin != end || info.End < info.Begin {
				t.Fatalf("accepted tensors not back to back: %+v after byte %d", info, end)
			}
			end = info.End
		}
		if file.dataStart+end != int64(len(data)) {
			t.Fatalf("accepted tensors end at %d, file has %d bytes", file.dataStart+end, len(data))
		}
		read := map[string]Tensor{}
		for _, n := range names {
			info := file.infos[n]
			tensor, err := file.Tensor(n)
			if dtypeSize[info.DType] == 0 {
				if err == nil {
					t.Fatalf("tensor %q of dtype %s read without error", n, info.DType)
				}
				continue
			}
			if err != nil {
				t.Fatalf("accepted file: tensor %q: %v", n, err)
			}
			if len(tensor.Data) != tensor.NumElements() {
				t.Fatalf("tensor %q: %d values for shape %v", n, len(tensor.Data), tensor.Shape)
			}
			read[n] = tensor
		}
		path := filepath.Join(t.TempDir(), "back.safetensors")
		if err := Write(path, read, file.Metadata()); err != nil {
			t.Fatalf("write back: %v", err)
		}
		back, _, err := Read(path)
		if err != nil {
			t.Fatalf("read back: %v", err)
		}
		for n, want := range read {
			got := back[n]
			if !slices.Equal(got.Shape, want.Shape) || !sameBits(got.Data, want.Data) {
				t.Fatalf("tensor %q changed on the way back", n)
			}
		}
		os.Remove(path)
	})
}

// sameBits compares bit patterns: decoding is bit-exact, NaN payloads included.
func sameBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}
