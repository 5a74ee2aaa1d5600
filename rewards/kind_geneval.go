package rewards

import (
	"bufio"
	"context"
	"fmt"
	"strings"

	"github.com/densegrpo/densegrpo/internal/limitfile"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/geneval"
)

func init() {
	Register("geneval", Kind{Validate: validateGeneval, Open: openGeneval})
}

func validateGeneval(c *Config) error {
	allowed := []string{"model", "classes", "output.boxes", "output.scores", "output.labels", "output.masks",
		"output.box_format", "output.normalized", "output.mask_threshold", "output.metric", "geneval", "color"}
	if err := onlyFields(c, allowed, "model", "classes", "output.boxes", "output.scores", "output.labels"); err != nil {
		return err
	}
	if c.Text.Tokenizer != "none" {
		return fmt.Errorf("text.tokenizer: got %q, want \"none\" for kind \"geneval\" (prompts are read through their metadata)", c.Text.Tokenizer)
	}
	if f := c.Output.BoxFormat; f != "xyxy" && f != "xywh" {
		return fmt.Errorf("output.box_format: got %q, want \"xyxy\" or \"xywh\"", f)
	}
	if m := c.Output.Metric; m != "score" && m != "strict" && m != "correct" {
		return fmt.Errorf("output.metric: got %q, want \"score\", \"strict\" or \"correct\"", m)
	}
	if t := c.Output.MaskThreshold; !(t > 0 && t < 1) {
		return fmt.Errorf("output.mask_threshold: got %v, want in (0,1)", t)
	}
	c.Color.defaults()
	if err := c.Color.validate(); err != nil {
		return err
	}
	return c.Geneval.Options.Validate()
}

// genevalScorer runs a detector whose outputs follow the declared layout and applies GenEval's
// rules to each prompt's metadata.
type genevalScorer struct {
	cfg     *Config
	pool    *pool
	classes []string
	batched bool             // outputs carry a leading batch dimension
	color   *colorClassifier // nil: the pixel rule
}

