// Package frozentest writes small ONNX and safetensors fixtures for tests of the inference side:
// a text encoder and a VAE decoder with the tensor names of package frozen and closed-form
// outputs, a mean-brightness reward, a tiny random MMDiT, and a whole TOML configuration that
// ties them together. Every output is a formula of the input, stated on each writer, so tests
// can derive the values they expect by hand.
package frozentest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/models/frozen"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// batchDim is a symbolic batch dim, or the fixed one when batch > 0.
func batchDim(batch int) onnx.Dim {
	if batch > 0 {
		return onnx.Fixed(int64(batch))[0]
	}
	return onnx.Sym("batch")
}

// EmbedScale and PooledScale are the fixture text encoder's weights (see WriteTextEncoder).
func EmbedScale(j int) float32  { return float32(j+1) * 0.01 }
func PooledScale(j int) float32 { return float32(j+1) * 0.001 }

// WriteTextEncoder writes a text encoder graph: input_ids int64 [B,48] →
//
//	prompt_embeds[b,t,j]      = id[b,t] · EmbedScale(j)     [B,48,d]
//	pooled_prompt_embeds[b,j] = (Σ_t id[b,t]) · PooledScale(j)   [B,p]
//
// batch > 0 fixes the batch dim; 0 leaves it symbolic.
func WriteTextEncoder(path string, d, p, batch int) error {
	l := int64(tinyocr.MaxLength)
	g := onnx.NewGraph("fixture_text_encoder")
	ids := g.Input(frozen.InputIDs, onnx.Int64, batchDim(batch), onnx.Fixed(l)[0])
	f := g.Op("Cast", []string{ids}, onnx.AttrInt("to", int64(onnx.Float32)))
	emb := make([]float32, d)
	for j := range emb {
		emb[j] = EmbedScale(j)
	}
	pool := make([]float32, p)
	for j := range pool {
		pool[j] = PooledScale(j)
	}
	f3 := g.Op("Unsqueeze", []string{f, g.ConstI64("axis2", []int64{1}, []int64{2})})
	g.Node("Mul", []string{f3, g.ConstF32("embed_scale", []int64{1, 1, int64(d)}, emb)}, []string{frozen.PromptEmbeds})
	sum := g.Op("ReduceSum", []string{f, g.ConstI64("axis1", []int64{1}, []int64{1})}, onnx.AttrInt("keepdims", 1))
	g.Node("Mul", []string{sum, g.ConstF32("pooled_scale", []int64{1, int64(p)}, pool)}, []string{frozen.PooledPromptEmbeds})
	g.Output(frozen.PromptEmbeds, onnx.Float32, batchDim(batch), onnx.Fixed(l)[0], onnx.Fixed(int64(d))[0])
	g.Output(frozen.PooledPromptEmbeds, onnx.Float32, batchDim(batch), onnx.Fixed(int64(p))[0])
	return (&onnx.Model{Graph: g, ProducerName: "frozentest"}).WriteFile(path)
}

// WriteVAEDecoder writes a VAE decoder graph: latent float32 [B,c,h,w] (c >= 3) →
// image[b,k,y,x] = sigmoid(latent[b,k,y,x]) for k < 3, [B,3,h,w]. batch > 0 fixes the batch dim.
func WriteVAEDecoder(path string, c, h, w, batch int) error {
	if c < 3 {
		return fmt.Errorf("write fixture VAE decoder: %d latent channels, want >= 3", c)
	}
	g := onnx.NewGraph("fixture_vae_decoder")
	x := g.Input(frozen.LatentInput, onnx.Float32, append([]onnx.Dim{batchDim(batch)}, onnx.Fixed(int64(c), int64(h), int64(w))...)...)
	rgb := g.Op("Slice", []string{x, g.ConstI64("starts", []int64{1}, []int64{0}), g.ConstI64("ends", []int64{1}, []int64{3}),
		g.ConstI64("axes", []int64{1}, []int64{1})})
	g.Node("Sigmoid", []string{rgb}, []string{frozen.ImageOutput})
	g.Output(frozen.ImageOutput, onnx.Float32, append([]onnx.Dim{batchDim(batch)}, onnx.Fixed(3, int64(h), int64(w))...)...)
	return (&onnx.Model{Graph: g, ProducerName: "frozentest"}).WriteFile(path)
}

// WriteBrightnessReward writes an onnx-scalar reward graph: pixel_values float32 [B,3,H,W] →
// score[b] = mean of the image's values.
func WriteBrightnessReward(path string) error {
	g := onnx.NewGraph("fixture_brightness")
	x := g.Input("pixel_values", onnx.Float32, onnx.Sym("batch"), onnx.Fixed(3)[0], onnx.Sym("height"), onnx.Sym("width"))
	g.Node("ReduceMean", []string{x}, []string{"score"}, onnx.AttrInts("axes", 1, 2, 3), onnx.AttrInt("keepdims", 0))
	g.Output("score", onnx.Float32, onnx.Sym("batch"))
	return (&onnx.Model{Graph: g, ProducerName: "frozentest"}).WriteFile(path)
}

