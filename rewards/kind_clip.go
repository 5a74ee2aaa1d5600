package rewards

import (
	"context"
	"fmt"
	"math"

	"golang.org/x/sync/errgroup"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

func init() {
	Register("clip-score", Kind{Validate: validateCLIP, Open: openCLIP})
}

func validateCLIP(c *Config) error {
	allowed := []string{"model", "image_model", "text_model", "output.image_embeds", "output.text_embeds", "output.logit_scale", "output.logit_scale_output"}
	if err := onlyFields(c, allowed); err != nil {
		return err
	}
	joint, towers := c.Model != "", c.ImageModel != "" || c.TextModel != ""
	if joint == towers || (towers && (c.ImageModel == "" || c.TextModel == "")) {
		return fmt.Errorf("model/image_model/text_model: got %q/%q/%q, want either model (one joint graph) or both image_model and text_model", c.Model, c.ImageModel, c.TextModel)
	}
	if c.Text.Tokenizer == "none" {
		return fmt.Errorf("text.tokenizer: got \"none\", want \"clip-bpe\" or \"chars\" for kind \"clip-score\"")
	}
	if c.Output.LogitScaleOutput != "" && c.Output.LogitScale != 0 {
		return fmt.Errorf("output.logit_scale/logit_scale_output: both set, want one")
	}
	if ls := c.Output.LogitScale; ls != ls || ls < 0 {
		return fmt.Errorf("output.logit_scale: got %v, want >= 0", ls)
	}
	return nil
}

// clipScorer computes scale·(logit_scale·cos(image_embeds, text_embeds)) + offset, PickScore's
// form (Flow-GRPO divides PickScore by 26: output.scale = 0.0384615…).
type clipScorer struct {
	cfg         *Config
	image, text *pool // the same pool for a joint graph
	feeder      *textFeeder
	scaleFrom   *pool // graph that outputs logit_scale, if read from a graph
}

func openCLIP(ctx context.Context, c *Config, rt onnxrt.Config) (Scorer, error) {
	feeder, err := newTextFeeder(c)
	if err != nil {
		return nil, err
	}
	s := &clipScorer{cfg: c, feeder: feeder}
	if c.Model != "" {
		if s.image, err = newPool(c.Model, c.Concurrency, rt); err != nil {
			return nil, err
		}
		s.text = s.image
	} else {
		if s.image, err = newPool(c.ImageModel, c.Concurrency, rt); err != nil {
			return nil, err
		}
		if s.text, err = newPool(c.TextModel, c.Concurrency, rt); err != nil {
			s.image.close()
			return nil, err
		}
	}
	if err := s.check(); err != nil {
		s.Close()
		return nil, err
	}
	if err := openPools(s.image, s.text); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *clipScorer) check() error {
	o := s.cfg.Output
	imgIn := imageWant(s.cfg, s.cfg.Image.Spec, s.cfg.Image.Input, "[reward.image]")
	imgInputs := []tensorWant{imgIn}
	txtInputs := s.feeder.wants()
	if s.image == s.text {
		imgInputs = append(imgInputs, txtInputs...)
		txtInputs = nil
	}
	for _, side := range []struct {
		p      *pool
		inputs []tensorWant
		output string
	}{{s.image, imgInputs, o.ImageEmbeds}, {s.text, txtInputs, o.TextEmbeds}} {
		for _, w := range side.inputs {
			t, err := w.check(side.p.path, side.p.inputs())
			if err != nil {
				return err
			}
			if err := checkBatchDim(s.cfg, side.p.path, t); err != nil {
				return err
			}
		}
		if side.inputs != nil && len(side.p.inputs()) != len(side.inputs) {
			return fmt.Errorf("model %s: graph has %d inputs (%v), the config feeds %d", side.p.path, len(side.p.inputs()), side.p.inputs(), len(side.inputs))
		}
		if _, err := (tensorWant{role: "output", name: side.output, types: []string{"float32"}, dims: []int64{-1, -1}, what: "[reward.output] image_embeds/text_embeds"}).check(side.p.path, side.p.outputs()); err != nil {
			return err
		}
	}
	ie, _ := findInfo(s.image.outputs(), o.ImageEmbeds)
	te, _ := findInfo(s.text.outputs(), o.TextEmbeds)
	if ie.Dims[1] >= 0 && te.Dims[1] >= 0 && ie.Dims[1] != te.Dims[1] {
		return fmt.Errorf("models %s, %s: outputs %q %s and %q %s differ in embedding width, want equal", s.image.path, s.text.path, ie.Name, onnxrt.FormatDims(ie.Dims), te.Name, onnxrt.FormatDims(te.Dims))
	}
	if o.LogitScaleOutput != "" {
		for _, p := range []*pool{s.image, s.text} {
			if t, ok := findInfo(p.outputs(), o.LogitScaleOutput); ok {
				n := int64(1)
				for _, d := range t.Dims {
					n *= d
				}
				if t.Type != "float32" || n != 1 {
					return fmt.Errorf("model %s: output %q: got %s %s, want one float32 value (from [reward.output] logit_scale_output)", p.path, t.Name, t.Type, onnxrt.FormatDims(t.Dims))
				}
				s.scaleFrom = p
				break
			}
		}
		if s.scaleFrom == nil {
			return fmt.Errorf("models %s, %s: no output %q (from [reward.output] logit_scale_output)", s.image.path, s.text.path, o.LogitScaleOutput)
		}
	}
	return nil
}

func findInfo(infos []onnxrt.TensorInfo, name string) (onnxrt.TensorInfo, bool) {
	for _, t := range infos {
		if t.Name == name {
			return t, true
		}
	}
	return onnxrt.TensorInfo{}, false
}

func (s *clipScorer) Score(ctx context.Context, b *Batch) ([]float64, map[string][]float64, error) {
	o := s.cfg.Output
	px, err := b.Pixels(s.cfg.Image.Spec)
	if err != nil {
		return nil, nil, err
	}
	imgIn := map[string]onnxrt.Tensor{s.cfg.Image.Input: px}
	txtIn := map[string]onnxrt.Tensor{}
	if s.image == s.text {
		txtIn = imgIn
	}
	if err := s.feeder.feed(b.Prompts, txtIn); err != nil {
		return nil, nil, err
	}
	imgOuts, txtOuts := []string{o.ImageEmbeds}, []string{o.TextEmbeds}
	if s.scaleFrom == s.image && o.LogitScaleOutput != "" {
		imgOuts = append(imgOuts, o.LogitScaleOutput)
	} else if s.scaleFrom != nil {
		txtOuts = append(txtOuts, o.LogitScaleOutput)
	}
	var imgRes, txtRes map[string]onnxrt.Tensor
	if s.image == s.text {
		imgRes, err = s.image.run(ctx, imgIn, append(imgOuts, txtOuts...)...)
		txtRes = imgRes
	} else {
		g, gctx := errgroup.WithContext(ctx)
		// errgroup does not recover panics: each goroutine turns its own into an error, as the
		// scoring goroutines of Set.Score do.
		g.Go(func() (err error) {
			defer recoverTo(&err, s.cfg.Name)
			imgRes, err = s.image.run(gctx, imgIn, imgOuts...)
			return err
		})
		g.Go(func() (err error) {
			defer recoverTo(&err, s.cfg.Name)
			txtRes, err = s.text.run(gctx, txtIn, txtOuts...)
			return err
		})
		err = g.Wait()
	}
	if err != nil {
		return nil, nil, err
	}
	logitScale := o.LogitScale
	if o.LogitScaleOutput != "" {
		res := imgRes
		if s.scaleFrom == s.text {
			res = txtRes
		}
		logitScale = float64(res[o.LogitScaleOutput].Float32[0])
		// A negative scale would turn the reward upside down without a NaN to show it.
		if !(logitScale > 0) || math.IsInf(logitScale, 0) {
			return nil, nil, fmt.Errorf("model %s: output %q is %v, want a finite logit scale > 0 (from [reward.output] logit_scale_output)", s.scaleFrom.path, o.LogitScaleOutput, logitScale)
		}
	}
	ie, te := imgRes[o.ImageEmbeds], txtRes[o.TextEmbeds]
	n := len(b.Images)
	if len(ie.Shape) != 2 || len(te.Shape) != 2 || ie.Shape[0] != int64(n) || te.Shape[0] != int64(n) || ie.Shape[1] != te.Shape[1] {
		return nil, nil, fmt.Errorf("embeddings %q %s and %q %s, want [%d, D] each", o.ImageEmbeds, onnxrt.FormatDims(ie.Shape), o.TextEmbeds, onnxrt.FormatDims(te.Shape), n)
	}
	d := int(ie.Shape[1])
	vals := make([]float64, n)
	for i := range vals {
		vals[i] = *o.Scale*logitScale*Cosine(ie.Float32[i*d:(i+1)*d], te.Float32[i*d:(i+1)*d]) + o.Offset
	}
	if err := finite(vals); err != nil {
		return nil, nil, fmt.Errorf("models %s (output %q), %s (output %q): %w", s.image.path, o.ImageEmbeds, s.text.path, o.TextEmbeds, err)
	}
	return vals, nil, nil
}

// Cosine is a·b / (|a|·|b|), accumulated in float64; 0 when either vector is zero.
func Cosine(a, b []float32) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	if aa == 0 || bb == 0 {
		return 0
	}
	return ab / math.Sqrt(aa*bb)
}

func (s *clipScorer) Close() error {
	err := s.image.close()
	if s.text != s.image {
		if e := s.text.close(); err == nil {
			err = e
		}
	}
	return err
}
