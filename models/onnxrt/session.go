package onnxrt

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
)

// TensorInfo is what a graph declares about one input or output.
type TensorInfo struct {
	Name string `json:"name"`
	// Type is the element type: "float32", "int64", "float16", "int32", "uint8", "bool", ...
	Type string `json:"type"`
	// Dims are the declared dimensions, -1 where dynamic (symbolic or unknown).
	Dims []int64 `json:"shape"`
}

func (t TensorInfo) String() string {
	return fmt.Sprintf("%s %s %s", t.Name, t.Type, FormatDims(t.Dims))
}

// FormatDims prints dims as [-1,3,48,-1].
func FormatDims(dims []int64) string {
	parts := make([]string, len(dims))
	for i, d := range dims {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// Tensor is a dense row-major batch. Exactly one of Float32 and Int64 holds the data.
type Tensor struct {
	Shape   []int64
	Float32 []float32
	Int64   []int64
}

// NumElements is the product of Shape.
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= int(d)
	}
	return n
}

// Session is one opened ONNX model. Run is safe to call from several goroutines.
type Session struct {
	path    string
	inputs  []TensorInfo
	outputs []TensorInfo
	s       *ort.DynamicAdvancedSession
}

// Inspect reads the inputs and outputs the model at path declares from its file, after the
// checks Open makes (size, external data); ONNX Runtime does not read it. Callers check what
// they need against them before Open, so that a model that does not fit costs no session.
func Inspect(path string, cfg Config) (inputs, outputs []TensorInfo, err error) {
	return scanModelFile(path, cfg)
}

// elementTypeName names an ONNX element type (TensorProto.DataType, whose numbers ONNX
// Runtime's enum shares) as TensorInfo.Type does.
func elementTypeName(t ort.TensorElementDataType) string {
	switch t {
	case ort.TensorElementDataTypeFloat:
		return "float32"
	case ort.TensorElementDataTypeDouble:
		return "float64"
	case ort.TensorElementDataTypeFloat16:
		return "float16"
	case ort.TensorElementDataTypeBFloat16:
		return "bfloat16"
	case ort.TensorElementDataTypeInt64:
		return "int64"
	case ort.TensorElementDataTypeInt32:
		return "int32"
	case ort.TensorElementDataTypeInt16:
		return "int16"
	case ort.TensorElementDataTypeInt8:
		return "int8"
	case ort.TensorElementDataTypeUint8:
		return "uint8"
	case ort.TensorElementDataTypeBool:
		return "bool"
	case ort.TensorElementDataTypeString:
		return "string"
	default:
		return strings.ToLower(strings.TrimPrefix(t.String(), "ONNX_TENSOR_ELEMENT_DATA_TYPE_"))
	}
}

// ortStatus is the prefix ONNX Runtime puts before a status message: the source location
// and function, then "[ONNXRuntimeError] : CODE : NAME : ".
var ortStatus = regexp.MustCompile(`^.*\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : `)

// ortMessage is err's message on one line without ONNX Runtime's status prefix.
func ortMessage(err error) string { return ortStatus.ReplaceAllString(oneLine(err).Error(), "") }

// ORT's messages span lines; the project's errors are one line each.
func oneLine(err error) error {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	return errors.New(msg)
}

// Open loads the model at path for execution with cfg's provider and threads.
func Open(path string, cfg Config) (*Session, error) {
	inputs, outputs, err := scanModelFile(path, cfg)
	if err != nil {
		return nil, err
	}
	return open(path, cfg, inputs, outputs, func(in, out []string, opts *ort.SessionOptions) (*ort.DynamicAdvancedSession, error) {
		return ort.NewDynamicAdvancedSession(path, in, out, opts)
	})
}

// OpenBytes loads a model held in memory (e.g. one the program has just built); name stands
// for its path in errors.
func OpenBytes(name string, data []byte, cfg Config) (*Session, error) {
	inputs, outputs, err := scanModelBytes(name, data, cfg)
	if err != nil {
		return nil, err
	}
	return open(name, cfg, inputs, outputs, func(in, out []string, opts *ort.SessionOptions) (*ort.DynamicAdvancedSession, error) {
		return ort.NewDynamicAdvancedSessionWithONNXData(data, in, out, opts)
	})
}

// open creates the session of the model called name, which declares inputs and outputs (as the
// scan of its file read them), with create. ONNX Runtime reads the model once, here.
func open(name string, cfg Config, inputs, outputs []TensorInfo,
	create func(in, out []string, opts *ort.SessionOptions) (*ort.DynamicAdvancedSession, error)) (*Session, error) {
	if err := Init(cfg); err != nil {
		return nil, fmt.Errorf("open ONNX model %s: %w", name, err)
	}
	opts, err := sessionOptions(cfg)
	if err != nil {
		return nil, fmt.Errorf("open ONNX model %s: %w", name, err)
	}
	defer opts.Destroy()
	s, err := create(names(inputs), names(outputs), opts)
	if err != nil {
		return nil, fmt.Errorf("open ONNX model %s: %w", name, oneLine(err))
	}
	return &Session{path: name, inputs: inputs, outputs: outputs, s: s}, nil
}

