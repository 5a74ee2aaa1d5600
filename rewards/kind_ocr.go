package rewards

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/ocr"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

func init() {
	Register("ocr", Kind{Validate: validateOCR, Open: openOCR})
}

func validateOCR(c *Config) error {
	if err := onlyFields(c, []string{"model", "detector", "keys", "ocr"}, "model", "keys"); err != nil {
		return err
	}
	if c.Text.Tokenizer != "none" {
		return fmt.Errorf("text.tokenizer: got %q, want \"none\" for kind \"ocr\" (the target is the quoted part of the prompt)", c.Text.Tokenizer)
	}
	if c.OCR.MaxWidth < ocr.RecHeight || c.OCR.MaxWidth > 1<<14 {
		return fmt.Errorf("ocr.max_width: got %d, want %d..16384", c.OCR.MaxWidth, ocr.RecHeight)
	}
	if c.Detector != "" && len(c.Image.Size) == 2 && (c.Image.Size[0]%32 != 0 || c.Image.Size[1]%32 != 0) {
		return fmt.Errorf("image.size: got %v, want multiples of 32 for the DB detector", c.Image.Size)
	}
	if c.Detector == "" && c.OCR.DetectorOutput != "" {
		return fmt.Errorf("ocr.detector_output: set without detector")
	}
	return c.OCR.DBOptions.Validate()
}

// ocrScorer is PP-OCRv4: an optional DB detector finds text boxes; the recogniser reads each
// box (or the whole image without a detector); the texts, joined in reading order, are scored
// against the prompt's quoted target as Flow-GRPO does.
type ocrScorer struct {
	cfg       *Config
	dict      ocr.Dict
	rec, det  *pool
	recOutput string
	detOutput string
}

func openOCR(ctx context.Context, c *Config, rt onnxrt.Config) (Scorer, error) {
	dict, err := ocr.LoadDict(c.Keys)
	if err != nil {
		return nil, err
	}
	s := &ocrScorer{cfg: c, dict: dict}
	if s.rec, err = newPool(c.Model, c.Concurrency, rt); err != nil {
		return nil, err
	}
	if c.Detector != "" {
		if s.det, err = newPool(c.Detector, c.Concurrency, rt); err != nil {
			s.rec.close()
			return nil, err
		}
	}
	if err := s.check(); err != nil {
		s.Close()
		return nil, err
	}
	if err := openPools(s.rec, s.det); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *ocrScorer) check() error {
	rec := s.rec
	in := tensorWant{role: "input", name: s.cfg.OCR.RecInput, types: []string{"float32"}, dims: []int64{-1, 3, ocr.RecHeight, -1}, what: "the PP-OCR recogniser contract (x [N,3,48,W])"}
	if _, err := in.check(s.rec.path, rec.inputs()); err != nil {
		return err
	}
	s.recOutput = s.cfg.Output.Name
	if s.recOutput == "" {
		s.recOutput = rec.outputs()[0].Name
	}
	out := tensorWant{role: "output", name: s.recOutput, types: []string{"float32"}, dims: []int64{-1, -1, int64(s.dict.Classes())},
		what: fmt.Sprintf("keys file %s: %d characters + blank + space", s.cfg.Keys, len(s.dict.Keys))}
	if _, err := out.check(s.rec.path, rec.outputs()); err != nil {
		return err
	}
	if s.det == nil {
		return nil
	}
	det := s.det
	if _, err := imageWant(s.cfg, s.cfg.Image.Spec, s.cfg.Image.Input, "[reward.image]").check(s.det.path, det.inputs()); err != nil {
		return err
	}
	s.detOutput = s.cfg.OCR.DetectorOutput
	if s.detOutput == "" {
		s.detOutput = det.outputs()[0].Name
	}
	dout := tensorWant{role: "output", name: s.detOutput, types: []string{"float32"}, dims: []int64{-1, 1, -1, -1}, what: "the DB detector contract (probability map [N,1,H,W])"}
	_, err := dout.check(s.det.path, det.outputs())
	return err
}

// detSpec is the detector transform for im: the declared one, or — without image.size —
// PaddleOCR's: longest side at most 960, both sides rounded to multiples of 32.
func (s *ocrScorer) detSpec(im Image) preprocess.Spec {
	spec := s.cfg.Image.Spec
	if len(spec.Size) == 2 {
		return spec
	}
	scale := math.Min(1, 960/float64(max(im.W, im.H)))
	r32 := func(v int) int { return max(int(math.Round(float64(v)*scale/32))*32, 32) }
	spec.Size = []int{r32(im.H), r32(im.W)}
	return spec
}

