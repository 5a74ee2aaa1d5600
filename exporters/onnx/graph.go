// Package onnx owns the project's ONNX file format support in pure Go: a typed graph builder,
// a validating writer (ModelProto encoded with protowire, written atomically) and a decoder of
// the same subset, used to export the embedded tiny models (text encoder, VAE decoder) and to
// look inside ONNX files.
//
// The subset covers what inference graphs need: tensors of numeric element types stored as
// raw little-endian data, in the model or in an external-data file beside it (ExternalWriter,
// for models past protobuf's 2 GiB), graph inputs and outputs with fixed or symbolic dims, and
// nodes with int, float, string, tensor and list attributes. Sub-graphs (If, Loop, Scan),
// sparse tensors and training information are outside it.
//
// Building is cheap and never fails on its own; every consistency check (names defined before
// use, unique definitions, outputs produced, data sizes) happens once in Model.Marshal, which
// reports the first problem naming the node or tensor involved.
package onnx

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
)

// DType is a tensor element type. Its values are those of onnx.proto's TensorProto.DataType
// enum, so they are written as they are.
type DType int32

// Element types (onnx.proto TensorProto.DataType).
const (
	Float32  DType = 1
	Uint8    DType = 2
	Int8     DType = 3
	Uint16   DType = 4
	Int16    DType = 5
	Int32    DType = 6
	Int64    DType = 7
	Bool     DType = 9
	Float16  DType = 10
	Float64  DType = 11
	Uint32   DType = 12
	Uint64   DType = 13
	BFloat16 DType = 16
)

var dtypeInfo = map[DType]struct {
	name string
	size int
}{
	Float32: {"float32", 4}, Uint8: {"uint8", 1}, Int8: {"int8", 1}, Uint16: {"uint16", 2},
	Int16: {"int16", 2}, Int32: {"int32", 4}, Int64: {"int64", 8}, Bool: {"bool", 1},
	Float16: {"float16", 2}, Float64: {"float64", 8}, Uint32: {"uint32", 4},
	Uint64: {"uint64", 8}, BFloat16: {"bfloat16", 2},
}

// String is the Go-style name of the type ("float32", "int64", ...).
func (d DType) String() string {
	if info, ok := dtypeInfo[d]; ok {
		return info.name
	}
	return "dtype(" + strconv.Itoa(int(d)) + ")"
}

// Size is the number of bytes of one element, 0 for types outside the supported subset.
func (d DType) Size() int { return dtypeInfo[d].size }

// Valid reports whether d is one of the supported element types.
func (d DType) Valid() bool { _, ok := dtypeInfo[d]; return ok }

// Dim is one dimension of a declared input or output: a fixed size (Value) or, when Param is
// set, a symbolic one such as "batch" that ONNX Runtime binds at run time. Value -1 with no
// Param is an unknown, unnamed dimension (decoded files have them; prefer a named one).
type Dim struct {
	Value int64
	Param string
}

// Fixed returns fixed dimensions of the given sizes.
func Fixed(sizes ...int64) []Dim {
	out := make([]Dim, len(sizes))
	for i, s := range sizes {
		out[i] = Dim{Value: s}
	}
	return out
}

// Sym returns the symbolic dimension named name.
func Sym(name string) Dim { return Dim{Param: name} }

func (d Dim) String() string {
	if d.Param != "" {
		return d.Param
	}
	if d.Value < 0 {
		return "?"
	}
	return strconv.FormatInt(d.Value, 10)
}

// ValueInfo declares a graph input or output: its name, element type and shape.
type ValueInfo struct {
	Name  string
	DType DType
	Dims  []Dim
	// UnknownShape leaves the shape (and so the rank) undeclared; Dims is then ignored.
	// Without it, an empty Dims declares a scalar.
	UnknownShape bool
}

// Tensor is a dense constant (an initializer or a tensor attribute): row-major data stored as
// raw little-endian bytes, as onnx.proto's TensorProto.raw_data.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Raw   []byte
	// External, if set, places the data in another file instead of Raw (which must then be
	// empty), as onnx's external_data_helper writes it: the file is not written here.
	External *ExternalData
}

// ExternalData locates a tensor's raw bytes in a file beside the model (onnx.proto's
// external_data entries "location", "offset", "length").
type ExternalData struct {
	// Location is the file's path relative to the model's folder.
	Location string
	// Offset and Length are the byte range in the file; Length 0 means to its end.
	Offset, Length int64
}

