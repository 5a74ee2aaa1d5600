package nn

import (
	"fmt"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

// EMA is an exponential moving average of named float32 tensors (model weights), with the
// warm-up decay min((1+n)/(10+n), Max) after n updates that Flow-GRPO uses: early updates
// follow the weights closely, so a short run's average is not stuck at the initialisation.
type EMA struct {
	Max     float64
	Updates int
	Values  map[string]safetensors.Tensor
}

// NewEMA starts an average at a copy of init.
func NewEMA(max float64, init map[string]safetensors.Tensor) *EMA {
	return &EMA{Max: max, Values: safetensors.Clone(init)}
}

// Decay is the weight of the old average at the next update.
func (e *EMA) Decay() float64 {
	n := float64(e.Updates)
	return min((1+n)/(10+n), e.Max)
}

// Update folds current into the average; every tensor of current must be in it with the
// same number of elements.
func (e *EMA) Update(current map[string]safetensors.Tensor) error {
	d := float32(e.Decay())
	for k, t := range current {
		avg, ok := e.Values[k]
		if !ok || len(avg.Data) != len(t.Data) {
			return fmt.Errorf("ema update: tensor %q does not match the average", k)
		}
		for i, w := range t.Data {
			avg.Data[i] = d*avg.Data[i] + (1-d)*w
		}
	}
	e.Updates++
	return nil
}
