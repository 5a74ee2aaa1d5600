package safetensors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"
)

// The header is validated as huggingface/safetensors validates it (safetensors/src/tensor.rs,
// SafeTensors::read_metadata and Metadata::validate), so a file is accepted here only if the
// reference accepts it:
//   - the header length is at most 100 000 000 bytes and fits in the file;
//   - the header is UTF-8 JSON: one object, nothing but whitespace after it;
//   - every tensor entry has a known dtype, a shape of non-negative integers and exactly two
//     data_offsets; unknown fields of an entry are ignored;
//   - sorted by offsets, the tensors start at 0 and each begins where the previous one ends
//     (no overlap, no gap), the element count and byte size are computed with overflow
//     checks and must equal the span (sub-byte dtypes must fill whole bytes), and the last
//     tensor ends exactly at the end of the file.
//
// Stricter than the reference, each on purpose:
//   - a name that appears twice is an error. The reference decodes the header with serde_json
//     into a HashMap, which keeps the last entry silently (it fails only when the dropped
//     entry's bytes then leave a gap); duplicate fields inside an entry and a duplicate
//     __metadata__ it already rejects (serde's derived struct decoding). Duplicate keys inside
//     __metadata__ are rejected here too;
//   - a shape has at most maxRank dimensions and each fits in an int, so a header that is one
//     long shape array costs nothing before it fails (the reference has no rank bound).

// maxHeaderLen is the reference's MAX_HEADER_SIZE (100 000 000 bytes, decimal).
const maxHeaderLen = 100_000_000

// maxRank bounds the number of dimensions of one shape. Real tensors have a handful; numpy
// stops at 64, PyTorch at none, so this only refuses hand-made headers.
const maxRank = 1024

// dtypeBits is the reference's Dtype enum with each element's size in bits.
var dtypeBits = map[string]uint64{
	"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
	"F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
	"I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
	"C64": 64, "F64": 64, "I64": 64, "U64": 64,
}

// knownDTypes lists dtypeBits' keys for error messages, in the reference's order.
const knownDTypes = "BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64"

// entry is one tensor of the header as parsed, before offsets are validated.
type entry struct {
	name       string
	dtype      string
	shape      []int
	begin, end uint64
}

// parseHeader decodes and validates the JSON header of a file whose data section (everything
// after the header) has dataLen bytes. Errors say what is wrong and with which tensor; the
// caller adds the file name.
func parseHeader(hdr []byte, dataLen int64) (map[string]Info, map[string]string, error) {
	if !utf8.Valid(hdr) {
		return nil, nil, errors.New("header is not valid UTF-8")
	}
	p := headerParser{dec: json.NewDecoder(bytes.NewReader(hdr))}
	p.dec.UseNumber()
	if err := p.delim('{', "header"); err != nil {
		return nil, nil, err
	}
	var meta map[string]string
	var entries []entry
	seen := map[string]bool{}
	for p.dec.More() {
		name, err := p.key("header")
		if err != nil {
			return nil, nil, err
		}
		if seen[name] {
			return nil, nil, fmt.Errorf("name %q appears twice in the header, want unique names", name)
		}
		seen[name] = true
		if name == metadataKey {
			if meta, err = p.metadata(); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", metadataKey, err)
			}
			continue
		}
		e, err := p.entry()
		if err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		e.name = name
		entries = append(entries, e)
	}
	if err := p.delim('}', "header"); err != nil {
		return nil, nil, err
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, nil, errors.New("parse JSON header: characters after the header object, want only whitespace")
	}
	if err := validate(entries, dataLen); err != nil {
		return nil, nil, err
	}
	infos := make(map[string]Info, len(entries))
	for _, e := range entries {
		infos[e.name] = Info{DType: e.dtype, Shape: e.shape, Begin: int64(e.begin), End: int64(e.end)}
	}
	if meta == nil {
		meta = map[string]string{}
	}
	return infos, meta, nil
}

