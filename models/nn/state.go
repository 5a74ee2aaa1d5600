package nn

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

// IntVariable is an integer variable: dtype name, shape and values (uint64 values of the RNG
// state do not fit a float64, so they are stored as decimal integers).
type IntVariable struct {
	DType  string   `json:"dtype"`
	Shape  []int    `json:"shape"`
	Values []uint64 `json:"values"`
}

// variableKey is the checkpoint key of a variable: its absolute scope and its name joined by
// the scope separator ("/transformer/proj_out/weight", "/#rngState").
func VariableKey(scope, name string) string {
	if scope == mlctx.RootScope {
		return scope + name
	}
	return scope + mlctx.ScopeSeparator + name
}

// splitVariableKey inverts variableKey.
func SplitVariableKey(key string) (scope, name string, err error) {
	i := strings.LastIndex(key, mlctx.ScopeSeparator)
	if i < 0 || !strings.HasPrefix(key, mlctx.RootScope) || i == len(key)-1 {
		return "", "", fmt.Errorf("checkpoint variable key %q: want /scope/name", key)
	}
	scope = key[:i]
	if scope == "" {
		scope = mlctx.RootScope
	}
	return scope, key[i+1:], nil
}

// SnapshotVariables copies the variables of mctx for which keep returns true (all when keep is
// nil), keyed by VariableKey: float32 ones into tensors, integer ones (step counters, RNG
// state) into ints. Checkpoints are made of it.
func SnapshotVariables(mctx *mlctx.Context, keep func(v *mlctx.Variable) bool) (map[string]safetensors.Tensor, map[string]IntVariable, error) {
	floats := map[string]safetensors.Tensor{}
	ints := map[string]IntVariable{}
	for v := range mctx.IterVariables() {
		if keep != nil && !keep(v) {
			continue
		}
		key := VariableKey(v.Scope(), v.Name())
		value, err := v.Value()
		if err != nil {
			return nil, nil, fmt.Errorf("snapshot variable %q: %w", key, err)
		}
		shape := slices.Clone(value.Shape().Dimensions)
		switch value.DType() {
		case dtypes.Float32:
			data, err := tensors.CopyFlatData[float32](value)
			if err != nil {
				return nil, nil, fmt.Errorf("snapshot variable %q: %w", key, err)
			}
			floats[key] = safetensors.Tensor{Shape: shape, Data: data}
		case dtypes.Int64:
			data, err := tensors.CopyFlatData[int64](value)
			if err != nil {
				return nil, nil, fmt.Errorf("snapshot variable %q: %w", key, err)
			}
			vals := make([]uint64, len(data))
			for i, x := range data {
				vals[i] = uint64(x)
			}
			ints[key] = IntVariable{DType: "int64", Shape: shape, Values: vals}
		case dtypes.Uint64:
			data, err := tensors.CopyFlatData[uint64](value)
			if err != nil {
				return nil, nil, fmt.Errorf("snapshot variable %q: %w", key, err)
			}
			ints[key] = IntVariable{DType: "uint64", Shape: shape, Values: data}
		default:
			return nil, nil, fmt.Errorf("snapshot variable %q: dtype %s not supported (want float32, int64 or uint64)", key, value.DType())
		}
	}
	return floats, ints, nil
}

