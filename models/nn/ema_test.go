package nn

import (
	"math"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

func TestEMADecay(t *testing.T) {
	// decay min((1+n)/(10+n), 0.9): n=0 → 0.1, n=1 → 2/11, n=80 → 0.9 (81/90 = 0.9 exactly).
	e := NewEMA(0.9, nil)
	for _, tc := range []struct {
		n    int
		want float64
	}{{0, 0.1}, {1, 2.0 / 11}, {80, 0.9}, {1000, 0.9}} {
		e.Updates = tc.n
		if got := e.Decay(); math.Abs(got-tc.want) > 1e-15 {
			t.Errorf("decay after %d updates = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func TestEMAUpdate(t *testing.T) {
	// Start at 0; updates with 10 then 20: decay 0.1 → 0.1·0 + 0.9·10 = 9, then 2/11 →
	// (2/11)·9 + (9/11)·20 = 18/11 + 180/11 = 18.
	init := map[string]safetensors.Tensor{"w": {Shape: []int{1}, Data: []float32{0}}}
	e := NewEMA(0.99, init)
	for _, x := range []float32{10, 20} {
		if err := e.Update(map[string]safetensors.Tensor{"w": {Shape: []int{1}, Data: []float32{x}}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.Values["w"].Data[0]; math.Abs(float64(got)-18) > 1e-5 {
		t.Errorf("average = %v, want 18", got)
	}
	if init["w"].Data[0] != 0 {
		t.Errorf("NewEMA aliased its init tensor")
	}
	if err := e.Update(map[string]safetensors.Tensor{"v": {Shape: []int{1}, Data: []float32{1}}}); err == nil {
		t.Errorf("Update with an unknown tensor: no error")
	}
}