// validate is the reference's Metadata::validate plus its final check that the tensors cover
// the data section exactly.
func validate(entries []entry, dataLen int64) error {
	slices.SortFunc(entries, func(a, b entry) int {
		if a.begin != b.begin {
			return cmp.Compare(a.begin, b.begin)
		}
		if a.end != b.end {
			return cmp.Compare(a.end, b.end)
		}
		return cmp.Compare(a.name, b.name)
	})
	var start uint64
	prev := -1
	for i, e := range entries {
		if e.end < e.begin {
			return fmt.Errorf("tensor %q: data_offsets [%d %d] end before they begin", e.name, e.begin, e.end)
		}
		if e.begin < start {
			p := entries[prev]
			return fmt.Errorf("tensor %q: data_offsets [%d %d] overlap tensor %q at [%d %d], want tensors that do not share bytes", e.name, e.begin, e.end, p.name, p.begin, p.end)
		}
		if e.begin > start {
			after := "the start of the data section"
			if prev >= 0 {
				after = fmt.Sprintf("tensor %q", entries[prev].name)
			}
			return fmt.Errorf("tensor %q: data_offsets [%d %d] leave %d unused bytes after %s, want contiguous tensors", e.name, e.begin, e.end, e.begin-start, after)
		}
		size, err := byteSize(e.dtype, e.shape)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", e.name, err)
		}
		if e.end-e.begin != size {
			return fmt.Errorf("tensor %q: %s%v needs %d bytes, data_offsets [%d %d] span %d", e.name, e.dtype, e.shape, size, e.begin, e.end, e.end-e.begin)
		}
		start = e.end
		if e.end > e.begin || prev < 0 {
			prev = i
		}
	}
	switch n := uint64(dataLen); {
	case start > n:
		last := entries[len(entries)-1]
		return fmt.Errorf("tensor %q: data_offsets [%d %d] outside data section of %d bytes (truncated file?)", last.name, last.begin, last.end, n)
	case start < n:
		return fmt.Errorf("the tensors cover %d bytes of the %d-byte data section, want all of it (%d trailing bytes)", start, n, n-start)
	}
	return nil
}

// byteSize is the number of bytes of a tensor, with the reference's overflow checks: the
// element count (multiplied left to right), times the dtype's bits, must fit in 64 bits and
// be a whole number of bytes.
func byteSize(dtype string, shape []int) (uint64, error) {
	n := uint64(1)
	for _, d := range shape {
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 {
			return 0, fmt.Errorf("shape %v: element count overflows 64 bits", shape)
		}
		n = lo
	}
	hi, nbits := bits.Mul64(n, dtypeBits[dtype])
	if hi != 0 {
		return 0, fmt.Errorf("%s%v: size in bits overflows 64 bits", dtype, shape)
	}
	if nbits%8 != 0 {
		return 0, fmt.Errorf("%s%v is %d bits, want a whole number of bytes", dtype, shape, nbits)
	}
	return nbits / 8, nil
}

// headerParser reads the header token by token, so that nothing is held in memory beyond
// what has been checked (a 100 MB shape array stops at maxRank) and duplicate keys are seen.
type headerParser struct {
	dec *json.Decoder
}

func (p headerParser) token() (json.Token, error) {
	tok, err := p.dec.Token()
	if err == io.EOF {
		return nil, errors.New("parse JSON header: unexpected end")
	}
	if err != nil {
		return nil, fmt.Errorf("parse JSON header: %w", err)
	}
	return tok, nil
}

// delim reads the delimiter want; what names the value for the error.
func (p headerParser) delim(want json.Delim, what string) error {
	tok, err := p.token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("%s: got %s, want %s", what, describe(tok), describeDelim(want))
	}
	return nil
}

// key reads an object key.
func (p headerParser) key(what string) (string, error) {
	tok, err := p.token()
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("%s: got %s, want a key", what, describe(tok))
	}
	return s, nil
}

// metadata reads __metadata__: null or an object of strings.
func (p headerParser) metadata() (map[string]string, error) {
	tok, err := p.token()
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return nil, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("got %s, want a map of strings", describe(tok))
	}
	meta := map[string]string{}
	for p.dec.More() {
		k, err := p.key("map")
		if err != nil {
			return nil, err
		}
		if _, dup := meta[k]; dup {
			return nil, fmt.Errorf("key %q appears twice, want unique keys", k)
		}
		tok, err := p.token()
		if err != nil {
			return nil, err
		}
		v, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("key %q: got %s, want a string", k, describe(tok))
		}
		meta[k] = v
	}
	return meta, p.delim('}', "map")
}

