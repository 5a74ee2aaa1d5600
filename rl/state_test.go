package rl

import (
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// Every float32 variable a trainer with two workers created while training (what a checkpoint
// saves beside the model) is in StateShapes with its shape, and StateShapes expects nothing
// unrelated: GoMLX's naming of Adam's state is pinned here.
func TestTrainerStateShapes(t *testing.T) {
	cond := Conditioning{Cond: []*tensors.Tensor{tensors.FromValue([][]float32{{0.5}, {-1.5}})}}
	sched, _ := SD3Schedule(4, DefaultShift)
	ctx := mlctx.New()
	tr := testRollout(t, ctx, scaledVelocity, sched, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: []int{2}}, 0, cond, 5)
	model := nn.VariableShapes(ctx, nil)
	tn, err := NewTrainer(nntest.Backend(t), ctx, scaledVelocity, TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-4, Beta: 0.04},
		LearningRate: 0.05, GradClip: 1, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	adv := [][]float64{{1, -1, 0.5, -0.5, 2, -2}, {-1, 1, 0, 0.25, 1, -2}}
	if _, err := tn.AccumulateSteps(context.Background(), cond, tr, []int{0, 1}, []int{0, 1, 2, 3, 4, 5}, adv, 0.5); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	floats, _, err := nn.SnapshotVariables(ctx, func(v *mlctx.Variable) bool {
		_, ok := model[nn.VariableKey(v.Scope(), v.Name())]
		return !ok
	})
	if err != nil {
		t.Fatal(err)
	}
	names := slices.Sorted(maps.Keys(floats))
	// Two workers' accumulators and two moments of the 2 trainable variables, and the learning rate.
	if len(names) != 9 {
		t.Errorf("trainer state %v: %d variables, want 9", names, len(names))
	}
	junk := []string{"/unrelated", "/grpo_accumulated_gradients/lin/x", "/grpo_accumulated_gradients_0/lin/w",
		"/grpo_accumulated_gradients_x/lin/w", "/grpo_accumulated_gradients_2", "/grpo_adamw/lin/w_3rd_moment"}
	shapes := tn.StateShapes(append(names, junk...))
	for _, name := range names {
		if got, ok := shapes[name]; !ok || !slices.Equal(got, floats[name].Shape) {
			t.Errorf("StateShapes[%q] = %v, %v; want %v", name, got, ok, floats[name].Shape)
		}
	}
	for _, name := range junk {
		if shape, ok := shapes[name]; ok {
			t.Errorf("StateShapes expects %q (shape %v), want it refused", name, shape)
		}
	}
	// A run resumed with one worker still expects the second worker's accumulators it saved.
	one, err := NewTrainer(nntest.Backend(t), ctx, scaledVelocity, TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-4, Beta: 0.04},
		LearningRate: 0.05, GradClip: 1, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := one.StateShapes(names); len(nn.StateWants(names, got)) != len(names) {
		t.Errorf("one worker expects %d of the %d saved variables, want all", len(nn.StateWants(names, got)), len(names))
	}
}
