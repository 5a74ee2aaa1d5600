package rewards

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/kserve"
)

func init() {
	Register("remote", Kind{Validate: validateRemote, Open: openRemote})
}

func (r *RemoteConfig) defaults() {
	if r.Timeout == "" {
		r.Timeout = "30s"
	}
	if r.Retries == nil {
		n := 8
		r.Retries = &n
	}
	if r.Backoff == "" {
		r.Backoff = "250ms"
	}
	if r.MaxBackoff == "" {
		r.MaxBackoff = "8s"
	}
}

// durations parses the defaulted timeout, backoff and max_backoff.
func (r *RemoteConfig) durations() (timeout, backoff, maxBackoff time.Duration, err error) {
	for _, f := range []struct {
		name string
		s    string
		d    *time.Duration
	}{{"timeout", r.Timeout, &timeout}, {"backoff", r.Backoff, &backoff}, {"max_backoff", r.MaxBackoff, &maxBackoff}} {
		d, perr := time.ParseDuration(f.s)
		if perr != nil || d <= 0 {
			return 0, 0, 0, fmt.Errorf("remote.%s: got %q, want a positive duration such as \"30s\"", f.name, f.s)
		}
		*f.d = d
	}
	return timeout, backoff, maxBackoff, nil
}

func validateRemote(c *Config) error {
	if err := onlyFields(c, []string{"remote", "output.index"}, "remote"); err != nil {
		return err
	}
	if c.ONNX != nil {
		return fmt.Errorf("onnx: set, but kind %q does not use it (the server runs the model)", c.Kind)
	}
	r := &c.Remote
	r.defaults()
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("remote.url: got %q, want the server's base URL http://HOST:PORT", r.URL)
	}
	if r.Model == "" || strings.ContainsAny(r.Model, "/ ") {
		return fmt.Errorf("remote.model: got %q, want the served model's name", r.Model)
	}
	if *r.Retries < 0 || *r.Retries > 1000 {
		return fmt.Errorf("remote.retries: got %d, want 0..1000", *r.Retries)
	}
	_, _, _, err = r.durations()
	return err
}

// remoteModel is a served model seen as a runner: its metadata stands for the graph's declared
// tensors, and at most `concurrency` requests are in flight at once.
type remoteModel struct {
	client *kserve.Client
	ins    []onnxrt.TensorInfo
	outs   []onnxrt.TensorInfo
	slots  chan struct{}
	idle   *http.Transport
}

// onnxType maps the protocol's datatypes onto the element types tensorWant checks.
var onnxType = map[string]string{"FP32": "float32", "FP64": "float64", "INT64": "int64", "INT32": "int32", "FP16": "float16", "UINT8": "uint8", "BOOL": "bool", "BYTES": "string"}

func openRemote(ctx context.Context, c *Config, _ onnxrt.Config) (Scorer, error) {
	text, err := newTextFeeder(c)
	if err != nil {
		return nil, err
	}
	r := c.Remote
	timeout, backoff, maxBackoff, err := r.durations()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = c.Concurrency
	m := &remoteModel{
		client: &kserve.Client{URL: r.URL, Model: r.Model, Version: r.Version, Timeout: timeout,
			Retries: *r.Retries, Backoff: backoff, MaxBackoff: maxBackoff, Binary: r.Binary, HTTP: &http.Client{Transport: tr}},
		slots: make(chan struct{}, c.Concurrency),
		idle:  tr,
	}
	if err := m.client.Ready(ctx); err != nil {
		return nil, fmt.Errorf("remote model %s: not ready: %w", m.where(), err)
	}
	md, err := m.client.Metadata(ctx)
	if err != nil {
		return nil, fmt.Errorf("remote model %s: %w", m.where(), err)
	}
	for _, t := range md.Inputs {
		m.ins = append(m.ins, onnxrt.TensorInfo{Name: t.Name, Type: onnxType[t.Datatype], Dims: t.Shape})
	}
	for _, t := range md.Outputs {
		m.outs = append(m.outs, onnxrt.TensorInfo{Name: t.Name, Type: onnxType[t.Datatype], Dims: t.Shape})
	}
	return newScalarScorer(c, m, text)
}

func (m *remoteModel) where() string                { return m.client.Endpoint() }
func (m *remoteModel) inputs() []onnxrt.TensorInfo  { return m.ins }
func (m *remoteModel) outputs() []onnxrt.TensorInfo { return m.outs }

func (m *remoteModel) run(ctx context.Context, in map[string]onnxrt.Tensor, outputs ...string) (map[string]onnxrt.Tensor, error) {
	select {
	case m.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-m.slots }()
	var req []kserve.Tensor
	for _, info := range m.ins { // the server's input order
		t, ok := in[info.Name]
		if !ok {
			return nil, fmt.Errorf("model %s: no value for input %q", m.where(), info.Name)
		}
		kt := kserve.Tensor{Name: info.Name, Shape: t.Shape}
		switch {
		case t.Float32 != nil:
			kt.Datatype, kt.F32 = "FP32", t.Float32
		default:
			kt.Datatype, kt.I64 = "INT64", t.Int64
		}
		req = append(req, kt)
	}
	res, err := m.client.Infer(ctx, req, outputs)
	if err != nil {
		return nil, err
	}
	out := map[string]onnxrt.Tensor{}
	for _, name := range outputs {
		t := res[name]
		ot := onnxrt.Tensor{Shape: t.Shape}
		switch t.Datatype {
		case "FP32":
			ot.Float32 = t.F32
		case "FP64":
			ot.Float32 = make([]float32, len(t.F64))
			for i, v := range t.F64 {
				ot.Float32[i] = float32(v)
			}
		default:
			return nil, fmt.Errorf("model %s: output %q: got datatype %s, want FP32 or FP64", m.where(), name, t.Datatype)
		}
		out[name] = ot
	}
	return out, nil
}

func (m *remoteModel) hookRetries(fn func(kserve.Retry)) { m.client.OnRetry = fn }

func (m *remoteModel) close() error {
	m.idle.CloseIdleConnections()
	return nil
}
