// Package kserve is a client of the KServe v2 inference protocol over HTTP (the Open Inference
// Protocol, which NVIDIA Triton, MLServer and KServe serve): server readiness, model metadata
// and inference with JSON tensors or Triton's binary tensor extension. Requests that fail for
// reasons a wait can cure (a refused or dropped connection, a timeout, HTTP 429/500/502/503/504)
// are retried with exponential backoff; every error names the endpoint and the model.
package kserve

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Tensor is one named tensor of a request or a response. Exactly one of the data slices is
// set, matching Datatype: FP32 → F32, FP64 → F64, INT64 → I64, INT32 → I32.
type Tensor struct {
	Name     string
	Datatype string
	Shape    []int64
	F32      []float32
	F64      []float64
	I64      []int64
	I32      []int32
}

// Len is the number of elements the data slice holds.
func (t Tensor) Len() int {
	switch t.Datatype {
	case "FP32":
		return len(t.F32)
	case "FP64":
		return len(t.F64)
	case "INT64":
		return len(t.I64)
	case "INT32":
		return len(t.I32)
	}
	return 0
}

// TensorMeta is a declared input or output of a served model; -1 marks a dynamic dimension.
type TensorMeta struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

// Metadata is the model metadata response.
type Metadata struct {
	Name     string       `json:"name"`
	Versions []string     `json:"versions"`
	Platform string       `json:"platform"`
	Inputs   []TensorMeta `json:"inputs"`
	Outputs  []TensorMeta `json:"outputs"`
}

// Client talks to one model on one server.
type Client struct {
	// URL is the server's base URL, e.g. http://127.0.0.1:8000.
	URL string
	// Model and Version name the served model (Version may be empty: the server's choice).
	Model, Version string
	// Timeout bounds one HTTP request (default 30s).
	Timeout time.Duration
	// Retries is how many times a request that failed for a transient reason is sent again.
	Retries int
	// Backoff is the wait before the first retry, doubling up to MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// Binary sends and asks for tensors in Triton's binary data extension instead of JSON.
	Binary bool
	// HTTP is the client used (default: one with keep-alive connections).
	HTTP *http.Client
	// OnRetry, if set, is told of each retry before its wait, and of a request that succeeded
	// after retries, so that a caller can say why it is waiting. It may be called from several
	// goroutines at once.
	OnRetry func(Retry)
}

// Retry is what Client.OnRetry is told.
type Retry struct {
	// URL is the request's.
	URL string
	// Err is why the last attempt failed; nil when the request has just succeeded.
	Err error
	// Attempts is the number of attempts made; Retries the client's limit of retries.
	Attempts, Retries int
	// Wait is the pause before the next attempt (0 on success); Since the time since the
	// first attempt.
	Wait, Since time.Duration
}

// Endpoint names the model for errors: URL/v2/models/NAME[/versions/V].
func (c *Client) Endpoint() string {
	p := strings.TrimRight(c.URL, "/") + "/v2/models/" + url.PathEscape(c.Model)
	if c.Version != "" {
		p += "/versions/" + url.PathEscape(c.Version)
	}
	return p
}

// Ready asks the server and the model for readiness (GET /v2/health/ready and
// /v2/models/NAME/ready), retrying while the server is unreachable. An unknown model is an
// error at once.
func (c *Client) Ready(ctx context.Context) error {
	for _, u := range []string{strings.TrimRight(c.URL, "/") + "/v2/health/ready", c.Endpoint() + "/ready"} {
		if _, _, err := c.do(ctx, http.MethodGet, u, nil, nil, false); err != nil {
			return err
		}
	}
	return nil
}

// Metadata returns the served model's declared inputs and outputs.
func (c *Client) Metadata(ctx context.Context) (Metadata, error) {
	var md Metadata
	body, _, err := c.do(ctx, http.MethodGet, c.Endpoint(), nil, nil, false)
	if err != nil {
		return md, err
	}
	if err := json.Unmarshal(body, &md); err != nil {
		return md, fmt.Errorf("GET %s: decode model metadata: %w", c.Endpoint(), err)
	}
	return md, nil
}

