package mmdit

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// smallConfig is a fast test model: width 32 (2 heads × 16), 2 blocks, the
// first one dual-attention, RMS q/k norms; latents 4×4×8 → 2×4 = 8 tokens.
func smallConfig() Config {
	return Config{
		SampleSize: 8, PatchSize: 2, InChannels: 4, NumLayers: 2, AttentionHeadDim: 16,
		NumAttentionHeads: 2, JointAttentionDim: 12, CaptionProjectionDim: 32,
		PooledProjectionDim: 10, OutChannels: 4, PosEmbedMaxSize: 6, QKNorm: "rms_norm",
		DualAttentionLayers: []int{0},
	}
}

// inputs are host-side forward inputs.
type inputs struct {
	latents, timestep, enc, pooled *tensors.Tensor
}

func gaussian(rng *rand.Rand, n int, std float64) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64() * std)
	}
	return out
}

func makeInputs(c Config, batch, h, w, textLen int, seed uint64) inputs {
	rng := rand.New(rand.NewPCG(seed, 1))
	ts := make([]float32, batch)
	for i := range ts {
		ts[i] = float32(1000 * rng.Float64())
	}
	return inputs{
		latents:  tensors.FromFlatDataAndDimensions(gaussian(rng, batch*c.InChannels*h*w, 1), batch, c.InChannels, h, w),
		timestep: tensors.FromFlatDataAndDimensions(ts, batch),
		enc:      tensors.FromFlatDataAndDimensions(gaussian(rng, batch*textLen*c.JointAttentionDim, 1), batch, textLen, c.JointAttentionDim),
		pooled:   tensors.FromFlatDataAndDimensions(gaussian(rng, batch*c.PooledProjectionDim, 1), batch, c.PooledProjectionDim),
	}
}

// randomizeBase overwrites every base weight with N(0, 0.2²) values, so that
// no adaLN gate or output projection is zero and every path carries signal.
func randomizeBase(t *testing.T, ctx *mlctx.Context, m *Model, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 2))
	for _, p := range m.Config.Params() {
		if err := setVariable(ctx, p.Key, p.Shape, gaussian(rng, numElements(p.Shape), 0.2), m.LoRA == nil); err != nil {
			t.Fatal(err)
		}
	}
}

// randomizeLoRA gives both adapter matrices non-zero values.
func randomizeLoRA(t *testing.T, ctx *mlctx.Context, m *Model, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 3))
	for _, p := range m.LoRA.Params(m.Config) {
		if err := setVariable(ctx, p.Key, p.Shape, gaussian(rng, numElements(p.Shape), 0.2), true); err != nil {
			t.Fatal(err)
		}
	}
}

// forward runs the model once and returns the output tensor.
func forward(t *testing.T, ctx *mlctx.Context, m *Model, in inputs, withLoRA bool) *tensors.Tensor {
	t.Helper()
	exec, err := mlctx.NewExec(nntest.Backend(t), ctx, func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
		return m.Forward(ctx, lat, ts, enc, pooled, withLoRA)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	var out *tensors.Tensor
	if err := execErr(func() error {
		var err error
		out, err = exec.Exec1(in.latents, in.timestep, in.enc, in.pooled)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// execErr runs fn and returns its error or, if it panics, the panic as an error.
func execErr(fn func() error) error {
	var err error
	if perr := nn.Try(func() { err = fn() }); perr != nil {
		return perr
	}
	return err
}

func flat(t *testing.T, x *tensors.Tensor) []float32 {
	t.Helper()
	data, err := tensors.CopyFlatData[float32](x)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// bitEqual reports the first index where a and b differ in bits, or -1.
func bitEqual(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}
