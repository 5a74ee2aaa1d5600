package rl

import (
	"fmt"
	"math"
	"slices"

	"github.com/densegrpo/densegrpo/internal/choice"
)

// StdMode selects the standard deviation advantages are divided by.
type StdMode string

// The std modes of grpo.std.
const (
	// StdGroup divides by the std of the sample's own group (its prompt's samples).
	StdGroup StdMode = "group"
	// StdGlobal divides by the std over the whole epoch batch (Flow-GRPO's default).
	StdGlobal StdMode = "global"
)

// StdModes lists the std modes (the values of grpo.std).
var StdModes = []StdMode{StdGroup, StdGlobal}

// Valid reports whether m names a known std mode.
func (m StdMode) Valid() bool { return slices.Contains(StdModes, m) }

// advEpsilon is added to every std before dividing, as Flow-GRPO does.
const advEpsilon = 1e-4

// AdvantageConfig configures GRPO advantages.
type AdvantageConfig struct {
	// Std is StdGroup or StdGlobal.
	Std StdMode
	// Clip clips advantages to ±Clip; must be > 0 (Flow-GRPO: 5).
	Clip float64
}

func (c AdvantageConfig) validate() error {
	if !c.Std.Valid() {
		return fmt.Errorf("advantage config: field std: got %q, want %s", c.Std, choice.Want(StdModes))
	}
	if !(c.Clip > 0) {
		return fmt.Errorf("advantage config: field adv_clip: got %v, want > 0", c.Clip)
	}
	return nil
}

// normalize returns (v_i − mean of v over i's group) / (std + 1e-4), clipped, where groups are
// the samples with the same prompt id and std is the population std (numpy's np.std) of the
// group or of all of v.
func normalize(v []float64, prompts []int, cfg AdvantageConfig) []float64 {
	groups := map[int][]int{}
	for i, p := range prompts {
		groups[p] = append(groups[p], i)
	}
	_, globalStd := MeanStd(v)
	out := make([]float64, len(v))
	for _, members := range groups {
		vals := make([]float64, len(members))
		for j, i := range members {
			vals[j] = v[i]
		}
		mean, std := MeanStd(vals)
		if cfg.Std == StdGlobal {
			std = globalStd
		}
		for _, i := range members {
			a := (v[i] - mean) / (std + advEpsilon)
			out[i] = math.Max(-cfg.Clip, math.Min(cfg.Clip, a))
		}
	}
	return out
}

// MeanStd returns the mean and the population standard deviation (numpy's np.std) of v, NaN
// for none.
func MeanStd(v []float64) (mean, std float64) {
	if len(v) == 0 {
		return math.NaN(), math.NaN()
	}
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	for _, x := range v {
		std += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(std / float64(len(v)))
}

// SparseAdvantages are Flow-GRPO's advantages: A^i = (R^i − mean_group(R)) / (std + 1e-4),
// clipped to ±Clip, and broadcast to each of the steps trained steps: out[i][k].
// prompts[i] is sample i's prompt id (the group).
func SparseAdvantages(rewards []float64, prompts []int, steps int, cfg AdvantageConfig) ([][]float64, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("sparse advantages: %w", err)
	}
	if len(rewards) != len(prompts) || len(rewards) == 0 {
		return nil, fmt.Errorf("sparse advantages: got %d rewards and %d prompt ids, want the same non-zero count", len(rewards), len(prompts))
	}
	a := normalize(rewards, prompts, cfg)
	out := make([][]float64, len(a))
	for i := range out {
		out[i] = make([]float64, steps)
		for k := range out[i] {
			out[i][k] = a[i]
		}
	}
	return out, nil
}

// DenseAdvantages are DenseGRPO's advantages: per step k, A_k^i = (ΔR_k^i − mean_group(ΔR_k)) /
// (std_k + 1e-4), clipped to ±Clip, for the first steps steps: out[i][k]. delta[i][k] is ΔR_k^i.
func DenseAdvantages(delta [][]float64, prompts []int, steps int, cfg AdvantageConfig) ([][]float64, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("dense advantages: %w", err)
	}
	if len(delta) != len(prompts) || len(delta) == 0 {
		return nil, fmt.Errorf("dense advantages: got %d samples and %d prompt ids, want the same non-zero count", len(delta), len(prompts))
	}
	out := make([][]float64, len(delta))
	for i := range out {
		if len(delta[i]) < steps {
			return nil, fmt.Errorf("dense advantages: sample %d has %d step rewards, want >= %d", i, len(delta[i]), steps)
		}
		out[i] = make([]float64, steps)
	}
	col := make([]float64, len(delta))
	for k := range steps {
		for i := range delta {
			col[i] = delta[i][k]
		}
		for i, a := range normalize(col, prompts, cfg) {
			out[i][k] = a
		}
	}
	return out, nil
}

// DropZeroAdvantages splits the samples into those kept for training and those dropped because
// their advantage is 0 at every trained step (they would contribute no policy gradient).
func DropZeroAdvantages(adv [][]float64) (kept, dropped []int) {
	for i, row := range adv {
		zero := true
		for _, a := range row {
			if a != 0 {
				zero = false
				break
			}
		}
		if zero {
			dropped = append(dropped, i)
		} else {
			kept = append(kept, i)
		}
	}
	return kept, dropped
}
