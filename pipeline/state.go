package pipeline

import (
	"fmt"
	"strings"

	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

// trainerVariables copies every variable of ctx that training changes besides the adapters —
// the optimizer's moments and step counter, gradient accumulators, RNG state. Base weights
// (frozen) and the adapters (saved by name elsewhere) are left out.
func trainerVariables(ctx *mlctx.Context, model *mmdit.Model) (map[string]safetensors.Tensor, map[string]nn.IntVariable, error) {
	return nn.SnapshotVariables(ctx, trainerVariable(ctx, model))
}

// restoreTrainerVariables puts back what trainerVariables saved.
func restoreTrainerVariables(ctx *mlctx.Context, model *mmdit.Model, floats map[string]safetensors.Tensor, ints map[string]nn.IntVariable) error {
	return nn.RestoreVariables(ctx, floats, ints, trainerVariable(ctx, model))
}

// trainerVariable selects the variables that are neither base weights nor adapters.
func trainerVariable(ctx *mlctx.Context, model *mmdit.Model) func(v *mlctx.Variable) bool {
	modelKeys := map[string]bool{}
	for _, p := range model.Config.Params() {
		modelKeys[p.Key] = true
	}
	for _, p := range model.LoRA.Params(model.Config) {
		modelKeys[p.Key] = true
	}
	return func(v *mlctx.Variable) bool {
		key, err := mmdit.ScopeToKey(strings.TrimPrefix(v.Scope(), ctx.Scope()), v.Name())
		return err != nil || !modelKeys[key]
	}
}

// ema is the exponential moving average of the adapters used for evaluation, with Flow-GRPO's
// warm-up decay min((1+n)/(10+n), max) after n updates.
type ema struct {
	Max     float64
	Updates int
	Values  map[string]safetensors.Tensor
}

func newEMA(max float64, init map[string]safetensors.Tensor) *ema {
	e := &ema{Max: max, Values: map[string]safetensors.Tensor{}}
	for k, t := range init {
		e.Values[k] = safetensors.Tensor{Shape: append([]int{}, t.Shape...), Data: append([]float32{}, t.Data...)}
	}
	return e
}

// decay is the weight of the old average at the next update.
func (e *ema) decay() float64 {
	n := float64(e.Updates)
	return min((1+n)/(10+n), e.Max)
}

// Update folds the current adapters into the average.
func (e *ema) Update(current map[string]safetensors.Tensor) error {
	d := float32(e.decay())
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
