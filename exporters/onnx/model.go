package onnx

import (
	"fmt"
	"sort"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
)

// Defaults written when a Model leaves the field zero. ONNX opset 17 (LayerNormalization's
// first version) needs IR version 8; ONNX Runtime 1.30 reads both.
const (
	DefaultIRVersion = 8
	DefaultOpset     = 17
)

// OpsetID imports version Version of the operator set of Domain ("" is the default domain
// ai.onnx; "com.microsoft" holds ONNX Runtime's contrib operators).
type OpsetID struct {
	Domain  string
	Version int64
}

// Model is one ONNX file: a graph plus the header ONNX Runtime reads before it.
type Model struct {
	Graph *Graph
	// IRVersion is the ONNX IR version; 0 writes DefaultIRVersion.
	IRVersion int64
	// Opset is the version of the default (ai.onnx) operator set; 0 writes DefaultOpset.
	Opset int64
	// OtherOpsets imports further operator-set domains; the default domain is Opset's.
	OtherOpsets     []OpsetID
	ProducerName    string
	ProducerVersion string
	Domain          string
	ModelVersion    int64
	DocString       string
	// Metadata is written as metadata_props, sorted by key.
	Metadata map[string]string
}

func (m *Model) irVersion() int64 {
	if m.IRVersion == 0 {
		return DefaultIRVersion
	}
	return m.IRVersion
}

func (m *Model) opset() int64 {
	if m.Opset == 0 {
		return DefaultOpset
	}
	return m.Opset
}

// maxProtoSize is protobuf's 2 GiB message limit; larger models keep their weights in
// external data (ExternalWriter).
const maxProtoSize = 1<<31 - 1

// Marshal validates the model and encodes it as an ONNX ModelProto. The encoding is
// deterministic: the same model always gives the same bytes.
func (m *Model) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b := encodeModel(m)
	if len(b) > maxProtoSize {
		return nil, fmt.Errorf("marshal ONNX model %q: %d bytes exceed protobuf's 2 GiB limit (write its weights as external data)", m.Graph.Name, len(b))
	}
	return b, nil
}

// Validate checks what Marshal needs for a loadable file: the header, every tensor's size,
// unique names, nodes in topological order reading only defined values, and graph outputs
// that something produces. Operator semantics (attribute names, input counts, shapes) are
// left to ONNX Runtime.
func (m *Model) Validate() error {
	if m.Graph == nil {
		return fmt.Errorf("validate ONNX model: no graph")
	}
	if m.irVersion() < 3 {
		return fmt.Errorf("validate ONNX model %q: IR version %d, want >= 3", m.Graph.Name, m.irVersion())
	}
	if m.opset() < 1 {
		return fmt.Errorf("validate ONNX model %q: opset %d, want >= 1", m.Graph.Name, m.opset())
	}
	domains := map[string]bool{"": true}
	for _, o := range m.OtherOpsets {
		if domains[o.Domain] || o.Domain == "ai.onnx" {
			return fmt.Errorf("validate ONNX model %q: opset domain %q imported twice", m.Graph.Name, o.Domain)
		}
		domains[o.Domain] = true
		if o.Version < 1 {
			return fmt.Errorf("validate ONNX model %q: opset %q version %d, want >= 1", m.Graph.Name, o.Domain, o.Version)
		}
	}
	if err := m.Graph.validate(domains); err != nil {
		return fmt.Errorf("validate ONNX graph %q: %w", m.Graph.Name, err)
	}
	return nil
}

