//go:build triton

package rewards

// The remote reward against a real inference server: NVIDIA Triton (PyTriton, from PyPI)
// serving the committed aesthetic scorer (testdata/clip-tiny/aesthetic.onnx, a CLIP image tower
// with a head) on 127.0.0.1. Not part of the Go suite (it needs the Python server):
// `just test-remote` builds .venv-serve/ and runs
//
//	go test -tags triton -run Triton -v ./rewards
//
// $DENSEGRPO_SERVE_PYTHON overrides the server's Python (default ../.venv-serve/bin/python;
// kservetest.NewTriton).

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/kserve/kservetest"
)

// startTriton serves the committed aesthetic scorer as "aesthetic"; it is stopped when the
// test ends.
func startTriton(t *testing.T) *kservetest.Triton {
	t.Helper()
	srv, err := kservetest.NewTriton("..", filepath.Join("testdata", "clip-tiny", "aesthetic.onnx"), "aesthetic", filepath.Join(t.TempDir(), "triton.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return srv
}

func TestTritonRemoteEqualsLocal(t *testing.T) {
	srv := startTriton(t)
	url := srv.URL()
	dir := filepath.Join("testdata", "clip-tiny")
	cfgs := exporterConfigs(t, dir)
	local := cfgs[1] // aesthetic, onnx-scalar, as the exporter wrote it
	local.BatchSize, local.Concurrency = 16, 1
	remote := local
	remote.Model, remote.Kind = "", "remote"
	remote.Remote = RemoteConfig{URL: url, Model: "aesthetic", Timeout: "10s"}
	remoteBin := remote
	remoteBin.Remote.Binary = true
	remote.Name, remoteBin.Name = "remote_json", "remote_binary"

	rng := rand.New(rand.NewPCG(7, 8))
	ims := make([]Image, 256)
	for i := range ims {
		ims[i] = randomImage(32, 32, rng)
	}
	prompts := make([]Prompt, len(ims))
	rt := onnxrt.Config{IntraOpThreads: 1}
	ctx := context.Background()
	sets := map[string]*Set{}
	for _, c := range []Config{local, remote, remoteBin} {
		s, err := Open(ctx, []Config{c}, "", rt)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sets[c.Name] = s
	}
	// Same rewards: every image, all three ways.
	want, err := sets["aesthetic"].Score(ctx, ims, prompts)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"remote_json", "remote_binary"} {
		got, err := sets[name].Score(ctx, ims, prompts)
		if err != nil {
			t.Fatal(err)
		}
		var maxDiff float64
		for i := range ims {
			maxDiff = math.Max(maxDiff, math.Abs(got.ByName[name][i]-want.ByName["aesthetic"][i]))
		}
		t.Logf("%s vs local onnx-scalar on %d images: max |diff| %.3g", name, len(ims), maxDiff)
		if maxDiff > 1e-6 {
			t.Errorf("%s differs from the local reward by up to %g", name, maxDiff)
		}
	}
	// Throughput, round-robin in one run (3 rounds of 256 images each, after the warm-up above).
	busy := map[string]time.Duration{}
	for round := 0; round < 3; round++ {
		for _, name := range []string{"aesthetic", "remote_json", "remote_binary"} {
			start := time.Now()
			if _, err := sets[name].Score(ctx, ims, prompts); err != nil {
				t.Fatal(err)
			}
			busy[name] += time.Since(start)
		}
	}
	for _, name := range []string{"aesthetic", "remote_json", "remote_binary"} {
		ips := float64(3*len(ims)) / busy[name].Seconds()
		t.Logf("throughput %-14s %7.1f images/s (%.2f× local)", name, ips, busy["aesthetic"].Seconds()/busy[name].Seconds())
	}
}

// TestTritonRestart: the server is stopped while a score is in flight and started again; the
// score waits, retries and completes with the same rewards. Stopped for good, the next score
// fails after its retries with an error naming the endpoint.
func TestTritonRestart(t *testing.T) {
	srv := startTriton(t)
	url := srv.URL()
	c := exporterConfigs(t, filepath.Join("testdata", "clip-tiny"))[1]
	c.Model, c.Kind, c.BatchSize = "", "remote", 4
	retries := 10
	c.Remote = RemoteConfig{URL: url, Model: "aesthetic", Timeout: "5s", Retries: &retries, Backoff: "250ms", MaxBackoff: "4s"}
	ctx := context.Background()
	set, err := Open(ctx, []Config{c}, "", onnxrt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	ims := make([]Image, 64)
	for i := range ims {
		ims[i] = randomImage(32, 32, rng)
	}
	prompts := make([]Prompt, len(ims))
	want, err := set.Score(ctx, ims, prompts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	restarted := make(chan time.Time)
	go func() {
		time.Sleep(2 * time.Second)
		if err := srv.Start(); err != nil {
			t.Error(err)
		}
		restarted <- time.Now()
	}()
	start := time.Now()
	got, err := set.Score(ctx, ims, prompts)
	back := <-restarted
	if err != nil {
		t.Fatalf("score across a restart: %v", err)
	}
	t.Logf("server down at 0s, back at %.1fs; the score waited and returned at %.1fs", back.Sub(start).Seconds(), time.Since(start).Seconds())
	for i := range ims {
		if got.Total[i] != want.Total[i] {
			t.Errorf("image %d after restart: %v, before %v", i, got.Total[i], want.Total[i])
		}
	}
	srv.Stop()
	start = time.Now()
	_, err = set.Score(ctx, ims, prompts)
	t.Logf("server gone: after %.1fs: %v", time.Since(start).Seconds(), err)
	if err == nil || !strings.Contains(err.Error(), url+"/v2/models/aesthetic/infer") || !strings.Contains(err.Error(), "after 11 attempts") {
		t.Errorf("server gone: %v, want an error naming the endpoint after 11 attempts", err)
	}
}