// WireTensor is a tensor as the protocol's JSON carries it: data inline, or its byte size in
// parameters.binary_data_size when the binary extension carries it after the JSON.
type WireTensor struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
}

type outputRequest struct {
	Name       string         `json:"name"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

type inferRequest struct {
	Inputs  []WireTensor    `json:"inputs"`
	Outputs []outputRequest `json:"outputs"`
}

type inferResponse struct {
	ModelName string       `json:"model_name"`
	Outputs   []WireTensor `json:"outputs"`
	Error     string       `json:"error"`
}

// Infer runs the model on inputs and returns the named outputs. A response that lacks an
// asked-for output, or whose data length disagrees with its shape, is an error. Besides the
// transient failures, "model not found" (HTTP 400/404 naming it) is retried too: a restarting
// server answers so until it has loaded its models again.
func (c *Client) Infer(ctx context.Context, inputs []Tensor, outputs []string) (map[string]Tensor, error) {
	req := inferRequest{}
	var tail bytes.Buffer
	for _, t := range inputs {
		if n := numElements(t.Shape); n != t.Len() {
			return nil, fmt.Errorf("POST %s/infer: input %q: shape %v holds %d values, got %d", c.Endpoint(), t.Name, t.Shape, n, t.Len())
		}
		jt := WireTensor{Name: t.Name, Shape: t.Shape, Datatype: t.Datatype}
		if c.Binary {
			before := tail.Len()
			if err := EncodeBinary(&tail, t); err != nil {
				return nil, err
			}
			jt.Parameters = map[string]any{"binary_data_size": tail.Len() - before}
		} else {
			data, err := EncodeJSON(t)
			if err != nil {
				return nil, fmt.Errorf("POST %s/infer: input %q: %w", c.Endpoint(), t.Name, err)
			}
			jt.Data = data
		}
		req.Inputs = append(req.Inputs, jt)
	}
	for _, name := range outputs {
		o := outputRequest{Name: name}
		if c.Binary {
			o.Parameters = map[string]any{"binary_data": true}
		}
		req.Outputs = append(req.Outputs, o)
	}
	head, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hdr := http.Header{"Content-Type": {"application/json"}}
	body := head
	if c.Binary {
		hdr.Set("Content-Type", "application/octet-stream")
		hdr.Set("Inference-Header-Content-Length", strconv.Itoa(len(head)))
		body = append(append(make([]byte, 0, len(head)+tail.Len()), head...), tail.Bytes()...)
	}
	u := c.Endpoint() + "/infer"
	raw, rh, err := c.do(ctx, http.MethodPost, u, body, hdr, true)
	if err != nil {
		return nil, err
	}
	return c.decodeResponse(u, raw, rh, outputs)
}

func (c *Client) decodeResponse(u string, raw []byte, rh http.Header, outputs []string) (map[string]Tensor, error) {
	jsonPart, bin := raw, []byte(nil)
	if s := rh.Get("Inference-Header-Content-Length"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > len(raw) {
			return nil, fmt.Errorf("POST %s: Inference-Header-Content-Length %q for a body of %d bytes", u, s, len(raw))
		}
		jsonPart, bin = raw[:n], raw[n:]
	}
	var resp inferResponse
	if err := json.Unmarshal(jsonPart, &resp); err != nil {
		return nil, fmt.Errorf("POST %s: decode response: %w", u, err)
	}
	out := map[string]Tensor{}
	for _, jt := range resp.Outputs {
		t := Tensor{Name: jt.Name, Datatype: jt.Datatype, Shape: jt.Shape}
		if size, ok := jt.Parameters["binary_data_size"]; ok {
			sz, ok := size.(float64)
			if !ok || sz < 0 || int(sz) > len(bin) {
				return nil, fmt.Errorf("POST %s: output %q: binary_data_size %v with %d bytes left", u, jt.Name, size, len(bin))
			}
			if err := DecodeBinary(&t, bin[:int(sz)]); err != nil {
				return nil, fmt.Errorf("POST %s: output %q: %w", u, jt.Name, err)
			}
			bin = bin[int(sz):]
		} else if err := DecodeJSON(&t, jt.Data); err != nil {
			return nil, fmt.Errorf("POST %s: output %q: %w", u, jt.Name, err)
		}
		out[jt.Name] = t
	}
	for _, name := range outputs {
		if _, ok := out[name]; !ok {
			var got []string
			for n := range out {
				got = append(got, n)
			}
			return nil, fmt.Errorf("POST %s: no output %q in the response (got %v)", u, name, got)
		}
	}
	return out, nil
}

func numElements(shape []int64) int {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return -1
		}
		n *= int(d)
	}
	return n
}

// EncodeJSON is t's data as a flat JSON array.
func EncodeJSON(t Tensor) (json.RawMessage, error) {
	switch t.Datatype {
	case "FP32":
		return json.Marshal(t.F32)
	case "FP64":
		return json.Marshal(t.F64)
	case "INT64":
		return json.Marshal(t.I64)
	case "INT32":
		return json.Marshal(t.I32)
	}
	return nil, fmt.Errorf("datatype %q: want FP32, FP64, INT64 or INT32", t.Datatype)
}

// DecodeJSON reads a JSON data array into t, whose Datatype and Shape are set. The protocol
// allows the flat form and the nested row-major one; both are accepted.
func DecodeJSON(t *Tensor, data json.RawMessage) error {
	n := numElements(t.Shape)
	if n < 0 {
		return fmt.Errorf("shape %v, want non-negative dims", t.Shape)
	}
	var nested any
	if err := json.Unmarshal(data, &nested); err != nil {
		return fmt.Errorf("decode data: %w", err)
	}
	var flat []float64
	var walk func(v any) error
	walk = func(v any) error {
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				if err := walk(e); err != nil {
					return err
				}
			}
		case float64:
			flat = append(flat, x)
		default:
			return fmt.Errorf("data holds %T, want numbers", v)
		}
		return nil
	}
	if err := walk(nested); err != nil {
		return err
	}
	if len(flat) != n {
		return fmt.Errorf("shape %v needs %d values, data has %d", t.Shape, n, len(flat))
	}
	switch t.Datatype {
	case "FP32":
		t.F32 = make([]float32, n)
		for i, v := range flat {
			t.F32[i] = float32(v)
		}
	case "FP64":
		t.F64 = flat
	case "INT64":
		t.I64 = make([]int64, n)
		for i, v := range flat {
			t.I64[i] = int64(v)
		}
	case "INT32":
		t.I32 = make([]int32, n)
		for i, v := range flat {
			t.I32[i] = int32(v)
		}
	default:
		return fmt.Errorf("datatype %q: want FP32, FP64, INT64 or INT32", t.Datatype)
	}
	return nil
}

// EncodeBinary appends t's data little-endian, as the binary extension carries it.
func EncodeBinary(w *bytes.Buffer, t Tensor) error {
	var b [8]byte
	switch t.Datatype {
	case "FP32":
		for _, v := range t.F32 {
			binary.LittleEndian.PutUint32(b[:4], math.Float32bits(v))
			w.Write(b[:4])
		}
	case "FP64":
		for _, v := range t.F64 {
			binary.LittleEndian.PutUint64(b[:], math.Float64bits(v))
			w.Write(b[:])
		}
	case "INT64":
		for _, v := range t.I64 {
			binary.LittleEndian.PutUint64(b[:], uint64(v))
			w.Write(b[:])
		}
	case "INT32":
		for _, v := range t.I32 {
			binary.LittleEndian.PutUint32(b[:4], uint32(v))
			w.Write(b[:4])
		}
	default:
		return fmt.Errorf("input %q: datatype %q: want FP32, FP64, INT64 or INT32", t.Name, t.Datatype)
	}
	return nil
}

// DecodeBinary reads little-endian data into t, whose Datatype and Shape are set.
func DecodeBinary(t *Tensor, b []byte) error {
	n := numElements(t.Shape)
	if n < 0 {
		return fmt.Errorf("shape %v, want non-negative dims", t.Shape)
	}
	size := map[string]int{"FP32": 4, "FP64": 8, "INT64": 8, "INT32": 4}[t.Datatype]
	if size == 0 {
		return fmt.Errorf("datatype %q: want FP32, FP64, INT64 or INT32", t.Datatype)
	}
	if len(b) != n*size {
		return fmt.Errorf("shape %v needs %d bytes of %s, got %d", t.Shape, n*size, t.Datatype, len(b))
	}
	switch t.Datatype {
	case "FP32":
		t.F32 = make([]float32, n)
		for i := range t.F32 {
			t.F32[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case "FP64":
		t.F64 = make([]float64, n)
		for i := range t.F64 {
			t.F64[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
		}
	case "INT64":
		t.I64 = make([]int64, n)
		for i := range t.I64 {
			t.I64[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
		}
	case "INT32":
		t.I32 = make([]int32, n)
		for i := range t.I32 {
			t.I32[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
		}
	}
	return nil
}

// StatusError is a non-2xx answer of the server.
type StatusError struct {
	Method, URL string
	Code        int
	Message     string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.URL, e.Code, e.Message)
}

// transient reports whether waiting may cure err: the server was unreachable, the request
// timed out, or the server said it is overloaded or not ready (or, with loading, that it does
// not have the model yet).
func transient(err error, loading bool) bool {
	var se *StatusError
	if errors.As(err, &se) {
		switch se.Code {
		// 500 too: a server shutting down fails the requests in flight so (Triton under
		// PyTriton: "Model execute error"), and inference is idempotent; a model that always
		// fails costs the retries' wait before its error.
		case http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		case http.StatusNotFound, http.StatusBadRequest:
			// Triton: "Request for unknown model: 'M' is not found" while loading, "... 'M'
			// has no available versions" while unloading or loading a version.
			m := strings.ToLower(se.Message)
			return loading && (strings.Contains(m, "not found") || strings.Contains(m, "unknown model") || strings.Contains(m, "no available versions"))
		}
		return false
	}
	return true // connection refused / reset / EOF / per-request timeout
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// do sends one request, retrying transient failures with backoff while ctx allows (loading:
// "model not found" counts as one). The final error says how many attempts over how long.
func (c *Client) do(ctx context.Context, method, u string, body []byte, hdr http.Header, loading bool) ([]byte, http.Header, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	wait := c.Backoff
	start := time.Now()
	for attempt := 0; ; attempt++ {
		raw, rh, err := c.once(ctx, method, u, body, hdr, timeout)
		if err == nil {
			if attempt > 0 && c.OnRetry != nil {
				c.OnRetry(Retry{URL: u, Attempts: attempt + 1, Retries: c.Retries, Since: time.Since(start)})
			}
			return raw, rh, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if !transient(err, loading) || attempt >= c.Retries {
			if attempt > 0 {
				return nil, nil, fmt.Errorf("%w (after %d attempts over %s)", err, attempt+1, time.Since(start).Round(time.Millisecond))
			}
			return nil, nil, err
		}
		if c.OnRetry != nil {
			c.OnRetry(Retry{URL: u, Err: err, Attempts: attempt + 1, Retries: c.Retries, Wait: wait, Since: time.Since(start)})
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		wait = min(2*wait, max(c.MaxBackoff, c.Backoff))
	}
}

func (c *Client) once(ctx context.Context, method, u string, body []byte, hdr http.Header, timeout time.Duration) ([]byte, http.Header, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, u, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, u, unwrapURLError(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: read response: %w", method, u, err)
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(raw))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		// One line (a Python server's message may carry its traceback), at most 300 bytes
		// cut at a character boundary.
		msg = strings.Join(strings.Fields(msg), " ")
		if len(msg) > 300 {
			cut := 300
			for cut > 0 && !utf8.RuneStart(msg[cut]) {
				cut--
			}
			msg = msg[:cut] + "…"
		}
		return nil, nil, &StatusError{Method: method, URL: u, Code: resp.StatusCode, Message: msg}
	}
	return raw, resp.Header, nil
}

// unwrapURLError drops net/url's "Post \"…\": " prefix, since the caller names the URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
