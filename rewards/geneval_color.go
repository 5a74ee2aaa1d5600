package rewards

import (
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/geneval"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
	"github.com/densegrpo/densegrpo/rewards/tokenize"
)

func (c *ColorConfig) set() bool { return c.ImageModel != "" || c.TextModel != "" }

func (c *ColorConfig) defaults() {
	if !c.set() {
		return
	}
	if c.MaxLength == 0 {
		c.MaxLength = 77
	}
	if c.Size == 0 {
		c.Size = 224
	}
	if c.Resize == "" {
		c.Resize = preprocess.Bicubic
	}
	if len(c.Mean) == 0 {
		c.Mean = []float32{0.48145466, 0.4578275, 0.40821073}
	}
	if len(c.Std) == 0 {
		c.Std = []float32{0.26862954, 0.26130258, 0.27577711}
	}
	if len(c.Background) == 0 {
		c.Background = []float32{0.6, 0.6, 0.6}
	}
}

func (c *ColorConfig) validate() error {
	if !c.set() {
		if !reflectZero(c) {
			return fmt.Errorf("color: set without color.image_model and color.text_model, want both (or no [reward.color])")
		}
		return nil
	}
	if c.ImageModel == "" || c.TextModel == "" || c.Vocab == "" || c.Merges == "" {
		return fmt.Errorf("color.image_model/text_model/vocab/merges: got %q/%q/%q/%q, want all four files", c.ImageModel, c.TextModel, c.Vocab, c.Merges)
	}
	if c.MaxLength < 2 || c.MaxLength > 4096 {
		return fmt.Errorf("color.max_length: got %d, want 2..4096", c.MaxLength)
	}
	if len(c.Background) != 3 {
		return fmt.Errorf("color.background: got %d values, want 3 (RGB in [0,1])", len(c.Background))
	}
	for i, v := range c.Background {
		if !(v >= 0 && v <= 1) {
			return fmt.Errorf("color.background[%d]: got %v, want in [0,1]", i, v)
		}
	}
	if err := c.colorSpec().Validate(); err != nil {
		return fmt.Errorf("color: %w", err)
	}
	return nil
}

func reflectZero(c *ColorConfig) bool {
	return c.Vocab == "" && c.Merges == "" && c.MaxLength == 0 && c.PadID == nil && len(c.Special) == 0 && c.Size == 0 &&
		c.Resize == "" && len(c.Mean) == 0 && len(c.Std) == 0 && len(c.Background) == 0
}

// colorClassifier is GenEval's CLIP zero-shot colour classifier: per object class a [10, D]
// matrix of colour embeddings (the normalised mean of the normalised template embeddings), and
// per crop the argmax of its normalised image embedding against it.
type colorClassifier struct {
	cfg         ColorConfig
	spec        preprocess.Spec
	image, text *pool
	tok         *tokenize.CLIPBPE
	mu          sync.Mutex
	weights     map[string][][]float64 // class → colour → unit vector
}

func openColor(c ColorConfig, rt onnxrt.Config) (*colorClassifier, error) {
	pad := int64(-1)
	if c.PadID != nil {
		pad = *c.PadID
	}
	tok, err := tokenize.LoadCLIPBPE(c.Vocab, c.Merges, c.MaxLength, pad, c.Special...)
	if err != nil {
		return nil, fmt.Errorf("[reward.color]: %w", err)
	}
	cc := &colorClassifier{cfg: c, spec: c.colorSpec(), tok: tok, weights: map[string][][]float64{}}
	if cc.image, err = newPool(c.ImageModel, 1, rt); err != nil {
		return nil, err
	}
	if cc.text, err = newPool(c.TextModel, 1, rt); err != nil {
		cc.image.close()
		return nil, err
	}
	what := "[reward.color]"
	checks := []struct {
		p    *pool
		want tensorWant
		out  bool
	}{
		{cc.image, tensorWant{role: "input", name: "pixel_values", types: []string{"float32"}, dims: []int64{-1, 3, int64(c.Size), int64(c.Size)}, what: what + " size"}, false},
		{cc.image, tensorWant{role: "output", name: "image_embeds", types: []string{"float32"}, dims: []int64{-1, -1}, what: what + " image_model"}, true},
		{cc.text, tensorWant{role: "input", name: "input_ids", types: []string{"int64"}, dims: []int64{-1, int64(c.MaxLength)}, what: what + " max_length"}, false},
		{cc.text, tensorWant{role: "output", name: "text_embeds", types: []string{"float32"}, dims: []int64{-1, -1}, what: what + " text_model"}, true},
	}
	for _, ch := range checks {
		infos := ch.p.inputs()
		if ch.out {
			infos = ch.p.outputs()
		}
		if _, err := ch.want.check(ch.p.where(), infos); err != nil {
			cc.close()
			return nil, err
		}
	}
	if err := openPools(cc.image, cc.text); err != nil {
		return nil, err
	}
	return cc, nil
}

func (cc *colorClassifier) close() error {
	err := cc.image.close()
	if e := cc.text.close(); err == nil {
		err = e
	}
	return err
}

