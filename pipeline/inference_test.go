package pipeline

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/rl"
)

// TestInferenceEnginesAgree: with non-zero adapters, with and without classifier-free
// guidance, the ONNX engine integrates the same ODE paths as the GoMLX sampler (paths of
// different lengths in batches that mix them) and rolls out the same trajectories (states and
// log-probabilities), to float32 rounding.
func TestInferenceEnginesAgree(t *testing.T) {
	for _, guidance := range []string{"1", "3.5"} {
		t.Run("guidance "+guidance, func(t *testing.T) {
			cfg, _ := fixture(t, "sampler.guidance="+guidance)
			policy := newTestPolicy(t, cfg, "")
			defer policy.Close()
			lora, err := policy.Model.LoRATensors(policy.Ctx)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(3, 4))
			for k, v := range lora {
				d := make([]float32, len(v.Data))
				for i := range d {
					d[i] = float32(0.3 * r.NormFloat64())
				}
				lora[k] = safetensors.Tensor{Shape: v.Shape, Data: d}
			}
			if err := policy.Model.SetLoRATensors(policy.Ctx, lora); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			f, err := OpenFrozen(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			sched, err := rl.SD3Schedule(6, cfg.Sampler.Shift)
			if err != nil {
				t.Fatal(err)
			}
			latent := f.VAE.LatentShape()
			sampler, err := rl.NewSampler(policy.Backend, policy.Ctx, policy.Velocity, sched, rl.SamplerConfig{
				Kind: rl.KindSDE, NoiseLevel: 0.7, Guidance: Guidance(cfg), GroupSize: 1, LatentShape: latent,
			})
			if err != nil {
				t.Fatal(err)
			}
			cond, err := policy.Condition(ctx, f.TextEncoder, []string{`a sign "AB"`, `"XYZ" on a wall`}, Guidance(cfg))
			if err != nil {
				t.Fatal(err)
			}
			size := latent[0] * latent[1] * latent[2]
			var paths []rl.ODEPath
			for i, from := range []int{0, 2, 0, 5, 3} { // 6, 4, 6, 1 and 3 Euler steps
				paths = append(paths, rl.ODEPath{Prompt: i % 2, X: InitialNoise(9, i, size), Sigmas: sched.Sigmas[from:]})
			}
			want, err := sampler.IntegrateODE(ctx, cond, paths, 2)
			if err != nil {
				t.Fatal(err)
			}
			inf, err := newInference(cfg, policy, sampler, latent)
			if err != nil {
				t.Fatal(err)
			}
			defer inf.close()
			if _, ok := inf.ode.(*onnxPolicy); !ok || inf.velocity == nil {
				t.Fatalf("default pipeline.inference_engine gave %T, want the ONNX engine", inf.ode)
			}
			got, err := inf.ode.IntegrateODE(ctx, cond, paths, 2)
			if err != nil {
				t.Fatal(err)
			}
			maxDiff := 0.0
			for i := range paths {
				maxDiff = math.Max(maxDiff, checkEngines(t, fmt.Sprintf("path %d", i), got[i], want[i]))
				moved := 0.0
				for j := range want[i] {
					moved = math.Max(moved, math.Abs(float64(want[i][j]-paths[i].X[j])))
				}
				if moved < 1e-3 {
					t.Fatalf("path %d: the ODE left x nearly unchanged (max move %g): the test would not see a wrong velocity", i, moved)
				}
			}
			t.Logf("ODE: max |ONNX − GoMLX| = %.2g over %d paths", maxDiff, len(paths))

			rsampler, err := rl.NewSampler(policy.Backend, policy.Ctx, policy.Velocity, sched, rl.SamplerConfig{
				Kind: rl.KindCPS, NoiseLevel: 0.8, Guidance: Guidance(cfg), GroupSize: 3, LatentShape: latent,
			})
			if err != nil {
				t.Fatal(err)
			}
			want2, err := rsampler.Rollout(ctx, cond, 5)
			if err != nil {
				t.Fatal(err)
			}
			got2, err := rsampler.RolloutWith(ctx, cond, 5, inf.velocity)
			if err != nil {
				t.Fatal(err)
			}
			maxDiff = 0
			for k := range want2.LogProb {
				maxDiff = math.Max(maxDiff, checkEngines(t, fmt.Sprintf("rollout x_%d", k+1), got2.X[k+1], want2.X[k+1]))
				maxDiff = math.Max(maxDiff, checkEngines(t, fmt.Sprintf("rollout logp step %d", k), got2.LogProb[k], want2.LogProb[k]))
			}
			t.Logf("rollout: max |ONNX − GoMLX| = %.2g over %d steps", maxDiff, len(want2.LogProb))

			// The KL reference exported from the base weights is the model without adapters.
			base, err := policy.Model.BaseTensors(policy.Ctx)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := newONNXPolicy(cfg, policy, latent, base)
			if err != nil {
				t.Fatal(err)
			}
			defer ref.sess.Close()
			baseVel := func(ctx *mlctx.Context, x, ts *Node, cond []*Node, _ bool) *Node {
				return policy.Velocity(ctx, x, ts, cond, false)
			}
			bsampler, err := rl.NewSampler(policy.Backend, policy.Ctx, baseVel, sched, rl.SamplerConfig{
				Kind: rl.KindCPS, NoiseLevel: 0.8, Guidance: Guidance(cfg), GroupSize: 3, LatentShape: latent,
			})
			if err != nil {
				t.Fatal(err)
			}
			want3, err := bsampler.Rollout(ctx, cond, 5)
			if err != nil {
				t.Fatal(err)
			}
			for k := range want3.V {
				v, err := ref.Velocity(ctx, cond, want3.X[k], sched.Sigmas[k], want3.Prompts)
				if err != nil {
					t.Fatal(err)
				}
				checkEngines(t, fmt.Sprintf("reference velocity step %d", k), v, want3.V[k])
				if k == 0 && slices.Equal(v, got2.V[0]) {
					t.Fatal("the reference velocity equals the adapted one: the test's adapters do nothing")
				}
			}
		})
	}
}

// checkEngines fails unless got (ONNX) matches want (GoMLX) to 1e-4 relative (absolute below 1),
// value by value, and returns the largest difference.
func checkEngines(t *testing.T, what string, got, want []float32) float64 {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: ONNX gives %d values, GoMLX %d", what, len(got), len(want))
	}
	maxDiff := 0.0
	for i := range want {
		d := math.Abs(float64(got[i] - want[i]))
		if math.IsNaN(float64(got[i])) || d > 1e-4*math.Max(1, math.Abs(float64(want[i]))) {
			t.Fatalf("%s value %d: ONNX %v, GoMLX %v", what, i, got[i], want[i])
		}
		maxDiff = math.Max(maxDiff, d)
	}
	return maxDiff
}

// TestInferenceEngineConfig: an unknown engine is a config error naming the field.
func TestInferenceEngineConfig(t *testing.T) {
	_, files := fixture(t)
	_, err := Load(files.Config, []string{"pipeline.inference_engine=xla"})
	if err == nil || !strings.Contains(err.Error(), "pipeline.inference_engine") || !strings.Contains(err.Error(), `"onnx" or "gomlx"`) {
		t.Fatalf("got %v, want an error naming pipeline.inference_engine and its values", err)
	}
}
