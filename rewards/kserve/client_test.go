package kserve_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/rewards/kserve"
	"github.com/densegrpo/densegrpo/rewards/kserve/kservetest"
)

// doubler serves y = 2·x for x FP32 [-1, 3] and reports s = row sums as FP64 [-1].
func doubler() map[string]kservetest.Model {
	return map[string]kservetest.Model{"double": {
		Inputs:  []kserve.TensorMeta{{Name: "x", Datatype: "FP32", Shape: []int64{-1, 3}}},
		Outputs: []kserve.TensorMeta{{Name: "y", Datatype: "FP32", Shape: []int64{-1, 3}}, {Name: "s", Datatype: "FP64", Shape: []int64{-1}}},
		Infer: func(in map[string]kserve.Tensor) (map[string]kserve.Tensor, error) {
			x := in["x"]
			if x.Shape[1] != 3 {
				return nil, fmt.Errorf("x: got shape %v, want [N,3]", x.Shape)
			}
			y := kserve.Tensor{Name: "y", Datatype: "FP32", Shape: x.Shape, F32: make([]float32, len(x.F32))}
			s := kserve.Tensor{Name: "s", Datatype: "FP64", Shape: x.Shape[:1], F64: make([]float64, x.Shape[0])}
			for i, v := range x.F32 {
				y.F32[i] = 2 * v
				s.F64[i/3] += float64(v)
			}
			return map[string]kserve.Tensor{"y": y, "s": s}, nil
		},
	}}
}

func client(url string) *kserve.Client {
	return &kserve.Client{URL: url, Model: "double", Timeout: 2 * time.Second, Retries: 3, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}
}

func TestInferJSONAndBinary(t *testing.T) {
	srv := kservetest.New(doubler())
	defer srv.Close()
	for _, bin := range []bool{false, true} {
		c := client(srv.URL)
		c.Binary = bin
		if err := c.Ready(context.Background()); err != nil {
			t.Fatal(err)
		}
		md, err := c.Metadata(context.Background())
		if err != nil || len(md.Inputs) != 1 || md.Inputs[0].Name != "x" || len(md.Outputs) != 2 {
			t.Fatalf("metadata %+v, %v", md, err)
		}
		// 0.1 has no exact float32 form: the value must survive the trip bit for bit.
		x := kserve.Tensor{Name: "x", Datatype: "FP32", Shape: []int64{2, 3}, F32: []float32{0.1, 1, 2, -3, 1e-7, 1.7e38}}
		out, err := c.Infer(context.Background(), []kserve.Tensor{x}, []string{"y", "s"})
		if err != nil {
			t.Fatalf("binary=%v: %v", bin, err)
		}
		for i, v := range x.F32 {
			if out["y"].F32[i] != 2*v {
				t.Errorf("binary=%v: y[%d] = %v, want %v", bin, i, out["y"].F32[i], 2*v)
			}
		}
		if s := out["s"].F64; len(s) != 2 || s[0] != float64(float32(0.1))+3 {
			t.Errorf("binary=%v: s = %v", bin, s)
		}
	}
}

func TestRetriesTransientFailures(t *testing.T) {
	srv := kservetest.New(doubler())
	defer srv.Close()
	x := kserve.Tensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 3}, F32: []float32{1, 2, 3}}
	// 503, 500 (Triton shutting down), then a dropped connection
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusInternalServerError, 0} {
		srv.Fail(3, code)
		if _, err := client(srv.URL).Infer(context.Background(), []kserve.Tensor{x}, []string{"y"}); err != nil {
			t.Errorf("3 failures (code %d) with 3 retries: %v", code, err)
		}
		srv.Fail(4, code)
		_, err := client(srv.URL).Infer(context.Background(), []kserve.Tensor{x}, []string{"y"})
		if err == nil || !strings.Contains(err.Error(), srv.URL+"/v2/models/double/infer") || !strings.Contains(err.Error(), "after 4 attempts") {
			t.Errorf("4 failures (code %d) with 3 retries: %v, want an error naming the endpoint and the attempts", code, err)
		}
	}
	// Triton while it unloads or loads the model: retried at inference. A Python server's
	// traceback comes back on one line.
	srv.FailWith(2, http.StatusNotFound, "Request for unknown model: 'double' has no available versions")
	if _, err := client(srv.URL).Infer(context.Background(), []kserve.Tensor{x}, []string{"y"}); err != nil {
		t.Errorf("model without available versions for 2 requests: %v", err)
	}
	srv.FailWith(4, http.StatusInternalServerError, "Model execute error: Traceback (most recent call last):\n  File \"model.py\", line 486\n    boom")
	_, err := client(srv.URL).Infer(context.Background(), []kserve.Tensor{x}, []string{"y"})
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `HTTP 500: Model execute error: Traceback (most recent call last): File "model.py", line 486 boom (after 4 attempts`) {
		t.Errorf("a traceback 4 times: %v, want it on one line after 4 attempts", err)
	}
	// Bad input is not retried: one request, the server's message in the error.
	srv.Fail(0, 0)
	before := srv.Requests.Load()
	bad := kserve.Tensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 2}, F32: []float32{1, 2}}
	_, err = client(srv.URL).Infer(context.Background(), []kserve.Tensor{bad}, []string{"y"})
	var se *kserve.StatusError
	if !errors.As(err, &se) || se.Code != 400 || !strings.Contains(err.Error(), "want [N,3]") {
		t.Errorf("bad input: %v, want HTTP 400 with the server's message", err)
	}
	if n := srv.Requests.Load() - before; n != 1 {
		t.Errorf("bad input sent %d times, want 1", n)
	}
}

