package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/internal/frozentest"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
	"github.com/densegrpo/densegrpo/rewards/kserve"
	"github.com/densegrpo/densegrpo/rewards/kserve/kservetest"
)

// remoteRun is smallRun for three epochs; the fixture's brightness reward is also served over
// KServe v2 as a second reward, "served" (remoteBlock).
var remoteRun = append(append([]string{}, smallRun...), "run.epochs=3")

// remoteBlock is a [[reward]] named "served": the model "bright" at url, with retries
// backoff·2^k capped at maxBackoff — short, to keep the test in seconds.
func remoteBlock(url string, retries int, backoff, maxBackoff string) string {
	return fmt.Sprintf(`
[[reward]]
name = "served"
kind = "remote"

[reward.remote]
url = %q
model = "bright"
timeout = "10s"
retries = %d
backoff = %q
max_backoff = %q
`, url, retries, backoff, maxBackoff)
}

// outage is a served brightness reward that a test can take down: after Arm, the next
// inference request is answered and then the server stops, as a server killed mid-run.
type outage struct {
	srv   *kservetest.Server
	armed atomic.Bool
	// down receives the time the server stopped.
	down chan time.Time
}

func serveBright(t *testing.T) *outage {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bright.onnx")
	if err := frozentest.WriteBrightnessReward(path); err != nil {
		t.Fatal(err)
	}
	m, closeModel, err := kservetest.ONNXModel(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeModel() })
	o := &outage{down: make(chan time.Time, 1)}
	infer := m.Infer
	m.Infer = func(in map[string]kserve.Tensor) (map[string]kserve.Tensor, error) {
		out, err := infer(in)
		if o.armed.CompareAndSwap(true, false) {
			go func() { o.srv.Stop(); o.down <- time.Now() }() // waits for this answer
		}
		return out, err
	}
	o.srv = kservetest.New(map[string]kservetest.Model{"bright": m})
	t.Cleanup(func() { o.srv.Close() })
	return o
}

// syncBuffer is a run's log written from the run and from scoring goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// remoteKeys are compared exactly between a disturbed run and an undisturbed one: the
// training metrics, both rewards' means and the final evaluation.
var remoteKeys = append(append([]string{}, trainingKeys...), "reward/bright", "reward/served", "eval_reward_mean", "eval_totals", "eval_rewards")

func checkSameMetrics(t *testing.T, what string, got, want []map[string]any) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d metrics lines, want %d", what, len(got), len(want))
	}
	for e := range want {
		for _, k := range remoteKeys {
			jg, _ := json.Marshal(got[e][k])
			jw, _ := json.Marshal(want[e][k])
			if string(jg) != string(jw) {
				t.Errorf("%s: epoch %d %s: %s, undisturbed %s", what, e, k, jg, jw)
			}
		}
	}
}

