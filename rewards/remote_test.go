package rewards

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/kserve"
	"github.com/densegrpo/densegrpo/rewards/kserve/kservetest"
)

// serveONNX serves an ONNX file through the in-process KServe v2 server, running it in ONNX
// Runtime as Triton's onnxruntime backend would.
func serveONNX(t *testing.T, name, path string) *kservetest.Server {
	t.Helper()
	m, closeModel, err := kservetest.ONNXModel(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeModel() })
	srv := kservetest.New(map[string]kservetest.Model{name: m})
	t.Cleanup(srv.Close)
	return srv
}

// remoteTOML is one block whose kind is either onnx-scalar (model = the file) or remote
// (the same file served over KServe v2); everything else is the same.
func remoteConfigs(t *testing.T, model, url string, binary bool) (local, remote Config) {
	t.Helper()
	base := Config{Name: "mean", BatchSize: 2, Concurrency: 2}
	base.Image.Input = "pixel_values"
	base.Image.Size = []int{8, 8}
	base.Image.Mean = []float32{0.5, 0.5, 0.5}
	scale := 3.0
	base.Output.Scale, base.Output.Offset = &scale, 1
	local, remote = base, base
	local.Kind, local.Model = "onnx-scalar", model
	remote.Kind = "remote"
	remote.Remote = RemoteConfig{URL: url, Model: "mean", Binary: binary, Backoff: "1ms", MaxBackoff: "4ms"}
	return local, remote
}

// TestRemoteEqualsLocal: the same reward with kind "onnx-scalar" and kind "remote" (JSON and
// binary tensors) gives the same rewards on the same images, in batches of 2 over 2 requests
// at a time.
func TestRemoteEqualsLocal(t *testing.T) {
	dir := t.TempDir()
	model := writeModel(t, dir, meanModel("mean", "pixel_values", 8, 8))
	srv := serveONNX(t, "mean", model)
	rng := rand.New(rand.NewPCG(1, 2))
	var ims []Image
	for i := 0; i < 7; i++ {
		im := randomImage(12+i, 10, rng)
		ims = append(ims, im)
	}
	prompts := make([]Prompt, len(ims))
	for _, binary := range []bool{false, true} {
		local, remote := remoteConfigs(t, model, srv.URL, binary)
		set, err := Open(context.Background(), []Config{local, func() Config { r := remote; r.Name = "remote"; return r }()}, dir, onnxrt.Config{IntraOpThreads: 1})
		if err != nil {
			t.Fatal(err)
		}
		got, err := set.Score(context.Background(), ims, prompts)
		set.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i := range ims {
			if got.ByName["mean"][i] != got.ByName["remote"][i] {
				t.Errorf("binary=%v image %d: local %v, remote %v", binary, i, got.ByName["mean"][i], got.ByName["remote"][i])
			}
		}
	}
}

// TestRemoteOnRetry: a Set tells its OnRetry hook of each retry of a remote reward, with the
// reward's name, and of the answer after them.
func TestRemoteOnRetry(t *testing.T) {
	dir := t.TempDir()
	model := writeModel(t, dir, meanModel("mean", "pixel_values", 8, 8))
	srv := serveONNX(t, "mean", model)
	_, remote := remoteConfigs(t, model, srv.URL, false)
	set, err := Open(context.Background(), []Config{remote}, dir, onnxrt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	var mu sync.Mutex
	var got []string
	set.OnRetry(func(name string, r kserve.Retry) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, fmt.Sprintf("%s %d %v", name, r.Attempts, r.Err != nil))
	})
	srv.Fail(2, 503)
	ims := []Image{randomImage(8, 8, rand.New(rand.NewPCG(1, 1)))}
	if _, err := set.Score(context.Background(), ims, make([]Prompt, 1)); err != nil {
		t.Fatal(err)
	}
	if want := "mean 1 true,mean 2 true,mean 3 false"; strings.Join(got, ",") != want {
		t.Errorf("OnRetry told %q, want %q (two retries, then the answer)", strings.Join(got, ","), want)
	}
}

