package tinyocr

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

func TestVariableKey(t *testing.T) {
	tests := []struct{ scope, name, key string }{
		{"/decoder/mid_block/resnets/0/conv1", "weight", "decoder.mid_block.resnets.0.conv1.weight"},
		{"/text_encoder/token_embedding", "weight", "text_encoder.token_embedding.weight"},
		{"/", "x", "x"},
	}
	for _, tt := range tests {
		if got := VariableKey(tt.scope, tt.name); got != tt.key {
			t.Errorf("VariableKey(%q, %q) = %q, want %q", tt.scope, tt.name, got, tt.key)
		}
		scope, name := ScopeOfKey(tt.key)
		if scope != tt.scope || name != tt.name {
			t.Errorf("ScopeOfKey(%q) = %q, %q; want %q, %q", tt.key, scope, name, tt.scope, tt.name)
		}
	}
}

func randomData(r *rand.Rand, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(r.NormFloat64())
	}
	return out
}

// conv2D must equal the textbook convolution with a torch-layout kernel [out,in,k,k] and zero
// padding: y[b,y,x,o] = bias[o] + Σ_{c,ky,kx} w[o,c,ky,kx]·x[b, y+ky−k/2, x+kx−k/2, c].
func TestConv2DMatchesDirect(t *testing.T) {
	backend := nntest.Backend(t)
	const b, h, w, cin, cout, k = 2, 3, 5, 2, 3, 3
	r := rand.New(rand.NewPCG(1, 2))
	x := randomData(r, b*h*w*cin)
	weight := randomData(r, cout*cin*k*k)
	bias := randomData(r, cout)
	mctx := mlctx.New()
	sc := mctx.In("conv")
	sc.VariableWithValue("weight", tensors.FromFlatDataAndDimensions(weight, cout, cin, k, k))
	sc.VariableWithValue("bias", tensors.FromFlatDataAndDimensions(bias, cout))
	out, err := mlctx.ExecOnce(backend, mctx.Reuse(), func(ctx *mlctx.Context, x *graph.Node) *graph.Node {
		return conv2D(ctx.In("conv"), x, cout, k, 1)
	}, tensors.FromFlatDataAndDimensions(x, b, h, w, cin))
	if err != nil {
		t.Fatal(err)
	}
	got := tensors.MustCopyFlatData[float32](out)
	for bi := range b {
		for y := range h {
			for xx := range w {
				for o := range cout {
					want := float64(bias[o])
					for c := range cin {
						for ky := range k {
							for kx := range k {
								sy, sx := y+ky-k/2, xx+kx-k/2
								if sy < 0 || sy >= h || sx < 0 || sx >= w {
									continue
								}
								want += float64(weight[((o*cin+c)*k+ky)*k+kx]) * float64(x[((bi*h+sy)*w+sx)*cin+c])
							}
						}
					}
					g := got[((bi*h+y)*w+xx)*cout+o]
					if math.Abs(float64(g)-want) > 1e-4 {
						t.Fatalf("y[%d,%d,%d,%d] = %g, want %g", bi, y, xx, o, g, want)
					}
				}
			}
		}
	}
}

// spaceToDepth with f=2 on one 2×4 image with 1 channel: pixel (y,x) holds 10y+x.
// Block (0,0) holds (0,0),(0,1),(1,0),(1,1) = 0,1,10,11 in (fy,fx) order; block (0,1) 2,3,12,13.
func TestSpaceToDepth(t *testing.T) {
	backend := nntest.Backend(t)
	x := []float32{0, 1, 2, 3, 10, 11, 12, 13}
	out, err := mlctx.ExecOnceN(backend, nil, func(ctx *mlctx.Context, x *graph.Node) []*graph.Node {
		s := spaceToDepth(x, 2)
		return []*graph.Node{s, depthToSpace(s, 2)}
	}, tensors.FromFlatDataAndDimensions(x, 1, 2, 4, 1))
	if err != nil {
		t.Fatal(err)
	}
	if got := tensors.MustCopyFlatData[float32](out[0]); !slices.Equal(got, []float32{0, 1, 10, 11, 2, 3, 12, 13}) {
		t.Errorf("spaceToDepth = %v", got)
	}
	if got := tensors.MustCopyFlatData[float32](out[1]); !slices.Equal(got, x) {
		t.Errorf("depthToSpace(spaceToDepth(x)) = %v, want %v", got, x)
	}
}