func loadClasses(path string) ([]string, error) {
	f, err := limitfile.Open(path, limitfile.Vocab, "a list of class names")
	if err != nil {
		return nil, fmt.Errorf("load class names: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, strings.TrimSpace(sc.Text()))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load class names %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("load class names %s: file is empty", path)
	}
	return out, nil
}

func openGeneval(ctx context.Context, c *Config, rt onnxrt.Config) (Scorer, error) {
	classes, err := loadClasses(c.Classes)
	if err != nil {
		return nil, err
	}
	p, err := newPool(c.Model, c.Concurrency, rt)
	if err != nil {
		return nil, err
	}
	s := &genevalScorer{cfg: c, pool: p, classes: classes}
	if err := s.check(); err != nil {
		p.close()
		return nil, err
	}
	// openColor checks its two models and opens them; the detector's sessions come last.
	if c.Color.set() {
		if s.color, err = openColor(c.Color, rt); err != nil {
			p.close()
			return nil, err
		}
	}
	if err := openPools(p); err != nil {
		if s.color != nil {
			s.color.close()
		}
		return nil, err
	}
	return s, nil
}

func (s *genevalScorer) check() error {
	t, err := imageWant(s.cfg, s.cfg.Image.Spec, s.cfg.Image.Input, "[reward.image]").check(s.pool.path, s.pool.inputs())
	if err != nil {
		return err
	}
	if err := checkBatchDim(s.cfg, s.pool.path, t); err != nil {
		return err
	}
	boxes, ok := findInfo(s.pool.outputs(), s.cfg.Output.Boxes)
	s.batched = !ok || len(boxes.Dims) != 2
	if !s.batched && s.cfg.BatchSize != 1 {
		return fmt.Errorf("model %s: output %q is %s (one image per run), want batch_size = 1 (got %d)", s.pool.path, boxes.Name, onnxrt.FormatDims(boxes.Dims), s.cfg.BatchSize)
	}
	lead := []int64{-1, -1}
	if !s.batched {
		lead = []int64{-1}
	}
	o := s.cfg.Output
	wants := []tensorWant{
		{role: "output", name: o.Boxes, types: []string{"float32"}, dims: append(append([]int64{}, lead...), 4), what: "[reward.output] boxes"},
		{role: "output", name: o.Scores, types: []string{"float32"}, dims: lead, what: "[reward.output] scores"},
		{role: "output", name: o.Labels, types: []string{"int64", "int32", "float32"}, dims: lead, what: "[reward.output] labels"},
	}
	if o.Masks != "" {
		wants = append(wants, tensorWant{role: "output", name: o.Masks, types: []string{"float32"}, dims: append(append([]int64{}, lead...), -1, -1), what: "[reward.output] masks"})
	}
	// The outputs describe the same K detections: their fixed K dims must agree.
	var first *tensorWant
	k := int64(-1)
	for i, w := range wants {
		t, err := w.check(s.pool.path, s.pool.outputs())
		if err != nil {
			return err
		}
		d := t.Dims[len(lead)-1]
		if d < 0 {
			continue
		}
		if first != nil && d != k {
			return fmt.Errorf("model %s: output %q (%s) has %d detections, output %q (%s) has %d: want the same K in every detector output",
				s.pool.path, first.name, first.what, k, w.name, w.what, d)
		}
		first, k = &wants[i], d
	}
	return nil
}

func (s *genevalScorer) outputs() []string {
	o := s.cfg.Output
	out := []string{o.Boxes, o.Scores, o.Labels}
	if o.Masks != "" {
		out = append(out, o.Masks)
	}
	return out
}

func (s *genevalScorer) Score(ctx context.Context, b *Batch) ([]float64, map[string][]float64, error) {
	metas := make([]geneval.Metadata, len(b.Prompts))
	for i, p := range b.Prompts {
		var err error
		if metas[i], err = s.metadata(p); err != nil {
			return nil, nil, fmt.Errorf("prompt %d: %w", i, err)
		}
	}
	dets, err := s.detect(ctx, b)
	if err != nil {
		return nil, nil, err
	}
	n := len(b.Images)
	vals := make([]float64, n)
	extra := map[string][]float64{"score": make([]float64, n), "strict": make([]float64, n), "correct": make([]float64, n)}
	opts := s.cfg.Geneval.Options
	for i := range n {
		objects := geneval.Select(dets[i], metas[i].Tag, opts)
		color := geneval.ImageColor(b.Images[i])
		if s.color != nil {
			if color, err = s.color.colors(ctx, b.Images[i], objects, metas[i]); err != nil {
				return nil, nil, fmt.Errorf("image %d: colour: %w", i, err)
			}
		}
		res := geneval.Evaluate(objects, metas[i], color, opts)
		raw := res.Score
		extra["score"][i] = res.Score
		if res.Strict {
			extra["strict"][i] = 1
		}
		if res.Correct {
			extra["correct"][i] = 1
		}
		switch s.cfg.Output.Metric {
		case "strict":
			raw = extra["strict"][i]
		case "correct":
			raw = extra["correct"][i]
		}
		vals[i] = *s.cfg.Output.Scale*raw + s.cfg.Output.Offset
	}
	return vals, extra, nil
}

// detect runs the detector on the batch (one image per run for an unbatched graph) and returns
// each image's detections in its own pixels.
func (s *genevalScorer) detect(ctx context.Context, b *Batch) ([][]geneval.Detection, error) {
	px, err := b.Pixels(s.cfg.Image.Spec)
	if err != nil {
		return nil, err
	}
	n := len(b.Images)
	var inH, inW int
	if s.cfg.Image.Layout == "NHWC" {
		inH, inW = int(px.Shape[1]), int(px.Shape[2])
	} else {
		inH, inW = int(px.Shape[2]), int(px.Shape[3])
	}
	runs := [][2]int{{0, n}}
	if !s.batched {
		runs = runs[:0]
		for i := 0; i < n; i++ {
			runs = append(runs, [2]int{i, i + 1})
		}
	}
	per := len(px.Float32) / n
	dets := make([][]geneval.Detection, n)
	for _, r := range runs {
		in := onnxrt.Tensor{Shape: append([]int64{int64(r[1] - r[0])}, px.Shape[1:]...), Float32: px.Float32[r[0]*per : r[1]*per]}
		out, err := s.pool.run(ctx, map[string]onnxrt.Tensor{s.cfg.Image.Input: in}, s.outputs()...)
		if err != nil {
			return nil, err
		}
		for i := r[0]; i < r[1]; i++ {
			if dets[i], err = s.detections(out, i-r[0], b.Images[i], inW, inH); err != nil {
				return nil, fmt.Errorf("image %d: %w", i, err)
			}
		}
	}
	return dets, nil
}

// CheckPrompt implements PromptChecker: p must carry GenEval metadata naming the detector's classes.
func (s *genevalScorer) CheckPrompt(p Prompt) error {
	_, err := s.metadata(p)
	return err
}

// metadata reads p's GenEval metadata.
func (s *genevalScorer) metadata(p Prompt) (geneval.Metadata, error) {
	if p.Metadata == nil {
		return geneval.Metadata{}, fmt.Errorf("prompt %q has no GenEval metadata (give the prompts as a .jsonl file with GenEval's tag/include/exclude)", p.Text)
	}
	md, err := geneval.ParseMetadata(p.Metadata)
	if err != nil {
		return md, fmt.Errorf("prompt %q: %w", p.Text, err)
	}
	if err := s.knownClasses(md); err != nil {
		return md, fmt.Errorf("prompt %q: %w", p.Text, err)
	}
	return md, nil
}

// knownClasses rejects metadata naming a class the detector cannot report: it would be
// scored as never found, silently.
func (s *genevalScorer) knownClasses(md geneval.Metadata) error {
	for part, list := range map[string][]geneval.Clause{"include": md.Include, "exclude": md.Exclude} {
		for j, c := range list {
			if !contains(s.classes, c.Class) {
				return fmt.Errorf("geneval metadata: %s[%d].class: got %q, want one of the %d classes of %s", part, j, c.Class, len(s.classes), s.cfg.Classes)
			}
		}
	}
	return nil
}

// detections reads image k of a run's outputs into detections in image pixels.
func (s *genevalScorer) detections(out map[string]onnxrt.Tensor, k int, im Image, inW, inH int) ([]geneval.Detection, error) {
	o := s.cfg.Output
	boxes, scores, labels := out[o.Boxes], out[o.Scores], out[o.Labels]
	K := int(scores.Shape[len(scores.Shape)-1])
	if len(boxes.Float32) != len(scores.Float32)*4 || (len(labels.Int64) != len(scores.Float32) && len(labels.Float32) != len(scores.Float32)) {
		return nil, fmt.Errorf("detector outputs %s %s, %s %s, %s %s disagree on the number of detections",
			o.Boxes, onnxrt.FormatDims(boxes.Shape), o.Scores, onnxrt.FormatDims(scores.Shape), o.Labels, onnxrt.FormatDims(labels.Shape))
	}
	sx, sy := float64(im.W)/float64(inW), float64(im.H)/float64(inH)
	if o.Normalized {
		sx, sy = float64(im.W), float64(im.H)
	}
	var masks onnxrt.Tensor
	mh, mw := 0, 0
	if o.Masks != "" {
		masks = out[o.Masks]
		mh, mw = int(masks.Shape[len(masks.Shape)-2]), int(masks.Shape[len(masks.Shape)-1])
	}
	dets := make([]geneval.Detection, 0, K)
	for j := 0; j < K; j++ {
		idx := k*K + j
		var label int
		if labels.Int64 != nil {
			label = int(labels.Int64[idx])
		} else {
			label = int(labels.Float32[idx])
		}
		if label < 0 || label >= len(s.classes) {
			return nil, fmt.Errorf("detection %d: label %d outside the %d classes of %s", j, label, len(s.classes), s.cfg.Classes)
		}
		bx := boxes.Float32[idx*4 : idx*4+4]
		x0, y0, x1, y1 := float64(bx[0]), float64(bx[1]), float64(bx[2]), float64(bx[3])
		if o.BoxFormat == "xywh" {
			x1, y1 = x0+x1, y0+y1
		}
		d := geneval.Detection{Class: s.classes[label], Score: scores.Float32[idx], Box: [4]float64{x0 * sx, y0 * sy, x1 * sx, y1 * sy}}
		if o.Masks != "" {
			plane := masks.Float32[idx*mh*mw : (idx+1)*mh*mw]
			d.Mask = make([]bool, im.W*im.H)
			for y := 0; y < im.H; y++ {
				my := min(y*mh/im.H, mh-1)
				for x := 0; x < im.W; x++ {
					d.Mask[y*im.W+x] = plane[my*mw+min(x*mw/im.W, mw-1)] > o.MaskThreshold
				}
			}
		}
		dets = append(dets, d)
	}
	return dets, nil
}

func (s *genevalScorer) Close() error {
	err := s.pool.close()
	if s.color != nil {
		if e := s.color.close(); err == nil {
			err = e
		}
	}
	return err
}
