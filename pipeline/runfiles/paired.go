package runfiles

import (
	"fmt"
	"math"
)

// Change is after − before of two evaluations of the same prompts with the same initial noise,
// prompt by prompt (Eval.Totals). Scores of single prompts move in coarse steps (an OCR score
// of a 4-character string in quarters), so the difference of two means over a few dozen
// prompts is noisy; the standard error of the paired differences says how noisy, and is far
// smaller than that of either mean.
type Change struct {
	N int
	// Mean is the mean of after − before over the prompts, StdErr its standard error (sample
	// standard deviation of the differences / √N).
	Mean, StdErr float64
	// Better, Worse and Same count the prompts whose score rose, fell or stayed.
	Better, Worse, Same int
}

// Paired compares two lists of per-prompt scores of the same prompts, in the same order; it
// needs at least two prompts.
func Paired(before, after []float64) (Change, error) {
	n := len(after)
	switch {
	case len(before) != n:
		return Change{}, fmt.Errorf("compare evaluations: %d prompts before, %d after", len(before), n)
	case n < 2:
		return Change{}, fmt.Errorf("compare evaluations: %d prompts, want at least 2", n)
	}
	c := Change{N: n}
	var sum float64
	for i := range after {
		d := after[i] - before[i]
		sum += d
		switch {
		case d > 0:
			c.Better++
		case d < 0:
			c.Worse++
		default:
			c.Same++
		}
	}
	c.Mean = sum / float64(n)
	var ss float64
	for i := range after {
		d := after[i] - before[i] - c.Mean
		ss += d * d
	}
	c.StdErr = math.Sqrt(ss/float64(n-1)) / math.Sqrt(float64(n))
	return c, nil
}

// Sigmas is Mean in standard errors (±Inf when every prompt moved by the same amount, NaN when
// none moved).
func (c Change) Sigmas() float64 { return c.Mean / c.StdErr }

// String is e.g. "+0.0312 ± 0.0150 (standard error; 9 prompts better, 4 worse, 19 same)".
func (c Change) String() string {
	return fmt.Sprintf("%+.4f ± %.4f (standard error; %d prompts better, %d worse, %d same)", c.Mean, c.StdErr, c.Better, c.Worse, c.Same)
}

// MeanStdErr is the mean of per-prompt scores and its standard error (sample standard
// deviation / √n; 0 for fewer than two scores).
func MeanStdErr(scores []float64) (mean, stdErr float64) {
	n := float64(len(scores))
	if n == 0 {
		return math.NaN(), 0
	}
	for _, v := range scores {
		mean += v
	}
	mean /= n
	if n < 2 {
		return mean, 0
	}
	var ss float64
	for _, v := range scores {
		ss += (v - mean) * (v - mean)
	}
	return mean, math.Sqrt(ss/(n-1)) / math.Sqrt(n)
}
