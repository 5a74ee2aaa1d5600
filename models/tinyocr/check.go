package tinyocr

import (
	"context"
	"fmt"
	"image"
	"math"
	"strings"

	"github.com/gomlx/gomlx/backends"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/datasets/ocrtiny/ocrread"
)

// FitVAEScaling encodes n images of src (batch step 0) with the VAE variables of mctx and fits
// the latent scaling to the posterior means (see FitScaling).
func FitVAEScaling(backend backends.Backend, mctx *mlctx.Context, cfg VAEConfig, src ImageSource, n int) (VAEScaling, error) {
	images, err := src(0, n)
	if err != nil {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: %w", err)
	}
	v, err := newVAEFromContext(backend, mctx, cfg, VAEScaling{ScalingFactor: 1})
	if err != nil {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: %w", err)
	}
	defer v.Close()
	z, err := v.Encode(images, n)
	if err != nil {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: %w", err)
	}
	return FitScaling(z)
}

// ReconstructionReport compares the first N test-split targets, rendered with seed i, with
// their VAE reconstructions, by pixels and by what PP-OCRv4 reads.
type ReconstructionReport struct {
	N               int
	Targets         []string
	Originals       []image.Image
	Reconstructions []image.Image
	OrigRead        []string
	ReconRead       []string
	// OrigContained and ReconContained count reads that contain the target (after
	// ocrread.Normalize); OrigScore and ReconScore are mean ocrread.Score values.
	OrigContained, ReconContained int
	OrigScore, ReconScore         float64
	// PSNR is the peak signal-to-noise ratio of the reconstructions in dB (peak 1).
	PSNR float64
}

// CheckReconstructions encodes and decodes the first n test-split targets and reads originals
// and reconstructions with reader.
func CheckReconstructions(ctx context.Context, vae *VAE, reader *ocrread.Reader, n int) (*ReconstructionReport, error) {
	path, err := ocrtiny.SplitPath("test")
	if err != nil {
		return nil, err
	}
	prompts, err := ocrtiny.LoadPrompts(path)
	if err != nil {
		return nil, err
	}
	if n > len(prompts) {
		return nil, fmt.Errorf("check reconstructions: %d wanted, test split has %d", n, len(prompts))
	}
	rep := &ReconstructionReport{N: n}
	seeds := make([]uint64, n)
	for i := range n {
		rep.Targets = append(rep.Targets, prompts[i].Target)
		seeds[i] = uint64(i)
	}
	hwc, err := ocrtiny.RenderBatch(rep.Targets, seeds)
	if err != nil {
		return nil, err
	}
	chw := HWCToCHW(hwc, n, ImageHeight, ImageWidth, ImageChannels)
	z, err := vae.Encode(chw, n)
	if err != nil {
		return nil, err
	}
	recon, err := vae.Decode(z, n)
	if err != nil {
		return nil, err
	}
	reconHWC := CHWToHWC(recon, n, ImageChannels, ImageHeight, ImageWidth)
	var se float64
	for i := range hwc {
		d := float64(hwc[i] - reconHWC[i])
		se += d * d
	}
	rep.PSNR = 10 * math.Log10(float64(len(hwc))/se)
	per := ImageHeight * ImageWidth * ImageChannels
	for i := range n {
		o, err := ocrtiny.FromPixels(hwc[i*per:(i+1)*per], ImageHeight, ImageWidth)
		if err != nil {
			return nil, err
		}
		r, err := ocrtiny.FromPixels(reconHWC[i*per:(i+1)*per], ImageHeight, ImageWidth)
		if err != nil {
			return nil, err
		}
		rep.Originals = append(rep.Originals, o)
		rep.Reconstructions = append(rep.Reconstructions, r)
	}
	if rep.OrigRead, err = reader.Read(ctx, rep.Originals); err != nil {
		return nil, err
	}
	if rep.ReconRead, err = reader.Read(ctx, rep.Reconstructions); err != nil {
		return nil, err
	}
	for i, t := range rep.Targets {
		if strings.Contains(ocrread.Normalize(rep.OrigRead[i]), t) {
			rep.OrigContained++
		}
		if strings.Contains(ocrread.Normalize(rep.ReconRead[i]), t) {
			rep.ReconContained++
		}
		rep.OrigScore += ocrread.Score(rep.OrigRead[i], t) / float64(n)
		rep.ReconScore += ocrread.Score(rep.ReconRead[i], t) / float64(n)
	}
	return rep, nil
}
