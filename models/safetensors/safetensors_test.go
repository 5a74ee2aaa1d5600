package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/x448/float16"
)

func TestRoundTripBitExact(t *testing.T) {
	nanPayload := math.Float32frombits(0x7fc12345)
	tensors := map[string]Tensor{
		"b.weight": {Shape: []int{2, 3}, Data: []float32{1, -2.5, 3.25e-39 /* subnormal */, float32(math.Inf(1)), float32(math.Copysign(0, -1)), nanPayload}},
		"a.bias":   {Shape: []int{3}, Data: []float32{math.MaxFloat32, -math.SmallestNonzeroFloat32, 0.1}},
		"scalar":   {Shape: []int{}, Data: []float32{42}},
		"empty":    {Shape: []int{0, 4}, Data: []float32{}},
		// 3·12345 = 37035 values: two full 16384-value write chunks and a part.
		"big": {Shape: []int{3, 12345}, Data: make([]float32, 3*12345)},
	}
	for i := range tensors["big"].Data {
		tensors["big"].Data[i] = float32(i) - 0.25 // distinct and exact in float32
	}
	meta := map[string]string{"format": "pt", "note": "round trip"}
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	if err := Write(path, tensors, meta); err != nil {
		t.Fatal(err)
	}
	got, gotMeta, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(tensors) {
		t.Fatalf("got %d tensors, want %d", len(got), len(tensors))
	}
	for name, want := range tensors {
		g, ok := got[name]
		if !ok {
			t.Fatalf("tensor %q missing after round trip", name)
		}
		if len(g.Shape) != len(want.Shape) {
			t.Fatalf("%s: shape %v, want %v", name, g.Shape, want.Shape)
		}
		for i := range want.Shape {
			if g.Shape[i] != want.Shape[i] {
				t.Fatalf("%s: shape %v, want %v", name, g.Shape, want.Shape)
			}
		}
		if len(g.Data) != len(want.Data) {
			t.Fatalf("%s: %d values, want %d", name, len(g.Data), len(want.Data))
		}
		for i := range want.Data {
			if math.Float32bits(g.Data[i]) != math.Float32bits(want.Data[i]) {
				t.Errorf("%s[%d]: bits %#x, want %#x", name, i, math.Float32bits(g.Data[i]), math.Float32bits(want.Data[i]))
			}
		}
	}
	if len(gotMeta) != 2 || gotMeta["format"] != "pt" || gotMeta["note"] != "round trip" {
		t.Errorf("metadata %v, want %v", gotMeta, meta)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after write, want only the file (temp file left behind?)", len(entries))
	}
}

// TestWriteExactBytes pins the on-disk layout of a one-tensor file.
func TestWriteExactBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.safetensors")
	if err := Write(path, map[string]Tensor{"w": {Shape: []int{1}, Data: []float32{1}}}, nil); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// JSON is 54 bytes; 8+54 = 62 is padded with 2 spaces to 64, so the
	// header length is 56. Data: 1.0f = 0x3f800000 little-endian.
	json := `{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  `
	var want bytes.Buffer
	binary.Write(&want, binary.LittleEndian, uint64(len(json)))
	want.WriteString(json)
	want.Write([]byte{0x00, 0x00, 0x80, 0x3f})
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("file bytes\n%q\nwant\n%q", got, want.Bytes())
	}
	// Same input, same bytes (key order is sorted, not map order).
	many := map[string]Tensor{}
	for _, k := range []string{"z", "a", "m", "b", "y"} {
		many[k] = Tensor{Shape: []int{2}, Data: []float32{1, 2}}
	}
	p1, p2 := filepath.Join(t.TempDir(), "1"), filepath.Join(t.TempDir(), "2")
	if err := Write(p1, many, map[string]string{"k": "v", "a": "b"}); err != nil {
		t.Fatal(err)
	}
	if err := Write(p2, many, map[string]string{"a": "b", "k": "v"}); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(p1)
	b2, _ := os.ReadFile(p2)
	if !bytes.Equal(b1, b2) {
		t.Error("two writes of the same tensors differ")
	}
}