// A server that goes away mid-run and comes back on the same port: the request waits,
// retries and succeeds, and OnRetry is told of every retry and of the success.
func TestServerRestart(t *testing.T) {
	srv := kservetest.New(doubler())
	defer srv.Close()
	c := client(srv.URL)
	c.Retries, c.Backoff, c.MaxBackoff = 50, 10*time.Millisecond, 40*time.Millisecond
	var mu sync.Mutex
	var seen []kserve.Retry
	c.OnRetry = func(r kserve.Retry) { mu.Lock(); seen = append(seen, r); mu.Unlock() }
	x := kserve.Tensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 3}, F32: []float32{1, 2, 3}}
	srv.Stop()
	restarted := make(chan error, 1)
	go func() { time.Sleep(300 * time.Millisecond); restarted <- srv.Restart() }()
	out, err := c.Infer(context.Background(), []kserve.Tensor{x}, []string{"y"})
	if rerr := <-restarted; rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil || out["y"].F32[2] != 6 {
		t.Fatalf("infer across a restart: %v, %v", out, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 3 {
		t.Fatalf("OnRetry told %d times, want every retry of a 300 ms outage at most 40 ms apart", len(seen))
	}
	for i, r := range seen[:len(seen)-1] {
		if r.Err == nil || !strings.Contains(r.Err.Error(), "connection refused") || r.Attempts != i+1 || r.Wait <= 0 || r.URL != srv.URL+"/v2/models/double/infer" {
			t.Errorf("retry %d: %+v, want attempt %d refused, with its wait and URL", i, r, i+1)
		}
	}
	last := seen[len(seen)-1]
	if last.Err != nil || last.Attempts != len(seen) || last.Since <= seen[len(seen)-2].Since+seen[len(seen)-2].Wait/2 {
		t.Errorf("success after retries: %+v, want no error, %d attempts, after the last wait", last, len(seen))
	}
}

func TestUnreachableAndCancelled(t *testing.T) {
	srv := kservetest.New(doubler())
	url := srv.URL
	srv.Close()
	err := client(url).Ready(context.Background())
	if err == nil || !strings.Contains(err.Error(), url+"/v2/health/ready") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("closed server: %v, want connection refused naming the URL", err)
	}
	c := client(url)
	c.Retries, c.Backoff, c.MaxBackoff = 1000, time.Second, time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Ready(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled while backing off: %v, want the context's error", err)
	}
}

func TestBadResponses(t *testing.T) {
	models := doubler()
	m := models["double"]
	inner := m.Infer
	m.Infer = func(in map[string]kserve.Tensor) (map[string]kserve.Tensor, error) {
		out, err := inner(in)
		y := out["y"]
		y.Shape = []int64{y.Shape[0], 4} // says 4 columns, carries 3
		out["y"] = y
		return out, err
	}
	models["double"] = m
	srv := kservetest.New(models)
	defer srv.Close()
	x := kserve.Tensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 3}, F32: []float32{1, 2, 3}}
	for _, bin := range []bool{false, true} {
		c := client(srv.URL)
		c.Binary = bin
		_, err := c.Infer(context.Background(), []kserve.Tensor{x}, []string{"y"})
		if err == nil || !strings.Contains(err.Error(), `output "y"`) || !strings.Contains(err.Error(), "[1 4]") {
			t.Errorf("binary=%v: shape/data mismatch: %v", bin, err)
		}
		_, err = c.Infer(context.Background(), []kserve.Tensor{x}, []string{"z"})
		if err == nil || !strings.Contains(err.Error(), "'z'") {
			t.Errorf("binary=%v: unknown output: %v", bin, err)
		}
	}
}
