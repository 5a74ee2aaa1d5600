package rl

import (
	"math"
	"testing"
)

// relClose reports whether got is within rel (relative, absolute near 0) of want.
func relClose(got, want, rel float64) bool {
	return math.Abs(got-want) <= rel*math.Max(math.Abs(want), 1e-30) || math.Abs(got-want) <= rel*1e-3
}

// Derivation of the expected sigmas. With shift 3, σ_min = shift(1/1000) = 0.003/1.002 = 1/334.
// The linspace points are u_i = 1 − i·(1 − 1/334)/(T−1), and σ_i = shift(u_i) = 3u/(1+2u).
//
//	T=1:  u = [1]             → σ = [1, 0]
//	T=2:  u = [1, 1/334]      → σ_1 = (3/334)/(1+2/334) = 3/336 = 1/112
//	T=10: u_i = (334−37i)/334 → σ_i = 3(334−37i)/(1002−74i):
//	      1, 891/928, 780/854, 669/780, 558/706, 447/632, 336/558, 225/484, 114/410, 3/336,
//	      then 0.
func TestSD3Schedule(t *testing.T) {
	tests := []struct {
		steps  int
		sigmas []float64
	}{
		{1, []float64{1, 0}},
		{2, []float64{1, 1.0 / 112, 0}},
		{10, []float64{1, 891.0 / 928, 780.0 / 854, 669.0 / 780, 558.0 / 706, 447.0 / 632,
			336.0 / 558, 225.0 / 484, 114.0 / 410, 3.0 / 336, 0}},
	}
	for _, tc := range tests {
		sched, err := SD3Schedule(tc.steps, DefaultShift)
		if err != nil {
			t.Fatalf("SD3Schedule(%d): %v", tc.steps, err)
		}
		if len(sched.Sigmas) != tc.steps+1 || len(sched.Timesteps) != tc.steps || sched.Steps() != tc.steps {
			t.Fatalf("T=%d: got %d sigmas and %d timesteps", tc.steps, len(sched.Sigmas), len(sched.Timesteps))
		}
		for i, want := range tc.sigmas {
			if got := float64(sched.Sigmas[i]); !relClose(got, want, 1e-6) {
				t.Errorf("T=%d: σ_%d = %.9g, want %.9g", tc.steps, i, got, want)
			}
			if i < tc.steps {
				if got := float64(sched.Timesteps[i]); !relClose(got, 1000*want, 1e-6) {
					t.Errorf("T=%d: timestep_%d = %.9g, want %.9g", tc.steps, i, got, 1000*want)
				}
				if dt := sched.Dt(i); !(dt < 0) {
					t.Errorf("T=%d: dt_%d = %g, want < 0", tc.steps, i, dt)
				}
			}
		}
		if sched.Sigmas[0] != 1 || sched.Sigmas[tc.steps] != 0 {
			t.Errorf("T=%d: endpoints %g, %g; want exactly 1 and 0", tc.steps, sched.Sigmas[0], sched.Sigmas[tc.steps])
		}
	}
}

func TestSD3ScheduleErrors(t *testing.T) {
	if _, err := SD3Schedule(0, 3); err == nil {
		t.Error("SD3Schedule(0, 3): want an error")
	}
	if _, err := SD3Schedule(10, 0); err == nil {
		t.Error("SD3Schedule(10, 0): want an error")
	}
}

// Derivation: T=10, a=0.7. Step 0 has σ=1, so the denominator uses σ_1 = 891/928:
// s_0 = 0.7·sqrt(1/(1−891/928)) = 0.7·sqrt(928/37). Step 1: s_1 = 0.7·sqrt(σ_1/(1−σ_1)) =
// 0.7·sqrt(891/37). CPS with a=1/3: sin(π/6) = 1/2, s_k = σ_{k+1}/2, s_0 = 891/1856; the last
// step has σ_T = 0 so s = 0.
func TestScheduleNoiseLevels(t *testing.T) {
	sched, err := SD3Schedule(10, DefaultShift)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		got, want float64
	}{
		{"sde s_0 (σ=1 rule)", float64(sched.SDEStd(0, 0.7)), 0.7 * math.Sqrt(928.0/37)},
		{"sde s_1", float64(sched.SDEStd(1, 0.7)), 0.7 * math.Sqrt(891.0/37)},
		{"cps s_0", float64(sched.CPSStd(0, 1.0/3)), 891.0 / 1856},
		{"cps s_9", float64(sched.CPSStd(9, 1.0/3)), 0},
		{"initial ψ(0)", float64(sched.InitialPsi(0.7)[0]), 0.7 * math.Sqrt(928.0/37)},
		{"StepStd calibrated", float64(StepStd(KindSDE, sched, 3, 0.7, []float32{0, 0, 0, 0.25})), 0.25},
	}
	for _, tc := range tests {
		if !relClose(tc.got, tc.want, 1e-6) {
			t.Errorf("%s = %.9g, want %.9g", tc.name, tc.got, tc.want)
		}
	}
}