// randomImage is a w×h image of uniform random pixels.
func randomImage(w, h int, rng *rand.Rand) Image {
	im := Image{W: w, H: h, Pix: make([]float32, w*h*3)}
	for i := range im.Pix {
		im.Pix[i] = rng.Float32()
	}
	return im
}

// TestRemoteBadInputs: every failure names the endpoint and the model.
func TestRemoteBadInputs(t *testing.T) {
	dir := t.TempDir()
	model := writeModel(t, dir, meanModel("mean", "pixel_values", 8, 8))
	srv := serveONNX(t, "mean", model)
	open := func(c Config) error {
		set, err := Open(context.Background(), []Config{c}, dir, onnxrt.Config{})
		if err == nil {
			set.Close()
		}
		return err
	}
	_, remote := remoteConfigs(t, model, srv.URL, false)
	// The served model declares [?,3,8,8]; a config preparing 16×16 images is refused at open.
	big := remote
	big.Image.Size = []int{16, 16}
	if err := open(big); err == nil || !strings.Contains(err.Error(), srv.URL+"/v2/models/mean: input \"pixel_values\": got float32 [-1,3,8,8], want float32 [?,3,16,16]") {
		t.Errorf("declared shape mismatch: %v", err)
	}
	unknown := remote
	unknown.Remote.Model = "nope"
	if err := open(unknown); err == nil || !strings.Contains(err.Error(), "/v2/models/nope") || !strings.Contains(err.Error(), "not found") {
		t.Errorf("unknown model: %v", err)
	}
	// Nothing listens on the port of a closed server: the error names the endpoint after the
	// configured retries.
	dead := kservetest.New(nil)
	dead.Close()
	gone := remote
	gone.Remote.URL = dead.URL
	retries := 2
	gone.Remote.Retries = &retries
	if err := open(gone); err == nil || !strings.Contains(err.Error(), dead.URL) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Errorf("unreachable endpoint: %v", err)
	}
	for _, c := range []struct {
		field string
		edit  func(*Config)
	}{
		{"remote.url", func(c *Config) { c.Remote.URL = "127.0.0.1:8000" }},
		{"remote.model", func(c *Config) { c.Remote.Model = "" }},
		{"remote.timeout", func(c *Config) { c.Remote.Timeout = "soon" }},
		{"model: set, but kind \"remote\"", func(c *Config) { c.Model = "x.onnx" }},
	} {
		bad := remote
		c.edit(&bad)
		if err := open(bad); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v", c.field, err)
		}
	}
}

// TestRemoteWrongShape: a server whose answer disagrees with its own metadata (two values per
// image where it declared one) fails the score with the endpoint, the output and the shape.
func TestRemoteWrongShape(t *testing.T) {
	srv := kservetest.New(map[string]kservetest.Model{"mean": {
		Inputs:  []kserve.TensorMeta{{Name: "pixel_values", Datatype: "FP32", Shape: []int64{-1, 3, 8, 8}}},
		Outputs: []kserve.TensorMeta{{Name: "score", Datatype: "FP32", Shape: []int64{-1}}},
		Infer: func(in map[string]kserve.Tensor) (map[string]kserve.Tensor, error) {
			n := in["pixel_values"].Shape[0]
			return map[string]kserve.Tensor{"score": {Name: "score", Datatype: "FP32", Shape: []int64{2 * n}, F32: make([]float32, 2*n)}}, nil
		}}})
	defer srv.Close()
	_, remote := remoteConfigs(t, "", srv.URL, false)
	set, err := Open(context.Background(), []Config{remote}, "", onnxrt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	_, err = set.Score(context.Background(), []Image{constImage(8, 8, 0.5)}, make([]Prompt, 1))
	want := fmt.Sprintf(`model %s/v2/models/mean: output "score" has shape [2] for a batch of 1`, srv.URL)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("wrong shape: %v, want %q", err, want)
	}
}
