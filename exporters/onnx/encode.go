package onnx

import (
	"math"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of the ONNX messages written here, from onnx.proto (ONNX 1.12, as shipped by
// Debian's libonnx-dev in /usr/include/onnx/onnx.proto). Only the fields this package reads
// or writes are listed.
const (
	// ModelProto
	modelIRVersion       = 1  // optional int64 ir_version = 1
	modelProducerName    = 2  // optional string producer_name = 2
	modelProducerVersion = 3  // optional string producer_version = 3
	modelDomain          = 4  // optional string domain = 4
	modelModelVersion    = 5  // optional int64 model_version = 5
	modelDocString       = 6  // optional string doc_string = 6
	modelGraph           = 7  // optional GraphProto graph = 7
	modelOpsetImport     = 8  // repeated OperatorSetIdProto opset_import = 8
	modelMetadataProps   = 14 // repeated StringStringEntryProto metadata_props = 14

	// OperatorSetIdProto
	opsetDomain  = 1 // optional string domain = 1
	opsetVersion = 2 // optional int64 version = 2

	// StringStringEntryProto
	entryKey   = 1 // optional string key = 1
	entryValue = 2 // optional string value = 2

	// GraphProto
	graphNode        = 1  // repeated NodeProto node = 1
	graphName        = 2  // optional string name = 2
	graphInitializer = 5  // repeated TensorProto initializer = 5
	graphInput       = 11 // repeated ValueInfoProto input = 11
	graphOutput      = 12 // repeated ValueInfoProto output = 12

	// NodeProto
	nodeInput     = 1 // repeated string input = 1
	nodeOutput    = 2 // repeated string output = 2
	nodeName      = 3 // optional string name = 3
	nodeOpType    = 4 // optional string op_type = 4
	nodeAttribute = 5 // repeated AttributeProto attribute = 5
	nodeDomain    = 7 // optional string domain = 7

	// AttributeProto
	attrName    = 1  // optional string name = 1
	attrF       = 2  // optional float f = 2
	attrI       = 3  // optional int64 i = 3
	attrS       = 4  // optional bytes s = 4
	attrT       = 5  // optional TensorProto t = 5
	attrFloats  = 7  // repeated float floats = 7
	attrInts    = 8  // repeated int64 ints = 8
	attrStrings = 9  // repeated bytes strings = 9
	attrType    = 20 // optional AttributeType type = 20

	// TensorProto
	tensorDims         = 1  // repeated int64 dims = 1
	tensorDataType     = 2  // optional int32 data_type = 2
	tensorFloatData    = 4  // repeated float float_data = 4 [packed = true]
	tensorInt32Data    = 5  // repeated int32 int32_data = 5 [packed = true]
	tensorInt64Data    = 7  // repeated int64 int64_data = 7 [packed = true]
	tensorName         = 8  // optional string name = 8
	tensorRawData      = 9  // optional bytes raw_data = 9
	tensorDoubleData   = 10 // repeated double double_data = 10 [packed = true]
	tensorUint64Data   = 11 // repeated uint64 uint64_data = 11 [packed = true]
	tensorExternalData = 13 // repeated StringStringEntryProto external_data = 13
	tensorDataLocation = 14 // optional DataLocation data_location = 14 (1 = EXTERNAL)

	// ValueInfoProto
	valueName = 1 // optional string name = 1
	valueType = 2 // optional TypeProto type = 2

	// TypeProto
	typeTensorType = 1 // oneof value { Tensor tensor_type = 1; ... }
	// TypeProto.Tensor
	tensorTypeElemType = 1 // optional int32 elem_type = 1
	tensorTypeShape    = 2 // optional TensorShapeProto shape = 2
	// TensorShapeProto
	shapeDim = 1 // repeated Dimension dim = 1
	// TensorShapeProto.Dimension
	dimValue = 1 // oneof value { int64 dim_value = 1; string dim_param = 2; }
	dimParam = 2
)

// Small writers over protowire. Scalars equal to their default are still written where
// ONNX readers rely on presence (dims, data_type, elem_type); strings are skipped when empty.

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendMessage writes an embedded message (length-delimited), even when it is empty: an
// empty TensorShapeProto declares a scalar.
func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func encodeModel(m *Model) []byte {
	var b []byte
	b = appendVarint(b, modelIRVersion, uint64(m.irVersion()))
	b = appendString(b, modelProducerName, m.ProducerName)
	b = appendString(b, modelProducerVersion, m.ProducerVersion)
	b = appendString(b, modelDomain, m.Domain)
	if m.ModelVersion != 0 {
		b = appendVarint(b, modelModelVersion, uint64(m.ModelVersion))
	}
	b = appendString(b, modelDocString, m.DocString)
	b = appendMessage(b, modelGraph, encodeGraph(m.Graph))
	b = appendMessage(b, modelOpsetImport, encodeOpset(OpsetID{Version: m.opset()}))
	for _, o := range m.OtherOpsets {
		b = appendMessage(b, modelOpsetImport, encodeOpset(o))
	}
	for _, k := range sortedKeys(m.Metadata) {
		var e []byte
		e = appendString(e, entryKey, k)
		e = appendString(e, entryValue, m.Metadata[k])
		b = appendMessage(b, modelMetadataProps, e)
	}
	return b
}

func encodeOpset(o OpsetID) []byte {
	var b []byte
	b = appendString(b, opsetDomain, o.Domain)
	return appendVarint(b, opsetVersion, uint64(o.Version))
}

func encodeGraph(g *Graph) []byte {
	var b []byte
	for i := range g.Nodes {
		b = appendMessage(b, graphNode, encodeNode(&g.Nodes[i]))
	}
	b = appendString(b, graphName, g.Name)
	for i := range g.Initializers {
		b = appendMessage(b, graphInitializer, encodeTensor(&g.Initializers[i]))
	}
	for i := range g.Inputs {
		b = appendMessage(b, graphInput, encodeValueInfo(&g.Inputs[i]))
	}
	for i := range g.Outputs {
		b = appendMessage(b, graphOutput, encodeValueInfo(&g.Outputs[i]))
	}
	return b
}

func encodeNode(n *Node) []byte {
	var b []byte
	// Repeated strings are written even when empty: "" marks a skipped optional input.
	for _, in := range n.Inputs {
		b = protowire.AppendTag(b, nodeInput, protowire.BytesType)
		b = protowire.AppendString(b, in)
	}
	for _, out := range n.Outputs {
		b = protowire.AppendTag(b, nodeOutput, protowire.BytesType)
		b = protowire.AppendString(b, out)
	}
	b = appendString(b, nodeName, n.Name)
	b = appendString(b, nodeOpType, n.Op)
	for i := range n.Attrs {
		b = appendMessage(b, nodeAttribute, encodeAttr(&n.Attrs[i]))
	}
	b = appendString(b, nodeDomain, n.Domain)
	return b
}

func encodeAttr(a *Attr) []byte {
	var b []byte
	b = appendString(b, attrName, a.Name)
	switch a.Type {
	case AttrTypeFloat:
		b = protowire.AppendTag(b, attrF, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(a.Float))
	case AttrTypeInt:
		b = appendVarint(b, attrI, uint64(a.Int))
	case AttrTypeString:
		b = protowire.AppendTag(b, attrS, protowire.BytesType)
		b = protowire.AppendString(b, a.String)
	case AttrTypeTensor:
		b = appendMessage(b, attrT, encodeTensor(a.Tensor))
	case AttrTypeFloats:
		// Packed encoding: proto2 parsers accept packed and unpacked repeated scalars alike.
		var p []byte
		for _, f := range a.Floats {
			p = protowire.AppendFixed32(p, math.Float32bits(f))
		}
		b = appendMessage(b, attrFloats, p)
	case AttrTypeInts:
		var p []byte
		for _, v := range a.Ints {
			p = protowire.AppendVarint(p, uint64(v))
		}
		b = appendMessage(b, attrInts, p)
	case AttrTypeStrings:
		for _, s := range a.Strings {
			b = protowire.AppendTag(b, attrStrings, protowire.BytesType)
			b = protowire.AppendString(b, s)
		}
	}
	return appendVarint(b, attrType, uint64(a.Type))
}

func encodeTensor(t *Tensor) []byte {
	var b []byte
	for _, d := range t.Shape {
		b = appendVarint(b, tensorDims, uint64(d))
	}
	b = appendVarint(b, tensorDataType, uint64(t.DType))
	b = appendString(b, tensorName, t.Name)
	if e := t.External; e != nil {
		entry := func(k, v string) []byte { return appendString(appendString(nil, entryKey, k), entryValue, v) }
		b = appendMessage(b, tensorExternalData, entry("location", e.Location))
		if e.Offset > 0 {
			b = appendMessage(b, tensorExternalData, entry("offset", strconv.FormatInt(e.Offset, 10)))
		}
		if e.Length > 0 {
			b = appendMessage(b, tensorExternalData, entry("length", strconv.FormatInt(e.Length, 10)))
		}
		return appendVarint(b, tensorDataLocation, 1)
	}
	b = protowire.AppendTag(b, tensorRawData, protowire.BytesType)
	return protowire.AppendBytes(b, t.Raw)
}

func encodeValueInfo(v *ValueInfo) []byte {
	var tt []byte
	tt = appendVarint(tt, tensorTypeElemType, uint64(v.DType))
	if !v.UnknownShape {
		var shape []byte
		for _, d := range v.Dims {
			var dim []byte
			if d.Param != "" {
				dim = appendString(dim, dimParam, d.Param)
			} else if d.Value >= 0 { // -1 is written as an empty Dimension: unknown size
				dim = appendVarint(dim, dimValue, uint64(d.Value))
			}
			shape = appendMessage(shape, shapeDim, dim)
		}
		tt = appendMessage(tt, tensorTypeShape, shape)
	}
	var b []byte
	b = appendString(b, valueName, v.Name)
	return appendMessage(b, valueType, appendMessage(nil, typeTensorType, tt))
}