func (g *Graph) validate(domains map[string]bool) error {
	// defined maps every value name to what defines it, for error messages.
	defined := map[string]string{}
	inputs := map[string]bool{}
	for i, v := range g.Inputs {
		if err := v.validate(); err != nil {
			return fmt.Errorf("input %d: %w", i, err)
		}
		if what, ok := defined[v.Name]; ok {
			return fmt.Errorf("input %q is declared twice (already %s)", v.Name, what)
		}
		defined[v.Name] = "a graph input"
		inputs[v.Name] = true
	}
	for i := range g.Initializers {
		t := &g.Initializers[i]
		if err := t.validate(); err != nil {
			return fmt.Errorf("initializer %d: %w", i, err)
		}
		// An initializer may share its name with a graph input: it is then the input's
		// default value (IR version >= 4), a form older exporters write.
		if what, ok := defined[t.Name]; ok && !(inputs[t.Name] && what == "a graph input") {
			return fmt.Errorf("initializer %q is defined twice (already %s)", t.Name, what)
		}
		defined[t.Name] = "an initializer"
	}
	// Every producer of every node, to tell "defined later" (order) from "never defined".
	producer := map[string]int{}
	for i, n := range g.Nodes {
		for _, o := range n.Outputs {
			if _, ok := producer[o]; !ok && o != "" {
				producer[o] = i
			}
		}
	}
	nodeNames := map[string]int{}
	for i, n := range g.Nodes {
		where := fmt.Sprintf("node %d (%s %q)", i, n.Op, n.Name)
		if n.Op == "" {
			return fmt.Errorf("node %d (%q): empty op type", i, n.Name)
		}
		if !domains[n.Domain] {
			return fmt.Errorf("%s: domain %q is not imported (add it to Model.OtherOpsets)", where, n.Domain)
		}
		if n.Name != "" {
			if j, ok := nodeNames[n.Name]; ok {
				return fmt.Errorf("%s: node name already used by node %d", where, j)
			}
			nodeNames[n.Name] = i
		}
		for _, in := range n.Inputs {
			if in == "" {
				continue // a skipped optional input
			}
			if _, ok := defined[in]; ok {
				continue
			}
			if j, ok := producer[in]; ok {
				return fmt.Errorf("%s: input %q is produced by later node %d (%s %q); nodes must be in topological order",
					where, in, j, g.Nodes[j].Op, g.Nodes[j].Name)
			}
			return fmt.Errorf("%s: input %q is not defined (no graph input, initializer or node output has this name)", where, in)
		}
		if len(n.Outputs) == 0 {
			return fmt.Errorf("%s: no outputs", where)
		}
		for _, o := range n.Outputs {
			if o == "" {
				continue // a skipped optional output
			}
			if what, ok := defined[o]; ok {
				return fmt.Errorf("%s: output %q is already defined by %s", where, o, what)
			}
			defined[o] = fmt.Sprintf("node %d (%s %q)", i, n.Op, n.Name)
		}
		attrs := map[string]bool{}
		for _, a := range n.Attrs {
			if err := a.validate(); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			if attrs[a.Name] {
				return fmt.Errorf("%s: attribute %q given twice", where, a.Name)
			}
			attrs[a.Name] = true
		}
	}
	if len(g.Outputs) == 0 {
		return fmt.Errorf("no graph outputs")
	}
	outputs := map[string]bool{}
	for i, v := range g.Outputs {
		if err := v.validate(); err != nil {
			return fmt.Errorf("output %d: %w", i, err)
		}
		if outputs[v.Name] {
			return fmt.Errorf("output %q is declared twice", v.Name)
		}
		outputs[v.Name] = true
		if _, ok := defined[v.Name]; !ok {
			return fmt.Errorf("output %q is not produced by any node, input or initializer", v.Name)
		}
	}
	return nil
}

func (v *ValueInfo) validate() error {
	if v.Name == "" {
		return fmt.Errorf("empty name")
	}
	if !v.DType.Valid() {
		return fmt.Errorf("%q: unsupported element type %s", v.Name, v.DType)
	}
	if v.UnknownShape {
		return nil
	}
	for i, d := range v.Dims {
		if d.Param != "" && d.Value != 0 {
			return fmt.Errorf("%q: dim %d has both size %d and name %q", v.Name, i, d.Value, d.Param)
		}
		if d.Value < -1 || (d.Value == -1 && d.Param != "") {
			return fmt.Errorf("%q: dim %d is %d, want >= 0, a symbolic name or -1 (unknown)", v.Name, i, d.Value)
		}
	}
	return nil
}

func (t *Tensor) validate() error {
	if t.Name == "" {
		return fmt.Errorf("empty tensor name")
	}
	if !t.DType.Valid() {
		return fmt.Errorf("tensor %q: unsupported element type %s", t.Name, t.DType)
	}
	for i, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("tensor %q: dim %d is %d, want >= 0", t.Name, i, d)
		}
	}
	if t.External != nil {
		if t.External.Location == "" || len(t.Raw) != 0 || t.External.Offset < 0 || t.External.Length < 0 {
			return fmt.Errorf("tensor %q: external data at %q (offset %d, length %d) with %d raw bytes, want a location, a non-negative range and no raw bytes",
				t.Name, t.External.Location, t.External.Offset, t.External.Length, len(t.Raw))
		}
		return nil
	}
	if want := t.NumElements() * int64(t.DType.Size()); int64(len(t.Raw)) != want {
		return fmt.Errorf("tensor %q: %d bytes of data for %s %v, want %d", t.Name, len(t.Raw), t.DType, t.Shape, want)
	}
	return nil
}

func (a *Attr) validate() error {
	if a.Name == "" {
		return fmt.Errorf("attribute with empty name")
	}
	switch a.Type {
	case AttrTypeFloat, AttrTypeInt, AttrTypeString, AttrTypeFloats, AttrTypeInts, AttrTypeStrings:
	case AttrTypeTensor:
		if a.Tensor == nil {
			return fmt.Errorf("attribute %q: tensor attribute without a tensor", a.Name)
		}
		t := *a.Tensor
		if t.Name == "" {
			t.Name = a.Name // attribute tensors need no name of their own
		}
		if err := t.validate(); err != nil {
			return fmt.Errorf("attribute %q: %w", a.Name, err)
		}
	default:
		return fmt.Errorf("attribute %q: unsupported type %s", a.Name, a.Type)
	}
	return nil
}

// files writes model files; tests replace its CreateTemp to make the disk fail.
var files atomicfile.Writer

// WriteFile marshals the model and writes it to path atomically: a temporary file in the
// same directory is written, fsynced and renamed over path, and the directory is fsynced, so
// a crash leaves either the old file or the complete new one.
func (m *Model) WriteFile(path string) error {
	data, err := m.Marshal()
	if err != nil {
		return fmt.Errorf("write ONNX model %s: %w", path, err)
	}
	if err := files.WriteBytes(path, data); err != nil {
		return fmt.Errorf("write ONNX model %s: %w", path, err)
	}
	return nil
}

// sortedKeys returns the keys of m in increasing order, for deterministic encoding.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
