package tinyocr

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/train/optimizers"

	"github.com/densegrpo/densegrpo/models/nn"
)

// ImageSource returns training batch number step: n images as float32 NCHW [n,3,32,128] in [0,1].
type ImageSource func(step, n int) ([]float32, error)

// HWCToCHW reorders n images [h,w,c] into [c,h,w] each.
func HWCToCHW(pix []float32, n, h, w, c int) []float32 {
	out := make([]float32, len(pix))
	for b := range n {
		src, dst := pix[b*h*w*c:], out[b*h*w*c:]
		for y := range h {
			for x := range w {
				for ch := range c {
					dst[(ch*h+y)*w+x] = src[(y*w+x)*c+ch]
				}
			}
		}
	}
	return out
}

// CHWToHWC reorders n images [c,h,w] into [h,w,c] each.
func CHWToHWC(pix []float32, n, c, h, w int) []float32 {
	out := make([]float32, len(pix))
	for b := range n {
		src, dst := pix[b*h*w*c:], out[b*h*w*c:]
		for ch := range c {
			for y := range h {
				for x := range w {
					dst[(y*w+x)*c+ch] = src[(ch*h+y)*w+x]
				}
			}
		}
	}
	return out
}

// VAETrainOptions configures TrainVAE. Zero fields take the defaults of DefaultVAETrainOptions.
type VAETrainOptions struct {
	Config    VAEConfig
	Steps     int     // optimizer steps; default 1500
	BatchSize int     // images per step; default 16
	LR        float64 // peak AdamW learning rate; default 2e-3, cosine-decayed to LR/20 after a 50-step warm-up
	// WeightDecay is AdamW's decoupled weight decay; default 1e-4.
	WeightDecay float64
	// KLWeight multiplies the mean per-element KL divergence; default 1e-4.
	KLWeight float64
	// Seed seeds the reparameterisation noise and (through the ImageSource) nothing else.
	Seed uint64
	// Log, if set, is called every LogEvery steps (default 50) and at the last step.
	Log      func(step int, loss, rec float32, elapsed time.Duration)
	LogEvery int
}

// DefaultVAETrainOptions are the options the committed weights were trained with.
func DefaultVAETrainOptions() VAETrainOptions {
	return VAETrainOptions{Config: DefaultVAEConfig(), Steps: 1500, BatchSize: 16, LR: 2e-3, WeightDecay: 1e-4, KLWeight: 1e-4, LogEvery: 50}
}

func (o VAETrainOptions) withDefaults() VAETrainOptions {
	d := DefaultVAETrainOptions()
	if o.Config == (VAEConfig{}) {
		o.Config = d.Config
	}
	if o.Steps == 0 {
		o.Steps = d.Steps
	}
	if o.BatchSize == 0 {
		o.BatchSize = d.BatchSize
	}
	if o.LR == 0 {
		o.LR = d.LR
	}
	if o.WeightDecay == 0 {
		o.WeightDecay = d.WeightDecay
	}
	if o.KLWeight == 0 {
		o.KLWeight = d.KLWeight
	}
	if o.LogEvery == 0 {
		o.LogEvery = d.LogEvery
	}
	return o
}

// VAETrainResult reports a finished TrainVAE.
type VAETrainResult struct {
	Steps     int
	FinalLoss float32 // mean loss of the last min(50, Steps) steps
	FinalRec  float32 // mean reconstruction loss of the same steps
	Elapsed   time.Duration
}

// learningRate is the schedule: linear warm-up over 50 steps, then cosine from peak to peak/20.
func learningRate(step, steps int, peak float64) float64 {
	const warmup = 50
	if step < warmup {
		return peak * float64(step+1) / warmup
	}
	if steps <= warmup {
		return peak
	}
	p := float64(step-warmup) / float64(steps-warmup)
	low := peak / 20
	return low + (peak-low)*0.5*(1+math.Cos(math.Pi*p))
}

