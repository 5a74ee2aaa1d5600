package rl

import (
	"context"
	"math"
	"testing"
)

// Four steps, N = 8 trajectories, ε1 = 2, ε2 = 0.01, three rounds with the same signs:
//
//	step 0: 4 positive, 4 negative        → |0| < 2, balanced   → ψ rises by 0.03
//	step 1: 8 positive                    → |8| ≥ 2, one-sided  → ψ falls by 0.03
//	step 2: 5 positive, 3 negative        → |2| ≥ 2, one-sided  → ψ falls by 0.03
//	step 3: 3 positive, 4 negative, 1 zero → |−1| < 2, balanced → ψ rises by 0.03
func TestCalibrate(t *testing.T) {
	sched, err := SD3Schedule(4, DefaultShift)
	if err != nil {
		t.Fatal(err)
	}
	signs := [4][8]float64{
		{1, -1, 1, -1, 1, -1, 1, -1},
		{1, 1, 1, 1, 1, 1, 1, 1},
		{1, 1, 1, 1, 1, -1, -1, -1},
		{1, 1, 1, -1, -1, -1, -1, 0},
	}
	var seen [][]float32
	deltas := func(_ context.Context, it int, psi []float32) ([][]float64, error) {
		seen = append(seen, psi)
		out := make([][]float64, 8)
		for i := range out {
			out[i] = make([]float64, 4)
			for k := range 4 {
				out[i][k] = signs[k][i] * float64(it+1)
			}
		}
		return out, nil
	}
	cal, err := Calibrate(context.Background(), sched, DefaultCalibrateConfig(3), deltas)
	if err != nil {
		t.Fatal(err)
	}
	start := sched.InitialPsi(0.7)
	wantDir := []float64{1, -1, -1, 1}
	for k := range 4 {
		want := float64(start[k]) + wantDir[k]*0.03
		if math.Abs(float64(cal.Psi[k])-want) > 1e-5 {
			t.Errorf("ψ(%d) = %.6f, want %.6f (start %.6f)", k, cal.Psi[k], want, start[k])
		}
	}
	if len(cal.Rounds) != 3 || len(seen) != 3 {
		t.Fatalf("got %d rounds and %d callbacks, want 3", len(cal.Rounds), len(seen))
	}
	wantPos, wantNeg := []int{4, 8, 5, 3}, []int{4, 0, 3, 4}
	for r, round := range cal.Rounds {
		for k := range 4 {
			if round.Positive[k] != wantPos[k] || round.Negative[k] != wantNeg[k] {
				t.Errorf("round %d step %d: %d positive %d negative, want %d and %d", r, k, round.Positive[k], round.Negative[k], wantPos[k], wantNeg[k])
			}
			if round.Psi[k] != seen[r][k] {
				t.Errorf("round %d step %d: recorded ψ %v, callback saw %v", r, k, round.Psi[k], seen[r][k])
			}
		}
	}
	if math.Abs(float64(seen[1][0]-seen[0][0])-0.01) > 1e-6 {
		t.Errorf("round 1 sampled with ψ(0) = %v after %v, want +0.01", seen[1][0], seen[0][0])
	}
}

func TestCalibrateFloorAndErrors(t *testing.T) {
	sched, _ := SD3Schedule(2, DefaultShift)
	// Always one-sided: ψ falls by ε2 per round but never below ε2.
	cal, err := Calibrate(context.Background(), sched, CalibrateConfig{Iterations: 50, NoiseLevel: 0.1, Eps1: 2, Eps2: 0.01},
		func(context.Context, int, []float32) ([][]float64, error) {
			return [][]float64{{1, 1}, {1, 1}, {1, 1}}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	for k, p := range cal.Psi {
		if math.Abs(float64(p)-0.01) > 1e-6 {
			t.Errorf("ψ(%d) = %v, want the floor 0.01", k, p)
		}
	}
	if _, err := Calibrate(context.Background(), sched, CalibrateConfig{Iterations: 0, NoiseLevel: 0.7, Eps1: 2, Eps2: 0.01}, nil); err == nil {
		t.Error("0 iterations: want an error")
	}
}
