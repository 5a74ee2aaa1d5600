package pretrain

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// Latent geometry of the tiny VAE: the transformer is trained on [B, 4, 8, 32] latents.
const (
	latentChannels = tinyocr.LatentChannels
	latentHeight   = tinyocr.LatentHeight
	latentWidth    = tinyocr.LatentWidth
	latentSize     = latentChannels * latentHeight * latentWidth
)

// dataStream separates the data generator's PCG stream from other uses of the seed.
const dataStream = 0x7072657472616e // "pretran"

// batch is everything a training step consumes, drawn for one step number.
type batch struct {
	step int
	// latents x0 [n, 4, 8, 32]: scaled VAE posterior means of the rendered targets.
	latents []float32
	// noise x1 [n, 4, 8, 32] ~ N(0, I).
	noise []float32
	// sigma [n], the noise levels.
	sigma []float32
	// ids [n, tinyocr.MaxLength] token ids of the prompts ("" where the caption was dropped).
	ids []int64
	// dropped counts the captions replaced by the empty prompt.
	dropped int
}

// encoder maps n images NCHW [n, 3, 32, 128] in [0, 1] to model-space latents [n, 4, 8, 32]
// (tinyocr.VAE.Encode).
type encoder func(images []float32, n int) ([]float32, error)

// dataSource draws the batches of a run.
type dataSource struct {
	prompts []ocrtiny.Prompt
	seed    uint64
	size    int
	dropout float64
	sigma   SigmaConfig
	encode  encoder
}

// draw renders and encodes batch step. Its randomness comes from PCG(seed, step) alone, in
// this order: per sample, the prompt index, the render seed, the caption-dropout coin and σ;
// then the noise of the whole batch.
func (d *dataSource) draw(step int) (batch, error) {
	rng := rand.New(rand.NewPCG(d.seed^dataStream, uint64(step)))
	n := d.size
	b := batch{step: step, noise: make([]float32, n*latentSize), sigma: make([]float32, n)}
	targets := make([]string, n)
	seeds := make([]uint64, n)
	prompts := make([]string, n)
	for i := range n {
		p := d.prompts[rng.IntN(len(d.prompts))]
		targets[i], seeds[i], prompts[i] = p.Target, rng.Uint64(), p.Text
		if rng.Float64() < d.dropout {
			prompts[i] = ""
			b.dropped++
		}
		b.sigma[i] = SampleSigma(rng, d.sigma)
	}
	for i := range b.noise {
		b.noise[i] = float32(rng.NormFloat64())
	}
	hwc, err := ocrtiny.RenderBatch(targets, seeds)
	if err != nil {
		return batch{}, fmt.Errorf("render batch %d: %w", step, err)
	}
	images := tinyocr.HWCToCHW(hwc, n, tinyocr.ImageHeight, tinyocr.ImageWidth, tinyocr.ImageChannels)
	b.latents, err = d.encode(images, n)
	if err != nil {
		return batch{}, fmt.Errorf("encode batch %d: %w", step, err)
	}
	if len(b.latents) != n*latentSize {
		return batch{}, fmt.Errorf("encode batch %d: got %d latent values, want %d", step, len(b.latents), n*latentSize)
	}
	b.ids = tinyocr.TokenizeBatch(prompts)
	return b, nil
}

// produce sends batches first, first+1, …, last−1 on out, in order, then closes it. It stops
// with ctx's error when ctx is done and turns a panic (GoMLX) into an error.
func (d *dataSource) produce(ctx context.Context, first, last int, out chan<- batch) (err error) {
	defer close(out)
	defer nn.Recover(&err)
	for step := first; step < last; step++ {
		b, err := d.draw(step)
		if err != nil {
			return err
		}
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
