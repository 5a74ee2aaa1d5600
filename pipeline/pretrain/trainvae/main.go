// Command trainvae trains the tiny-ocr VAE on rendered images, fits its latent scaling, writes
// the weights (safetensors) and checks reconstructions of test strings with PP-OCRv4:
//
//	go run ./pipeline/pretrain/trainvae -out models/tinyocr/weights/vae.safetensors
package main

import (
	"context"
	"flag"
	"fmt"
	"image"
	"os"
	"os/signal"
	"time"

	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/datasets/ocrtiny/ocrread"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/tinyocr"
	"github.com/densegrpo/densegrpo/pipeline/pretrain"
)

func main() {
	o := tinyocr.DefaultVAETrainOptions()
	out := flag.String("out", "models/tinyocr/weights/vae.safetensors", "weight file to write")
	grid := flag.String("grid", "", "optional PNG of originals and reconstructions of the check strings")
	seed := flag.Uint64("seed", 1, "seed of the training images and noise")
	initPath := flag.String("init", "", "optional VAE weight file to start from (its config overrides -hidden/-enc-blocks/-dec-blocks)")
	check := flag.Int("check", 20, "number of test-split strings to reconstruct and read with PP-OCRv4")
	flag.IntVar(&o.Steps, "steps", o.Steps, "optimizer steps")
	flag.IntVar(&o.BatchSize, "batch", o.BatchSize, "images per step")
	flag.Float64Var(&o.LR, "lr", o.LR, "peak learning rate")
	flag.Float64Var(&o.KLWeight, "kl", o.KLWeight, "KL weight")
	flag.IntVar(&o.Config.Hidden, "hidden", o.Config.Hidden, "channel width")
	flag.IntVar(&o.Config.EncoderBlocks, "enc-blocks", o.Config.EncoderBlocks, "encoder residual blocks")
	flag.IntVar(&o.Config.DecoderBlocks, "dec-blocks", o.Config.DecoderBlocks, "decoder residual blocks")
	flag.Parse()
	// os.Exit skips deferred calls, so the signal handler is stopped before it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, o, *seed, *initPath, *out, *grid, *check)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "trainvae:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o tinyocr.VAETrainOptions, seed uint64, initPath, out, gridPath string, check int) error {
	backend, desc, err := nn.NewBackend("go")
	if err != nil {
		return err
	}
	fmt.Println("backend:", desc)
	o.Seed = seed
	o.Log = func(step int, loss, rec float32, el time.Duration) {
		fmt.Printf("step %5d  loss %.5f  rec %.5f  %6.1fs\n", step, loss, rec, el.Seconds())
	}
	mctx := mlctx.New()
	if initPath != "" {
		w, err := tinyocr.ReadVAE(initPath)
		if err != nil {
			return err
		}
		o.Config = w.Config
		if err := tinyocr.ImportVariables(mctx, w.Tensors, tinyocr.VAEParamShapes(w.Config)); err != nil {
			return fmt.Errorf("start from %s: %w", initPath, err)
		}
		fmt.Println("starting from", initPath)
	}
	res, err := tinyocr.TrainVAE(ctx, backend, mctx, pretrain.RenderedImages(seed), o)
	if err != nil {
		return err
	}
	fmt.Printf("trained %d steps in %s, final loss %.5f rec %.5f, %d parameters\n",
		res.Steps, res.Elapsed.Round(time.Second), res.FinalLoss, res.FinalRec, tinyocr.VAEParamShapes(o.Config).NumParams())

	const fitN = 256
	scaling, err := tinyocr.FitVAEScaling(backend, mctx, o.Config, pretrain.RenderedImages(seed+1), fitN)
	if err != nil {
		return err
	}
	fmt.Printf("scaling_factor %.5f shift_factor %.5f (fitted on %d images)\n", scaling.ScalingFactor, scaling.ShiftFactor, fitN)
	if err := tinyocr.SaveVAE(out, mctx, o.Config, scaling); err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%d bytes)\n", out, st.Size())
	if check <= 0 {
		return nil
	}
	vae, err := tinyocr.LoadVAE(backend, out)
	if err != nil {
		return err
	}
	defer vae.Close()
	reader, err := ocrread.Open(onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		return err
	}
	defer reader.Close()
	rep, err := pretrain.CheckReconstructions(ctx, vae, reader, check)
	if err != nil {
		return err
	}
	fmt.Printf("reconstructions: PSNR %.2f dB; OCR exact-contained %d/%d (originals %d/%d), mean score %.3f (originals %.3f)\n",
		rep.PSNR, rep.ReconContained, rep.N, rep.OrigContained, rep.N, rep.ReconScore, rep.OrigScore)
	for i := range rep.N {
		fmt.Printf("  %-7s orig %-10q recon %q\n", rep.Targets[i], rep.OrigRead[i], rep.ReconRead[i])
	}
	if gridPath != "" {
		var imgs []image.Image
		for i := range rep.N {
			imgs = append(imgs, rep.Originals[i], rep.Reconstructions[i])
		}
		if err := ocrtiny.SavePNG(gridPath, ocrtiny.Grid(imgs, 4)); err != nil {
			return err
		}
	}
	return nil
}