func sessionOptions(cfg Config) (*ort.SessionOptions, error) {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("create session options: %w", err)
	}
	fail := func(err error) (*ort.SessionOptions, error) {
		opts.Destroy()
		return nil, err
	}
	if cfg.IntraOpThreads > 0 {
		if err := opts.SetIntraOpNumThreads(cfg.IntraOpThreads); err != nil {
			return fail(fmt.Errorf("set intra-op threads %d: %w", cfg.IntraOpThreads, err))
		}
	}
	if cfg.InterOpThreads > 0 {
		if err := opts.SetInterOpNumThreads(cfg.InterOpThreads); err != nil {
			return fail(fmt.Errorf("set inter-op threads %d: %w", cfg.InterOpThreads, err))
		}
	}
	if cfg.provider() == "cuda" {
		unavailable := func(err error) (*ort.SessionOptions, error) {
			return fail(fmt.Errorf("provider cuda (device_id %d) requested but unavailable in %s: %s", cfg.DeviceID, LoadedLibrary(), ortMessage(err)))
		}
		cuda, err := ort.NewCUDAProviderOptions()
		if err != nil {
			return unavailable(err)
		}
		defer cuda.Destroy()
		settings := map[string]string{"device_id": fmt.Sprint(cfg.DeviceID)}
		if cfg.GPUMemLimitMB > 0 {
			settings["gpu_mem_limit"] = fmt.Sprint(int64(cfg.GPUMemLimitMB) << 20)
		}
		// A build without the CUDA provider fails here, loading its provider library.
		if err := cuda.Update(settings); err != nil {
			return unavailable(err)
		}
		if err := opts.AppendExecutionProviderCUDA(cuda); err != nil {
			return unavailable(err)
		}
	}
	return opts, nil
}

func names(infos []TensorInfo) []string {
	out := make([]string, len(infos))
	for i, t := range infos {
		out[i] = t.Name
	}
	return out
}

// Path is the model file the session was opened from.
func (s *Session) Path() string { return s.path }

// Inputs are the graph's declared inputs, in graph order.
func (s *Session) Inputs() []TensorInfo { return s.inputs }

// Outputs are the graph's declared outputs, in graph order.
func (s *Session) Outputs() []TensorInfo { return s.outputs }

