// Package safetensors owns reading and writing the safetensors file format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON header mapping tensor names to
// {"dtype", "shape", "data_offsets"} (plus an optional string map under
// "__metadata__"), then the raw little-endian tensor bytes.
//
// Files come from strangers (adapters and checkpoints downloaded from the
// internet), so reading is in two steps: Open validates the header as the
// reference implementation does (header.go) without touching tensor data, the
// caller checks names and shapes against its model (File.Check), and only then
// are the tensors it asked for read, one at a time (File.Tensor, ReadWanted).
//
// The project keeps every tensor as float32 in memory: Write stores F32, Read
// accepts F32, F64, F16 and BF16 and converts to float32. Writes are atomic
// (temp file in the same directory, fsync, rename, fsync of the directory).
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
)

// Tensor is a dense row-major float32 tensor.
type Tensor struct {
	Shape []int
	Data  []float32
}

// Clone deep-copies a group of tensors.
func Clone(group map[string]Tensor) map[string]Tensor {
	out := make(map[string]Tensor, len(group))
	for k, t := range group {
		out[k] = Tensor{Shape: append([]int{}, t.Shape...), Data: append([]float32{}, t.Data...)}
	}
	return out
}

// NumElements returns the product of the shape (1 for a scalar).
func (t Tensor) NumElements() int { return numElements(t.Shape) }

// Info describes one tensor of a file as its header declares it.
type Info struct {
	DType string // "F32", "F16", "BF16", ...
	Shape []int
	// Begin and End are byte offsets into the data section (after the header).
	Begin, End int64
}

// metadataKey is the reserved header key holding the free-form string map.
const metadataKey = "__metadata__"

// dtypeSize maps the dtypes Tensor can decode to their byte size; the header may declare any
// dtype of the reference (see header.go), but only these become float32.
var dtypeSize = map[string]int{"F32": 4, "F64": 8, "F16": 2, "BF16": 2}