// A reward served over KServe v2 whose server is restarted mid-run (issue 23): the run waits,
// retries and ends as an undisturbed run does; when the server is gone for good the run fails
// with one line naming the stage, the endpoint and the model, keeps its last epoch's
// checkpoint and whole metrics lines, and --resume against the restored server continues
// exactly.
func TestRunRemoteRewardServerRestart(t *testing.T) {
	o := serveBright(t)
	url := o.srv.URL
	// Undisturbed: the served reward equals the local one on every image, so every mean does.
	cfg, _ := fixtureWith(t, remoteBlock(url, 40, "20ms", "200ms"), remoteRun...)
	straight, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := readMetrics(t, straight.Dir)
	for e, l := range want {
		if e > 0 && (l["reward/served"] == nil || l["reward/served"] != l["reward/bright"]) {
			t.Errorf("epoch %d: served reward %v, local %v; want equal", e, l["reward/served"], l["reward/bright"])
		}
	}

	t.Run("restart", func(t *testing.T) {
		cfg, _ := fixtureWith(t, remoteBlock(url, 40, "20ms", "200ms"), remoteRun...)
		const outageFor = 2 * time.Second
		back := make(chan error, 1)
		var log syncBuffer
		res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t), Log: &log,
			OnEpoch: func(epoch int, _ runfiles.Line) {
				if epoch == 1 {
					o.armed.Store(true) // down after epoch 2's first request
					go func() {
						down := <-o.down
						time.Sleep(outageFor - time.Since(down))
						back <- o.srv.Restart()
					}()
				}
			}})
		if rerr := within(t, back); rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			t.Fatalf("run across a restart of its reward server: %v\nlog:\n%s", err, log.String())
		}
		checkSameMetrics(t, "restarted server", readMetrics(t, res.Dir), want)
		// The log says why the run waited: each retry, then the answer.
		retries := regexp.MustCompile(`reward "served": POST `+regexp.QuoteMeta(url)+`/v2/models/bright/infer: .*connection refused; retry \d+ of 40 in \S+`).FindAllString(log.String(), -1)
		answered := regexp.MustCompile(`reward "served": `+regexp.QuoteMeta(url)+`/v2/models/bright/infer answered after (\d+) attempts over (\S+)`).FindAllStringSubmatch(log.String(), -1)
		if len(retries) == 0 || len(answered) == 0 {
			t.Fatalf("the log does not say the run waited for its reward server:\n%s", log.String())
		}
		t.Logf("server down %s: %d retries logged (first: %s); %d requests answered after retries, e.g. after %s attempts over %s",
			outageFor, len(retries), retries[0], len(answered), answered[0][1], answered[0][2])
	})

	t.Run("gone", func(t *testing.T) {
		// Checkpoints every 5 epochs: only the failure writes epoch 1's.
		sets := append(append([]string{}, remoteRun...), "run.checkpoint_every=5")
		cfg, _ := fixtureWith(t, remoteBlock(url, 3, "20ms", "40ms"), sets...)
		res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t),
			OnEpoch: func(epoch int, _ runfiles.Line) {
				if epoch == 1 {
					o.armed.Store(true)
				}
			}})
		within(t, o.down)
		if err == nil {
			t.Fatal("run without its reward server succeeded")
		}
		msg := err.Error()
		t.Logf("error: %s", msg)
		for _, part := range []string{"epoch 2: stage score: ", `reward "served"`, "POST " + url + "/v2/models/bright/infer: ", "connection refused",
			"(after 4 attempts over ", "checkpoint of epoch 1 in " + filepath.Join(res.Dir, "checkpoints", "epoch-000001"), "pipeline run --resume " + res.Dir} {
			if !strings.Contains(msg, part) {
				t.Errorf("error lacks %q", part)
			}
		}
		if strings.Contains(msg, "\n") {
			t.Errorf("error spans lines, want one")
		}
		// The run directory: epoch 1's checkpoint, no half-written one, whole metrics lines.
		entries, _ := os.ReadDir(filepath.Join(res.Dir, "checkpoints"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != "epoch-000001" {
			t.Errorf("checkpoints %v, want only epoch-000001", names)
		}
		data, err := os.ReadFile(filepath.Join(res.Dir, runfiles.MetricsFile))
		if err != nil || !bytes.HasSuffix(data, []byte("\n")) {
			t.Fatalf("metrics (%v) do not end with a whole line: %q", err, data)
		}
		checkSameMetrics(t, "failed run", readMetrics(t, res.Dir), want[:2])

		if err := o.srv.Restart(); err != nil {
			t.Fatal(err)
		}
		resumeSame(t, res.Dir, want)
	})
}

// An evaluation whose reward server is down when it starts waits for it, says so in its log
// (each retry, then the answer) and scores as an undisturbed evaluation does.
func TestEvaluateRemoteRewardServerRestart(t *testing.T) {
	o := serveBright(t)
	// One test prompt a batch: the evaluation asks the server once per prompt.
	cfg, _ := fixtureWith(t, remoteBlock(o.srv.URL, 40, "20ms", "200ms"), append(remoteRun, "eval.batch_size=1")...)
	policy := newTestPolicy(t, cfg, "")
	ctx := context.Background()
	want, err := Evaluate(ctx, cfg, policy, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	o.armed.Store(true) // down after the first prompt's answer
	// Back up once the evaluation has logged that it is waiting.
	var log syncBuffer
	back := make(chan error, 1)
	go func() {
		for !strings.Contains(log.String(), "; retry ") {
			time.Sleep(10 * time.Millisecond)
		}
		back <- o.srv.Restart()
	}()
	got, err := Evaluate(ctx, cfg, policy, EvalOptions{Log: &log})
	if err != nil {
		t.Fatalf("evaluate across a restart of its reward server (restarted once a retry is logged): %v\nlog:\n%s", err, log.String())
	}
	if rerr := within(t, back); rerr != nil {
		t.Fatal(rerr)
	}
	if got.RewardMean != want.RewardMean || fmt.Sprint(got.Totals) != fmt.Sprint(want.Totals) {
		t.Errorf("evaluation across a restart: mean %v totals %v; undisturbed %v %v", got.RewardMean, got.Totals, want.RewardMean, want.Totals)
	}
	if !strings.Contains(log.String(), `reward "served": POST `) || !strings.Contains(log.String(), " answered after ") {
		t.Errorf("the log does not say the evaluation waited for its reward server:\n%s", log.String())
	}
}

// within receives from ch, failing the test if nothing comes in a minute (the outage never
// happened: the run ended before it).
func within[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatal("the reward server was never taken down")
		panic("unreachable")
	}
}

// resumeSame continues the run in dir with --resume and checks that its metrics are then
// those of the undisturbed run.
func resumeSame(t *testing.T, dir string, want []map[string]any) {
	t.Helper()
	resumed, err := LoadRunConfig(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), resumed, RunOptions{Backend: nntest.Backend(t), Resume: true}); err != nil {
		t.Fatal(err)
	}
	checkSameMetrics(t, "resumed run", readMetrics(t, dir), want)
}