// Run feeds every declared input by name and returns the requested outputs (all of them when
// none are named). Cancelling ctx terminates a run in progress.
func (s *Session) Run(ctx context.Context, inputs map[string]Tensor, outputs ...string) (map[string]Tensor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	values := make([]ort.Value, len(s.inputs))
	defer func() {
		for _, v := range values {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i, info := range s.inputs {
		t, ok := inputs[info.Name]
		if !ok {
			return nil, fmt.Errorf("run %s: missing input %q (want %s %s)", s.path, info.Name, info.Type, FormatDims(info.Dims))
		}
		v, err := s.newValue(info, t)
		if err != nil {
			return nil, err
		}
		values[i] = v
	}
	if len(inputs) != len(s.inputs) {
		for name := range inputs {
			if !s.hasInput(name) {
				return nil, fmt.Errorf("run %s: unknown input %q (graph inputs: %s)", s.path, name, strings.Join(names(s.inputs), ", "))
			}
		}
	}
	want := map[string]bool{}
	for _, name := range outputs {
		if !s.hasOutput(name) {
			return nil, fmt.Errorf("run %s: unknown output %q (graph outputs: %s)", s.path, name, strings.Join(names(s.outputs), ", "))
		}
		want[name] = true
	}

	runOpts, err := ort.NewRunOptions()
	if err != nil {
		return nil, fmt.Errorf("run %s: create run options: %w", s.path, err)
	}
	defer runOpts.Destroy()
	stop := context.AfterFunc(ctx, func() { runOpts.Terminate() })
	outs, err := s.preallocate()
	if err != nil {
		return nil, err
	}
	err = s.s.RunWithOptions(values, outs, runOpts)
	stop()
	defer func() {
		for _, v := range outs {
			// A failed conversion leaves a typed nil pointer in the interface.
			if v != nil && !reflect.ValueOf(v).IsNil() {
				v.Destroy()
			}
		}
	}()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("run %s: %w", s.path, oneLine(err))
	}
	result := make(map[string]Tensor, len(s.outputs))
	for i, info := range s.outputs {
		if len(want) > 0 && !want[info.Name] {
			continue
		}
		t, err := copyOut(outs[i])
		if err != nil {
			return nil, fmt.Errorf("run %s: output %q: %w", s.path, info.Name, err)
		}
		result[info.Name] = t
	}
	return result, nil
}

// preallocate returns the output slots for a run: nil (ORT allocates) except for rank-0
// outputs, which onnxruntime_go cannot convert after the fact and so get a scalar up front.
func (s *Session) preallocate() ([]ort.Value, error) {
	outs := make([]ort.Value, len(s.outputs))
	for i, info := range s.outputs {
		if len(info.Dims) != 0 {
			continue
		}
		var err error
		switch info.Type {
		case "float32":
			outs[i], err = ort.NewEmptyScalar[float32]()
		case "int64":
			outs[i], err = ort.NewEmptyScalar[int64]()
		default:
			err = fmt.Errorf("scalar output of type %s is not supported (want float32 or int64)", info.Type)
		}
		if err != nil {
			for _, v := range outs[:i] {
				if v != nil {
					v.Destroy()
				}
			}
			return nil, fmt.Errorf("run %s: output %q: %w", s.path, info.Name, err)
		}
	}
	return outs, nil
}

func (s *Session) hasInput(name string) bool {
	for _, t := range s.inputs {
		if t.Name == name {
			return true
		}
	}
	return false
}

func (s *Session) hasOutput(name string) bool {
	for _, t := range s.outputs {
		if t.Name == name {
			return true
		}
	}
	return false
}

// newValue checks t against the declared input and wraps it for ORT (the data is copied so
// callers may reuse their buffers).
func (s *Session) newValue(info TensorInfo, t Tensor) (ort.Value, error) {
	if err := CheckShape(info, t.Shape); err != nil {
		return nil, fmt.Errorf("run %s: %w", s.path, err)
	}
	n := t.NumElements()
	shape := ort.NewShape(t.Shape...)
	switch info.Type {
	case "float32":
		if len(t.Float32) != n {
			return nil, fmt.Errorf("run %s: input %q: got %d float32 values for shape %s (%d elements)", s.path, info.Name, len(t.Float32), FormatDims(t.Shape), n)
		}
		v, err := ort.NewTensor(shape, append([]float32(nil), t.Float32...))
		if err != nil {
			return nil, fmt.Errorf("run %s: input %q: %w", s.path, info.Name, err)
		}
		return v, nil
	case "int64":
		if len(t.Int64) != n {
			return nil, fmt.Errorf("run %s: input %q: got %d int64 values for shape %s (%d elements)", s.path, info.Name, len(t.Int64), FormatDims(t.Shape), n)
		}
		v, err := ort.NewTensor(shape, append([]int64(nil), t.Int64...))
		if err != nil {
			return nil, fmt.Errorf("run %s: input %q: %w", s.path, info.Name, err)
		}
		return v, nil
	default:
		return nil, fmt.Errorf("run %s: input %q has element type %s; this layer feeds float32 and int64 only", s.path, info.Name, info.Type)
	}
}

// CheckShape reports whether shape fits the declared dims (same rank, equal where fixed).
func CheckShape(info TensorInfo, shape []int64) error {
	bad := len(shape) != len(info.Dims)
	for i := 0; !bad && i < len(shape); i++ {
		bad = info.Dims[i] >= 0 && info.Dims[i] != shape[i]
	}
	if bad {
		return fmt.Errorf("input %q: got shape %s, want %s", info.Name, FormatDims(shape), FormatDims(info.Dims))
	}
	return nil
}

func copyOut(v ort.Value) (Tensor, error) {
	switch t := v.(type) {
	case *ort.Tensor[float32]:
		return Tensor{Shape: t.GetShape().Clone(), Float32: append([]float32(nil), t.GetData()...)}, nil
	case *ort.Tensor[int64]:
		return Tensor{Shape: t.GetShape().Clone(), Int64: append([]int64(nil), t.GetData()...)}, nil
	case *ort.Tensor[int32]:
		out := Tensor{Shape: t.GetShape().Clone(), Int64: make([]int64, len(t.GetData()))}
		for i, x := range t.GetData() {
			out.Int64[i] = int64(x)
		}
		return out, nil
	case *ort.Scalar[float32]:
		return Tensor{Shape: []int64{}, Float32: []float32{t.GetData()}}, nil
	case *ort.Scalar[int64]:
		return Tensor{Shape: []int64{}, Int64: []int64{t.GetData()}}, nil
	case *ort.Tensor[float64]:
		out := Tensor{Shape: t.GetShape().Clone(), Float32: make([]float32, len(t.GetData()))}
		for i, x := range t.GetData() {
			out.Float32[i] = float32(x)
		}
		return out, nil
	default:
		return Tensor{}, fmt.Errorf("unsupported output value %T (want a float32, float64, int32 or int64 tensor)", v)
	}
}

// Close releases the session. It is safe to call more than once.
func (s *Session) Close() error {
	if s == nil || s.s == nil {
		return nil
	}
	err := s.s.Destroy()
	s.s = nil
	if err != nil {
		return fmt.Errorf("close ONNX model %s: %w", s.path, err)
	}
	return nil
}
