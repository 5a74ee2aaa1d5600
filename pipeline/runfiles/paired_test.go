package runfiles

import (
	"math"
	"strings"
	"testing"
)

// Hand-derived: differences 0.5, 0, −0.25, 0.75 → mean 0.25; deviations ±0.25, ±0.5 → sum of
// squares 0.625, sample variance 0.625/3, SE = sqrt(0.625/3)/2 = 0.2282177.
func TestPaired(t *testing.T) {
	c, err := Paired([]float64{0, 0.5, 1, 0.25}, []float64{0.5, 0.5, 0.75, 1})
	if err != nil {
		t.Fatal(err)
	}
	if c.N != 4 || c.Mean != 0.25 || math.Abs(c.StdErr-math.Sqrt(0.625/3)/2) > 1e-15 || c.Better != 2 || c.Worse != 1 || c.Same != 1 {
		t.Errorf("Paired = %+v", c)
	}
	if got, want := c.String(), "+0.2500 ± 0.2282 (standard error; 2 prompts better, 1 worse, 1 same)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if s := c.Sigmas(); math.Abs(s-0.25/c.StdErr) > 1e-12 {
		t.Errorf("Sigmas() = %v", s)
	}
	if _, err := Paired([]float64{1, 2}, []float64{1}); err == nil || !strings.Contains(err.Error(), "2 prompts before, 1 after") {
		t.Errorf("length mismatch: %v", err)
	}
	if _, err := Paired([]float64{1}, []float64{1}); err == nil || !strings.Contains(err.Error(), "want at least 2") {
		t.Errorf("one prompt: %v", err)
	}
	// Mean and standard error of one list: 0, 0.5, 1 → mean 0.5, sample std 0.5, SE 0.5/√3.
	if m, se := MeanStdErr([]float64{0, 0.5, 1}); m != 0.5 || math.Abs(se-0.5/math.Sqrt(3)) > 1e-15 {
		t.Errorf("MeanStdErr = %v, %v", m, se)
	}
}