// rawFile writes a safetensors file from a literal header and data bytes.
func rawFile(t *testing.T, header string, data []byte) string {
	t.Helper()
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(data)
	path := filepath.Join(t.TempDir(), "raw.safetensors")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func le16(vals ...uint16) []byte {
	b := make([]byte, 2*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint16(b[2*i:], v)
	}
	return b
}

func TestReadHalfPrecision(t *testing.T) {
	f16 := []struct {
		bits uint16
		want float32
	}{
		{0x3c00, 1},                      // exp 15 (bias 15), mant 0 → 1
		{0xc000, -2},                     // sign, exp 16 → -2
		{0x3555, 0.333251953125},         // exp 13 → 2^-2, mant 341 → (1+341/1024)/4
		{0x7bff, 65504},                  // max: 2^15·(1+1023/1024)
		{0x0001, 5.9604644775390625e-08}, // smallest subnormal 2^-24
		{0x0200, 3.0517578125e-05},       // subnormal 512/1024·2^-14 = 2^-15
		{0x03ff, 6.097555160522461e-05},  // largest subnormal 1023/1024·2^-14
		{0x0400, 6.103515625e-05},        // smallest normal 2^-14
		{0x8000, float32(math.Copysign(0, -1))},
		{0x7c00, float32(math.Inf(1))},
		{0xfc00, float32(math.Inf(-1))},
	}
	bf16 := []struct {
		bits uint16
		want float32
	}{
		{0x3f80, 1},         // float32 0x3f800000
		{0xc049, -3.140625}, // 0xc0490000: 2^1·(1+73/128)
		{0x4780, 65536},     // exp 143 → 2^16
		{0x0001, 0x1p-133},  // 0x00010000: 2^16·2^-149
		{0xff80, float32(math.Inf(-1))},
	}
	var f16Bits, bf16Bits []uint16
	for _, c := range f16 {
		f16Bits = append(f16Bits, c.bits)
	}
	for _, c := range bf16 {
		bf16Bits = append(bf16Bits, c.bits)
	}
	nf, nb := 2*len(f16), 2*len(bf16)
	header := `{"h":{"dtype":"F16","shape":[` + strconv.Itoa(len(f16)) + `],"data_offsets":[0,` + strconv.Itoa(nf) + `]},` +
		`"b":{"dtype":"BF16","shape":[` + strconv.Itoa(len(bf16)) + `],"data_offsets":[` + strconv.Itoa(nf) + `,` + strconv.Itoa(nf+nb) + `]},` +
		`"__metadata__":{"format":"pt"}}`
	path := rawFile(t, header, append(le16(f16Bits...), le16(bf16Bits...)...))
	got, meta, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if meta["format"] != "pt" {
		t.Errorf("metadata %v", meta)
	}
	for i, c := range f16 {
		if g := got["h"].Data[i]; math.Float32bits(g) != math.Float32bits(c.want) {
			t.Errorf("F16 %#04x → %g, want %g", c.bits, g, c.want)
		}
	}
	for i, c := range bf16 {
		if g := got["b"].Data[i]; math.Float32bits(g) != math.Float32bits(c.want) {
			t.Errorf("BF16 %#04x → %g, want %g", c.bits, g, c.want)
		}
	}
	if g := F16ToFloat32(0x7e00); !math.IsNaN(float64(g)) {
		t.Errorf("F16 0x7e00 → %g, want NaN", g)
	}
}

// TestF16Exhaustive checks every half bit pattern against x448/float16.
func TestF16Exhaustive(t *testing.T) {
	for u := 0; u < 1<<16; u++ {
		got := F16ToFloat32(uint16(u))
		want := float16.Frombits(uint16(u)).Float32()
		if math.IsNaN(float64(want)) {
			// x448 sets the quiet bit; we keep the payload as is. Both are NaN.
			if !math.IsNaN(float64(got)) {
				t.Fatalf("F16 %#04x → %g, want NaN", u, got)
			}
			continue
		}
		if math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("F16 %#04x → %#08x, want %#08x", u, math.Float32bits(got), math.Float32bits(want))
		}
	}
}

