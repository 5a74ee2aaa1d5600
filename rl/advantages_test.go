package rl

import (
	"math"
	"slices"
	"testing"
)

func checkAdv(t *testing.T, name string, got [][]float64, want [][]float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d rows, want %d", name, len(got), len(want))
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("%s: row %d has %d steps, want %d", name, i, len(got[i]), len(want[i]))
		}
		for k := range want[i] {
			if math.Abs(got[i][k]-want[i][k]) > 1e-12 {
				t.Errorf("%s: A[%d][%d] = %.15g, want %.15g", name, i, k, got[i][k], want[i][k])
			}
		}
	}
}

func TestSparseAdvantages(t *testing.T) {
	prompts := []int{0, 0, 1, 1}
	rewards := []float64{1, 3, 5, 5}
	// Group std: group 0 has mean 2, std 1 → ∓1/1.0001; group 1 has std 0 → 0/1e-4 = 0.
	g := 1 / 1.0001
	adv, err := SparseAdvantages(rewards, prompts, 2, AdvantageConfig{Std: StdGroup, Clip: 5})
	if err != nil {
		t.Fatal(err)
	}
	checkAdv(t, "group", adv, [][]float64{{-g, -g}, {g, g}, {0, 0}, {0, 0}})
	kept, dropped := DropZeroAdvantages(adv)
	if !slices.Equal(kept, []int{0, 1}) || !slices.Equal(dropped, []int{2, 3}) {
		t.Errorf("kept %v dropped %v, want [0 1] and [2 3]", kept, dropped)
	}

	// Global std: all rewards have mean 3.5, deviations −2.5, −0.5, 1.5, 1.5, variance 11/4.
	gs := 1 / (math.Sqrt(11.0/4) + 1e-4)
	adv, err = SparseAdvantages(rewards, prompts, 1, AdvantageConfig{Std: StdGlobal, Clip: 5})
	if err != nil {
		t.Fatal(err)
	}
	checkAdv(t, "global", adv, [][]float64{{-gs}, {gs}, {0}, {0}})

	// Clipping: one group [0, 0, 0, 10]: mean 2.5, std sqrt((3·6.25 + 56.25)/4) = sqrt(75/4);
	// A = 7.5/(std+1e-4) = 1.7320… → clipped to 1, the others −2.5/(std+1e-4).
	sd := math.Sqrt(75.0/4) + 1e-4
	adv, err = SparseAdvantages([]float64{0, 0, 0, 10}, []int{3, 3, 3, 3}, 1, AdvantageConfig{Std: StdGroup, Clip: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkAdv(t, "clip", adv, [][]float64{{-2.5 / sd}, {-2.5 / sd}, {-2.5 / sd}, {1}})
}

func TestDenseAdvantages(t *testing.T) {
	// Step 0: ΔR = [1, 3, 5, 5] as above → [−g, g, 0, 0].
	// Step 1: ΔR = [0, 0, 2, −2]; group 0 all zero → 0; group 1 mean 0, std 2 → ±2/2.0001.
	// Step 2 is not trained (steps = 2).
	delta := [][]float64{{1, 0, 9}, {3, 0, 9}, {5, 2, 9}, {5, -2, 9}}
	prompts := []int{0, 0, 1, 1}
	g, h := 1/1.0001, 2/2.0001
	adv, err := DenseAdvantages(delta, prompts, 2, AdvantageConfig{Std: StdGroup, Clip: 5})
	if err != nil {
		t.Fatal(err)
	}
	checkAdv(t, "group", adv, [][]float64{{-g, 0}, {g, 0}, {0, h}, {0, -h}})
	if kept, dropped := DropZeroAdvantages(adv); len(dropped) != 0 || len(kept) != 4 {
		t.Errorf("dropped %v, want none", dropped)
	}
	// Global std per step: step 0 variance 11/4 as above; step 1: ΔR mean 0, variance 8/4 = 2.
	gs, hs := 1/(math.Sqrt(11.0/4)+1e-4), 2/(math.Sqrt(2)+1e-4)
	adv, err = DenseAdvantages(delta, prompts, 2, AdvantageConfig{Std: StdGlobal, Clip: 5})
	if err != nil {
		t.Fatal(err)
	}
	checkAdv(t, "global", adv, [][]float64{{-gs, 0}, {gs, 0}, {0, hs}, {0, -hs}})
}

func TestAdvantageErrors(t *testing.T) {
	if _, err := SparseAdvantages([]float64{1}, []int{0}, 1, AdvantageConfig{Std: "batch", Clip: 5}); err == nil {
		t.Error("unknown std mode: want an error")
	}
	if _, err := SparseAdvantages([]float64{1}, []int{0}, 1, AdvantageConfig{Std: StdGroup}); err == nil {
		t.Error("clip 0: want an error")
	}
	if _, err := DenseAdvantages([][]float64{{1}}, []int{0, 1}, 1, AdvantageConfig{Std: StdGroup, Clip: 5}); err == nil {
		t.Error("mismatched prompts: want an error")
	}
	if _, err := DenseAdvantages([][]float64{{1}}, []int{0}, 2, AdvantageConfig{Std: StdGroup, Clip: 5}); err == nil {
		t.Error("too few step rewards: want an error")
	}
}
