package rl

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

// spmdModel is a small SD3.5-style MMDiT (dual attention, RMS q/k norms) with rank-4 adapters
// on every attention projection, N(0, 0.2²) base weights and adapters, in a fresh context.
func spmdModel(t *testing.T) (*mmdit.Model, *mlctx.Context) {
	t.Helper()
	cfg := mmdit.Config{
		SampleSize: 8, PatchSize: 2, InChannels: 4, NumLayers: 2, AttentionHeadDim: 8,
		NumAttentionHeads: 2, JointAttentionDim: 12, CaptionProjectionDim: 16,
		PooledProjectionDim: 10, OutChannels: 4, PosEmbedMaxSize: 8, QKNorm: "rms_norm", DualAttentionLayers: []int{0},
	}
	m, err := mmdit.New(cfg, &mmdit.LoRAConfig{Rank: 4, Alpha: 8})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	normal := func(n int) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(0.2 * r.NormFloat64())
		}
		return out
	}
	base := map[string]safetensors.Tensor{}
	for _, p := range m.Config.Params() {
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		base[p.Key] = safetensors.Tensor{Shape: p.Shape, Data: normal(n)}
	}
	path := filepath.Join(t.TempDir(), "base.safetensors")
	if err := safetensors.Write(path, base, nil); err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	if err := m.Load(ctx, path); err != nil {
		t.Fatal(err)
	}
	if err := m.InitLoRA(ctx, 3); err != nil {
		t.Fatal(err)
	}
	lora, err := m.LoRATensors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m.LoRA.Params(m.Config) { // in order: the two contexts get the same values
		v := lora[p.Key]
		lora[p.Key] = safetensors.Tensor{Shape: v.Shape, Data: normal(len(v.Data))}
	}
	if err := m.SetLoRATensors(ctx, lora); err != nil {
		t.Fatal(err)
	}
	return m, ctx
}