// TinyMMDiT is the fixture transformer: latents [4,4,8] (2×4 patches of 2×2), width 16, two
// joint blocks (the last one has no text-stream output, so one is not enough for LoRA's
// to_add_out), text tokens of width 16 and a pooled embedding of width 8.
var TinyMMDiT = mmdit.Config{
	SampleSize: 8, PatchSize: 2, InChannels: 4, NumLayers: 2, AttentionHeadDim: 8, NumAttentionHeads: 2,
	JointAttentionDim: 16, CaptionProjectionDim: 16, PooledProjectionDim: 8, OutChannels: 4, PosEmbedMaxSize: 4,
	QKNorm: "rms_norm",
}

// LatentShape is the fixture's latent [C,h,w].
var LatentShape = []int{4, 4, 8}

// WriteMMDiT writes cfg as JSON to configPath and random base weights to weightsPath: every
// weight N(0, std²) from seed, RMS-norm scales 1.
func WriteMMDiT(configPath, weightsPath string, cfg mmdit.Config, seed uint64, std float64) error {
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("write fixture mmdit config: %w", err)
	}
	if err := os.WriteFile(configPath, js, 0o644); err != nil {
		return fmt.Errorf("write fixture mmdit config: %w", err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	ts := map[string]safetensors.Tensor{}
	for _, p := range cfg.Params() {
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		data := make([]float32, n)
		for i := range data {
			if strings.Contains(p.Key, ".norm_") {
				data[i] = 1
			} else {
				data[i] = float32(rng.NormFloat64() * std)
			}
		}
		ts[p.Key] = safetensors.Tensor{Shape: p.Shape, Data: data}
	}
	return safetensors.Write(weightsPath, ts, map[string]string{"format": "pt"})
}

// WriteLoRA writes adapters for cfg and lora with PEFT names: lora_A and lora_B both
// N(0, std²) from seed (so, unlike a fresh init, they change the model).
func WriteLoRA(path string, cfg mmdit.Config, lora mmdit.LoRAConfig, seed uint64, std float64) error {
	rng := rand.New(rand.NewPCG(seed, 2))
	ts := map[string]safetensors.Tensor{}
	for _, p := range lora.Params(cfg) {
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		data := make([]float32, n)
		for i := range data {
			data[i] = float32(rng.NormFloat64() * std)
		}
		ts[p.Key] = safetensors.Tensor{Shape: p.Shape, Data: data}
	}
	meta := map[string]string{"format": "pt", "lora_rank": fmt.Sprint(lora.Rank), "lora_alpha": fmt.Sprint(lora.Alpha)}
	return safetensors.Write(path, ts, meta)
}

// Prompts are the fixture's test prompts.
var Prompts = []string{`a sign that says "AB"`, `the code "K4RT" on a screen`, `"Z9" painted on a door`}

// Files are the paths WriteConfig wrote.
type Files struct {
	Config, MMDiTConfig, Weights, TextEncoder, VAEDecoder, Reward, Train, Test string
}

// WriteConfig writes a complete pipeline configuration into dir: config.toml (backend "go",
// eval with 4 Euler steps and batch size 2, LoRA rank 2, alpha 4), the fixture MMDiT with
// std-0.05 random weights, text encoder, VAE decoder, brightness reward ("bright") and the
// prompt files (Prompts as both train and test). extra is appended to the TOML.
func WriteConfig(dir, extra string) (Files, error) {
	f := Files{
		Config: filepath.Join(dir, "config.toml"), MMDiTConfig: filepath.Join(dir, "mmdit.json"),
		Weights: filepath.Join(dir, "transformer.safetensors"), TextEncoder: filepath.Join(dir, "text_encoder.onnx"),
		VAEDecoder: filepath.Join(dir, "vae_decoder.onnx"), Reward: filepath.Join(dir, "bright.onnx"),
		Train: filepath.Join(dir, "train.txt"), Test: filepath.Join(dir, "test.txt"),
	}
	if err := WriteMMDiT(f.MMDiTConfig, f.Weights, TinyMMDiT, 7, 0.05); err != nil {
		return f, err
	}
	if err := WriteTextEncoder(f.TextEncoder, TinyMMDiT.JointAttentionDim, TinyMMDiT.PooledProjectionDim, 0); err != nil {
		return f, err
	}
	if err := WriteVAEDecoder(f.VAEDecoder, LatentShape[0], LatentShape[1], LatentShape[2], 0); err != nil {
		return f, err
	}
	if err := WriteBrightnessReward(f.Reward); err != nil {
		return f, err
	}
	lines := strings.Join(Prompts, "\n") + "\n"
	for _, p := range []string{f.Train, f.Test} {
		if err := os.WriteFile(p, []byte(lines), 0o644); err != nil {
			return f, err
		}
	}
	toml := `[run]
name = "fixture"
out_dir = "runs"
seed = 3
epochs = 1
backend = "go"

[model]
config = "mmdit.json"
weights = "transformer.safetensors"

[model.lora]
rank = 2
alpha = 4

[onnx]
intra_op_threads = 1

[text_encoder]
model = "text_encoder.onnx"

[vae]
decoder = "vae_decoder.onnx"

[prompts]
train = "train.txt"
test = "test.txt"

[eval]
steps = 4
batch_size = 2

[[reward]]
name = "bright"
kind = "onnx-scalar"
model = "bright.onnx"
` + extra
	if err := os.WriteFile(f.Config, []byte(toml), 0o644); err != nil {
		return f, err
	}
	return f, nil
}
