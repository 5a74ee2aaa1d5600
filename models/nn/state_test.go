package nn

import (
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

func TestSnapshotRestoreVariables(t *testing.T) {
	ctx := mlctx.New()
	ctx.In("w").VariableWithValue("weight", tensors.FromValue([]float32{1.5, -2}))
	ctx.In("opt").VariableWithValue("step", tensors.FromScalar(int64(7)))
	ctx.In("rng").VariableWithValue("state", tensors.FromValue([]uint64{1 << 63, 2, 3}))
	notWeights := func(v *mlctx.Variable) bool { return v.Name() != "weight" }

	floats, ints, err := SnapshotVariables(ctx, notWeights)
	if err != nil {
		t.Fatal(err)
	}
	if len(floats) != 0 || len(ints) != 2 {
		t.Fatalf("snapshot without weights: %d float and %d int variables, want 0 and 2", len(floats), len(ints))
	}
	if got := ints["/rng/state"]; got.DType != "uint64" || got.Values[0] != 1<<63 {
		t.Errorf("uint64 state %+v, want its top bit kept exactly", got)
	}
	all, allInts, err := SnapshotVariables(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := all["/w/weight"]; len(w.Data) != 2 || w.Data[1] != -2 {
		t.Errorf("weight %+v, want [1.5 -2]", w)
	}

	// Into a fresh context: missing variables are created, values equal.
	fresh := mlctx.New()
	if err := RestoreVariables(fresh, all, allInts, nil); err != nil {
		t.Fatal(err)
	}
	if v := fresh.GetVariableByScopeAndName("/opt", "step"); v == nil || v.MustValue().Value().(int64) != 7 {
		t.Errorf("restored step %v, want 7", v)
	}
	if v := fresh.GetVariableByScopeAndName("/w", "weight"); v == nil || v.MustValue().Value().([]float32)[0] != 1.5 {
		t.Errorf("restored weight %v, want [1.5 -2]", v)
	}
	// A selected variable missing from the snapshot is an error naming it.
	err = RestoreVariables(ctx, floats, ints, nil)
	if err == nil || !strings.Contains(err.Error(), `"/w/weight"`) {
		t.Errorf("restore of a partial snapshot with every variable selected: error %v, want /w/weight named", err)
	}
	if err := RestoreVariables(ctx, floats, ints, notWeights); err != nil {
		t.Errorf("restore with the same selection: %v", err)
	}
}
