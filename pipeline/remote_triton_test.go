//go:build triton

package pipeline

// A run whose reward is served by a real NVIDIA Triton (PyTriton, exporters/serve) on
// 127.0.0.1, restarted mid-run and then stopped for good. Not part of the Go suite (it needs
// the Python server): `just test-remote` runs
//
//	go test -tags triton -run Triton -v ./rewards ./pipeline

import (
	"context"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/internal/frozentest"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
	"github.com/densegrpo/densegrpo/rewards/kserve/kservetest"
)

func TestTritonRunServerRestart(t *testing.T) {
	model := filepath.Join(t.TempDir(), "bright.onnx")
	if err := frozentest.WriteBrightnessReward(model); err != nil {
		t.Fatal(err)
	}
	srv, err := kservetest.NewTriton("..", model, "bright", filepath.Join(t.TempDir(), "triton.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Stop() }()
	url := srv.URL()
	// Real defaults but for the retries: 250 ms doubling to 4 s, 20 retries (≈ 68 s of waiting:
	// Triton answers for up to 20 s while it stops, then takes some 10 s to load again on a
	// busy machine).
	block := remoteBlock(url, 20, "250ms", "4s")

	cfg, _ := fixtureWith(t, block, remoteRun...)
	straight, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := readMetrics(t, straight.Dir)
	var maxDiff float64
	for _, l := range want[1:] {
		maxDiff = math.Max(maxDiff, math.Abs(l["reward/served"].(float64)-l["reward/bright"].(float64)))
	}
	t.Logf("undisturbed run, 3 epochs: served (Triton) vs local reward means: max |diff| %.3g", maxDiff)
	if maxDiff > 1e-6 {
		t.Errorf("Triton's rewards differ from the local ones by up to %g", maxDiff)
	}

	t.Run("restart", func(t *testing.T) {
		cfg, _ := fixtureWith(t, block, remoteRun...)
		var log syncBuffer
		var asked, stopped, up time.Time
		back := make(chan error, 1)
		start := time.Now()
		res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t), Log: &log,
			OnEpoch: func(epoch int, _ runfiles.Line) {
				if epoch == 1 { // the run goes on into epoch 2 while Triton stops and starts
					go func() {
						asked = time.Now()
						srv.Stop()
						stopped = time.Now()
						err := srv.Start()
						up = time.Now()
						back <- err
					}()
				}
			}})
		if serr := <-back; serr != nil {
			t.Fatal(serr)
		}
		if err != nil {
			t.Fatalf("run across a Triton restart: %v\nlog:\n%s", err, log.String())
		}
		checkSameMetrics(t, "restarted Triton", readMetrics(t, res.Dir), want)
		retries := regexp.MustCompile(`reward "served": [^\n]*; retry \d+ of 20 in [^\n]*`).FindAllString(log.String(), -1)
		answered := regexp.MustCompile(`reward "served": \S+ answered after \d+ attempts over \S+`).FindAllString(log.String(), -1)
		t.Logf("Triton asked to stop %.1fs after the run started, gone %.1fs later, ready again %.1fs after that; run done at %.1fs, metrics equal to the undisturbed run's",
			asked.Sub(start).Seconds(), stopped.Sub(asked).Seconds(), up.Sub(stopped).Seconds(), time.Since(start).Seconds())
		t.Logf("%d retries logged, %d requests answered after retries", len(retries), len(answered))
		for _, l := range append(retries, answered...) {
			t.Log(l)
		}
		if len(answered) == 0 {
			t.Errorf("no request waited for the restarted server; log:\n%s", log.String())
		}
	})

	t.Run("gone", func(t *testing.T) {
		// A short retry budget (4 retries: ≈ 2.75 s) so the run gives up while Triton is down.
		cfg, _ := fixtureWith(t, remoteBlock(url, 4, "250ms", "1s"), append(append([]string{}, remoteRun...), "run.checkpoint_every=5")...)
		stopped := make(chan time.Time, 1)
		res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t),
			OnEpoch: func(epoch int, _ runfiles.Line) {
				if epoch == 1 {
					srv.Stop()
					stopped <- time.Now()
				}
			}})
		t.Logf("failed %.1fs after Triton stopped: %v", time.Since(<-stopped).Seconds(), err)
		if err == nil || !strings.Contains(err.Error(), "epoch 2: stage score: ") || !strings.Contains(err.Error(), url+"/v2/models/bright/infer") ||
			!strings.Contains(err.Error(), "checkpoint of epoch 1") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("run without its server: %v, want one line naming the stage, the endpoint and the checkpoint", err)
		}
		checkSameMetrics(t, "failed run", readMetrics(t, res.Dir), want[:2])
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		resumeSame(t, res.Dir, want)
	})
}
