package pretrain

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// tinyTransformerJSON is a transformer small enough for a step in well under a second: width
// 2·8 = 16, two blocks, text widths matching tinyTextEncoder.
const tinyTransformerJSON = `{
  "sample_size": 32, "patch_size": 2, "in_channels": 4, "out_channels": 4,
  "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
  "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 16,
  "pos_embed_max_size": 16, "qk_norm": "rms_norm"
}`

var tinyTextEncoder = TextEncoderConfig{Dim: 16, PooledDim: 16, Hidden: 16}

// writeVAE writes a randomly initialised VAE (tinyocr format) to dir/vae.safetensors: the
// pretraining only needs some fixed encoder. full selects the committed size
// (tinyocr.DefaultVAEConfig, for benchmarks), otherwise a small one.
func writeVAE(t testing.TB, dir string, full bool) string {
	t.Helper()
	cfg := tinyocr.VAEConfig{Hidden: 8, EncoderBlocks: 0, DecoderBlocks: 0}
	if full {
		cfg = tinyocr.DefaultVAEConfig()
	}
	mctx := mlctx.New()
	if err := mctx.SetRNGStateFromSeed(7); err != nil {
		t.Fatal(err)
	}
	exec, err := mlctx.NewExec(nntest.Backend(t), mctx, func(c *mlctx.Context, images, noise *Node) *Node {
		loss, _ := tinyocr.VAELoss(c, cfg, images, noise, 0)
		return loss
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	images := make([]float32, 3*tinyocr.ImageHeight*tinyocr.ImageWidth)
	noise := make([]float32, latentSize)
	if _, err := exec.Exec(tensors.FromFlatDataAndDimensions(images, 1, 3, tinyocr.ImageHeight, tinyocr.ImageWidth),
		tensors.FromFlatDataAndDimensions(noise, 1, latentChannels, latentHeight, latentWidth)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "vae.safetensors")
	if err := tinyocr.SaveVAE(path, mctx, cfg, tinyocr.VAEScaling{ScalingFactor: 2, ShiftFactor: 0.1}); err != nil {
		t.Fatal(err)
	}
	return path
}

// testConfig returns a valid config of the tiny models in dir: batch 4, the committed train
// prompts, log every step.
func testConfig(t *testing.T, dir string, steps int) Config {
	t.Helper()
	model := filepath.Join(dir, "tiny-mmdit.json")
	if err := os.WriteFile(model, []byte(tinyTransformerJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	cfg.Model.Transformer = model
	cfg.Model.VAE = writeVAE(t, dir, false)
	cfg.Model.TextEncoder = tinyTextEncoder
	cfg.Data.Prompts = filepath.Join("..", "..", "datasets", "ocr-tiny", "train.txt")
	cfg.Train.BatchSize = 4
	cfg.Train.Steps = steps
	cfg.Train.WarmupSteps = 2
	cfg.Train.LR = 3e-3
	cfg.Output.Dir = filepath.Join(dir, "out")
	cfg.Output.LogEvery = 1
	cfg.Output.CheckpointEvery = 1000
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}