// TestTrainerDevicesMatchOneDevice: a Trainer with Devices = 2 or 3 on XLA's PJRT CPU plugin
// (which exposes 4 host devices) trains an SD3.5-style MMDiT's adapters data-parallel — each
// device takes its share of the rows (5 samples padded to 6 with a masked row), XLA's partitioner
// all-reduces the gradients, each device applies the same AdamW step to its replica — and gives
// one device's result: the stats of every step, the gradient norms and the adapters after two
// updates (guidance with an unconditional row, β > 0 with reference velocities from the rollout,
// two trained steps per update), to float32 rounding; the devices' replicas are identical.
func TestTrainerDevicesMatchOneDevice(t *testing.T) {
	backend, desc, err := nn.NewBackend("xla:cpu")
	if err != nil {
		t.Skipf("data-parallel training needs XLA's PJRT CPU plugin (`just setup` puts it in .cache/pjrt/cpu): %v", err)
	}
	defer backend.Finalize()
	if n := backend.NumDevices(); n < 3 {
		t.Skipf("%s exposes %d devices, want 3", desc, n)
	}
	t.Logf("%s", desc)
	r := rand.New(rand.NewPCG(5, 6))
	normal := func(dims ...int) *tensors.Tensor {
		size := 1
		for _, d := range dims {
			size *= d
		}
		v := make([]float32, size)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return tensors.FromFlatDataAndDimensions(v, dims...)
	}
	c := Conditioning{Cond: []*tensors.Tensor{normal(2, 5, 12), normal(2, 10)}, Uncond: []*tensors.Tensor{normal(1, 5, 12), normal(1, 10)}}
	const guidance = 2.0
	sched, _ := SD3Schedule(4, DefaultShift)
	velOf := func(m *mmdit.Model) Velocity {
		return func(ctx *mlctx.Context, x, t *Node, cond []*Node, withLoRA bool) *Node {
			return m.Forward(ctx, x, t, cond[0], cond[1], withLoRA)
		}
	}

	// The rollout (3 per prompt) and its reference velocities, from a third copy of the model.
	m0, ctx0 := spmdModel(t)
	latent := []int{4, 8, 8}
	tr := testRollout(t, ctx0, velOf(m0), sched, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: latent}, guidance, c, 9)
	ref, err := NewGraphEngine(nntest.Backend(t), ctx0, velOf(m0), latent, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.AddReference(context.Background(), Flow{Engine: ref, Guidance: guidance}, c, 2); err != nil {
		t.Fatal(err)
	}
	samples := []int{0, 1, 2, 4, 5}
	ks := []int{0, 1}
	adv := [][]float64{{1.5, -0.5, 0.25, -1.25, 0.75}, {-1, 0.5, 1.25, 0.5, -0.25}}

	type result struct {
		stats []StepStats
		norms []float64
		grads map[string][]float32 // the first update's accumulated gradient
		lora  map[string]safetensors.Tensor
	}
	train := func(devices int) result {
		m, ctx := spmdModel(t)
		tn, err := NewTrainer(backend, ctx, velOf(m), TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 0.2, Beta: 0.04},
			Guidance: guidance, LearningRate: 1e-2, WeightDecay: 1e-4, GradClip: 1, Devices: devices, RefVelocities: true})
		if err != nil {
			t.Fatal(err)
		}
		res := result{grads: map[string][]float32{}}
		for u := range 2 {
			st, err := tn.AccumulateSteps(context.Background(), c, tr, ks, samples, adv, 0.5)
			if err != nil {
				t.Fatalf("%d devices: %v", devices, err)
			}
			for v := range ctx.IterVariables() {
				if acc := ctx.InspectVariable(accScope+v.Scope(), v.Name()); u == 0 && v.Trainable && acc != nil {
					res.grads[v.ScopeAndName()] = tensors.MustCopyFlatData[float32](acc.MustValue())
				}
			}
			norm, err := tn.Apply(context.Background())
			if err != nil {
				t.Fatalf("%d devices: %v", devices, err)
			}
			res.stats, res.norms = append(res.stats, st...), append(res.norms, norm)
		}
		if res.lora, err = m.LoRATensors(ctx); err != nil {
			t.Fatal(err)
		}
		if devices > 1 {
			for v := range ctx.IterVariables() {
				if !v.Trainable {
					continue
				}
				dv, err := v.DistributedValue()
				if err != nil {
					t.Fatal(err)
				}
				shards := dv.Shards()
				if len(shards) != devices {
					t.Fatalf("%s: %d replicas, want %d", v.ScopeAndName(), len(shards), devices)
				}
				a := tensors.MustCopyFlatData[float32](shards[0])
				for d := 1; d < devices; d++ {
					if b := tensors.MustCopyFlatData[float32](shards[d]); !slices.Equal(a, b) {
						t.Fatalf("%d devices: %s: the replicas on devices 0 and %d differ", devices, v.ScopeAndName(), d)
					}
				}
			}
		}
		return res
	}
	close := func(a, b, tol float64) bool { return math.Abs(a-b) <= tol*max(1, math.Abs(b)) }
	one := train(1)
	if !(one.norms[0] > 1e-3) || !(one.stats[0].KL > 1e-4) || !(one.stats[2].ApproxKL > 0) {
		t.Fatalf("one device: norms %v, KL %v, approx KL after an update %v: the test would not show a wrong reduction", one.norms, one.stats[0].KL, one.stats[2].ApproxKL)
	}
	before, err := m0.LoRATensors(ctx0)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0.0
	for k, w := range one.lora {
		for i := range w.Data {
			moved = math.Max(moved, math.Abs(float64(w.Data[i]-before[k].Data[i])))
		}
	}
	if moved < 1e-3 {
		t.Fatalf("two updates moved the adapters by %g at most: the test would not see a difference", moved)
	}
	for _, devices := range []int{2, 3} {
		got := train(devices)
		for i, s := range one.stats {
			g := got.stats[i]
			if !close(g.Loss, s.Loss, 1e-5) || !close(g.Policy, s.Policy, 1e-5) || !close(g.KL, s.KL, 1e-5) ||
				!close(g.ApproxKL, s.ApproxKL, 1e-5) || !close(g.ClipFrac, s.ClipFrac, 1e-6) || !close(g.RatioMean, s.RatioMean, 1e-6) {
				t.Errorf("%d devices: stats of step %d %+v, one device %+v", devices, i, g, s)
			}
		}
		for i := range one.norms {
			if !close(got.norms[i], one.norms[i], 1e-5) {
				t.Errorf("%d devices: gradient norm of update %d %v, one device %v", devices, i, got.norms[i], one.norms[i])
			}
		}
		gradDiff := 0.0
		for k, g := range one.grads {
			for i := range g {
				gradDiff = math.Max(gradDiff, math.Abs(float64(got.grads[k][i]-g[i])))
			}
		}
		if len(got.grads) != len(one.grads) || len(one.grads) < len(one.lora)/2 {
			t.Fatalf("%d devices: %d accumulated gradients, one device %d (of %d adapter tensors)", devices, len(got.grads), len(one.grads), len(one.lora))
		}
		maxDiff := 0.0
		for k, w := range one.lora {
			for i := range w.Data {
				maxDiff = math.Max(maxDiff, math.Abs(float64(got.lora[k].Data[i]-w.Data[i])))
			}
		}
		t.Logf("%d devices: gradient norms %.6g, %.6g (one device %.6g, %.6g); first gradient max |%d devices − 1 device| = %.2g (%.2g of its norm); adapters moved up to %.3g, max |%d devices − 1 device| = %.2g over %d adapter tensors",
			devices, got.norms[0], got.norms[1], one.norms[0], one.norms[1], devices, gradDiff, gradDiff/one.norms[0], moved, devices, maxDiff, len(one.lora))
		if gradDiff > 1e-5*one.norms[0] {
			t.Errorf("%d devices: the first update's gradient differs from one device's by %g, want <= 1e-5 × its norm %g", devices, gradDiff, one.norms[0])
		}
		// AdamW's first steps move every element by about ±lr whatever its gradient's size, so
		// rounding in the tiniest gradient elements shows in the adapters at a small fraction of lr.
		if maxDiff > 1e-2*1e-2 {
			t.Errorf("%d devices: adapters after two updates differ from one device's by %g, want <= 1e-4 (1%% of the learning rate)", devices, maxDiff)
		}
	}
}
