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

// spmdGuidance is the CFG scale of spmdRollout's rollout and of the trainers trained on it.
const spmdGuidance = 2.0

// spmdRollout is a rollout of spmdModel (6 samples, 3 per prompt, 4 SDE steps, guidance with an
// unconditional row) with the reference velocities of its steps 0 and 1, and the velocity of a
// model in that setting.
func spmdRollout(t *testing.T) (Conditioning, *Trajectories, func(*mmdit.Model) Velocity) {
	t.Helper()
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
	sched, _ := SD3Schedule(4, DefaultShift)
	velOf := func(m *mmdit.Model) Velocity {
		return func(ctx *mlctx.Context, x, t *Node, cond []*Node, withLoRA bool) *Node {
			return m.Forward(ctx, x, t, cond[0], cond[1], withLoRA)
		}
	}
	// The rollout and its reference velocities, from a copy of the model of its own.
	m0, ctx0 := spmdModel(t)
	latent := []int{4, 8, 8}
	tr := testRollout(t, ctx0, velOf(m0), sched, SamplerConfig{Kind: KindSDE, NoiseLevel: 0.7, GroupSize: 3, LatentShape: latent}, spmdGuidance, c, 9)
	ref, err := NewGraphEngine(nntest.Backend(t), ctx0, velOf(m0), latent, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.AddReference(context.Background(), Flow{Engine: ref, Guidance: spmdGuidance}, c, 2); err != nil {
		t.Fatal(err)
	}
	return c, tr, velOf
}

// closeRel reports whether a is within tol of b, relative to |b| where |b| > 1.
func closeRel(a, b, tol float64) bool { return math.Abs(a-b) <= tol*max(1, math.Abs(b)) }

// sameStats reports whether two accumulations' statistics agree to float32 rounding: the loss
// terms to 1e-5, the clip fraction and ratio mean to 1e-6.
func sameStats(g, s StepStats) bool {
	return closeRel(g.Loss, s.Loss, 1e-5) && closeRel(g.Policy, s.Policy, 1e-5) && closeRel(g.KL, s.KL, 1e-5) &&
		closeRel(g.ApproxKL, s.ApproxKL, 1e-5) && closeRel(g.ClipFrac, s.ClipFrac, 1e-6) && closeRel(g.RatioMean, s.RatioMean, 1e-6)
}

// TestTrainerDevicesMatchOneDevice: a Trainer with Devices = 2 or 3 on XLA's PJRT CPU plugin
// (which exposes 4 host devices) trains an SD3.5-style MMDiT's adapters data-parallel — each
// device takes its share of the rows (5 samples padded with masked rows to 8, the next power of
// two, and on 3 devices to 9), XLA's partitioner all-reduces the gradients, each device applies the same AdamW step to its replica — and gives
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
	c, tr, velOf := spmdRollout(t)
	m0, ctx0 := spmdModel(t)
	const guidance = spmdGuidance
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
			if g := got.stats[i]; !sameStats(g, s) {
				t.Errorf("%d devices: stats of step %d %+v, one device %+v", devices, i, g, s)
			}
		}
		for i := range one.norms {
			if !closeRel(got.norms[i], one.norms[i], 1e-5) {
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

// TestTrainerBucketsMatchExactSizes: on XLA's PJRT CPU plugin a Trainer pads the rows of each
// accumulation to the next power of two with masked rows, so minibatches of 5, 6 and 7 samples
// share one graph per worker (two workers here), and gives what the exact-size graphs give: the
// stats of every step (means over the real rows only), the accumulated gradients and the
// gradient norms of the updates between them, to float32 rounding (guidance with an
// unconditional row, β > 0 with the reference computed in the graph).
func TestTrainerBucketsMatchExactSizes(t *testing.T) {
	backend, desc, err := nn.NewBackend("xla:cpu")
	if err != nil {
		t.Skipf("padding to bucket sizes is done on XLA, which needs its PJRT CPU plugin (`just setup` puts it in .cache/pjrt/cpu): %v", err)
	}
	defer backend.Finalize()
	t.Logf("%s", desc)
	c, tr, velOf := spmdRollout(t)
	ks := []int{0, 1}
	// The rollout has 6 samples; the minibatch of 7 takes one twice.
	sizes := [][]int{{0, 1, 2, 4, 5}, {5, 0, 2, 3, 1, 4}, {1, 2, 3, 4, 0, 5, 3}}
	advOf := func(samples []int) [][]float64 {
		adv := make([][]float64, len(ks))
		for k := range adv {
			for j := range samples {
				adv[k] = append(adv[k], float64((j*7+k*3)%5)-1.75)
			}
		}
		return adv
	}
	type result struct {
		stats    []StepStats
		norms    []float64
		grads    []map[string][]float32 // per minibatch, the workers' accumulators summed
		compiled [][2]int
	}
	train := func(bucketed bool) result {
		m, ctx := spmdModel(t)
		tn, err := NewTrainer(backend, ctx, velOf(m), TrainConfig{Loss: LossConfig{Kind: KindSDE, ClipRange: 1e-3, Beta: 0.04},
			Guidance: spmdGuidance, LearningRate: 1e-2, WeightDecay: 1e-4, GradClip: 1, Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		if !tn.bucketed {
			t.Fatalf("a trainer on %s keeps exact minibatch sizes, want them padded to buckets", backend.Name())
		}
		tn.bucketed = bucketed
		var res result
		for _, samples := range sizes {
			st, err := tn.AccumulateSteps(context.Background(), c, tr, ks, samples, advOf(samples), 0.5)
			if err != nil {
				t.Fatalf("bucketed %v, %d samples: %v", bucketed, len(samples), err)
			}
			grads := map[string][]float32{}
			for v := range ctx.IterVariables() {
				if !v.Trainable {
					continue
				}
				for w := range 2 {
					acc := ctx.InspectVariable(accScopeOf(w)+v.Scope(), v.Name())
					if acc == nil { // a variable the velocity does not use (the last block's context side)
						continue
					}
					a := tensors.MustCopyFlatData[float32](acc.MustValue())
					if sum := grads[v.ScopeAndName()]; sum != nil {
						for i := range sum {
							a[i] += sum[i]
						}
					}
					grads[v.ScopeAndName()] = a
				}
			}
			if len(grads) < 10 {
				t.Fatalf("bucketed %v: %d accumulated gradients", bucketed, len(grads))
			}
			norm, err := tn.Apply(context.Background())
			if err != nil {
				t.Fatalf("bucketed %v, %d samples: %v", bucketed, len(samples), err)
			}
			res.stats, res.norms, res.grads = append(res.stats, st...), append(res.norms, norm), append(res.grads, grads)
		}
		for key := range tn.compiled {
			res.compiled = append(res.compiled, key)
		}
		slices.SortFunc(res.compiled, func(a, b [2]int) int { return (a[0]-b[0])*100 + a[1] - b[1] })
		return res
	}
	exact, padded := train(false), train(true)
	if want := [][2]int{{0, 5}, {0, 6}, {0, 7}, {1, 5}, {1, 6}, {1, 7}}; !slices.Equal(exact.compiled, want) {
		t.Errorf("exact sizes compiled %v, want %v", exact.compiled, want)
	}
	if want := [][2]int{{0, 8}, {1, 8}}; !slices.Equal(padded.compiled, want) {
		t.Errorf("padded minibatches of 5, 6 and 7 compiled %v, want one graph of 8 rows per worker %v", padded.compiled, want)
	}
	if !(exact.norms[0] > 1e-3) || !(exact.stats[0].KL > 1e-4) || !(exact.stats[2].ApproxKL > 0) || !(exact.stats[2].ClipFrac > 0) {
		t.Fatalf("exact sizes: norms %v, KL %v, approx KL and clip fraction after an update %v, %v: the test would not show a wrong mean",
			exact.norms, exact.stats[0].KL, exact.stats[2].ApproxKL, exact.stats[2].ClipFrac)
	}
	for i, s := range exact.stats {
		if g := padded.stats[i]; !sameStats(g, s) {
			t.Errorf("stats of accumulation %d: padded %+v, exact %+v", i, g, s)
		}
	}
	for u := range exact.norms {
		if !closeRel(padded.norms[u], exact.norms[u], 1e-5) {
			t.Errorf("gradient norm of update %d: padded %v, exact %v", u, padded.norms[u], exact.norms[u])
		}
		diff := 0.0
		for k, g := range exact.grads[u] {
			p := padded.grads[u][k]
			if len(p) != len(g) {
				t.Fatalf("update %d: %s: padded gradient of %d values, exact %d", u, k, len(p), len(g))
			}
			for i := range g {
				diff = math.Max(diff, math.Abs(float64(p[i]-g[i])))
			}
		}
		t.Logf("update %d (%d samples): gradient norm %.6g padded, %.6g exact; max |padded − exact| = %.2g", u, len(sizes[u]), padded.norms[u], exact.norms[u], diff)
		if diff > 1e-5*exact.norms[u] {
			t.Errorf("update %d: the padded gradient differs from the exact one by %g, want <= 1e-5 × its norm %g", u, diff, exact.norms[u])
		}
	}
}

// TestPaddedRows: where graphs are expensive to compile, minibatches pad to the next power of
// two, at least half of MaxRows and at most MaxRows, then to a multiple of the devices; SimpleGo
// keeps every size.
func TestPaddedRows(t *testing.T) {
	for _, c := range []struct {
		bucketed      bool
		maxRows, devs int
		want          []int // for n = 1, 2, …
	}{
		{false, 16, 0, []int{1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{false, 0, 3, []int{3, 3, 3, 6, 6, 6, 9}},
		{true, 0, 0, []int{1, 2, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 32}},
		{true, 16, 0, []int{8, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 32}},
		{true, 12, 0, []int{8, 8, 8, 8, 8, 8, 8, 8, 12, 12, 12, 12, 16}},
		{true, 5, 0, []int{4, 4, 4, 4, 5, 8}},
		{true, 1, 0, []int{1, 2}},
		{true, 16, 3, []int{9, 9, 9, 9, 9, 9, 9, 9, 18}},
	} {
		tn := &Trainer{bucketed: c.bucketed, cfg: TrainConfig{MaxRows: c.maxRows, Devices: c.devs}}
		var got []int
		for n := range len(c.want) {
			got = append(got, tn.paddedRows(n+1))
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("bucketed %v, max rows %d, %d devices: rows for 1… are %v, want %v", c.bucketed, c.maxRows, c.devs, got, c.want)
		}
	}
}
