package transformer

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/onnxrt/onnxrttest"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

func TestMain(m *testing.M) { onnxrttest.Main(m, "exporters/transformer") }

func gaussian(r *rand.Rand, n int, std float64) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(std * r.NormFloat64())
	}
	return out
}

// randomModel returns a model of cfg with N(0, 0.2²) base weights (no zero gate or output
// projection, so every path carries signal) and non-zero adapters, in a fresh context.
func randomModel(t testing.TB, cfg mmdit.Config, seed uint64) (*mmdit.Model, *mlctx.Context) {
	t.Helper()
	return randomModelStd(t, cfg, seed, 0.2)
}

// randomModelStd is randomModel with N(0, std²) weights and adapters.
func randomModelStd(t testing.TB, cfg mmdit.Config, seed uint64, std float64) (*mmdit.Model, *mlctx.Context) {
	t.Helper()
	m, err := mmdit.New(cfg, &mmdit.LoRAConfig{Rank: 4, Alpha: 8})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	base := map[string]safetensors.Tensor{}
	for _, p := range m.Config.Params() {
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		base[p.Key] = safetensors.Tensor{Shape: p.Shape, Data: gaussian(r, n, std)}
	}
	path := filepath.Join(t.TempDir(), "base.safetensors")
	if err := safetensors.Write(path, base, nil); err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	if err := m.Load(ctx, path); err != nil {
		t.Fatal(err)
	}
	if err := m.InitLoRA(ctx, seed); err != nil {
		t.Fatal(err)
	}
	lora, err := m.LoRATensors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range lora {
		lora[k] = safetensors.Tensor{Shape: v.Shape, Data: gaussian(r, len(v.Data), std)}
	}
	if err := m.SetLoRATensors(ctx, lora); err != nil {
		t.Fatal(err)
	}
	return m, ctx
}

// exportedSession exports m with its adapters folded in (the pipeline's path) and opens the
// graph in ONNX Runtime with one intra-op thread; the session closes with the test.
func exportedSession(tb testing.TB, m *mmdit.Model, ctx *mlctx.Context, latent []int) *onnxrt.Session {
	tb.Helper()
	return exportedSessionWith(tb, m, ctx, latent, 1, false)
}

// mergedWeights reads m's weights with the adapters folded in, one tensor at a time.
func mergedWeights(m *mmdit.Model, ctx *mlctx.Context) Weights {
	return func(key string) (safetensors.Tensor, error) { return m.MergedTensor(ctx, key) }
}