// NumElements is the product of Shape (1 for a scalar).
func (t *Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// TensorF32 makes a float32 tensor; data is copied.
func TensorF32(name string, shape []int64, data []float32) Tensor {
	raw := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return Tensor{Name: name, DType: Float32, Shape: append([]int64{}, shape...), Raw: raw}
}

// TensorI64 makes an int64 tensor; data is copied.
func TensorI64(name string, shape []int64, data []int64) Tensor {
	raw := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	return Tensor{Name: name, DType: Int64, Shape: append([]int64{}, shape...), Raw: raw}
}

// Float32s decodes the data of a float32 tensor.
func (t *Tensor) Float32s() ([]float32, error) {
	if t.DType != Float32 || len(t.Raw)%4 != 0 {
		return nil, fmt.Errorf("read tensor %q as float32: it is %s with %d bytes", t.Name, t.DType, len(t.Raw))
	}
	out := make([]float32, len(t.Raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Raw[4*i:]))
	}
	return out, nil
}

// Int64s decodes the data of an int64 tensor.
func (t *Tensor) Int64s() ([]int64, error) {
	if t.DType != Int64 || len(t.Raw)%8 != 0 {
		return nil, fmt.Errorf("read tensor %q as int64: it is %s with %d bytes", t.Name, t.DType, len(t.Raw))
	}
	out := make([]int64, len(t.Raw)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(t.Raw[8*i:]))
	}
	return out, nil
}

// AttrType is the kind of value an attribute holds (onnx.proto AttributeProto.AttributeType).
type AttrType int32

// Attribute kinds in the supported subset.
const (
	AttrTypeFloat   AttrType = 1
	AttrTypeInt     AttrType = 2
	AttrTypeString  AttrType = 3
	AttrTypeTensor  AttrType = 4
	AttrTypeFloats  AttrType = 6
	AttrTypeInts    AttrType = 7
	AttrTypeStrings AttrType = 8
)

func (a AttrType) String() string {
	switch a {
	case AttrTypeFloat:
		return "float"
	case AttrTypeInt:
		return "int"
	case AttrTypeString:
		return "string"
	case AttrTypeTensor:
		return "tensor"
	case AttrTypeFloats:
		return "floats"
	case AttrTypeInts:
		return "ints"
	case AttrTypeStrings:
		return "strings"
	}
	return "attrtype(" + strconv.Itoa(int(a)) + ")"
}

// Attr is one node attribute; Type says which value field is in use. Build them with
// AttrInt, AttrFloat, AttrString, AttrTensor, AttrInts, AttrFloats and AttrStrings.
type Attr struct {
	Name    string
	Type    AttrType
	Int     int64
	Float   float32
	String  string
	Tensor  *Tensor
	Ints    []int64
	Floats  []float32
	Strings []string
}

// AttrInt is an int attribute (e.g. Softmax axis).
func AttrInt(name string, v int64) Attr { return Attr{Name: name, Type: AttrTypeInt, Int: v} }

// AttrFloat is a float attribute (e.g. LayerNormalization epsilon).
func AttrFloat(name string, v float32) Attr {
	return Attr{Name: name, Type: AttrTypeFloat, Float: v}
}

// AttrString is a string attribute (e.g. Resize mode).
func AttrString(name, v string) Attr { return Attr{Name: name, Type: AttrTypeString, String: v} }

// AttrTensor is a tensor attribute (e.g. Constant value); the tensor is copied.
func AttrTensor(name string, t Tensor) Attr {
	t.Shape = append([]int64{}, t.Shape...)
	t.Raw = append([]byte{}, t.Raw...)
	return Attr{Name: name, Type: AttrTypeTensor, Tensor: &t}
}

// AttrInts is an ints attribute (e.g. Conv pads, Transpose perm).
func AttrInts(name string, v ...int64) Attr {
	return Attr{Name: name, Type: AttrTypeInts, Ints: append([]int64{}, v...)}
}

// AttrFloats is a floats attribute.
func AttrFloats(name string, v ...float32) Attr {
	return Attr{Name: name, Type: AttrTypeFloats, Floats: append([]float32{}, v...)}
}

// AttrStrings is a strings attribute.
func AttrStrings(name string, v ...string) Attr {
	return Attr{Name: name, Type: AttrTypeStrings, Strings: append([]string{}, v...)}
}

// Node is one operator application. An empty input name skips an optional input, as ONNX
// specifies (e.g. Resize's roi).
type Node struct {
	Op      string
	Name    string
	Domain  string
	Inputs  []string
	Outputs []string
	Attrs   []Attr
}

// Graph is an ONNX graph under construction (or as decoded). Nodes must be added in
// topological order: every input defined before the node that reads it.
type Graph struct {
	Name         string
	Inputs       []ValueInfo
	Outputs      []ValueInfo
	Initializers []Tensor
	Nodes        []Node

	// fresh counts the names handed out by Unique per prefix; taken indexes the names in use,
	// covering the first seen[i] entries of Inputs, Outputs, Initializers and Nodes.
	fresh map[string]int
	taken map[string]bool
	seen  [4]int
}

// NewGraph returns an empty graph called name.
func NewGraph(name string) *Graph { return &Graph{Name: name} }

