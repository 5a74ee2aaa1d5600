package pipeline

import (
	"fmt"
	"sort"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

// intVariable is an integer variable (a step counter, an RNG state) saved exactly in the
// checkpoint's JSON state.
type intVariable struct {
	DType  string  `json:"dtype"`
	Shape  []int   `json:"shape"`
	Values []int64 `json:"values"` // uint64 bit patterns stored as int64
}

// trainerVariables copies every variable of ctx that training changes besides the adapters —
// the optimizer's moments and step counter, gradient accumulators, RNG state — keyed by GoMLX
// scope and name ("/grpo_adamw/…/m"). Base weights (frozen) and the adapters (saved by name
// elsewhere) are left out. Integer variables are returned apart, exactly.
func trainerVariables(ctx *mlctx.Context, model *mmdit.Model) (floats map[string]safetensors.Tensor, ints map[string]intVariable, err error) {
	skip := map[string]bool{}
	for _, p := range model.Config.Params() {
		skip[p.Key] = true
	}
	for _, p := range model.LoRA.Params(model.Config) {
		skip[p.Key] = true
	}
	floats, ints = map[string]safetensors.Tensor{}, map[string]intVariable{}
	for v := range ctx.IterVariables() {
		if key, kerr := mmdit.ScopeToKey(strings.TrimPrefix(v.Scope(), ctx.Scope()), v.Name()); kerr == nil && skip[key] {
			continue
		}
		t, verr := v.Value()
		if verr != nil {
			return nil, nil, fmt.Errorf("read variable %s: %w", v.ScopeAndName(), verr)
		}
		id := v.ScopeAndName()
		switch v.DType() {
		case dtypes.Float32:
			data, err := tensors.CopyFlatData[float32](t)
			if err != nil {
				return nil, nil, fmt.Errorf("read variable %s: %w", id, err)
			}
			floats[id] = safetensors.Tensor{Shape: append([]int{}, v.Shape().Dimensions...), Data: data}
		case dtypes.Int64:
			data, err := tensors.CopyFlatData[int64](t)
			if err != nil {
				return nil, nil, fmt.Errorf("read variable %s: %w", id, err)
			}
			ints[id] = intVariable{DType: "int64", Shape: append([]int{}, v.Shape().Dimensions...), Values: data}
		case dtypes.Uint64:
			data, err := tensors.CopyFlatData[uint64](t)
			if err != nil {
				return nil, nil, fmt.Errorf("read variable %s: %w", id, err)
			}
			vals := make([]int64, len(data))
			for i, u := range data {
				vals[i] = int64(u)
			}
			ints[id] = intVariable{DType: "uint64", Shape: append([]int{}, v.Shape().Dimensions...), Values: vals}
		default:
			return nil, nil, fmt.Errorf("read variable %s: dtype %s cannot be checkpointed (want float32, int64 or uint64)", id, v.DType())
		}
	}
	return floats, ints, nil
}

// restoreTrainerVariables creates or overwrites the variables saved by trainerVariables.
func restoreTrainerVariables(ctx *mlctx.Context, floats map[string]safetensors.Tensor, ints map[string]intVariable) error {
	ids := make([]string, 0, len(floats)+len(ints))
	for id := range floats {
		ids = append(ids, id)
	}
	for id := range ints {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		i := strings.LastIndex(id, mlctx.ScopeSeparator)
		if i < 0 {
			return fmt.Errorf("restore variable %q: not a scope and name", id)
		}
		scope, name := id[:i], id[i+1:]
		if scope == "" {
			scope = mlctx.RootScope
		}
		var t *tensors.Tensor
		if f, ok := floats[id]; ok {
			t = tensors.FromFlatDataAndDimensions(f.Data, f.Shape...)
		} else if iv := ints[id]; iv.DType == "uint64" {
			vals := make([]uint64, len(iv.Values))
			for i, x := range iv.Values {
				vals[i] = uint64(x)
			}
			t = tensors.FromFlatDataAndDimensions(vals, iv.Shape...)
		} else {
			t = tensors.FromFlatDataAndDimensions(iv.Values, iv.Shape...)
		}
		if v := ctx.GetVariableByScopeAndName(scope, name); v != nil {
			if !v.Shape().Equal(t.Shape()) {
				return fmt.Errorf("restore variable %s: checkpoint has %s, model has %s", id, t.Shape(), v.Shape())
			}
			if err := v.SetValue(t); err != nil {
				return fmt.Errorf("restore variable %s: %w", id, err)
			}
			continue
		}
		ctx.InAbsPath(scope).Checked(false).VariableWithValue(name, t).SetTrainable(false)
	}
	return nil
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
