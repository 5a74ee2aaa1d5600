package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// Stage names, as they appear in metrics (`stage_seconds`, spelled in package runfiles) and
// errors.
const (
	StageRollout   = runfiles.StageRollout
	StageLookahead = runfiles.StageLookahead
	StageDecode    = runfiles.StageDecode
	StageScore     = runfiles.StageScore
	StageTrain     = runfiles.StageTrain
)

// stageFuncs are the per-minibatch stages of one epoch's data collection. Each works on the
// batch in place; rollout creates it. They are plain functions so that the same work runs
// either overlapped (goroutines over bounded channels) or one stage after another.
type stageFuncs[B any] struct {
	rollout   func(ctx context.Context, j int) (B, error)
	lookahead func(ctx context.Context, b B) error
	decode    func(ctx context.Context, b B) error
	score     func(ctx context.Context, b B) error
}

// stageWorkers are the numbers of concurrent workers of the stages that may have several.
type stageWorkers struct{ lookahead, score int }

// StageError says which stage failed.
type StageError struct {
	Stage string
	Err   error
}

func (e *StageError) Error() string { return fmt.Sprintf("stage %s: %v", e.Stage, e.Err) }
func (e *StageError) Unwrap() error { return e.Err }

// stageTimer adds up the busy seconds of each stage; safe for concurrent use.
type stageTimer struct {
	mu   sync.Mutex
	busy map[string]float64
}

func newStageTimer() *stageTimer { return &stageTimer{busy: map[string]float64{}} }

// do runs fn as stage work: timed, panics turned into errors, errors tagged with the stage.
// A cancelled context is passed through untagged: it is the consequence of another failure
// (or of Ctrl-C), not this stage's.
func (t *stageTimer) do(ctx context.Context, stage string, fn func() error) (err error) {
	start := time.Now()
	func() {
		defer nn.Recover(&err)
		err = fn()
	}()
	t.mu.Lock()
	t.busy[stage] += time.Since(start).Seconds()
	t.mu.Unlock()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return err
	}
	return &StageError{Stage: stage, Err: err}
}

func (t *stageTimer) snapshot() map[string]float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]float64, len(t.busy))
	for k, v := range t.busy {
		out[k] = v
	}
	return out
}

// runStages collects n minibatches through the stages. With overlap, rollout of minibatch
// j+1 runs while minibatch j is in look-ahead, decoding or scoring: each stage is a goroutine
// that owns and closes its output channel and selects every send against ctx.Done(), all
// under one errgroup; the first error cancels the others and is returned. Without overlap the
// same functions run one after another. Batches are returned in minibatch order.
//
// Look-ahead and scoring may run several workers (w.lookahead, w.score), each taking the next
// minibatch: with few large GoMLX computations per stage this is what puts the second core to
// work while the first look-ahead is still running.
func runStages[B any](ctx context.Context, n int, st stageFuncs[B], overlap bool, buffer int, w stageWorkers, timer *stageTimer) ([]B, error) {
	out := make([]B, n)
	if !overlap {
		for j := range n {
			var b B
			if err := timer.do(ctx, StageRollout, func() (err error) { b, err = st.rollout(ctx, j); return err }); err != nil {
				return nil, err
			}
			for _, s := range []struct {
				name string
				fn   func(context.Context, B) error
			}{{StageLookahead, st.lookahead}, {StageDecode, st.decode}, {StageScore, st.score}} {
				if err := timer.do(ctx, s.name, func() error { return s.fn(ctx, b) }); err != nil {
					return nil, err
				}
			}
			out[j] = b
		}
		return out, nil
	}

	type item struct {
		j int
		b B
	}
	g, gctx := errgroup.WithContext(ctx)
	send := func(ch chan<- item, it item) error {
		select {
		case ch <- it:
			return nil
		case <-gctx.Done():
			return gctx.Err()
		}
	}
	// pass runs one stage over every item of in, forwarding to out.
	pass := func(name string, fn func(context.Context, B) error, in <-chan item, out chan<- item) error {
		for it := range in {
			if err := timer.do(gctx, name, func() error { return fn(gctx, it.b) }); err != nil {
				return err
			}
			if err := send(out, it); err != nil {
				return err
			}
		}
		return nil
	}
	rolled := make(chan item, buffer)
	looked := make(chan item, buffer)
	decoded := make(chan item, buffer)
	scored := make(chan item, buffer)
	g.Go(func() error {
		defer close(rolled)
		for j := range n {
			var b B
			if err := timer.do(gctx, StageRollout, func() (err error) { b, err = st.rollout(gctx, j); return err }); err != nil {
				return err
			}
			if err := send(rolled, item{j, b}); err != nil {
				return err
			}
		}
		return nil
	})
	// stage runs workers passes of one stage over in and closes out when all have returned.
	stage := func(name string, fn func(context.Context, B) error, workers int, in <-chan item, out chan<- item) {
		var wg sync.WaitGroup
		for range max(1, workers) {
			wg.Add(1)
			g.Go(func() error { defer wg.Done(); return pass(name, fn, in, out) })
		}
		g.Go(func() error { wg.Wait(); close(out); return nil })
	}
	stage(StageLookahead, st.lookahead, w.lookahead, rolled, looked)
	stage(StageDecode, st.decode, 1, looked, decoded)
	stage(StageScore, st.score, w.score, decoded, scored)
	// The collector drains scored until it is closed, so no stage blocks on a send after an
	// error; it stops early only through the group context.
	g.Go(func() error {
		for it := range scored {
			out[it.j] = it.b
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}