func TestHWCToCHW(t *testing.T) {
	// Two 1×2 images with 3 channels: [[r,g,b],[r,g,b]] → planes.
	hwc := []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	chw := HWCToCHW(hwc, 2, 1, 2, 3)
	if want := []float32{1, 4, 2, 5, 3, 6, 7, 10, 8, 11, 9, 12}; !slices.Equal(chw, want) {
		t.Errorf("HWCToCHW = %v, want %v", chw, want)
	}
	if back := CHWToHWC(chw, 2, 3, 1, 2); !slices.Equal(back, hwc) {
		t.Errorf("CHWToHWC = %v, want %v", back, hwc)
	}
}

func TestFitScaling(t *testing.T) {
	// Values 1, 3: mean 2, population std 1 → scaling 1, shift 2.
	// Values 0, 0, 0, 4: mean 1, variance (1+1+1+9)/4 = 3 → scaling 1/√3.
	tests := []struct {
		in   []float32
		want VAEScaling
	}{
		{[]float32{1, 3}, VAEScaling{ScalingFactor: 1, ShiftFactor: 2}},
		{[]float32{0, 0, 0, 4}, VAEScaling{ScalingFactor: float32(1 / math.Sqrt(3)), ShiftFactor: 1}},
	}
	for _, tt := range tests {
		got, err := FitScaling(tt.in)
		if err != nil || math.Abs(float64(got.ScalingFactor-tt.want.ScalingFactor)) > 1e-6 || got.ShiftFactor != tt.want.ShiftFactor {
			t.Errorf("FitScaling(%v) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	if _, err := FitScaling([]float32{2, 2, 2}); err == nil {
		t.Error("FitScaling of constant latents accepted")
	}
}

func TestLearningRate(t *testing.T) {
	// Warm-up: step 0 → peak/50, step 49 → peak; then cosine from peak (step 50) to peak/20
	// (step = steps); half-way the cosine term is 0.5: low + (peak−low)/2.
	const peak, steps = 1.0, 150
	tests := []struct {
		step int
		want float64
	}{
		{0, 0.02}, {49, 1}, {50, 1}, {100, 0.05 + 0.95*0.5}, {150, 0.05},
	}
	for _, tt := range tests {
		if got := learningRate(tt.step, steps, peak); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("learningRate(%d) = %g, want %g", tt.step, got, tt.want)
		}
	}
}

// blockImages is an ImageSource of dark blocks on light paper, like ink strokes (the renderings
// of tiny-ocr strings live in package pretrain, which models/ does not import): image i of
// step s has 2–5 blocks drawn by a generator seeded with (seed, s, i).
func blockImages(seed uint64) ImageSource {
	return func(step, n int) ([]float32, error) {
		const h, w = ImageHeight, ImageWidth
		out := make([]float32, n*ImageChannels*h*w)
		for i := range n {
			r := rand.New(rand.NewPCG(seed, uint64(step)<<20|uint64(i)))
			img := out[i*ImageChannels*h*w : (i+1)*ImageChannels*h*w]
			for j := range img {
				img[j] = 0.9
			}
			for range 2 + r.IntN(4) {
				x0, y0 := r.IntN(w-8), r.IntN(h-8)
				bw, bh := 2+r.IntN(12), 4+r.IntN(min(20, h-y0-4))
				for c := range ImageChannels {
					for y := y0; y < min(h, y0+bh); y++ {
						for x := x0; x < min(w, x0+bw); x++ {
							img[(c*h+y)*w+x] = 0.1
						}
					}
				}
			}
		}
		return out, nil
	}
}

// The variables the graph creates are exactly VAEParamShapes, and a short training run lowers
// the loss, saves, reloads and decodes to the same images as the trained context.
func TestTrainSaveLoadVAE(t *testing.T) {
	backend := nntest.Backend(t)
	cfg := VAEConfig{Hidden: 8, EncoderBlocks: 1, DecoderBlocks: 1}
	mctx := mlctx.New()
	var losses []float32
	res, err := TrainVAE(t.Context(), backend, mctx, blockImages(3), VAETrainOptions{
		Config: cfg, Steps: 30, BatchSize: 2, LR: 1e-2, LogEvery: 1,
		Log: func(step int, loss, rec float32, _ time.Duration) { losses = append(losses, loss) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(losses) != 30 || res.Steps != 30 {
		t.Fatalf("%d losses logged, result %+v", len(losses), res)
	}
	first := (losses[0] + losses[1] + losses[2]) / 3
	last := (losses[27] + losses[28] + losses[29]) / 3
	if !(last < 0.8*first) {
		t.Errorf("loss went from %.4f to %.4f, want a drop of at least 20%%", first, last)
	}
	want := VAEParamShapes(cfg)
	got := ParamShapes{}
	for v := range mctx.IterVariables() {
		key := VariableKey(v.Scope(), v.Name())
		if strings.HasPrefix(key, "encoder.") || strings.HasPrefix(key, "decoder.") {
			got[key] = v.Shape().Dimensions
		}
	}
	if len(got) != len(want) {
		t.Errorf("graph variables %v, want %v", got, want)
	}
	for k, s := range want {
		if !slices.Equal(got[k], s) {
			t.Errorf("variable %q: shape %v, want %v", k, got[k], s)
		}
	}

	scaling := VAEScaling{ScalingFactor: 2, ShiftFactor: 0.5}
	path := filepath.Join(t.TempDir(), "vae.safetensors")
	if err := SaveVAE(path, mctx, cfg, scaling); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadVAE(backend, path)
	if err != nil {
		t.Fatal(err)
	}
	defer loaded.Close()
	if loaded.Config != cfg || loaded.Scaling != scaling {
		t.Errorf("loaded config %+v scaling %+v", loaded.Config, loaded.Scaling)
	}
	direct, err := newVAEFromContext(backend, mctx, cfg, scaling)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	images, _ := blockImages(9)(0, 2)
	z1, err := loaded.Encode(images, 2)
	if err != nil {
		t.Fatal(err)
	}
	z2, _ := direct.Encode(images, 2)
	if !slices.Equal(z1, z2) {
		t.Error("loaded and trained encoders differ")
	}
	x1, err := loaded.Decode(z1, 2)
	if err != nil {
		t.Fatal(err)
	}
	x2, _ := direct.Decode(z1, 2)
	if !slices.Equal(x1, x2) || len(x1) != len(images) {
		t.Error("loaded and trained decoders differ")
	}
	for _, v := range x1 {
		if v < 0 || v > 1 {
			t.Fatalf("decoded value %g outside [0,1]", v)
		}
	}
	if _, err := loaded.Decode(z1[:10], 2); err == nil {
		t.Error("Decode accepted a short latent")
	}

	// A file missing a tensor is an error naming it and its shape.
	ts, meta, err := safetensors.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	delete(ts, "decoder.conv_out.bias")
	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	if err := safetensors.Write(bad, ts, meta); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadVAE(bad); err == nil || !strings.Contains(err.Error(), `missing tensor "decoder.conv_out.bias" (want [48])`) {
		t.Errorf("ReadVAE of a file without decoder.conv_out.bias: %v", err)
	}
}