// entry reads one tensor's {"dtype", "shape", "data_offsets"}.
func (p headerParser) entry() (entry, error) {
	var e entry
	if err := p.delim('{', "entry"); err != nil {
		return e, err
	}
	var haveDType, haveShape, haveOffsets bool
	for p.dec.More() {
		field, err := p.key("entry")
		if err != nil {
			return e, err
		}
		dup := false
		switch field {
		case "dtype":
			dup, haveDType = haveDType, true
			if e.dtype, err = p.dtype(); err != nil {
				return e, err
			}
		case "shape":
			dup, haveShape = haveShape, true
			if e.shape, err = p.shape(); err != nil {
				return e, err
			}
		case "data_offsets":
			dup, haveOffsets = haveOffsets, true
			if e.begin, e.end, err = p.offsets(); err != nil {
				return e, err
			}
		default: // the reference ignores unknown fields
			if err := p.skip(); err != nil {
				return e, err
			}
		}
		if dup {
			return e, fmt.Errorf("field %q appears twice, want it once", field)
		}
	}
	switch {
	case !haveDType:
		return e, errors.New(`missing field "dtype"`)
	case !haveShape:
		return e, errors.New(`missing field "shape"`)
	case !haveOffsets:
		return e, errors.New(`missing field "data_offsets"`)
	}
	return e, p.delim('}', "entry")
}

func (p headerParser) dtype() (string, error) {
	tok, err := p.token()
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("dtype: got %s, want a string", describe(tok))
	}
	if _, ok := dtypeBits[s]; !ok {
		return "", fmt.Errorf("dtype: got %q, want one of %s", s, knownDTypes)
	}
	return s, nil
}

func (p headerParser) shape() ([]int, error) {
	if err := p.delim('[', "shape"); err != nil {
		return nil, err
	}
	shape := []int{}
	for p.dec.More() {
		if len(shape) == maxRank {
			return nil, fmt.Errorf("shape: more than %d dimensions", maxRank)
		}
		d, err := p.uint("shape", math.MaxInt)
		if err != nil {
			return nil, err
		}
		shape = append(shape, int(d))
	}
	return shape, p.delim(']', "shape")
}

func (p headerParser) offsets() (begin, end uint64, err error) {
	if err := p.delim('[', "data_offsets"); err != nil {
		return 0, 0, err
	}
	var vals []uint64
	for p.dec.More() {
		if len(vals) == 2 {
			return 0, 0, errors.New("data_offsets: more than 2 values, want [begin, end]")
		}
		v, err := p.uint("data_offsets", math.MaxUint64)
		if err != nil {
			return 0, 0, err
		}
		vals = append(vals, v)
	}
	if len(vals) != 2 {
		return 0, 0, fmt.Errorf("data_offsets has %d values, want 2", len(vals))
	}
	return vals[0], vals[1], p.delim(']', "data_offsets")
}

// uint reads a JSON integer in [0, limit]; fractions and exponents are refused as serde
// refuses them for usize.
func (p headerParser) uint(what string, limit uint64) (uint64, error) {
	tok, err := p.token()
	if err != nil {
		return 0, err
	}
	num, ok := tok.(json.Number)
	if !ok {
		return 0, fmt.Errorf("%s: got %s, want a non-negative integer", what, describe(tok))
	}
	v, err := strconv.ParseUint(string(num), 10, 64)
	if err != nil || v > limit {
		return 0, fmt.Errorf("%s: got %.40s, want an integer in [0, %d]", what, num, limit)
	}
	return v, nil
}

// skip reads one value of any kind.
func (p headerParser) skip() error {
	depth := 0
	for {
		tok, err := p.token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
			} else {
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// describe names a token for an error, cut short so that a long string stays one short line.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		return describeDelim(v)
	case string:
		return fmt.Sprintf("string %.40q", v)
	case json.Number:
		return "number " + fmt.Sprintf("%.40s", string(v))
	case bool:
		return fmt.Sprint("boolean ", v)
	}
	return fmt.Sprint(tok)
}

func describeDelim(d json.Delim) string {
	switch d {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '}':
		return "the end of an object"
	}
	return "the end of an array"
}