func unit(v []float32) []float64 {
	var n float64
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
		n += float64(x) * float64(x)
	}
	n = math.Sqrt(n)
	for i := range out {
		out[i] /= n
	}
	return out
}

// classWeights returns (computing once) the colour classifier of an object class.
func (cc *colorClassifier) classWeights(ctx context.Context, class string) ([][]float64, error) {
	cc.mu.Lock()
	w, ok := cc.weights[class]
	cc.mu.Unlock()
	if ok {
		return w, nil
	}
	var ids []int64
	for _, color := range geneval.Colors {
		for _, text := range geneval.ColorTemplates(class, color) {
			row, _, err := cc.tok.Encode(text)
			if err != nil {
				return nil, err
			}
			ids = append(ids, row...)
		}
	}
	n := int64(len(ids) / cc.cfg.MaxLength)
	out, err := cc.text.run(ctx, map[string]onnxrt.Tensor{"input_ids": {Shape: []int64{n, int64(cc.cfg.MaxLength)}, Int64: ids}}, "text_embeds")
	if err != nil {
		return nil, err
	}
	e := out["text_embeds"]
	d := int(e.Shape[1])
	per := len(ids) / cc.cfg.MaxLength / len(geneval.Colors)
	w = make([][]float64, len(geneval.Colors))
	for c := range w {
		mean := make([]float32, d)
		for k := 0; k < per; k++ {
			u := unit(e.Float32[(c*per+k)*d : (c*per+k+1)*d])
			for j := range mean {
				mean[j] += float32(u[j] / float64(per))
			}
		}
		w[c] = unit(mean)
	}
	cc.mu.Lock()
	cc.weights[class] = w
	cc.mu.Unlock()
	return w, nil
}

// logits returns 100·cos(crop, colour) for every detection (all of one class) and colour.
func (cc *colorClassifier) logits(ctx context.Context, im Image, dets []geneval.Detection) ([][]float64, error) {
	if len(dets) == 0 {
		return nil, nil
	}
	w, err := cc.classWeights(ctx, dets[0].Class)
	if err != nil {
		return nil, err
	}
	s := cc.cfg.Size
	px := make([]float32, len(dets)*3*s*s)
	bg := [3]float32{cc.cfg.Background[0], cc.cfg.Background[1], cc.cfg.Background[2]}
	for i, d := range dets {
		if err := cc.spec.Apply(clipCenter(geneval.ColorCrop(im, d, bg), s, cc.spec.Resize), px[i*3*s*s:(i+1)*3*s*s]); err != nil {
			return nil, err
		}
	}
	out, err := cc.image.run(ctx, map[string]onnxrt.Tensor{"pixel_values": {Shape: []int64{int64(len(dets)), 3, int64(s), int64(s)}, Float32: px}}, "image_embeds")
	if err != nil {
		return nil, err
	}
	e := out["image_embeds"]
	dim := int(e.Shape[1])
	res := make([][]float64, len(dets))
	for i := range dets {
		u := unit(e.Float32[i*dim : (i+1)*dim])
		res[i] = make([]float64, len(w))
		for c := range w {
			var dot float64
			for j := range u {
				dot += u[j] * w[c][j]
			}
			res[i][c] = 100 * dot
		}
	}
	return res, nil
}

// clipCenter is open_clip's transform before ToTensor: torchvision's Resize(s) of the shortest
// edge, then CenterCrop(s), whose offset torchvision rounds (transformers floors it).
func clipCenter(im Image, s int, f preprocess.Filter) Image {
	rw, rh := preprocess.CoverSize(im.W, im.H, s, s)
	r := preprocess.Resize(im, rw, rh, f)
	x0, y0 := int(math.RoundToEven(float64(rw-s)/2)), int(math.RoundToEven(float64(rh-s)/2))
	return r.Crop(x0, y0, x0+s, y0+s)
}

// colors classifies the colour of every object GenEval would ask about in one image and
// returns the lookup Evaluate uses.
func (cc *colorClassifier) colors(ctx context.Context, im Image, objects map[string][]geneval.Detection, md geneval.Metadata) (geneval.ColorFunc, error) {
	byClass := map[string][]geneval.Detection{}
	for _, d := range geneval.ColorTargets(objects, md) {
		byClass[d.Class] = append(byClass[d.Class], d)
	}
	names := map[detKey]string{}
	for _, dets := range byClass {
		lg, err := cc.logits(ctx, im, dets)
		if err != nil {
			return nil, err
		}
		for i, d := range dets {
			best := 0
			for c := range lg[i] {
				if lg[i][c] > lg[i][best] {
					best = c
				}
			}
			names[keyOf(d)] = geneval.Colors[best]
		}
	}
	return func(d geneval.Detection) string { return names[keyOf(d)] }, nil
}

type detKey struct {
	class string
	box   [4]float64
	score float32
}

func keyOf(d geneval.Detection) detKey { return detKey{d.Class, d.Box, d.Score} }
