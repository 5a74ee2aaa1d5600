package pipeline

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type fakeBatch struct {
	j                int
	looked, dec, sco bool
}

func fakeStages(fail string, failAt int, calls *atomic.Int32) stageFuncs[*fakeBatch] {
	step := func(name string, mark func(*fakeBatch)) func(context.Context, *fakeBatch) error {
		return func(ctx context.Context, b *fakeBatch) error {
			calls.Add(1)
			if name == fail && b.j == failAt {
				if name == StageDecode {
					panic("decoder exploded")
				}
				return fmt.Errorf("%s broke on minibatch %d", name, b.j)
			}
			time.Sleep(2 * time.Millisecond)
			mark(b)
			return nil
		}
	}
	return stageFuncs[*fakeBatch]{
		rollout: func(ctx context.Context, j int) (*fakeBatch, error) {
			calls.Add(1)
			if fail == StageRollout && j == failAt {
				return nil, errors.New("rollout broke")
			}
			return &fakeBatch{j: j}, nil
		},
		lookahead: step(StageLookahead, func(b *fakeBatch) { b.looked = true }),
		decode:    step(StageDecode, func(b *fakeBatch) { b.dec = true }),
		score:     step(StageScore, func(b *fakeBatch) { b.sco = true }),
	}
}

func TestRunStagesOrderAndCompleteness(t *testing.T) {
	for _, overlap := range []bool{false, true} {
		var calls atomic.Int32
		timer := newStageTimer()
		got, err := runStages(context.Background(), 7, fakeStages("", -1, &calls), overlap, 2, stageWorkers{lookahead: 2, score: 3}, timer)
		if err != nil {
			t.Fatalf("overlap=%v: %v", overlap, err)
		}
		for j, b := range got {
			if b == nil || b.j != j || !b.looked || !b.dec || !b.sco {
				t.Fatalf("overlap=%v: batch %d = %+v, want minibatch %d through every stage", overlap, j, b, j)
			}
		}
		if calls.Load() != 7*4 {
			t.Errorf("overlap=%v: %d stage calls, want 28", overlap, calls.Load())
		}
		busy := timer.snapshot()
		for _, s := range []string{StageRollout, StageLookahead, StageDecode, StageScore} {
			if _, ok := busy[s]; !ok {
				t.Errorf("overlap=%v: no busy time for stage %s", overlap, s)
			}
		}
	}
}

// The first error cancels every stage, comes back naming its stage, and no goroutine outlives
// the call.
func TestRunStagesErrorsNameStageAndLeakNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	tests := []struct {
		stage string
		want  string
	}{
		{StageRollout, "stage rollout: rollout broke"},
		{StageLookahead, "stage lookahead: lookahead broke on minibatch 3"},
		{StageDecode, "stage decode: panic: decoder exploded"},
		{StageScore, "stage score: score broke on minibatch 3"},
	}
	for _, tc := range tests {
		for _, overlap := range []bool{false, true} {
			var calls atomic.Int32
			_, err := runStages(context.Background(), 20, fakeStages(tc.stage, 3, &calls), overlap, 1, stageWorkers{lookahead: 2, score: 2}, newStageTimer())
			var se *StageError
			if !errors.As(err, &se) || se.Stage != tc.stage || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("overlap=%v fail %s: error %v, want it to start %q", overlap, tc.stage, err, tc.want)
			}
			if n := calls.Load(); n >= 20*4 {
				t.Errorf("overlap=%v fail %s: %d stage calls: the error did not stop the others", overlap, tc.stage, n)
			}
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines: %d before, %d after: stages leaked", before, after)
	}
}

func TestRunStagesCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	st := fakeStages("", -1, &calls)
	inner := st.lookahead
	st.lookahead = func(c context.Context, b *fakeBatch) error {
		if b.j == 2 {
			cancel()
			<-c.Done()
			return c.Err()
		}
		return inner(c, b)
	}
	_, err := runStages(ctx, 10, st, true, 1, stageWorkers{lookahead: 2, score: 1}, newStageTimer())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	var se *StageError
	if errors.As(err, &se) {
		t.Errorf("cancellation reported as a failure of stage %s", se.Stage)
	}
}

// With two look-ahead workers two minibatches are in look-ahead at once; with overlap off,
// never more than one stage call runs.
func TestRunStagesLookaheadWorkers(t *testing.T) {
	for _, tc := range []struct {
		overlap bool
		workers int
		want    int32
	}{{true, 2, 2}, {true, 1, 1}, {false, 2, 1}} {
		var calls, inFlight, most atomic.Int32
		st := fakeStages("", -1, &calls)
		inner := st.lookahead
		st.lookahead = func(c context.Context, b *fakeBatch) error {
			now := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
			}
			// Hold the first minibatch until a second look-ahead starts (or long enough to
			// be sure none will), so concurrency shows up however the scheduler runs us.
			deadline := time.Now().Add(300 * time.Millisecond)
			for b.j == 0 && inFlight.Load() < 2 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			return inner(c, b)
		}
		if _, err := runStages(context.Background(), 4, st, tc.overlap, 2, stageWorkers{lookahead: tc.workers, score: 1}, newStageTimer()); err != nil {
			t.Fatal(err)
		}
		if got := most.Load(); got != tc.want {
			t.Errorf("overlap=%v, %d workers: at most %d look-aheads at once, want %d", tc.overlap, tc.workers, got, tc.want)
		}
	}
}
