package pipeline

import (
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
	// Model scopes are relative to the context's (in the root context, they are absolute).
	root := ctx.Scope()
	if root == mlctx.RootScope {
		root = ""
	}
	return func(v *mlctx.Variable) bool {
		key, err := mmdit.ScopeToKey(strings.TrimPrefix(v.Scope(), root), v.Name())
		return err != nil || !modelKeys[key]
	}
}
