package pretrain

import (
	"context"
	"fmt"
	"image"
	"math"
	"math/rand/v2"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/datasets/ocrtiny/ocrread"
	"github.com/densegrpo/densegrpo/models/tinyocr"
	"github.com/densegrpo/densegrpo/rewards/ocr"
)

// The tiny VAE's data: the tiny-ocr renderings it trains on (tinyocr.TrainVAE takes them as an
// ImageSource) and the check of its reconstructions with PP-OCRv4. They live here, beside the
// transformer's pretraining data, so that models/ does not import datasets/.

// RenderedImages is the ImageSource of random tiny-ocr renderings: item i of step s shows a
// string of ocrtiny.MinTargetLen..MaxTargetLen characters of ocrtiny.Alphabet drawn with a
// generator seeded by (seed, s, i), rendered with render seed derived the same way; the same
// arguments always give the same batch.
func RenderedImages(seed uint64) tinyocr.ImageSource {
	return func(step, n int) ([]float32, error) {
		texts := make([]string, n)
		seeds := make([]uint64, n)
		for i := range n {
			r := rand.New(rand.NewPCG(seed, uint64(step)<<20|uint64(i)))
			b := make([]byte, ocrtiny.MinTargetLen+r.IntN(ocrtiny.MaxTargetLen-ocrtiny.MinTargetLen+1))
			for j := range b {
				b[j] = ocrtiny.Alphabet[r.IntN(len(ocrtiny.Alphabet))]
			}
			texts[i], seeds[i] = string(b), r.Uint64()
		}
		hwc, err := ocrtiny.RenderBatch(texts, seeds)
		if err != nil {
			return nil, err
		}
		return tinyocr.HWCToCHW(hwc, n, tinyocr.ImageHeight, tinyocr.ImageWidth, tinyocr.ImageChannels), nil
	}
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
	// OrigContained and ReconContained count reads that contain the target, OrigScore and
	// ReconScore are mean scores: both as the OCR reward scores (ocr.Score).
	OrigContained, ReconContained int
	OrigScore, ReconScore         float64
	// PSNR is the peak signal-to-noise ratio of the reconstructions in dB (peak 1).
	PSNR float64
}

// CheckReconstructions encodes and decodes the first n test-split targets and reads originals
// and reconstructions with reader.
func CheckReconstructions(ctx context.Context, vae *tinyocr.VAE, reader *ocrread.Reader, n int) (*ReconstructionReport, error) {
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
	chw := tinyocr.HWCToCHW(hwc, n, tinyocr.ImageHeight, tinyocr.ImageWidth, tinyocr.ImageChannels)
	z, err := vae.Encode(chw, n)
	if err != nil {
		return nil, err
	}
	recon, err := vae.Decode(z, n)
	if err != nil {
		return nil, err
	}
	reconHWC := tinyocr.CHWToHWC(recon, n, tinyocr.ImageChannels, tinyocr.ImageHeight, tinyocr.ImageWidth)
	var se float64
	for i := range hwc {
		d := float64(hwc[i] - reconHWC[i])
		se += d * d
	}
	rep.PSNR = 10 * math.Log10(float64(len(hwc))/se)
	per := tinyocr.ImageHeight * tinyocr.ImageWidth * tinyocr.ImageChannels
	for i := range n {
		o, err := ocrtiny.FromPixels(hwc[i*per:(i+1)*per], tinyocr.ImageHeight, tinyocr.ImageWidth)
		if err != nil {
			return nil, err
		}
		r, err := ocrtiny.FromPixels(reconHWC[i*per:(i+1)*per], tinyocr.ImageHeight, tinyocr.ImageWidth)
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
	rep.OrigContained, rep.OrigScore = scoreReads(rep.OrigRead, rep.Targets)
	rep.ReconContained, rep.ReconScore = scoreReads(rep.ReconRead, rep.Targets)
	return rep, nil
}

// scoreReads scores texts read from images against their targets as the OCR reward does
// (ocr.Score, Flow-GRPO's definition): how many read exactly (score 1: the target occurs in the
// read text, case and spaces aside) and the mean score.
func scoreReads(reads, targets []string) (exact int, mean float64) {
	for i, t := range targets {
		s := ocr.Score(reads[i], t)
		if s == 1 {
			exact++
		}
		mean += s / float64(len(targets))
	}
	return exact, mean
}