// RestoreVariables writes a snapshot back into mctx. The variables of mctx that keep selects
// (all when keep is nil) must all be in the snapshot, with the same shape; snapshot variables
// mctx lacks (optimizer moments, counters, learning rate) are created, not trainable, so that
// graph building reuses them.
func RestoreVariables(mctx *mlctx.Context, floats map[string]safetensors.Tensor, ints map[string]IntVariable, keep func(v *mlctx.Variable) bool) error {
	values := make(map[string]*tensors.Tensor, len(floats)+len(ints))
	for key, t := range floats {
		if len(t.Data) != t.NumElements() {
			return fmt.Errorf("restore variable %q: %d values for shape %v", key, len(t.Data), t.Shape)
		}
		values[key] = tensors.FromFlatDataAndDimensions(slices.Clone(t.Data), t.Shape...)
	}
	for key, iv := range ints {
		if _, dup := values[key]; dup {
			return fmt.Errorf("restore variable %q: stored both as float32 and as %s", key, iv.DType)
		}
		n := 1
		for _, d := range iv.Shape {
			n *= d
		}
		if len(iv.Values) != n {
			return fmt.Errorf("restore variable %q: %d values for shape %v", key, len(iv.Values), iv.Shape)
		}
		switch iv.DType {
		case "int64":
			data := make([]int64, n)
			for i, x := range iv.Values {
				data[i] = int64(x)
			}
			values[key] = tensors.FromFlatDataAndDimensions(data, iv.Shape...)
		case "uint64":
			values[key] = tensors.FromFlatDataAndDimensions(slices.Clone(iv.Values), iv.Shape...)
		default:
			return fmt.Errorf("restore variable %q: dtype %q, want int64 or uint64", key, iv.DType)
		}
	}
	for v := range mctx.IterVariables() {
		if keep != nil && !keep(v) {
			continue
		}
		key := VariableKey(v.Scope(), v.Name())
		t, ok := values[key]
		if !ok {
			return fmt.Errorf("restore: checkpoint has no variable %q (want %s)", key, v.Shape())
		}
		if !t.Shape().Equal(v.Shape()) {
			return fmt.Errorf("restore variable %q: checkpoint has %s, model has %s", key, t.Shape(), v.Shape())
		}
	}
	for _, key := range slices.Sorted(maps.Keys(values)) {
		scope, name, err := SplitVariableKey(key)
		if err != nil {
			return err
		}
		if v := mctx.GetVariableByScopeAndName(scope, name); v != nil {
			if err := v.SetValue(values[key]); err != nil {
				return fmt.Errorf("restore variable %q: %w", key, err)
			}
			continue
		}
		if err := Try(func() {
			mctx.InAbsPath(scope).Checked(false).VariableWithValue(name, values[key]).SetTrainable(false)
		}); err != nil {
			return fmt.Errorf("restore variable %q: %w", key, err)
		}
	}
	return nil
}

// VariableShapes returns the shape of every variable of mctx that keep selects (all when keep
// is nil), keyed by VariableKey.
func VariableShapes(mctx *mlctx.Context, keep func(v *mlctx.Variable) bool) map[string][]int {
	out := map[string][]int{}
	for v := range mctx.IterVariables() {
		if keep == nil || keep(v) {
			out[VariableKey(v.Scope(), v.Name())] = slices.Clone(v.Shape().Dimensions)
		}
	}
	return out
}

// AdamMoments returns the shape of the two moments GoMLX's Adam keeps for each trainable
// variable of mctx, keyed as SnapshotVariables keys them: the variable's scope under
// "/"+optScope (optimizers.AdamDefaultScope unless the optimizer was given another), its name
// suffixed "_1st_moment" and "_2nd_moment" (getMomentVariables in GoMLX's optimizers/adam.go).
// Restores check a checkpoint's optimizer state against it before reading a tensor.
func AdamMoments(mctx *mlctx.Context, optScope string) map[string][]int {
	out := map[string][]int{}
	for v := range mctx.IterVariables() {
		if !v.Trainable {
			continue
		}
		scope := mlctx.RootScope + optScope + v.Scope()
		for _, suffix := range []string{"_1st_moment", "_2nd_moment"} {
			out[VariableKey(scope, v.Name()+suffix)] = slices.Clone(v.Shape().Dimensions)
		}
	}
	return out
}

// StateWants returns the F32 wants (SnapshotVariables writes float32) of the names of a
// checkpoint group that one of expected expects, with the expected shape. Names none expects
// are left out, so a File.Check of the group refuses them by name before a tensor is read.
func StateWants(names []string, expected ...map[string][]int) []safetensors.Want {
	var out []safetensors.Want
	for _, name := range names {
		for _, shapes := range expected {
			if shape, ok := shapes[name]; ok {
				out = append(out, safetensors.Want{Name: name, Shape: shape, DType: "F32"})
				break
			}
		}
	}
	return out
}
