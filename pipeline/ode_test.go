package pipeline

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/rl"
)

// TestODEEnginesAgree: the ONNX engine integrates the same paths as the GoMLX sampler — paths
// of different lengths in batches that mix them, with non-zero adapters, with and without
// classifier-free guidance — to float32 rounding.
func TestODEEnginesAgree(t *testing.T) {
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
			ode, closeODE, err := newODE(cfg, policy, sampler, latent)
			if err != nil {
				t.Fatal(err)
			}
			defer closeODE()
			if _, ok := ode.(*onnxODE); !ok {
				t.Fatalf("default pipeline.ode_engine gave %T, want the ONNX engine", ode)
			}
			got, err := ode.IntegrateODE(ctx, cond, paths, 2)
			if err != nil {
				t.Fatal(err)
			}
			maxDiff := 0.0
			for i := range paths {
				moved := 0.0
				for j := range want[i] {
					d := math.Abs(float64(got[i][j] - want[i][j]))
					if math.IsNaN(float64(got[i][j])) || d > 1e-4*math.Max(1, math.Abs(float64(want[i][j]))) {
						t.Fatalf("path %d value %d: ONNX %v, GoMLX %v", i, j, got[i][j], want[i][j])
					}
					maxDiff = math.Max(maxDiff, d)
					moved = math.Max(moved, math.Abs(float64(want[i][j]-paths[i].X[j])))
				}
				if moved < 1e-3 {
					t.Fatalf("path %d: the ODE left x nearly unchanged (max move %g): the test would not see a wrong velocity", i, moved)
				}
			}
			t.Logf("max |ONNX − GoMLX| = %.2g over %d paths", maxDiff, len(paths))
		})
	}
}

// TestODEEngineConfig: an unknown engine is a config error naming the field.
func TestODEEngineConfig(t *testing.T) {
	files := func() string { _, f := fixture(t); return f.Config }()
	_, err := Load(files, []string{"pipeline.ode_engine=xla"})
	if err == nil || !strings.Contains(err.Error(), "pipeline.ode_engine") || !strings.Contains(err.Error(), `"onnx" or "gomlx"`) {
		t.Fatalf("got %v, want an error naming pipeline.ode_engine and its values", err)
	}
}