func TestReadErrors(t *testing.T) {
	good := filepath.Join(t.TempDir(), "good.safetensors")
	if err := Write(good, map[string]Tensor{"layer.weight": {Shape: []int{4, 4}, Data: make([]float32, 16)}}, nil); err != nil {
		t.Fatal(err)
	}
	full, _ := os.ReadFile(good)
	truncated := filepath.Join(t.TempDir(), "trunc.safetensors")
	os.WriteFile(truncated, full[:len(full)-10], 0o644)
	tiny := filepath.Join(t.TempDir(), "tiny.safetensors")
	os.WriteFile(tiny, []byte{1, 2, 3}, 0o644)
	hugeLen := filepath.Join(t.TempDir(), "huge.safetensors")
	os.WriteFile(hugeLen, append(binary.LittleEndian.AppendUint64(nil, 1000), '{', '}'), 0o644)

	cases := []struct {
		name  string
		path  string
		wants []string
	}{
		{"truncated data", truncated, []string{truncated, `"layer.weight"`, "outside data section"}},
		{"shorter than length", tiny, []string{tiny, "want at least 8"}},
		{"header length beyond file", hugeLen, []string{hugeLen, "exceeds file size"}},
		{"bad json", rawFile(t, `{"a":`, nil), []string{"parse JSON header"}},
		{"unsupported dtype after a good tensor", rawFile(t, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"q":{"dtype":"I64","shape":[1],"data_offsets":[4,12]}}`, make([]byte, 12)), []string{`"q"`, `unsupported dtype "I64"`}},
		{"offsets count", rawFile(t, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}`, make([]byte, 4)), []string{`"a"`, "data_offsets has 1 values"}},
		{"size mismatch", rawFile(t, `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`"a"`, "needs 8 bytes", "span 4"}},
		{"unsupported dtype", rawFile(t, `{"q":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`"q"`, `unsupported dtype "I8"`}},
		{"bad metadata", rawFile(t, `{"__metadata__":{"a":1}}`, nil), []string{"__metadata__"}},
		{"missing file", filepath.Join(t.TempDir(), "nope.safetensors"), []string{"nope.safetensors", "no such file"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Read(c.path)
			if err == nil {
				t.Fatal("Read succeeded, want an error")
			}
			for _, w := range c.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestReadHeader(t *testing.T) {
	path := rawFile(t, `{"x":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}`, make([]byte, 12))
	infos, _, err := ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	x := infos["x"]
	if x.DType != "BF16" || len(x.Shape) != 2 || x.Shape[0] != 2 || x.Shape[1] != 3 || x.Begin != 0 || x.End != 12 {
		t.Errorf("info %+v", x)
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w.safetensors")
	err := Write(path, map[string]Tensor{"ok": {Shape: []int{1}, Data: []float32{1}}, "bad.weight": {Shape: []int{2, 2}, Data: []float32{1}}}, nil)
	if err == nil || !strings.Contains(err.Error(), `"bad.weight"`) || !strings.Contains(err.Error(), "[2 2] has 4 elements, data has 1") {
		t.Errorf("shape/data mismatch error = %v", err)
	}
	if err := Write(filepath.Join(dir, "missing-dir", "w.safetensors"), map[string]Tensor{}, nil); err == nil {
		t.Error("write into a missing directory succeeded")
	}

	// A failing temp file creation leaves the previous file untouched.
	if err := Write(path, map[string]Tensor{"v": {Shape: []int{1}, Data: []float32{7}}}, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	defer func() { files = atomicfile.Writer{} }()
	files.CreateTemp = func(string, string) (atomicfile.File, error) { return nil, errors.New("disk full") }
	err = Write(path, map[string]Tensor{"v": {Shape: []int{1}, Data: []float32{8}}}, nil)
	files = atomicfile.Writer{}
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("error = %v, want disk full", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("failed write changed the existing file")
	}
	// A temp file that fails on write is removed and the target is kept.
	files.CreateTemp = func(dir, pattern string) (atomicfile.File, error) {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		name := f.Name()
		f.Close()
		return os.Open(name) // read-only: writes fail
	}
	err = Write(path, map[string]Tensor{"v": {Shape: []int{1}, Data: []float32{9}}}, nil)
	files = atomicfile.Writer{}
	if err == nil {
		t.Fatal("write through a read-only temp file succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory has %d entries after failed write, want 1", len(entries))
	}
	after, _ = os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("failed write changed the existing file")
	}
}

func TestOpenLazy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lazy.safetensors")
	if err := Write(path, map[string]Tensor{"b": {Shape: []int{2}, Data: []float32{3, 4}}, "a": {Shape: []int{1}, Data: []float32{5}}}, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if names := f.Names(); len(names) != 2 || names[0] != "a" || names[1] != "b" {
		t.Errorf("names %v, want [a b]", names)
	}
	if f.Metadata()["k"] != "v" {
		t.Errorf("metadata %v", f.Metadata())
	}
	b, err := f.Tensor("b")
	if err != nil || b.Data[0] != 3 || b.Data[1] != 4 {
		t.Errorf("tensor b = %v, %v", b, err)
	}
	if _, err := f.Tensor("zz"); err == nil || !strings.Contains(err.Error(), `no tensor "zz"`) {
		t.Errorf("missing tensor error = %v", err)
	}
}