// Input declares a graph input and returns its name.
func (g *Graph) Input(name string, dt DType, dims ...Dim) string {
	g.Inputs = append(g.Inputs, ValueInfo{Name: name, DType: dt, Dims: append([]Dim(nil), dims...)})
	return name
}

// Output declares a graph output; a node (or an input or initializer) must produce name.
func (g *Graph) Output(name string, dt DType, dims ...Dim) {
	g.Outputs = append(g.Outputs, ValueInfo{Name: name, DType: dt, Dims: append([]Dim(nil), dims...)})
}

// Initializer adds a constant tensor (a weight) and returns its name.
func (g *Graph) Initializer(t Tensor) string {
	g.Initializers = append(g.Initializers, t)
	return t.Name
}

// InitializerF32 adds a float32 weight of the given shape and returns its name.
func (g *Graph) InitializerF32(name string, shape []int64, data []float32) string {
	return g.Initializer(TensorF32(name, shape, data))
}

// InitializerI64 adds an int64 constant of the given shape and returns its name.
func (g *Graph) InitializerI64(name string, shape []int64, data []int64) string {
	return g.Initializer(TensorI64(name, shape, data))
}

// ConstF32 adds a float32 constant under a fresh name derived from prefix.
func (g *Graph) ConstF32(prefix string, shape []int64, data []float32) string {
	return g.InitializerF32(g.Unique(prefix), shape, data)
}

// ConstI64 adds an int64 constant under a fresh name derived from prefix (e.g. the target
// shape of a Reshape, the axes of a ReduceMean).
func (g *Graph) ConstI64(prefix string, shape []int64, data []int64) string {
	return g.InitializerI64(g.Unique(prefix), shape, data)
}

// Node appends an operator of the default domain with explicit output names.
func (g *Graph) Node(op string, inputs, outputs []string, attrs ...Attr) {
	g.Nodes = append(g.Nodes, Node{
		Op:      op,
		Name:    g.Unique(op),
		Inputs:  append([]string{}, inputs...),
		Outputs: append([]string{}, outputs...),
		Attrs:   append([]Attr{}, attrs...),
	})
}

// Op appends a single-output operator and returns the fresh name of its output.
func (g *Graph) Op(op string, inputs []string, attrs ...Attr) string {
	out := g.Unique(op + "_out")
	g.Node(op, inputs, []string{out}, attrs...)
	return out
}

// Ops appends an operator with n outputs (e.g. Split) and returns their fresh names.
func (g *Graph) Ops(op string, inputs []string, n int, attrs ...Attr) []string {
	outs := make([]string, n)
	for i := range outs {
		outs[i] = g.Unique(op + "_out")
	}
	g.Node(op, inputs, outs, attrs...)
	return outs
}

// Unique returns a name starting with prefix that no input, output, initializer, node or value
// of the graph uses yet: prefix itself when free, else prefix_1, prefix_2, ...
func (g *Graph) Unique(prefix string) string {
	g.index()
	for {
		n := g.fresh[prefix]
		g.fresh[prefix] = n + 1
		name := prefix
		if n > 0 {
			name = prefix + "_" + strconv.Itoa(n)
		}
		if !g.taken[name] {
			g.taken[name] = true
			return name
		}
	}
}

// index adds the names of entries appended since the last call to g.taken. The builder only
// appends, so indexing the new tail keeps Unique linear in the size of the graph.
func (g *Graph) index() {
	if g.taken == nil || g.seen[0] > len(g.Inputs) || g.seen[1] > len(g.Outputs) ||
		g.seen[2] > len(g.Initializers) || g.seen[3] > len(g.Nodes) {
		g.taken, g.seen = map[string]bool{}, [4]int{}
	}
	if g.fresh == nil {
		g.fresh = map[string]int{}
	}
	for _, v := range g.Inputs[g.seen[0]:] {
		g.taken[v.Name] = true
	}
	for _, v := range g.Outputs[g.seen[1]:] {
		g.taken[v.Name] = true
	}
	for _, t := range g.Initializers[g.seen[2]:] {
		g.taken[t.Name] = true
	}
	for _, n := range g.Nodes[g.seen[3]:] {
		g.taken[n.Name] = true
		for _, o := range n.Outputs {
			g.taken[o] = true
		}
	}
	g.seen = [4]int{len(g.Inputs), len(g.Outputs), len(g.Initializers), len(g.Nodes)}
}

// Transpose2D returns the transpose [cols, rows] of a row-major [rows, cols] matrix: a torch
// linear weight [out, in] becomes the right operand of MatMul(x, Wᵀ).
func Transpose2D(data []float32, rows, cols int) []float32 {
	out := make([]float32, len(data))
	for r := range rows {
		for c := range cols {
			out[c*rows+r] = data[r*cols+c]
		}
	}
	return out
}