// Read returns the text read from each image of the batch, boxes joined in reading order.
func (s *ocrScorer) Read(ctx context.Context, b *Batch) ([]string, error) {
	type crop struct {
		img, order int
		im         preprocess.Image
	}
	var crops []crop
	for i, im := range b.Images {
		if s.det == nil {
			crops = append(crops, crop{img: i, im: im})
			continue
		}
		boxes, err := s.detect(ctx, b, i)
		if err != nil {
			return nil, err
		}
		for k, box := range boxes {
			crops = append(crops, crop{img: i, order: k, im: ocr.CropBox(im, box)})
		}
	}
	// Similar aspect ratios share a recogniser batch with little padding (PaddleOCR does the same).
	sort.SliceStable(crops, func(i, j int) bool {
		return float64(crops[i].im.W)/float64(crops[i].im.H) < float64(crops[j].im.W)/float64(crops[j].im.H)
	})
	parts := make([][]string, len(b.Images))
	texts := make([]string, len(crops))
	for lo := 0; lo < len(crops); lo += s.cfg.BatchSize {
		hi := min(lo+s.cfg.BatchSize, len(crops))
		ims := make([]preprocess.Image, hi-lo)
		for k := range ims {
			ims[k] = crops[lo+k].im
		}
		data, w := ocr.RecInput(ims, s.cfg.OCR.MaxWidth)
		out, err := s.rec.run(ctx, map[string]onnxrt.Tensor{s.cfg.OCR.RecInput: {Shape: []int64{int64(len(ims)), 3, ocr.RecHeight, int64(w)}, Float32: data}}, s.recOutput)
		if err != nil {
			return nil, err
		}
		p := out[s.recOutput]
		if len(p.Shape) != 3 || p.Shape[0] != int64(len(ims)) || p.Shape[2] != int64(s.dict.Classes()) {
			return nil, fmt.Errorf("model %s: output %q has shape %s, want [%d,T,%d]", s.rec.path, s.recOutput, onnxrt.FormatDims(p.Shape), len(ims), s.dict.Classes())
		}
		T, C := int(p.Shape[1]), int(p.Shape[2])
		for k := range ims {
			text, _ := s.dict.DecodeCTC(p.Float32[k*T*C:(k+1)*T*C], T, C)
			texts[lo+k] = text
		}
	}
	// Back to reading order per image.
	order := make([]int, len(crops))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool {
		a, c := crops[order[i]], crops[order[j]]
		if a.img != c.img {
			return a.img < c.img
		}
		return a.order < c.order
	})
	for _, k := range order {
		parts[crops[k].img] = append(parts[crops[k].img], texts[k])
	}
	out := make([]string, len(b.Images))
	for i, p := range parts {
		out[i] = strings.Join(p, "")
	}
	return out, nil
}

func (s *ocrScorer) detect(ctx context.Context, b *Batch, i int) ([]ocr.Box, error) {
	im := b.Images[i]
	spec := s.detSpec(im)
	data, h, w, err := b.Prepared(spec, i)
	if err != nil {
		return nil, err
	}
	out, err := s.det.run(ctx, map[string]onnxrt.Tensor{s.cfg.Image.Input: {Shape: spec.Dims(1, h, w), Float32: data}}, s.detOutput)
	if err != nil {
		return nil, err
	}
	p := out[s.detOutput]
	if len(p.Shape) != 4 || p.Shape[0] != 1 || p.Shape[1] != 1 {
		return nil, fmt.Errorf("model %s: output %q has shape %s, want [1,1,H,W]", s.det.path, s.detOutput, onnxrt.FormatDims(p.Shape))
	}
	return ocr.DetectBoxes(p.Float32, int(p.Shape[3]), int(p.Shape[2]), im.W, im.H, s.cfg.OCR.DBOptions)
}

func (s *ocrScorer) Score(ctx context.Context, b *Batch) ([]float64, map[string][]float64, error) {
	texts, err := s.Read(ctx, b)
	if err != nil {
		return nil, nil, err
	}
	vals := make([]float64, len(texts))
	exact := make([]float64, len(texts))
	for i, t := range texts {
		raw := ocr.Score(t, ocr.Target(b.Prompts[i].Text))
		if raw == 1 {
			exact[i] = 1
		}
		vals[i] = *s.cfg.Output.Scale*raw + s.cfg.Output.Offset
	}
	return vals, map[string][]float64{"exact": exact}, nil
}

func (s *ocrScorer) Close() error {
	err := s.rec.close()
	if e := s.det.close(); err == nil {
		err = e
	}
	return err
}