// TrainVAE trains the VAE variables of mctx (scopes "encoder" and "decoder" under mctx's
// current scope; existing variables are continued from, missing ones created) on images from src with AdamW. It stops early with ctx's
// error if ctx is cancelled between steps.
func TrainVAE(ctx context.Context, backend backends.Backend, mctx *mlctx.Context, src ImageSource, opts VAETrainOptions) (res VAETrainResult, err error) {
	opts = opts.withDefaults()
	if err := opts.Config.Validate(); err != nil {
		return res, err
	}
	opt := optimizers.Adam().LearningRate(opts.LR).WeightDecay(opts.WeightDecay).Done()
	cfg, klWeight := opts.Config, opts.KLWeight
	var exec *mlctx.Exec
	if err := nn.Try(func() {
		exec, err = mlctx.NewExec(backend, mctx, func(c *mlctx.Context, images, noise *Node) (*Node, *Node) {
			// Unchecked: existing encoder/decoder variables (a warm start) are reused, missing
			// ones created.
			loss, rec := VAELoss(c.Checked(false), cfg, images, noise, klWeight)
			opt.UpdateGraph(c, images.Graph(), loss)
			return loss, rec
		})
	}); err != nil {
		return res, fmt.Errorf("train VAE: build step: %w", err)
	}
	if err != nil {
		return res, fmt.Errorf("train VAE: build step: %w", err)
	}
	defer exec.Finalize()
	lrVar := optimizers.LearningRateVar(mctx, dtypes.Float32, opts.LR)

	rng := rand.New(rand.NewPCG(opts.Seed, 0x7661652d6e6f6973)) // "vae-nois"
	n := opts.BatchSize
	noise := make([]float32, n*LatentChannels*LatentHeight*LatentWidth)
	start := time.Now()
	var tailLoss, tailRec float64
	tail := min(50, opts.Steps)
	for step := range opts.Steps {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		images, err := src(step, n)
		if err != nil {
			return res, fmt.Errorf("train VAE: step %d: images: %w", step, err)
		}
		if len(images) != n*ImageChannels*ImageHeight*ImageWidth {
			return res, fmt.Errorf("train VAE: step %d: image source gave %d values, want %d×3×32×128", step, len(images), n)
		}
		for i := range noise {
			noise[i] = float32(rng.NormFloat64())
		}
		if err := lrVar.SetValue(tensors.FromScalar(float32(learningRate(step, opts.Steps, opts.LR)))); err != nil {
			return res, fmt.Errorf("train VAE: set learning rate: %w", err)
		}
		var outs []*tensors.Tensor
		if perr := nn.Try(func() {
			outs, err = exec.Exec(
				tensors.FromFlatDataAndDimensions(images, n, ImageChannels, ImageHeight, ImageWidth),
				tensors.FromFlatDataAndDimensions(noise, n, LatentChannels, LatentHeight, LatentWidth))
		}); perr != nil {
			return res, fmt.Errorf("train VAE: step %d: %w", step, perr)
		}
		if err != nil {
			return res, fmt.Errorf("train VAE: step %d: %w", step, err)
		}
		loss, rec := tensors.ToScalar[float32](outs[0]), tensors.ToScalar[float32](outs[1])
		for _, t := range outs {
			t.FinalizeAll()
		}
		if math.IsNaN(float64(loss)) {
			return res, fmt.Errorf("train VAE: step %d: loss is NaN", step)
		}
		if step >= opts.Steps-tail {
			tailLoss += float64(loss)
			tailRec += float64(rec)
		}
		if opts.Log != nil && (step%opts.LogEvery == 0 || step == opts.Steps-1) {
			opts.Log(step, loss, rec, time.Since(start))
		}
	}
	return VAETrainResult{
		Steps:     opts.Steps,
		FinalLoss: float32(tailLoss / float64(tail)),
		FinalRec:  float32(tailRec / float64(tail)),
		Elapsed:   time.Since(start),
	}, nil
}
