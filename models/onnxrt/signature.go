package onnxrt

import (
	"fmt"
	"io"

	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/encoding/protowire"
)

// The inputs and outputs a model declares are read from its file here, in Go, as ONNX Runtime
// lists them (graph inputs that are initializers left out), before ONNX Runtime reads the file:
// callers check them against what they need (Inspect, then Open), so a model that does not fit
// costs this scan, never a session.

// onnx.proto fields the signature scan reads.
const (
	modelGraph             = 7  // ModelProto.graph
	graphInitializer       = 5  // GraphProto.initializer
	graphSparseInitializer = 15 // GraphProto.sparse_initializer
	graphInput             = 11 // GraphProto.input
	graphOutput            = 12 // GraphProto.output
	sparseValues           = 1  // SparseTensorProto.values, whose name is the initializer's
	valueInfoName          = 1  // ValueInfoProto.name
	valueInfoType          = 2  // ValueInfoProto.type
	typeTensor             = 1  // TypeProto.tensor_type
	tensorTypeElem         = 1  // TypeProto.Tensor.elem_type
	tensorTypeShape        = 2  // TypeProto.Tensor.shape
	shapeDim               = 1  // TensorShapeProto.dim
	dimValue               = 1  // TensorShapeProto.Dimension.dim_value

	// maxValueInfoBytes bounds one declared input or output (a name, a type and a shape).
	maxValueInfoBytes = 64 << 10
	// maxGraphIO bounds the inputs plus outputs of a graph.
	maxGraphIO = 1 << 16
)

// nonTensorTypes names TypeProto's other value kinds by field number.
var nonTensorTypes = map[protowire.Number]string{4: "sequence", 5: "map", 8: "sparse_tensor", 9: "optional"}

// scanSignature reads the inputs and outputs the main graph of the ModelProto in r (size bytes)
// declares. It reads tags, the declarations and the initializers' names; tensor bytes are
// skipped.
func scanSignature(r io.ReaderAt, size int64) (inputs, outputs []TensorInfo, err error) {
	s := &scanner{r: r, size: size}
	var graph *field
	err = s.fields(0, size, func(f field) error {
		if f.num != modelGraph || f.typ != protowire.BytesType {
			return nil
		}
		if graph != nil {
			return fmt.Errorf("the model has more than one graph")
		}
		graph = &f
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("not a valid ONNX protobuf: %w", err)
	}
	if graph == nil {
		return nil, nil, fmt.Errorf("not a valid ONNX protobuf: the model has no graph")
	}
	err = s.fields(graph.start, graph.end, func(f field) error {
		if f.typ != protowire.BytesType || (f.num != graphInput && f.num != graphOutput) {
			return nil
		}
		role, list := "input", &inputs
		if f.num == graphOutput {
			role, list = "output", &outputs
		}
		if len(inputs)+len(outputs) >= maxGraphIO {
			return fmt.Errorf("more than %d graph inputs and outputs", maxGraphIO)
		}
		if f.end-f.start > maxValueInfoBytes {
			return fmt.Errorf("graph %s %d: %d bytes, want at most %d", role, len(*list), f.end-f.start, maxValueInfoBytes)
		}
		b, err := s.bytesAt(f.start, int(f.end-f.start))
		if err != nil {
			return err
		}
		info, err := parseValueInfo(b)
		if err != nil {
			return fmt.Errorf("graph %s %d: %w", role, len(*list), err)
		}
		*list = append(*list, info)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("not a valid ONNX protobuf: %w", err)
	}
	if inputs, err = s.dropInitializers(*graph, inputs); err != nil {
		return nil, nil, fmt.Errorf("not a valid ONNX protobuf: %w", err)
	}
	return inputs, outputs, nil
}

// dropInitializers leaves out the inputs that the graph also holds as initializers (ONNX IR < 4
// lists every initializer as an input too): ONNX Runtime does not count them as inputs.
func (s *scanner) dropInitializers(graph field, inputs []TensorInfo) ([]TensorInfo, error) {
	if len(inputs) == 0 {
		return inputs, nil
	}
	isInput := map[string]bool{}
	for _, in := range inputs {
		isInput[in.Name] = true
	}
	initialized := map[string]bool{}
	err := s.fields(graph.start, graph.end, func(f field) error {
		if f.typ != protowire.BytesType || (f.num != graphInitializer && f.num != graphSparseInitializer) {
			return nil
		}
		tensor := f
		if f.num == graphSparseInitializer {
			found := false
			if err := s.fields(f.start, f.end, func(g field) error {
				if g.num == sparseValues && g.typ == protowire.BytesType {
					tensor, found = g, true
				}
				return nil
			}); err != nil || !found {
				return err
			}
		}
		return s.fields(tensor.start, tensor.end, func(g field) error {
			if g.num != tensorName || g.typ != protowire.BytesType || g.end-g.start > maxEntryBytes {
				return nil
			}
			b, err := s.bytesAt(g.start, int(g.end-g.start))
			if err != nil {
				return err
			}
			if isInput[string(b)] {
				initialized[string(b)] = true
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := inputs[:0]
	for _, in := range inputs {
		if !initialized[in.Name] {
			out = append(out, in)
		}
	}
	return out, nil
}

// parseValueInfo decodes a ValueInfoProto: name, element type (ONNX Runtime's names) and
// dimensions (-1 where symbolic or unknown; none when the shape is not declared, as for a
// scalar).
func parseValueInfo(b []byte) (TensorInfo, error) {
	info := TensorInfo{Dims: []int64{}}
	var typ []byte
	err := eachField(b, func(num protowire.Number, wt protowire.Type, v []byte, _ uint64) error {
		switch {
		case num == valueInfoName && wt == protowire.BytesType:
			info.Name = string(v)
		case num == valueInfoType && wt == protowire.BytesType:
			typ = v
		}
		return nil
	})
	if err != nil {
		return info, err
	}
	if typ == nil {
		return info, fmt.Errorf("%q declares no type", info.Name)
	}
	err = eachField(typ, func(num protowire.Number, wt protowire.Type, v []byte, _ uint64) error {
		if wt != protowire.BytesType {
			return nil
		}
		if name, ok := nonTensorTypes[num]; ok {
			info.Type = name
		}
		if num != typeTensor {
			return nil
		}
		return eachField(v, func(num protowire.Number, wt protowire.Type, v []byte, x uint64) error {
			switch {
			case num == tensorTypeElem && wt == protowire.VarintType:
				info.Type = elementTypeName(ort.TensorElementDataType(x))
			case num == tensorTypeShape && wt == protowire.BytesType:
				return eachField(v, func(num protowire.Number, wt protowire.Type, v []byte, _ uint64) error {
					if num != shapeDim || wt != protowire.BytesType {
						return nil
					}
					d := int64(-1)
					err := eachField(v, func(num protowire.Number, wt protowire.Type, _ []byte, x uint64) error {
						if num == dimValue && wt == protowire.VarintType && int64(x) >= 0 {
							d = int64(x)
						}
						return nil
					})
					info.Dims = append(info.Dims, d)
					return err
				})
			}
			return nil
		})
	})
	if err != nil {
		return info, fmt.Errorf("%q: %w", info.Name, err)
	}
	if info.Type == "" {
		return info, fmt.Errorf("%q declares no type", info.Name)
	}
	return info, nil
}

// eachField calls fn for each field of the message b (held in memory): the bytes of a
// length-delimited field, the value of a varint.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}
