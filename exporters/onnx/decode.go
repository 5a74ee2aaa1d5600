package onnx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"

	"google.golang.org/protobuf/encoding/protowire"
)

// ReadFile reads and decodes the ONNX model at path.
func ReadFile(path string) (*Model, error) {
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
// Tensor data given as typed lists (float_data, int64_data, ...) is converted to raw bytes.
func Unmarshal(data []byte) (*Model, error) {
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
			g, err := decodeGraph(v.b)
			if err != nil {
				return fmt.Errorf("graph: %w", err)
			}
			m.Graph = g
		case modelOpsetImport:
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

func decodeGraph(b []byte) (*Graph, error) {
	g := &Graph{}
	err := walk(b, func(num protowire.Number, _ protowire.Type, v field) error {
		switch num {
		case graphNode:
			n, err := decodeNode(v.b)
			if err != nil {
				return fmt.Errorf("node %d (%s %q): %w", len(g.Nodes), n.Op, n.Name, err)
			}
			g.Nodes = append(g.Nodes, n)
		case graphName:
			g.Name = string(v.b)
		case graphInitializer:
			t, err := decodeTensor(v.b)
			if err != nil {
				return fmt.Errorf("initializer %d (%q): %w", len(g.Initializers), t.Name, err)
			}
			g.Initializers = append(g.Initializers, t)
		case 15: // repeated SparseTensorProto sparse_initializer = 15
			return errors.New("sparse initializers are not supported")
		case graphInput, graphOutput:
			vi, err := decodeValueInfo(v.b)
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

func decodeNode(b []byte) (Node, error) {
	var n Node
	err := walk(b, func(num protowire.Number, _ protowire.Type, v field) error {
		switch num {
		case nodeInput:
			n.Inputs = append(n.Inputs, string(v.b))
		case nodeOutput:
			n.Outputs = append(n.Outputs, string(v.b))
		case nodeName:
			n.Name = string(v.b)
		case nodeOpType:
			n.Op = string(v.b)
		case nodeDomain:
			n.Domain = string(v.b)
		case nodeAttribute:
			a, err := decodeAttr(v.b)
			if err != nil {
				return fmt.Errorf("attribute %q: %w", a.Name, err)
			}
			n.Attrs = append(n.Attrs, a)
		}
		return nil
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

func decodeAttr(b []byte) (Attr, error) {
	var a Attr
	err := walk(b, func(num protowire.Number, typ protowire.Type, v field) error {
		var err error
		switch num {
		case attrName:
			a.Name = string(v.b)
		case attrType:
			a.Type = AttrType(v.u)
		case attrF:
			a.Float = math.Float32frombits(uint32(v.u))
		case attrI:
			a.Int = int64(v.u)
		case attrS:
			a.String = string(v.b)
		case attrT:
			var t Tensor
			t, err = decodeTensor(v.b)
			a.Tensor = &t
		case attrFloats:
			err = repeatedScalars(typ, v, protowire.Fixed32Type, func(u uint64) {
				a.Floats = append(a.Floats, math.Float32frombits(uint32(u)))
			})
		case attrInts:
			err = repeatedScalars(typ, v, protowire.VarintType, func(u uint64) {
				a.Ints = append(a.Ints, int64(u))
			})
		case attrStrings:
			a.Strings = append(a.Strings, string(v.b))
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

func decodeTensor(b []byte) (Tensor, error) {
	t := Tensor{Shape: []int64{}}
	var raw []byte
	hasRaw := false
	// Typed data fields, kept as decoded until the data type is known.
	var u64s []uint64
	typedField := protowire.Number(0)
	err := walk(b, func(num protowire.Number, typ protowire.Type, v field) error {
		switch num {
		case tensorDims:
			return repeatedScalars(typ, v, protowire.VarintType, func(u uint64) {
				t.Shape = append(t.Shape, int64(u))
			})
		case tensorDataType:
			t.DType = DType(v.u)
		case tensorName:
			t.Name = string(v.b)
		case tensorRawData:
			raw, hasRaw = v.b, true
		case tensorFloatData, tensorInt32Data, tensorInt64Data, tensorDoubleData, tensorUint64Data:
			if typedField != 0 && typedField != num {
				return fmt.Errorf("data in both fields %d and %d", typedField, num)
			}
			typedField = num
			want := protowire.VarintType
			switch num {
			case tensorFloatData:
				want = protowire.Fixed32Type
			case tensorDoubleData:
				want = protowire.Fixed64Type
			}
			return repeatedScalars(typ, v, want, func(u uint64) { u64s = append(u64s, u) })
		case 6: // repeated bytes string_data = 6
			return errors.New("string tensors are not supported")
		case tensorDataLocation:
			if v.u == 1 {
				return errors.New("external data is not supported")
			}
		case 3: // optional Segment segment = 3
			return errors.New("segmented tensors are not supported")
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	if !t.DType.Valid() {
		return t, fmt.Errorf("unsupported element type %s", t.DType)
	}
	if hasRaw {
		t.Raw = append([]byte{}, raw...)
	} else {
		t.Raw, err = typedToRaw(t.DType, typedField, u64s)
	}
	return t, err
}

// typedToRaw packs the typed-list data of a tensor as raw little-endian bytes, following
// onnx.proto's rules for which list holds which element type.
func typedToRaw(dt DType, num protowire.Number, vals []uint64) ([]byte, error) {
	size := dt.Size()
	raw := make([]byte, size*len(vals))
	if len(vals) == 0 {
		return raw, nil
	}
	wantField := map[DType]protowire.Number{
		Float32: tensorFloatData, Float64: tensorDoubleData,
		Int64: tensorInt64Data, Uint32: tensorUint64Data, Uint64: tensorUint64Data,
		// int32_data holds every type of 32 bits or fewer; float16/bfloat16 as their bits.
		Int32: tensorInt32Data, Int16: tensorInt32Data, Int8: tensorInt32Data,
		Uint16: tensorInt32Data, Uint8: tensorInt32Data, Bool: tensorInt32Data,
		Float16: tensorInt32Data, BFloat16: tensorInt32Data,
	}[dt]
	if num != wantField {
		return nil, fmt.Errorf("%s data in field %d, want field %d", dt, num, wantField)
	}
	for i, v := range vals {
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
	}
	return raw, nil
}

func decodeValueInfo(b []byte) (ValueInfo, error) {
	vi := ValueInfo{UnknownShape: true}
	var typeMsg []byte
	err := walk(b, func(num protowire.Number, _ protowire.Type, v field) error {
		switch num {
		case valueName:
			vi.Name = string(v.b)
		case valueType:
			typeMsg = v.b
		}
		return nil
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
				d := Dim{Value: -1} // neither dim_value nor dim_param: unknown
				err := walk(v.b, func(num protowire.Number, _ protowire.Type, f field) error {
					switch num {
					case dimValue:
						d = Dim{Value: int64(f.u)}
					case dimParam:
						d = Dim{Param: string(f.b)}
					}
					return nil
				})
				vi.Dims = append(vi.Dims, d)
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
