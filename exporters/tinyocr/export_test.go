package tinyocr

import (
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/onnxrt/onnxrttest"
	"github.com/densegrpo/densegrpo/models/safetensors"
	model "github.com/densegrpo/densegrpo/models/tinyocr"
)

func TestMain(m *testing.M) { onnxrttest.Main(m, "exporters/tinyocr") }

// perturb adds N(0, 0.1²) noise to every tensor so that no weight is at its special initial
// value (zero biases, unit norms, zero residual convs) and every path of the graph matters.
func perturb(ts map[string]safetensors.Tensor, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0))
	for _, k := range slices.Sorted(maps.Keys(ts)) {
		for i := range ts[k].Data {
			ts[k].Data[i] += float32(0.1 * r.NormFloat64())
		}
	}
}

func runONNX(t *testing.T, path string, inputs map[string]onnxrt.Tensor) map[string]onnxrt.Tensor {
	t.Helper()
	s, err := onnxrt.Open(path, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(context.Background(), inputs)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkClose(t *testing.T, name string, got onnxrt.Tensor, wantShape []int64, want []float32, tol float64) {
	t.Helper()
	if !slices.Equal(got.Shape, wantShape) {
		t.Fatalf("%s: shape %v, want %v", name, got.Shape, wantShape)
	}
	if len(got.Float32) != len(want) {
		t.Fatalf("%s: %d values, want %d", name, len(got.Float32), len(want))
	}
	maxDiff := 0.0
	for i := range want {
		d := math.Abs(float64(got.Float32[i] - want[i]))
		if math.IsNaN(float64(got.Float32[i])) || d > tol {
			t.Fatalf("%s[%d] = %v, GoMLX %v (|diff| %g > %g)", name, i, got.Float32[i], want[i], d, tol)
		}
		maxDiff = math.Max(maxDiff, d)
	}
	t.Logf("%s: max |ONNX − GoMLX| = %.2g over %d values", name, maxDiff, len(want))
}

var parityPrompts = []string{
	`a sign that says "K4RT"`,
	`the word "ZX81Q9" written on a wall`,
	`"AB" "CD" two quoted spans`,
	`no quotes at all`,
	``,
	`a t-shirt with "ÉCLAIR" on it and a prompt longer than forty-eight characters`,
}

func TestTextEncoderParity(t *testing.T) {
	backend := nntest.Backend(t)
	cfg := model.TextEncoderConfig{Dim: 16, PooledDim: 12, Hidden: 24}
	ts, err := model.InitTextEncoder(backend, cfg, model.TextEncoderPrefix, 7)
	if err != nil {
		t.Fatal(err)
	}
	perturb(ts, 1)
	checkTextEncoderParity(t, ts)
}

func checkTextEncoderParity(t *testing.T, ts map[string]safetensors.Tensor) {
	t.Helper()
	backend := nntest.Backend(t)
	ref, err := model.NewTextEncoder(backend, ts, model.TextEncoderPrefix)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	n := len(parityPrompts)
	ids := model.TokenizeBatch(parityPrompts)
	wantTok, wantPooled, err := ref.Encode(ids, n)
	if err != nil {
		t.Fatal(err)
	}

	m, err := TextEncoderModel(ts, model.TextEncoderPrefix)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "text_encoder.onnx")
	if err := m.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	out := runONNX(t, path, map[string]onnxrt.Tensor{
		InputIDs: {Shape: []int64{int64(n), model.MaxLength}, Int64: ids},
	})
	cfg := ref.Config
	checkClose(t, PromptEmbeds, out[PromptEmbeds], []int64{int64(n), model.MaxLength, int64(cfg.Dim)}, wantTok, 1e-4)
	checkClose(t, PooledEmbeds, out[PooledEmbeds], []int64{int64(n), int64(cfg.PooledDim)}, wantPooled, 1e-4)

	ins, outs, err := onnxrt.Inspect(path, onnxrt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) != 1 || ins[0].String() != "input_ids int64 [-1,48]" {
		t.Errorf("inputs %v", ins)
	}
	wantOut0 := fmt.Sprintf("prompt_embeds float32 [-1,48,%d]", cfg.Dim)
	wantOut1 := fmt.Sprintf("pooled_prompt_embeds float32 [-1,%d]", cfg.PooledDim)
	if len(outs) != 2 || outs[0].String() != wantOut0 || outs[1].String() != wantOut1 {
		t.Errorf("outputs %v", outs)
	}
}

func TestVAEDecoderParity(t *testing.T) {
	backend := nntest.Backend(t)
	cfg := model.VAEConfig{Hidden: 8, EncoderBlocks: 1, DecoderBlocks: 2}
	w, err := model.InitVAE(backend, cfg, model.VAEScaling{ScalingFactor: 1.7, ShiftFactor: 0.3}, 3)
	if err != nil {
		t.Fatal(err)
	}
	perturb(w.Tensors, 2)
	checkVAEParity(t, w)
}

func checkVAEParity(t *testing.T, w *model.VAEWeights) {
	t.Helper()
	backend := nntest.Backend(t)
	ref, err := model.NewVAE(backend, w)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	const n = 3
	r := rand.New(rand.NewPCG(5, 6))
	latent := make([]float32, n*model.LatentChannels*model.LatentHeight*model.LatentWidth)
	for i := range latent {
		latent[i] = float32(r.NormFloat64())
	}
	want, err := ref.Decode(latent, n)
	if err != nil {
		t.Fatal(err)
	}
	m, err := VAEDecoderModel(w)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "vae_decoder.onnx")
	if err := m.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	out := runONNX(t, path, map[string]onnxrt.Tensor{
		LatentInput: {Shape: []int64{n, model.LatentChannels, model.LatentHeight, model.LatentWidth}, Float32: latent},
	})
	checkClose(t, ImageOutput, out[ImageOutput], []int64{n, model.ImageChannels, model.ImageHeight, model.ImageWidth}, want, 1e-4)
}

func TestExportErrors(t *testing.T) {
	backend := nntest.Backend(t)
	ts, err := model.InitTextEncoder(backend, model.DefaultTextEncoderConfig(), model.TextEncoderPrefix, 1)
	if err != nil {
		t.Fatal(err)
	}
	delete(ts, "text_encoder.block.fc2.bias")
	if _, err := TextEncoderModel(ts, model.TextEncoderPrefix); err == nil || !containsAll(err.Error(), `"text_encoder.block.fc2.bias"`, "[64]") {
		t.Errorf("export without fc2.bias: %v", err)
	}
	if _, err := TextEncoderModel(map[string]safetensors.Tensor{}, model.TextEncoderPrefix); err == nil {
		t.Error("export of an empty checkpoint succeeded")
	}
	if err := WriteVAEDecoder(filepath.Join(t.TempDir(), "x.onnx"), "/nonexistent/vae.safetensors"); err == nil {
		t.Error("export of a missing VAE file succeeded")
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// The committed VAE weights export to a graph that matches GoMLX within 1e-4.
func TestCommittedVAEDecoderParity(t *testing.T) {
	w, err := model.ReadVAE(filepath.Join("..", "..", "models", "tinyocr", "weights", "vae.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	checkVAEParity(t, w)
}

// The committed text encoder weights (from pretraining) export to a graph that matches GoMLX
// within 1e-4.
func TestCommittedTextEncoderParity(t *testing.T) {
	ts, _, err := safetensors.Read(filepath.Join("..", "..", "models", "tinyocr", "weights", "text_encoder.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	checkTextEncoderParity(t, ts)
}
