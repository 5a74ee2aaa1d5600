package pipeline

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/rl"
)

// TestInferenceEnginesAgree: with non-zero adapters, with and without classifier-free
// guidance, the ONNX engine and the GoMLX engine give the same ODE paths (paths of different
// lengths in batches that mix them), the same rollouts (states and log-probabilities) and the
// same KL-reference velocities, to float32 rounding. Guidance, the Euler loop and the step are
// rl's for both, so what this compares is the engines.
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
			type variant struct {
				name   string
				engine Engine
				// externalAbove forces the ONNX export through a file with external data.
				externalAbove int64
			}
			flows := map[string][2]rl.Flow{} // [policy, KL reference]
			variants := []variant{{"gomlx", EngineGoMLX, 0}, {"onnx", EngineONNX, 0}, {"onnx with external data", EngineONNX, 1}}
			for _, v := range variants {
				c := cfg
				c.Pipeline.InferenceEngine = v.engine
				set := &engineSet{cfg: c, policy: policy, latent: latent, externalAbove: v.externalAbove}
				pol, closePol, err := set.flow(true)
				if err != nil {
					t.Fatal(err)
				}
				defer closePol()
				ref, closeRef, err := set.flow(false)
				if err != nil {
					t.Fatal(err)
				}
				defer closeRef()
				flows[v.name] = [2]rl.Flow{pol, ref}
				if v.externalAbove == 0 {
					continue
				}
				// The export went through a file, whose folder is gone by now: the sessions
				// run from what ONNX Runtime read or mapped when it opened them.
				for _, f := range []rl.Flow{pol, ref} {
					path := f.Engine.(*onnxEngine).sess.Path()
					if filepath.Base(path) != "model.onnx" {
						t.Fatalf("%s: session of %q, want one opened from a model.onnx with external data", v.name, path)
					}
					if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
						t.Fatalf("%s: export folder %s still there (%v)", v.name, filepath.Dir(path), err)
					}
				}
			}
			if set := (&engineSet{cfg: cfg, policy: policy, latent: latent}); set.external() {
				t.Fatalf("the test model (%d parameters) is exported with external data by default", policy.Model.Config.NumParams())
			}
			if _, ok := flows["onnx"][0].Engine.(*onnxEngine); !ok || cfg.Pipeline.InferenceEngine != EngineONNX {
				t.Fatalf("default pipeline.inference_engine %q gave %T, want the ONNX engine", cfg.Pipeline.InferenceEngine, flows["onnx"][0].Engine)
			}
			gomlx := flows["gomlx"]
			cond, err := policy.Condition(ctx, f.TextEncoder, []string{`a sign "AB"`, `"XYZ" on a wall`}, Guidance(cfg))
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range variants[1:] {
				t.Logf("%s against gomlx", v.name)
				compareEngines(t, ctx, policy, sched, latent, cond, flows[v.name], gomlx)
			}
		})
	}
}

// compareEngines checks the ONNX flows (policy, KL reference) against the GoMLX ones: ODE
// paths, a CPS rollout and the reference velocities.
func compareEngines(t *testing.T, ctx context.Context, policy *Policy, sched rl.Schedule, latent []int, cond rl.Conditioning, onnx, gomlx [2]rl.Flow) {
	t.Helper()
	size := latent[0] * latent[1] * latent[2]
	var paths []rl.ODEPath
	for i, from := range []int{0, 2, 0, 5, 3} { // 6, 4, 6, 1 and 3 Euler steps
		paths = append(paths, rl.ODEPath{Prompt: i % 2, X: rl.InitialNoise(9, i, size), Sigmas: sched.Sigmas[from:]})
	}
	want, err := gomlx[0].IntegrateODE(ctx, cond, paths, 2)
	if err != nil {
		t.Fatal(err)
	}
	got, err := onnx[0].IntegrateODE(ctx, cond, paths, 2)
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

	sampler, err := rl.NewSampler(policy.Backend, sched, rl.SamplerConfig{
		Kind: rl.KindCPS, NoiseLevel: 0.8, GroupSize: 3, LatentShape: latent,
	})
	if err != nil {
		t.Fatal(err)
	}
	want2, err := sampler.Rollout(ctx, gomlx[0], cond, 5)
	if err != nil {
		t.Fatal(err)
	}
	got2, err := sampler.Rollout(ctx, onnx[0], cond, 5)
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
	steps := sched.Steps()
	if err := want2.AddReference(ctx, gomlx[1], cond, steps); err != nil {
		t.Fatal(err)
	}
	if err := got2.AddReference(ctx, onnx[1], cond, steps); err != nil {
		t.Fatal(err)
	}
	for k := range steps {
		v, err := onnx[1].Velocity(ctx, cond, want2.X[k], repeat(sched.Sigmas[k], want2.Len()), want2.Prompts)
		if err != nil {
			t.Fatal(err)
		}
		checkEngines(t, fmt.Sprintf("reference velocity step %d", k), v, want2.VRef[k])
		if k == 0 && slices.Equal(v, want2.V[0]) {
			t.Fatal("the reference velocity equals the adapted one: the test's adapters do nothing")
		}
	}
}

func repeat(v float32, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = v
	}
	return out
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