type headerEntry struct {
	DType       string  `json:"dtype"`
	Shape       []int   `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

func numElements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// ReadHeader returns the tensor descriptions and metadata of a file without
// reading tensor data. The header is validated as Open validates it.
func ReadHeader(path string) (map[string]Info, map[string]string, error) {
	f, err := Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return f.infos, f.meta, nil
}

// readHeader reads and validates the header of a file of size bytes (see header.go); it
// returns the offset of the data section. Memory: the header bytes (at most maxHeaderLen) and
// what they declare, never tensor data.
func readHeader(r io.ReaderAt, size int64) (map[string]Info, map[string]string, int64, error) {
	var lenBuf [8]byte
	if size < 8 {
		return nil, nil, 0, fmt.Errorf("header length: file has %d bytes, want at least 8", size)
	}
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, nil, 0, fmt.Errorf("header length: %w", err)
	}
	hlen := binary.LittleEndian.Uint64(lenBuf[:])
	if hlen > maxHeaderLen {
		return nil, nil, 0, fmt.Errorf("header length %d exceeds the limit of %d bytes (huggingface/safetensors' MAX_HEADER_SIZE)", hlen, maxHeaderLen)
	}
	if int64(hlen) > size-8 {
		return nil, nil, 0, fmt.Errorf("header length %d exceeds file size %d (truncated or not a safetensors file)", hlen, size)
	}
	hdr := make([]byte, hlen)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, nil, 0, fmt.Errorf("header: %w", err)
	}
	dataStart := int64(8 + hlen)
	infos, meta, err := parseHeader(hdr, size-dataStart)
	if err != nil {
		return nil, nil, 0, err
	}
	return infos, meta, dataStart, nil
}

// File is an open safetensors file whose tensors are read one at a time, so a
// multi-gigabyte checkpoint need not be held in memory at once.
type File struct {
	r         io.ReaderAt
	closer    io.Closer
	path      string
	infos     map[string]Info
	meta      map[string]string
	dataStart int64
}

// Open opens a safetensors file and validates its header; no tensor data is read.
func Open(path string) (*File, error) {
	osf, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open safetensors %q: %w", path, err)
	}
	st, err := osf.Stat()
	if err != nil {
		osf.Close()
		return nil, fmt.Errorf("stat safetensors %q: %w", path, err)
	}
	f, err := newFile(osf, st.Size(), path)
	if err != nil {
		osf.Close()
		return nil, err
	}
	f.closer = osf
	return f, nil
}

// newFile validates the header of the size bytes of r; path names them in errors.
func newFile(r io.ReaderAt, size int64, path string) (*File, error) {
	infos, meta, dataStart, err := readHeader(r, size)
	if err != nil {
		return nil, fmt.Errorf("read safetensors %q: %w", path, err)
	}
	return &File{r: r, closer: io.NopCloser(nil), path: path, infos: infos, meta: meta, dataStart: dataStart}, nil
}

// Close closes the file.
func (f *File) Close() error { return f.closer.Close() }

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Names returns the tensor names in sorted order.
func (f *File) Names() []string { return sortedKeys(f.infos) }

// Info returns the header entry of a tensor.
func (f *File) Info(name string) (Info, bool) {
	info, ok := f.infos[name]
	return info, ok
}

// Metadata returns the file's metadata (empty map if none).
func (f *File) Metadata() map[string]string { return f.meta }

// Tensor reads one tensor as float32. It reads only that tensor's bytes, in chunks, so the
// memory it costs is the float32 result.
func (f *File) Tensor(name string) (Tensor, error) {
	info, ok := f.infos[name]
	if !ok {
		return Tensor{}, fmt.Errorf("read safetensors %q: no tensor %q", f.path, name)
	}
	size, ok := dtypeSize[info.DType]
	if !ok {
		return Tensor{}, fmt.Errorf("read safetensors %q: tensor %q: unsupported dtype %q (want F32, F64, F16 or BF16)", f.path, name, info.DType)
	}
	// The header check made End−Begin = size·elements and placed it inside the file.
	out := make([]float32, (info.End-info.Begin)/int64(size))
	buf := make([]byte, min(int64(readChunk), info.End-info.Begin))
	for done := 0; done < len(out); {
		n := min(len(out)-done, len(buf)/size)
		b := buf[:n*size]
		if _, err := f.r.ReadAt(b, f.dataStart+info.Begin+int64(done*size)); err != nil {
			return Tensor{}, fmt.Errorf("read safetensors %q: tensor %q: %w", f.path, name, err)
		}
		decode(info.DType, b, out[done:done+n])
		done += n
	}
	return Tensor{Shape: append([]int{}, info.Shape...), Data: out}, nil
}

// readChunk is the size of one read of tensor bytes: large enough that reads cost no more
// than one whole-tensor read, small enough not to count beside the result.
const readChunk = 1 << 20

// Read loads every tensor of the file as float32, with the file's metadata
// (empty map if none). Supported dtypes: F32, F64, F16, BF16; a file with any
// other is refused before a tensor is read. Read is for files whose every
// tensor the caller needs whatever they are; a loader that knows its model's
// tensors uses ReadWanted (or Open and File.Check), which refuses a file that
// does not fit before reading it.
func Read(path string) (map[string]Tensor, map[string]string, error) {
	f, err := Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	for _, name := range f.Names() {
		if dt := f.infos[name].DType; dtypeSize[dt] == 0 {
			return nil, nil, fmt.Errorf("read safetensors %q: tensor %q: unsupported dtype %q (want F32, F64, F16 or BF16)", path, name, dt)
		}
	}
	out := make(map[string]Tensor, len(f.infos))
	for _, name := range f.Names() {
		t, err := f.Tensor(name)
		if err != nil {
			return nil, nil, err
		}
		out[name] = t
	}
	return out, f.meta, nil
}

// decode converts little-endian bytes of a supported dtype into out (len(b)/size values).
func decode(dtype string, b []byte, out []float32) {
	switch dtype {
	case "F32":
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case "F64":
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
		}
	case "F16":
		for i := range out {
			out[i] = F16ToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case "BF16":
		for i := range out {
			out[i] = BF16ToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	default:
		panic("safetensors: decode called with unsupported dtype " + dtype)
	}
}

// BF16ToFloat32 widens a bfloat16 bit pattern: bfloat16 is the top half of a
// float32, so the conversion is exact.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F16ToFloat32 converts an IEEE 754 binary16 bit pattern to float32 exactly
// (every half value, subnormals included, is representable in float32).
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN: keep the payload in the top mantissa bits.
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: mant · 2^-24, normalised for float32.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}

// files writes safetensors files; tests replace its CreateTemp to make the disk fail.
var files atomicfile.Writer

// Write stores the tensors as F32 with the given metadata (may be nil),
// atomically: it writes a temp file next to path, fsyncs it, renames it over
// path and fsyncs the directory. Tensors are laid out in sorted name order, so
// equal inputs give byte-identical files.
func Write(path string, tensors map[string]Tensor, metadata map[string]string) error {
	names := sortedKeys(tensors)
	header := make(map[string]any, len(tensors)+1)
	var offset int64
	for _, name := range names {
		if name == metadataKey {
			return fmt.Errorf("write safetensors %q: tensor name %q is reserved", path, name)
		}
		t := tensors[name]
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("write safetensors %q: tensor %q: negative dimension in shape %v", path, name, t.Shape)
			}
		}
		if n := numElements(t.Shape); n != len(t.Data) {
			return fmt.Errorf("write safetensors %q: tensor %q: shape %v has %d elements, data has %d", path, name, t.Shape, n, len(t.Data))
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		size := int64(4 * len(t.Data))
		header[name] = headerEntry{DType: "F32", Shape: shape, DataOffsets: []int64{offset, offset + size}}
		offset += size
	}
	if len(metadata) > 0 {
		header[metadataKey] = metadata
	}
	// encoding/json sorts map keys, so the header is deterministic.
	hdr, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("write safetensors %q: encode header: %w", path, err)
	}
	// Pad with spaces so the data section starts 8-byte aligned, as the
	// reference implementation does.
	for (8+len(hdr))%8 != 0 {
		hdr = append(hdr, ' ')
	}

	err = files.Write(path, func(w io.Writer) error {
		var lenBuf [8]byte
		binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
		if _, err := w.Write(lenBuf[:]); err != nil {
			return err
		}
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		// Encode in chunks of up to 16384 values (64 KiB) rather than 4 bytes at a time.
		chunk := make([]byte, 0, 1<<16)
		for _, name := range names {
			data := tensors[name].Data
			for len(data) > 0 {
				n := min(len(data), cap(chunk)/4)
				chunk = chunk[:4*n]
				for i, v := range data[:n] {
					binary.LittleEndian.PutUint32(chunk[4*i:], math.Float32bits(v))
				}
				if _, err := w.Write(chunk); err != nil {
					return err
				}
				data = data[n:]
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write safetensors %q: %w", path, err)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
