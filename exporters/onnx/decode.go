package onnx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// ReadFile reads and decodes the ONNX model at path. A file beyond protobuf's 2 GiB limit is
// refused before it is read.
func ReadFile(path string) (*Model, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read ONNX model: %w", err)
	}
	if st.Size() > maxProtoSize {
		return nil, fmt.Errorf("read ONNX model %s: %d bytes, want at most %d (protobuf's 2 GiB limit)", path, st.Size(), maxProtoSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ONNX model: %w", err)
	}
	m, err := Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("read ONNX model %s: %w", path, err)
	}
	return m, nil
}

// Unmarshal decodes an ONNX ModelProto within the package's subset. Fields outside it that do
// not change what the graph computes (doc strings, value_info, annotations) are dropped;
// those that do (sub-graphs, sparse or external tensors, non-tensor inputs) are errors.
// Tensor data given as typed lists (float_data, int64_data, ...) is converted to raw bytes;
// every tensor must hold exactly the elements its dims declare.
//
// The file comes from outside, so what decoding allocates is bounded: at most
// decodeBudgetFactor times the input (plus 16 MiB) in decoded structures, enough for real
// models (weights cost their size; a node of a few strings and attributes a few times its
// encoding) and an error for a file of a million empty nodes.
func Unmarshal(data []byte) (*Model, error) {
	d := &decoder{left: decodeBudgetFactor*int64(len(data)) + 16<<20}
	m := &Model{}
	sawOpset := false
	err := walk(data, func(num protowire.Number, typ protowire.Type, v field) error {
		switch num {
		case modelIRVersion:
			m.IRVersion = int64(v.u)
		case modelProducerName:
			m.ProducerName = string(v.b)
		case modelProducerVersion:
			m.ProducerVersion = string(v.b)
		case modelDomain:
			m.Domain = string(v.b)
		case modelModelVersion:
			m.ModelVersion = int64(v.u)
		case modelDocString:
			m.DocString = string(v.b)
		case modelGraph:
			g, err := d.graph(v.b)
			if err != nil {
				return fmt.Errorf("graph: %w", err)
			}
			m.Graph = g
		case modelOpsetImport:
			if err := d.spend(32); err != nil {
				return err
			}
			o, err := decodeOpset(v.b)
			if err != nil {
				return fmt.Errorf("opset_import: %w", err)
			}
			if o.Domain == "" || o.Domain == "ai.onnx" {
				m.Opset, sawOpset = o.Version, true
			} else {
				m.OtherOpsets = append(m.OtherOpsets, o)
			}
		case modelMetadataProps:
			var k, val string
			if err := walk(v.b, func(num protowire.Number, _ protowire.Type, f field) error {
				switch num {
				case entryKey:
					k = string(f.b)
				case entryValue:
					val = string(f.b)
				}
				return nil
			}); err != nil {
				return fmt.Errorf("metadata_props: %w", err)
			}
			if err := d.spend(32 + int64(len(k)+len(val))); err != nil {
				return err
			}
			if m.Metadata == nil {
				m.Metadata = map[string]string{}
			}
			m.Metadata[k] = val
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decode ModelProto: %w", err)
	}
	if m.Graph == nil {
		return nil, errors.New("decode ModelProto: no graph")
	}
	if !sawOpset {
		return nil, errors.New("decode ModelProto: no opset_import for the default domain")
	}
	return m, nil
}

// decodeBudgetFactor bounds decoded structures to this many times the size of the input.
const decodeBudgetFactor = 16

// decoder counts what decoding has allocated against its budget.
type decoder struct{ left int64 }

// spend takes n bytes from the budget.
func (d *decoder) spend(n int64) error {
	d.left -= n
	if d.left < 0 {
		return fmt.Errorf("decoded structures exceed %d times the size of the file (a file of many empty messages?)", decodeBudgetFactor)
	}
	return nil
}

// str spends for and returns a copy of b as a string.
func (d *decoder) str(b []byte) (string, error) {
	return string(b), d.spend(16 + int64(len(b)))
}

// field is one decoded field value: u for varint and fixed types, b for length-delimited.
type field struct {
	u uint64
	b []byte
}

// walk calls fn for each field of the message in b, in order.
func walk(b []byte, fn func(protowire.Number, protowire.Type, field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("bad tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var f field
		switch typ {
		case protowire.VarintType:
			f.u, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var v uint32
			v, n = protowire.ConsumeFixed32(b)
			f.u = uint64(v)
		case protowire.Fixed64Type:
			f.u, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				b = b[n:]
				continue
			}
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, f); err != nil {
			return err
		}
	}
	return nil
}

// repeatedScalars decodes one occurrence of a repeated scalar field, packed (BytesType) or
// not, calling add for each element.
func repeatedScalars(typ protowire.Type, f field, wantType protowire.Type, add func(uint64)) error {
	if typ == wantType {
		add(f.u)
		return nil
	}
	if typ != protowire.BytesType {
		return fmt.Errorf("wire type %d, want %d or packed", typ, wantType)
	}
	b := f.b
	for len(b) > 0 {
		var v uint64
		var n int
		switch wantType {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x uint32
			x, n = protowire.ConsumeFixed32(b)
			v = uint64(x)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		add(v)
		b = b[n:]
	}
	return nil
}

func decodeOpset(b []byte) (OpsetID, error) {
	var o OpsetID
	err := walk(b, func(num protowire.Number, _ protowire.Type, v field) error {
		switch num {
		case opsetDomain:
			o.Domain = string(v.b)
		case opsetVersion:
			o.Version = int64(v.u)
		}
		return nil
	})
	return o, err
}

func (d *decoder) graph(b []byte) (*Graph, error) {
	g := &Graph{}
	err := walk(b, func(num protowire.Number, _ protowire.Type, v field) error {
		switch num {
		case graphNode:
			n, err := d.node(v.b)
			if err != nil {
				return fmt.Errorf("node %d (%s %q): %w", len(g.Nodes), n.Op, n.Name, err)
			}
			g.Nodes = append(g.Nodes, n)
		case graphName:
			g.Name = string(v.b)
		case graphInitializer:
			t, err := d.tensor(v.b)
			if err != nil {
				return fmt.Errorf("initializer %d (%q): %w", len(g.Initializers), t.Name, err)
			}
			g.Initializers = append(g.Initializers, t)
		case 15: // repeated SparseTensorProto sparse_initializer = 15
			return errors.New("sparse initializers are not supported")
		case graphInput, graphOutput:
			vi, err := d.valueInfo(v.b)
			if err != nil {
				return fmt.Errorf("value %q: %w", vi.Name, err)
			}
			if num == graphInput {
				g.Inputs = append(g.Inputs, vi)
			} else {
				g.Outputs = append(g.Outputs, vi)
			}
		}
		return nil
	})
	return g, err
}

func (d *decoder) node(b []byte) (Node, error) {
	var n Node
	if err := d.spend(int64(unsafe.Sizeof(n))); err != nil {
		return n, err
	}
	err := walk(b, func(num protowire.Number, _ protowire.Type, v field) error {
		var err error
		var s string
		switch num {
		case nodeInput:
			s, err = d.str(v.b)
			n.Inputs = append(n.Inputs, s)
		case nodeOutput:
			s, err = d.str(v.b)
			n.Outputs = append(n.Outputs, s)
		case nodeName:
			n.Name, err = d.str(v.b)
		case nodeOpType:
			n.Op, err = d.str(v.b)
		case nodeDomain:
			n.Domain, err = d.str(v.b)
		case nodeAttribute:
			a, err := d.attr(v.b)
			if err != nil {
				return fmt.Errorf("attribute %q: %w", a.Name, err)
			}
			n.Attrs = append(n.Attrs, a)
		}
		return err
	})
	if n.Inputs == nil {
		n.Inputs = []string{}
	}
	if n.Outputs == nil {
		n.Outputs = []string{}
	}
	if n.Attrs == nil {
		n.Attrs = []Attr{}
	}
	return n, err
}

func (d *decoder) attr(b []byte) (Attr, error) {
	var a Attr
	if err := d.spend(int64(unsafe.Sizeof(a))); err != nil {
		return a, err
	}
	err := walk(b, func(num protowire.Number, typ protowire.Type, v field) error {
		var err error
		switch num {
		case attrName:
			a.Name, err = d.str(v.b)
		case attrType:
			a.Type = AttrType(v.u)
		case attrF:
			a.Float = math.Float32frombits(uint32(v.u))
		case attrI:
			a.Int = int64(v.u)
		case attrS:
			a.String, err = d.str(v.b)
		case attrT:
			var t Tensor
			t, err = d.tensor(v.b)
			a.Tensor = &t
		case attrFloats:
			err = d.repeated(typ, v, protowire.Fixed32Type, 4, func(u uint64) {
				a.Floats = append(a.Floats, math.Float32frombits(uint32(u)))
			})
		case attrInts:
			err = d.repeated(typ, v, protowire.VarintType, 8, func(u uint64) {
				a.Ints = append(a.Ints, int64(u))
			})
		case attrStrings:
			var s string
			s, err = d.str(v.b)
			a.Strings = append(a.Strings, s)
		case 6, 11:
			err = errors.New("graph attributes (sub-graphs) are not supported")
		case 10, 15, 22, 23, 14:
			err = errors.New("tensor-list, sparse and type attributes are not supported")
		case 21: // optional string ref_attr_name = 21 (only inside functions)
			err = errors.New("attribute references are not supported")
		}
		return err
	})
	if err != nil {
		return a, err
	}
	// Lists are non-nil so that decoded attributes equal built ones.
	switch a.Type {
	case AttrTypeFloats:
		if a.Floats == nil {
			a.Floats = []float32{}
		}
	case AttrTypeInts:
		if a.Ints == nil {
			a.Ints = []int64{}
		}
	case AttrTypeStrings:
		if a.Strings == nil {
			a.Strings = []string{}
		}
	case AttrTypeFloat, AttrTypeInt, AttrTypeString:
	case AttrTypeTensor:
		if a.Tensor == nil {
			return a, errors.New("tensor attribute without a tensor")
		}
	default:
		return a, fmt.Errorf("unsupported attribute type %s", a.Type)
	}
	return a, nil
}

// typedData is one occurrence of a tensor's typed data list (float_data, int64_data, ...).
type typedData struct {
	typ protowire.Type
	f   field
}

func (d *decoder) tensor(b []byte) (Tensor, error) {
	t := Tensor{Shape: []int64{}}
	if err := d.spend(int64(unsafe.Sizeof(t))); err != nil {
		return t, err
	}
	var raw []byte
	hasRaw := false
	// Typed data fields, decoded once the data type and the element count are known.
	var typed []typedData
	typedField := protowire.Number(0)
	err := walk(b, func(num protowire.Number, typ protowire.Type, v field) error {
		var err error
		switch num {
		case tensorDims:
			return d.repeated(typ, v, protowire.VarintType, 8, func(u uint64) {
				t.Shape = append(t.Shape, int64(u))
			})
		case tensorDataType:
			t.DType = DType(v.u)
		case tensorName:
			t.Name, err = d.str(v.b)
		case tensorRawData:
			raw, hasRaw = v.b, true
		case tensorFloatData, tensorInt32Data, tensorInt64Data, tensorDoubleData, tensorUint64Data:
			if typedField != 0 && typedField != num {
				return fmt.Errorf("data in both fields %d and %d", typedField, num)
			}
			typedField = num
			typed = append(typed, typedData{typ, v})
		case 6: // repeated bytes string_data = 6
			return errors.New("string tensors are not supported")
		case tensorDataLocation:
			if v.u == 1 {
				return errors.New("external data is not supported")
			}
		case 3: // optional Segment segment = 3
			return errors.New("segmented tensors are not supported")
		}
		return err
	})
	if err != nil {
		return t, err
	}
	if !t.DType.Valid() {
		return t, fmt.Errorf("unsupported element type %s", t.DType)
	}
	n, size := int64(1), int64(t.DType.Size())
	for _, dim := range t.Shape {
		if dim < 0 {
			return t, fmt.Errorf("dims %v: negative dimension", t.Shape)
		}
		if dim > 0 && n > maxProtoSize/size/dim {
			return t, fmt.Errorf("dims %v: more elements than a protobuf can hold", t.Shape)
		}
		n *= dim
	}
	if hasRaw {
		if int64(len(raw)) != n*size || len(typed) > 0 {
			return t, fmt.Errorf("%s %v needs %d bytes of raw_data, got %d (and %d typed lists)", t.DType, t.Shape, n*size, len(raw), len(typed))
		}
		if err := d.spend(n * size); err != nil {
			return t, err
		}
		t.Raw = append([]byte{}, raw...)
		return t, nil
	}
	t.Raw, err = d.typedToRaw(t.DType, n, typedField, typed)
	return t, err
}

// typedToRaw packs the typed-list data of a tensor of n elements as raw little-endian bytes,
// following onnx.proto's rules for which list holds which element type.
func (d *decoder) typedToRaw(dt DType, n int64, num protowire.Number, typed []typedData) ([]byte, error) {
	wantType := protowire.VarintType
	switch num {
	case tensorFloatData:
		wantType = protowire.Fixed32Type
	case tensorDoubleData:
		wantType = protowire.Fixed64Type
	}
	wantField := map[DType]protowire.Number{
		Float32: tensorFloatData, Float64: tensorDoubleData,
		Int64: tensorInt64Data, Uint32: tensorUint64Data, Uint64: tensorUint64Data,
		// int32_data holds every type of 32 bits or fewer; float16/bfloat16 as their bits.
		Int32: tensorInt32Data, Int16: tensorInt32Data, Int8: tensorInt32Data,
		Uint16: tensorInt32Data, Uint8: tensorInt32Data, Bool: tensorInt32Data,
		Float16: tensorInt32Data, BFloat16: tensorInt32Data,
	}[dt]
	if len(typed) > 0 && num != wantField {
		return nil, fmt.Errorf("%s data in field %d, want field %d", dt, num, wantField)
	}
	count := int64(0)
	for _, td := range typed {
		count += countScalars(td.typ, td.f, wantType)
	}
	if count != n {
		return nil, fmt.Errorf("%s tensor of %d elements holds %d values", dt, n, count)
	}
	size := dt.Size()
	if err := d.spend(n * int64(size)); err != nil {
		return nil, err
	}
	raw := make([]byte, n*int64(size))
	if n == 0 {
		return raw, nil
	}
	i := 0
	put := func(v uint64) {
		switch size {
		case 1:
			raw[i] = byte(v)
		case 2:
			binary.LittleEndian.PutUint16(raw[2*i:], uint16(v))
		case 4:
			binary.LittleEndian.PutUint32(raw[4*i:], uint32(v))
		case 8:
			binary.LittleEndian.PutUint64(raw[8*i:], v)
		}
		i++
	}
	for _, td := range typed {
		if err := repeatedScalars(td.typ, td.f, wantType, put); err != nil {
			return nil, err
		}
	}
	return raw, nil
}

// countScalars counts the elements of one occurrence of a repeated scalar field without
// decoding them (a malformed packed list counts what it holds; decoding reports it).
func countScalars(typ protowire.Type, f field, wantType protowire.Type) int64 {
	if typ != protowire.BytesType {
		return 1
	}
	switch wantType {
	case protowire.Fixed32Type:
		return int64(len(f.b) / 4)
	case protowire.Fixed64Type:
		return int64(len(f.b) / 8)
	}
	n := int64(0)
	for _, c := range f.b {
		if c < 0x80 {
			n++
		}
	}
	return n
}

// repeated decodes one occurrence of a repeated scalar field after spending elemSize bytes
// per element on it.
func (d *decoder) repeated(typ protowire.Type, f field, wantType protowire.Type, elemSize int64, add func(uint64)) error {
	if err := d.spend(elemSize * countScalars(typ, f, wantType)); err != nil {
		return err
	}
	return repeatedScalars(typ, f, wantType, add)
}

func (d *decoder) valueInfo(b []byte) (ValueInfo, error) {
	vi := ValueInfo{UnknownShape: true}
	if err := d.spend(int64(unsafe.Sizeof(vi))); err != nil {
		return vi, err
	}
	var typeMsg []byte
	err := walk(b, func(num protowire.Number, _ protowire.Type, v field) error {
		var err error
		switch num {
		case valueName:
			vi.Name, err = d.str(v.b)
		case valueType:
			typeMsg = v.b
		}
		return err
	})
	if err != nil {
		return vi, err
	}
	var tensorType []byte
	hasTensor := false
	if err := walk(typeMsg, func(num protowire.Number, _ protowire.Type, v field) error {
		if num == typeTensorType {
			tensorType, hasTensor = v.b, true
		}
		return nil
	}); err != nil {
		return vi, fmt.Errorf("type: %w", err)
	}
	if !hasTensor {
		return vi, errors.New("not a tensor (sequence, map, optional and sparse values are not supported)")
	}
	err = walk(tensorType, func(num protowire.Number, _ protowire.Type, v field) error {
		switch num {
		case tensorTypeElemType:
			vi.DType = DType(v.u)
		case tensorTypeShape:
			vi.UnknownShape = false
			return walk(v.b, func(num protowire.Number, _ protowire.Type, v field) error {
				if num != shapeDim {
					return nil
				}
				dim := Dim{Value: -1} // neither dim_value nor dim_param: unknown
				if err := d.spend(int64(unsafe.Sizeof(dim))); err != nil {
					return err
				}
				err := walk(v.b, func(num protowire.Number, _ protowire.Type, f field) error {
					var err error
					switch num {
					case dimValue:
						dim = Dim{Value: int64(f.u)}
					case dimParam:
						dim = Dim{}
						dim.Param, err = d.str(f.b)
					}
					return err
				})
				vi.Dims = append(vi.Dims, dim)
				return err
			})
		}
		return nil
	})
	if err != nil {
		return vi, fmt.Errorf("tensor type: %w", err)
	}
	if !vi.DType.Valid() {
		return vi, fmt.Errorf("unsupported element type %s", vi.DType)
	}
	return vi, nil
}
