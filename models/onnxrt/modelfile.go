package onnxrt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// A model file is checked before ONNX Runtime reads it, so that a file from outside costs
// nothing but this scan when it is refused: its size plus the external data its tensors name
// (each tensor's length, or the rest of its file) against Config.MaxModelMB, and each external-data location, which must name a regular file
// inside the model's folder. ONNX Runtime (1.30 here) refuses escaping locations too, but only
// after it has parsed the whole graph; this scan reads the protobuf's structure and skips
// tensor bytes, so its cost does not grow with the weights.

// DefaultMaxModelMB is the default of Config.MaxModelMB: 4 GiB of model and external data.
const DefaultMaxModelMB = 4096

// maxProtoBytes is protobuf's 2 GiB message limit: ONNX Runtime cannot parse a larger .onnx
// file (bigger models keep their weights in external data).
const maxProtoBytes = 1<<31 - 1

// maxScanDepth bounds the nesting of messages the scan follows (graphs inside attributes of
// nodes inside graphs ...), as protobuf's own decoders bound recursion at 100.
const maxScanDepth = 100

func (c Config) maxModelBytes() int64 {
	if c.MaxModelMB == 0 {
		return DefaultMaxModelMB << 20
	}
	return int64(c.MaxModelMB) << 20
}

// scanModelFile checks the file at path before ONNX Runtime opens it — a regular file of at
// most 2 GiB whose size plus the external data its tensors name is within cfg's limit, with
// every external-data location inside the model's folder — and returns the inputs and outputs
// its graph declares.
func scanModelFile(path string, cfg Config) (inputs, outputs []TensorInfo, err error) {
	fail := func(err error) ([]TensorInfo, []TensorInfo, error) {
		return nil, nil, fmt.Errorf("open ONNX model %s: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fail(errors.New("file does not exist"))
		}
		return fail(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if st.IsDir() {
		return fail(errors.New("is a directory, want an .onnx file"))
	}
	limit := cfg.maxModelBytes()
	if st.Size() > maxProtoBytes {
		return fail(fmt.Errorf("%d bytes, want at most %d (protobuf's 2 GiB limit; larger models keep their weights in external data)", st.Size(), int64(maxProtoBytes)))
	}
	if st.Size() > limit {
		return fail(fmt.Errorf("%d MiB, want at most onnx.max_model_mb = %d", st.Size()>>20, limit>>20))
	}
	ext, err := scanExternal(f, st.Size())
	if err != nil {
		return fail(err)
	}
	total := st.Size()
	dir := filepath.Dir(path)
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fail(err)
	}
	for _, e := range ext {
		size, err := e.resolve(dir, realDir)
		if err != nil {
			return fail(err)
		}
		if total += size; total > limit {
			return fail(fmt.Errorf("%d MiB with its external data (%s), want at most onnx.max_model_mb = %d", total>>20, e.location, limit>>20))
		}
	}
	if inputs, outputs, err = scanSignature(f, st.Size()); err != nil {
		return fail(err)
	}
	return inputs, outputs, nil
}

// scanModelBytes checks a model held in memory — within the size limit and without external
// data (there is no folder to find it in) — and returns the inputs and outputs it declares.
func scanModelBytes(name string, data []byte, cfg Config) (inputs, outputs []TensorInfo, err error) {
	if int64(len(data)) > cfg.maxModelBytes() {
		return nil, nil, fmt.Errorf("open ONNX model %s: %d MiB, want at most onnx.max_model_mb = %d", name, len(data)>>20, cfg.maxModelBytes()>>20)
	}
	ext, err := scanExternal(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, nil, fmt.Errorf("open ONNX model %s: %w", name, err)
	}
	if len(ext) > 0 {
		return nil, nil, fmt.Errorf("open ONNX model %s: tensor %q has external data %q, want the data inside a model held in memory", name, ext[0].tensor, ext[0].location)
	}
	if inputs, outputs, err = scanSignature(bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, nil, fmt.Errorf("open ONNX model %s: %w", name, err)
	}
	return inputs, outputs, nil
}

// external is one tensor whose data lives in another file.
type external struct {
	tensor, location string
	offset, length   int64 // length -1: to the end of the file
}

// resolve finds the file of e under dir (whose symlinks resolve to realDir) and returns the
// number of bytes ONNX Runtime reads from it (length, or the rest of the file from offset),
// refusing a location that leaves the folder or a range past its end.
func (e external) resolve(dir, realDir string) (int64, error) {
	fail := func(format string, args ...any) (int64, error) {
		return 0, fmt.Errorf("tensor %q: external data %q: %s", e.tensor, e.location, fmt.Sprintf(format, args...))
	}
	if !filepath.IsLocal(e.location) {
		return fail("want a relative path inside the model's folder")
	}
	real, err := filepath.EvalSymlinks(filepath.Join(dir, e.location))
	if err != nil {
		return fail("%v", errors.Unwrap(err))
	}
	if rel, err := filepath.Rel(realDir, real); err != nil || !filepath.IsLocal(rel) {
		return fail("resolves to %s, outside the model's folder %s", real, realDir)
	}
	st, err := os.Stat(real)
	if err != nil {
		return fail("%v", err)
	}
	if !st.Mode().IsRegular() {
		return fail("not a regular file")
	}
	if e.offset > st.Size() || (e.length >= 0 && e.length > st.Size()-e.offset) {
		return fail("offset %d length %d past the end of the %d-byte file", e.offset, e.length, st.Size())
	}
	if e.length < 0 {
		return st.Size() - e.offset, nil
	}
	return e.length, nil
}

// The kinds of onnx.proto messages the scan walks.
const (
	kindModel = iota
	kindTrainingInfo
	kindGraph
	kindNode
	kindFunction
	kindAttribute
	kindSparseTensor
	kindTensor
)

// children maps a message kind to its fields that are messages leading to a TensorProto.
var children = map[int]map[protowire.Number]int{
	// ModelProto: graph = 7, training_info = 20, functions = 25.
	kindModel: {7: kindGraph, 20: kindTrainingInfo, 25: kindFunction},
	// TrainingInfoProto: initialization = 1, algorithm = 2.
	kindTrainingInfo: {1: kindGraph, 2: kindGraph},
	// GraphProto: node = 1, initializer = 5, sparse_initializer = 15.
	kindGraph: {1: kindNode, 5: kindTensor, 15: kindSparseTensor},
	// NodeProto: attribute = 5.
	kindNode: {5: kindAttribute},
	// FunctionProto: node = 7.
	kindFunction: {7: kindNode},
	// AttributeProto: t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22,
	// sparse_tensors = 23.
	kindAttribute: {5: kindTensor, 6: kindGraph, 10: kindTensor, 11: kindGraph, 22: kindSparseTensor, 23: kindSparseTensor},
	// SparseTensorProto: values = 1, indices = 2.
	kindSparseTensor: {1: kindTensor, 2: kindTensor},
}

// TensorProto fields the scan reads: name = 8, external_data = 13, data_location = 14; and
// StringStringEntryProto's key = 1, value = 2.
const (
	tensorName         = 8
	tensorExternalData = 13
	tensorDataLocation = 14
	locationExternal   = 1
	maxEntryBytes      = 1 << 16 // an external_data entry is a short key and value
)

// scanExternal lists the tensors of the ModelProto in r (size bytes) whose data_location is
// EXTERNAL. It reads tags and the small fields it needs and skips everything else, tensor
// bytes included.
func scanExternal(r io.ReaderAt, size int64) ([]external, error) {
	s := &scanner{r: r, size: size}
	var out []external
	err := s.message(0, size, kindModel, 0, func(t tensorRef) { out = append(out, t.external) })
	if err != nil {
		return nil, fmt.Errorf("not a valid ONNX protobuf: %w", err)
	}
	return out, nil
}

// tensorRef is what the scan learns of one TensorProto.
type tensorRef struct {
	external
	isExternal bool
}

// scanner reads a protobuf through a window of the file, so that a walk over many small
// fields costs few reads.
type scanner struct {
	r      io.ReaderAt
	size   int64
	winOff int64
	win    []byte
}

const scanWindow = 64 << 10

// bytesAt returns up to n bytes at off, fewer only at the end of the input. The bytes are
// valid until the next call.
func (s *scanner) bytesAt(off int64, n int) ([]byte, error) {
	if off >= s.winOff && off+int64(n) <= s.winOff+int64(len(s.win)) {
		return s.win[off-s.winOff : off-s.winOff+int64(n)], nil
	}
	if want := max(n, int(min(scanWindow, s.size))); cap(s.win) < want {
		s.win = make([]byte, want)
	}
	buf := s.win[:cap(s.win)]
	m, err := s.r.ReadAt(buf, off)
	if err != nil && err != io.EOF {
		return nil, err
	}
	s.winOff, s.win = off, buf[:m]
	return s.win[:min(n, m)], nil
}

// field is one field of a message: its number and wire type, the value of a varint, the
// byte range of a length-delimited field.
type field struct {
	num        protowire.Number
	typ        protowire.Type
	varint     uint64
	start, end int64
}

// fields calls fn for each field of the message in [start, end), in file order.
func (s *scanner) fields(start, end int64, fn func(f field) error) error {
	for off := start; off < end; {
		head, err := s.bytesAt(off, int(min(20, end-off)))
		if err != nil {
			return err
		}
		num, typ, n := protowire.ConsumeTag(head)
		if n < 0 {
			return fmt.Errorf("bad tag at byte %d: %w", off, protowire.ParseError(n))
		}
		off += int64(n)
		head = head[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(head)
			if m < 0 {
				return fmt.Errorf("field %d at byte %d: %w", num, off, protowire.ParseError(m))
			}
			f.varint = v
			off += int64(m)
		case protowire.Fixed32Type:
			off += 4
		case protowire.Fixed64Type:
			off += 8
		case protowire.BytesType:
			l, m := protowire.ConsumeVarint(head)
			if m < 0 {
				return fmt.Errorf("field %d at byte %d: %w", num, off, protowire.ParseError(m))
			}
			off += int64(m)
			if l > uint64(end-off) {
				return fmt.Errorf("field %d at byte %d: length %d past the end of its message", num, off, l)
			}
			f.start, f.end = off, off+int64(l)
			off = f.end
		default: // groups (deprecated) do not occur in onnx.proto
			return fmt.Errorf("field %d at byte %d: unsupported wire type %d", num, off, typ)
		}
		if off > end {
			return fmt.Errorf("field %d ends past its message", num)
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// message walks the fields of the message in [start, end) of kind, calling found for each
// TensorProto inside it.
func (s *scanner) message(start, end int64, kind, depth int, found func(tensorRef)) error {
	if depth > maxScanDepth {
		return fmt.Errorf("messages nested more than %d deep", maxScanDepth)
	}
	var t tensorRef
	t.length = -1
	err := s.fields(start, end, func(f field) error {
		if f.typ == protowire.VarintType && kind == kindTensor && f.num == tensorDataLocation {
			t.isExternal = f.varint == locationExternal
		}
		if f.typ != protowire.BytesType {
			return nil
		}
		child, isChild := children[kind][f.num]
		switch {
		case kind == kindTensor && f.num == tensorName && f.end-f.start <= maxEntryBytes:
			b, err := s.bytesAt(f.start, int(f.end-f.start))
			if err != nil {
				return err
			}
			t.tensor = string(b)
		case kind == kindTensor && f.num == tensorExternalData:
			return s.entry(f.start, f.end, &t.external)
		case isChild:
			return s.message(f.start, f.end, child, depth+1, found)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if kind == kindTensor && t.isExternal {
		if t.location == "" {
			return fmt.Errorf("tensor %q: external data without a location", t.tensor)
		}
		found(t)
	}
	return nil
}

// entry reads one external_data key/value pair into e.
func (s *scanner) entry(start, end int64, e *external) error {
	if end-start > maxEntryBytes {
		return fmt.Errorf("external_data entry of %d bytes, want at most %d", end-start, maxEntryBytes)
	}
	b, err := s.bytesAt(start, int(end-start))
	if err != nil {
		return err
	}
	b = bytes.Clone(b)
	var key, value string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("external_data entry: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("external_data entry: %w", protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("external_data entry: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case 1:
			key = string(v)
		case 2:
			value = string(v)
		}
	}
	switch key {
	case "location":
		e.location = value
	case "offset", "length":
		v, err := strconv.ParseInt(value, 10, 64)
		if err != nil || v < 0 {
			return fmt.Errorf("external_data %s %q, want a non-negative integer", key, value)
		}
		if key == "offset" {
			e.offset = v
		} else {
			e.length = v
		}
	}
	return nil
}
