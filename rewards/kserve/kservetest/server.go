// Package kservetest is an in-process KServe v2 / Open Inference Protocol server for tests:
// health and model readiness, model metadata, and inference with JSON tensors (flat data) or
// Triton's binary data extension, errors as {"error": "..."} — the HTTP surface Triton serves.
// A test declares models as Go functions and can make the server fail on purpose.
package kservetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/densegrpo/densegrpo/rewards/kserve"
)

// Model is one served model. Infer gets the request's inputs by name and returns outputs by
// name; an error becomes HTTP 400 {"error": ...}, as Triton answers bad input.
type Model struct {
	Inputs, Outputs []kserve.TensorMeta
	Infer           func(in map[string]kserve.Tensor) (map[string]kserve.Tensor, error)
}

// Server serves Models on 127.0.0.1.
type Server struct {
	*httptest.Server
	mu     sync.Mutex
	models map[string]Model
	// FailNext makes the next N requests fail with status FailCode (0: the connection is
	// closed without an answer, as a server that died mid-request).
	failNext atomic.Int64
	failCode atomic.Int64
	failMsg  atomic.Pointer[string]
	// Requests counts inference requests served (failed ones included).
	Requests atomic.Int64
}

// New starts a server with the given models.
func New(models map[string]Model) *Server {
	s := &Server{models: models}
	s.Server = httptest.NewServer(http.HandlerFunc(s.handle))
	return s
}

// Stop takes the server off the network as a crashed or restarting server would be: requests
// in flight are answered, then its port refuses connections until Restart. Neither may run
// concurrently with the other or with Close.
func (s *Server) Stop() { s.Server.Close() }

// Restart serves the same models on the address Stop left.
func (s *Server) Restart() error {
	ln, err := net.Listen("tcp", s.Listener.Addr().String())
	if err != nil {
		return fmt.Errorf("kservetest: restart on %s: %w", s.Listener.Addr(), err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(s.handle))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	s.Server = srv
	return nil
}

// Fail makes the next n requests fail: with HTTP status code, or, for code 0, by dropping the
// connection.
func (s *Server) Fail(n int, code int) { s.FailWith(n, code, "injected failure") }

// FailWith is Fail with the error message the failed answers carry.
func (s *Server) FailWith(n int, code int, message string) {
	s.failMsg.Store(&message)
	s.failCode.Store(int64(code))
	s.failNext.Store(int64(n))
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	if s.failNext.Add(-1) >= 0 {
		if code := int(s.failCode.Load()); code != 0 {
			writeError(w, code, "%s", *s.failMsg.Load())
			return
		}
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
	}
	path := strings.TrimPrefix(r.URL.Path, "/v2")
	if path == "/health/ready" || path == "/health/live" {
		w.WriteHeader(http.StatusOK)
		return
	}
	rest, ok := strings.CutPrefix(path, "/models/")
	if !ok {
		writeError(w, http.StatusNotFound, "no route %s", r.URL.Path)
		return
	}
	parts := strings.Split(rest, "/")
	name := parts[0]
	if len(parts) >= 3 && parts[1] == "versions" {
		parts = append(parts[:1], parts[3:]...)
	}
	s.mu.Lock()
	m, ok := s.models[name]
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusBadRequest, "Request for unknown model: '%s' is not found", name)
		return
	}
	switch {
	case len(parts) == 1 && r.Method == http.MethodGet:
		json.NewEncoder(w).Encode(kserve.Metadata{Name: name, Versions: []string{"1"}, Platform: "kservetest", Inputs: m.Inputs, Outputs: m.Outputs})
	case len(parts) == 2 && parts[1] == "ready":
		w.WriteHeader(http.StatusOK)
	case len(parts) == 2 && parts[1] == "infer" && r.Method == http.MethodPost:
		s.Requests.Add(1)
		s.infer(w, r, name, m)
	default:
		writeError(w, http.StatusNotFound, "no route %s %s", r.Method, r.URL.Path)
	}
}

func (s *Server) infer(w http.ResponseWriter, r *http.Request, name string, m Model) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r.Body); err != nil {
		writeError(w, http.StatusBadRequest, "read body: %v", err)
		return
	}
	body := buf.Bytes()
	head, bin := body, []byte(nil)
	if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
		n, err := strconv.Atoi(h)
		if err != nil || n > len(body) {
			writeError(w, http.StatusBadRequest, "bad Inference-Header-Content-Length %q", h)
			return
		}
		head, bin = body[:n], body[n:]
	}
	var req struct {
		Inputs  []kserve.WireTensor `json:"inputs"`
		Outputs []struct {
			Name       string         `json:"name"`
			Parameters map[string]any `json:"parameters"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(head, &req); err != nil {
		writeError(w, http.StatusBadRequest, "failed to parse the request JSON buffer: %v", err)
		return
	}
	in := map[string]kserve.Tensor{}
	for _, wt := range req.Inputs {
		t := kserve.Tensor{Name: wt.Name, Datatype: wt.Datatype, Shape: wt.Shape}
		var err error
		if sz, ok := wt.Parameters["binary_data_size"].(float64); ok {
			if int(sz) > len(bin) {
				writeError(w, http.StatusBadRequest, "input '%s': binary_data_size %v exceeds the %d bytes left", wt.Name, sz, len(bin))
				return
			}
			err = kserve.DecodeBinary(&t, bin[:int(sz)])
			bin = bin[int(sz):]
		} else {
			err = kserve.DecodeJSON(&t, wt.Data)
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "input '%s': %v", wt.Name, err)
			return
		}
		in[wt.Name] = t
	}
	for _, meta := range m.Inputs {
		t, ok := in[meta.Name]
		if !ok {
			writeError(w, http.StatusBadRequest, "expected %d inputs but got %d inputs for model '%s'", len(m.Inputs), len(in), name)
			return
		}
		if t.Datatype != meta.Datatype || len(t.Shape) != len(meta.Shape) {
			writeError(w, http.StatusBadRequest, "input '%s': got %s %v, expected %s %v", meta.Name, t.Datatype, t.Shape, meta.Datatype, meta.Shape)
			return
		}
	}
	out, err := m.Infer(in)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var resp struct {
		ModelName string              `json:"model_name"`
		Outputs   []kserve.WireTensor `json:"outputs"`
	}
	resp.ModelName = name
	var tail bytes.Buffer
	for _, o := range req.Outputs {
		t, ok := out[o.Name]
		if !ok {
			writeError(w, http.StatusBadRequest, "unexpected inference output '%s' for model '%s'", o.Name, name)
			return
		}
		wt := kserve.WireTensor{Name: t.Name, Shape: t.Shape, Datatype: t.Datatype}
		if b, _ := o.Parameters["binary_data"].(bool); b {
			before := tail.Len()
			if err := kserve.EncodeBinary(&tail, t); err != nil {
				writeError(w, http.StatusInternalServerError, "%v", err)
				return
			}
			wt.Parameters = map[string]any{"binary_data_size": tail.Len() - before}
		} else {
			data, err := kserve.EncodeJSON(t)
			if err != nil {
				writeError(w, http.StatusInternalServerError, "%v", err)
				return
			}
			wt.Data = data
		}
		resp.Outputs = append(resp.Outputs, wt)
	}
	headOut, _ := json.Marshal(resp)
	if tail.Len() > 0 {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Inference-Header-Content-Length", strconv.Itoa(len(headOut)))
		w.Write(append(headOut, tail.Bytes()...))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(headOut)
}