// exportedSessionWith is exportedSession with the given intra-op threads, the graph held in
// memory or (external) written to a folder with its weights in external data.
func exportedSessionWith(tb testing.TB, m *mmdit.Model, ctx *mlctx.Context, latent []int, threads int, external bool) *onnxrt.Session {
	tb.Helper()
	cfg := onnxrt.Config{IntraOpThreads: threads}
	var s *onnxrt.Session
	if external {
		path, err := WriteExternal(tb.TempDir(), m.Config, latent, mergedWeights(m, ctx))
		if err != nil {
			tb.Fatal(err)
		}
		// Every weight but the small ones (biases, norm scales) is in the data file.
		st, err := os.Stat(filepath.Join(filepath.Dir(path), DataFile))
		if err != nil {
			tb.Fatal(err)
		}
		if params := int64(4 * m.Config.NumParams()); st.Size() < params*9/10 || st.Size() > params {
			tb.Fatalf("%s holds %d bytes, want most of the model's %d bytes of weights", DataFile, st.Size(), params)
		}
		if s, err = onnxrt.Open(path, cfg); err != nil {
			tb.Fatal(err)
		}
	} else {
		model, err := Model(m.Config, latent, mergedWeights(m, ctx), nil)
		if err != nil {
			tb.Fatal(err)
		}
		data, err := model.Marshal()
		if err != nil {
			tb.Fatal(err)
		}
		if s, err = onnxrt.OpenBytes("exported transformer", data, cfg); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// TestVelocityMatchesGoMLX: the exported graph, with the adapters folded in, computes what
// mmdit's Forward with LoRA computes — for SD3 blocks, and for SD3.5 ones (RMS q/k norms,
// dual attention), several batch sizes and text lengths.
func TestVelocityMatchesGoMLX(t *testing.T) {
	sd3 := mmdit.Config{
		SampleSize: 8, PatchSize: 2, InChannels: 4, NumLayers: 3, AttentionHeadDim: 8,
		NumAttentionHeads: 4, JointAttentionDim: 12, CaptionProjectionDim: 32,
		PooledProjectionDim: 10, OutChannels: 4, PosEmbedMaxSize: 8,
	}
	sd35 := sd3
	sd35.QKNorm, sd35.DualAttentionLayers = "rms_norm", []int{0, 1}
	for _, tc := range []struct {
		name           string
		cfg            mmdit.Config
		latent         []int
		batch, textLen int
	}{
		{"sd3 4x8x16 batch 3", sd3, []int{4, 8, 16}, 3, 7},
		{"sd3 4x4x4 batch 1", sd3, []int{4, 4, 4}, 1, 2},
		{"sd3.5 4x8x8 batch 2", sd35, []int{4, 8, 8}, 2, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, ctx := randomModel(t, tc.cfg, 7)
			r := rand.New(rand.NewPCG(11, 2))
			c, h, w := tc.latent[0], tc.latent[1], tc.latent[2]
			lat := gaussian(r, tc.batch*c*h*w, 1)
			ts := make([]float32, tc.batch)
			for i := range ts {
				ts[i] = float32(1000 * r.Float64())
			}
			enc := gaussian(r, tc.batch*tc.textLen*tc.cfg.JointAttentionDim, 1)
			pooled := gaussian(r, tc.batch*tc.cfg.PooledProjectionDim, 1)

			exec, err := mlctx.NewExec(nntest.Backend(t), ctx, func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
				return m.Forward(ctx, lat, ts, enc, pooled, true)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer exec.Finalize()
			var want []float32
			if err := nn.Try(func() {
				out := exec.MustExec1(
					tensors.FromFlatDataAndDimensions(lat, tc.batch, c, h, w), tensors.FromFlatDataAndDimensions(ts, tc.batch),
					tensors.FromFlatDataAndDimensions(enc, tc.batch, tc.textLen, tc.cfg.JointAttentionDim),
					tensors.FromFlatDataAndDimensions(pooled, tc.batch, tc.cfg.PooledProjectionDim))
				want = tensors.MustCopyFlatData[float32](out)
			}); err != nil {
				t.Fatal(err)
			}

			vi := velocityInputs{cfg: tc.cfg, batch: tc.batch, textLen: tc.textLen, latent: tc.latent, lat: lat, ts: ts, enc: enc, pooled: pooled}
			var inFile []float32
			for _, external := range []bool{false, true} {
				out, err := exportedSessionWith(t, m, ctx, tc.latent, 1, external).Run(context.Background(), vi.onnx())
				if err != nil {
					t.Fatal(err)
				}
				got := out[OutputVelocity]
				if len(got.Float32) != len(want) {
					t.Fatalf("ONNX (external data %v) gives %d values (shape %v), GoMLX %d", external, len(got.Float32), got.Shape, len(want))
				}
				maxDiff, scale := 0.0, 0.0
				for i := range want {
					d := math.Abs(float64(got.Float32[i] - want[i]))
					if math.IsNaN(float64(got.Float32[i])) || d > 1e-4*math.Max(1, math.Abs(float64(want[i]))) {
						t.Fatalf("external data %v: velocity[%d] = %v, GoMLX %v (|diff| %g)", external, i, got.Float32[i], want[i], d)
					}
					maxDiff, scale = math.Max(maxDiff, d), math.Max(scale, math.Abs(float64(want[i])))
				}
				t.Logf("external data %v: max |ONNX − GoMLX| = %.2g over %d values (max |v| %.3g)", external, maxDiff, len(want), scale)
				if !external {
					inFile = got.Float32
					continue
				}
				// The same graph and weights, read from another place: the same numbers.
				for i := range inFile {
					if got.Float32[i] != inFile[i] {
						t.Fatalf("velocity[%d]: %v with external data, %v from the one-file model", i, got.Float32[i], inFile[i])
					}
				}
			}
		})
	}
}

// TestModelRejectsBadInput: a missing or mis-shaped tensor, or a latent shape the model cannot
// take, is an error naming it.
func TestModelRejectsBadInput(t *testing.T) {
	cfg := mmdit.Config{
		SampleSize: 8, PatchSize: 2, InChannels: 4, NumLayers: 1, AttentionHeadDim: 8,
		NumAttentionHeads: 2, JointAttentionDim: 8, CaptionProjectionDim: 16,
		PooledProjectionDim: 8, OutChannels: 4, PosEmbedMaxSize: 4,
	}
	full := func() map[string]safetensors.Tensor {
		ts := map[string]safetensors.Tensor{}
		for _, p := range cfg.Params() {
			n := 1
			for _, d := range p.Shape {
				n *= d
			}
			ts[p.Key] = safetensors.Tensor{Shape: p.Shape, Data: make([]float32, n)}
		}
		return ts
	}
	missing := full()
	delete(missing, "proj_out.bias")
	wrong := full()
	wrong["context_embedder.weight"] = safetensors.Tensor{Shape: []int{3, 3}, Data: make([]float32, 9)}
	for _, tc := range []struct {
		name   string
		ts     map[string]safetensors.Tensor
		latent []int
		want   string
	}{
		{"missing tensor", missing, []int{4, 8, 8}, `missing tensor "proj_out.bias"`},
		{"wrong shape", wrong, []int{4, 8, 8}, `tensor "context_embedder.weight": shape [3 3]`},
		{"odd side", full(), []int{4, 7, 8}, "latent shape [4 7 8]"},
		{"too large", full(), []int{4, 8, 10}, "latent shape [4 8 10]"},
		{"channels", full(), []int{3, 8, 8}, "latent shape [3 8 8]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Model(cfg, tc.latent, MapWeights(tc.ts), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			// Written with external data, the same error, and the folder stays empty.
			dir := t.TempDir()
			if _, err := WriteExternal(dir, cfg, tc.latent, MapWeights(tc.ts)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WriteExternal: got error %v, want one containing %q", err, tc.want)
			}
			if left, _ := os.ReadDir(dir); len(left) != 0 {
				t.Fatalf("WriteExternal failed and left %v", left)
			}
		})
	}
}

// BenchmarkVelocity compares one velocity evaluation of the tiny-ocr transformer (batch 16, 48
// text tokens) in GoMLX (SimpleGo) and in ONNX Runtime (one intra-op thread), side by side:
//
//	go test ./exporters/transformer -run '^$' -bench Velocity -benchtime 20x
func BenchmarkVelocity(b *testing.B) {
	cfg, err := mmdit.LoadConfig("../../models/tinyocr/weights/mmdit.json")
	if err != nil {
		b.Fatal(err)
	}
	m, ctx := randomModel(b, cfg, 1)
	const batch, textLen = 16, 48
	latent := []int{cfg.InChannels, 8, 32}
	r := rand.New(rand.NewPCG(1, 2))
	lat := gaussian(r, batch*latent[0]*latent[1]*latent[2], 1)
	ts := make([]float32, batch)
	for i := range ts {
		ts[i] = 500
	}
	enc := gaussian(r, batch*textLen*cfg.JointAttentionDim, 1)
	pooled := gaussian(r, batch*cfg.PooledProjectionDim, 1)

	exec, err := mlctx.NewExec(nntest.Backend(b), ctx, func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
		return m.Forward(ctx, lat, ts, enc, pooled, true)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer exec.Finalize()
	vi := velocityInputs{cfg: cfg, batch: batch, textLen: textLen, latent: latent, lat: lat, ts: ts, enc: enc, pooled: pooled}
	args := vi.gomlx()
	s := exportedSession(b, m, ctx, latent)
	in := vi.onnx()
	b.Run("gomlx", func(b *testing.B) {
		for b.Loop() {
			if err := nn.Try(func() { exec.MustExec1(args...).FinalizeAll() }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("onnx", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Run(context.Background(), in); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// velocityInputs are one velocity call's host inputs, laid out for either engine.
type velocityInputs struct {
	cfg                  mmdit.Config
	batch, textLen       int
	latent               []int
	lat, ts, enc, pooled []float32
}

func (v velocityInputs) gomlx() []any {
	return []any{
		tensors.FromFlatDataAndDimensions(v.lat, v.batch, v.latent[0], v.latent[1], v.latent[2]),
		tensors.FromFlatDataAndDimensions(v.ts, v.batch),
		tensors.FromFlatDataAndDimensions(v.enc, v.batch, v.textLen, v.cfg.JointAttentionDim),
		tensors.FromFlatDataAndDimensions(v.pooled, v.batch, v.cfg.PooledProjectionDim),
	}
}

func (v velocityInputs) onnx() map[string]onnxrt.Tensor {
	b := int64(v.batch)
	return map[string]onnxrt.Tensor{
		InputLatents:      {Shape: []int64{b, int64(v.latent[0]), int64(v.latent[1]), int64(v.latent[2])}, Float32: v.lat},
		InputTimestep:     {Shape: []int64{b}, Float32: v.ts},
		InputPromptEmbeds: {Shape: []int64{b, int64(v.textLen), int64(v.cfg.JointAttentionDim)}, Float32: v.enc},
		InputPooled:       {Shape: []int64{b, int64(v.cfg.PooledProjectionDim)}, Float32: v.pooled},
	}
}
