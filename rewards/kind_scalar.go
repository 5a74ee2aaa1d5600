package rewards

import (
	"context"
	"fmt"
	"reflect"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/kserve"
	"github.com/densegrpo/densegrpo/rewards/tokenize"
)

func init() {
	Register("onnx-scalar", Kind{Validate: validateScalar, Open: openScalar})
}

// fieldSet reports which optional top-level fields of c are set, by TOML name.
func fieldSet(c *Config) map[string]bool {
	o := c.Output
	return map[string]bool{
		"model": c.Model != "", "image_model": c.ImageModel != "", "text_model": c.TextModel != "",
		"detector": c.Detector != "", "keys": c.Keys != "", "classes": c.Classes != "",
		"output.image_embeds": o.ImageEmbeds != "", "output.text_embeds": o.TextEmbeds != "",
		"output.logit_scale": o.LogitScale != 0, "output.logit_scale_output": o.LogitScaleOutput != "",
		"output.boxes": o.Boxes != "", "output.scores": o.Scores != "", "output.labels": o.Labels != "",
		"output.masks": o.Masks != "", "output.box_format": o.BoxFormat != "", "output.normalized": o.Normalized,
		"output.mask_threshold": o.MaskThreshold != 0, "output.metric": o.Metric != "",
		"output.index": o.Index != 0,
		"ocr":          c.OCR != OCRConfig{},
		"geneval":      c.Geneval != GenevalConfig{},
		"remote":       !reflect.DeepEqual(c.Remote, RemoteConfig{}),
		"color":        !reflect.DeepEqual(c.Color, ColorConfig{}),
	}
}

// onlyFields rejects any optional field that the kind does not read, and requires the given
// ones.
func onlyFields(c *Config, allowed []string, required ...string) error {
	set := fieldSet(c)
	ok := map[string]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	for _, r := range required {
		if !set[r] {
			return fmt.Errorf("%s: missing, want it for kind %q", r, c.Kind)
		}
	}
	for _, name := range sortedKeys(set) {
		if set[name] && !ok[name] {
			return fmt.Errorf("%s: set, but kind %q does not use it", name, c.Kind)
		}
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func validateScalar(c *Config) error {
	return onlyFields(c, []string{"model", "output.index"}, "model")
}

// textFeeder tokenizes prompts into a model's text inputs.
type textFeeder struct {
	cfg TextConfig
	tok tokenize.Tokenizer
}

func newTextFeeder(c *Config) (*textFeeder, error) {
	t := c.Text
	var tok tokenize.Tokenizer
	var err error
	switch t.Tokenizer {
	case "none":
		return nil, nil
	case "chars":
		pad := int64(0)
		if t.PadID != nil {
			pad = *t.PadID
		}
		tok, err = tokenize.LoadChars(t.Vocab, t.MaxLength, pad, t.UnkID)
	case "clip-bpe":
		pad := int64(-1)
		if t.PadID != nil {
			pad = *t.PadID
		}
		var bpe *tokenize.CLIPBPE
		if bpe, err = tokenize.LoadCLIPBPE(t.Vocab, t.Merges, t.MaxLength, pad, t.Special...); err == nil {
			tok = bpe
		}
	}
	if err != nil {
		return nil, fmt.Errorf("[reward.text]: %w", err)
	}
	return &textFeeder{cfg: t, tok: tok}, nil
}

func (f *textFeeder) wants() []tensorWant {
	if f == nil {
		return nil
	}
	what := fmt.Sprintf("[reward.text] tokenizer = %q, max_length = %d", f.cfg.Tokenizer, f.cfg.MaxLength)
	dims := []int64{-1, int64(f.cfg.MaxLength)}
	out := []tensorWant{{role: "input", name: f.cfg.Input, types: []string{"int64"}, dims: dims, what: what}}
	if f.cfg.MaskInput != "" {
		out = append(out, tensorWant{role: "input", name: f.cfg.MaskInput, types: []string{"int64"}, dims: dims, what: what})
	}
	return out
}

func (f *textFeeder) feed(prompts []Prompt, in map[string]onnxrt.Tensor) error {
	if f == nil {
		return nil
	}
	n, L := len(prompts), f.tok.Len()
	ids := make([]int64, 0, n*L)
	mask := make([]int64, 0, n*L)
	for i, p := range prompts {
		row, m, err := f.tok.Encode(p.Text)
		if err != nil {
			return fmt.Errorf("prompt %d: %w", i, err)
		}
		ids, mask = append(ids, row...), append(mask, m...)
	}
	shape := []int64{int64(n), int64(L)}
	in[f.cfg.Input] = onnxrt.Tensor{Shape: shape, Int64: ids}
	if f.cfg.MaskInput != "" {
		in[f.cfg.MaskInput] = onnxrt.Tensor{Shape: shape, Int64: mask}
	}
	return nil
}

// runner is a model a scorer runs: `concurrency` ONNX Runtime sessions of a file (pool), or a
// model served over the network (remote). where names it in errors: the file, or the model's
// URL.
type runner interface {
	where() string
	inputs() []onnxrt.TensorInfo
	outputs() []onnxrt.TensorInfo
	run(ctx context.Context, in map[string]onnxrt.Tensor, outputs ...string) (map[string]onnxrt.Tensor, error)
	close() error
}

// scalarScorer runs any model mapping an image (and optionally token ids) to a score.
type scalarScorer struct {
	cfg    *Config
	m      runner
	text   *textFeeder
	output string
}

func openScalar(ctx context.Context, c *Config, rt onnxrt.Config) (Scorer, error) {
	text, err := newTextFeeder(c)
	if err != nil {
		return nil, err
	}
	p, err := newPool(c.Model, c.Concurrency, rt)
	if err != nil {
		return nil, err
	}
	s, err := newScalarScorer(c, p, text)
	if err != nil {
		return nil, err
	}
	if err := openPools(p); err != nil {
		return nil, err
	}
	return s, nil
}

// newScalarScorer checks the model's declared tensors against c and closes m on a mismatch.
func newScalarScorer(c *Config, m runner, text *textFeeder) (*scalarScorer, error) {
	s := &scalarScorer{cfg: c, m: m, text: text}
	if err := s.check(); err != nil {
		m.close()
		return nil, err
	}
	return s, nil
}

// hookRetries passes fn to a runner that waits for a server (a remote model).
func (s *scalarScorer) hookRetries(fn func(kserve.Retry)) {
	if h, ok := s.m.(retryHooker); ok {
		h.hookRetries(fn)
	}
}

func (s *scalarScorer) check() error {
	where, inputs, outputs := s.m.where(), s.m.inputs(), s.m.outputs()
	wants := append([]tensorWant{imageWant(s.cfg, s.cfg.Image.Spec, s.cfg.Image.Input, "[reward.image]")}, s.text.wants()...)
	for _, w := range wants {
		t, err := w.check(where, inputs)
		if err != nil {
			return err
		}
		if err := checkBatchDim(s.cfg, where, t); err != nil {
			return err
		}
	}
	if len(inputs) != len(wants) {
		return fmt.Errorf("model %s: graph has %d inputs (%v), the config feeds %d", where, len(inputs), inputs, len(wants))
	}
	s.output = s.cfg.Output.Name
	if s.output == "" && len(outputs) > 0 {
		s.output = outputs[0].Name
	}
	what := "[reward.output] name"
	t, err := tensorWant{role: "output", name: s.output, types: []string{"float32", "float64"}, dims: nil, what: what}.checkAnyRank(where, outputs)
	if err != nil {
		return err
	}
	switch len(t.Dims) {
	case 1:
		if s.cfg.Output.Index != 0 {
			return fmt.Errorf("model %s: output %q: got %s %s (one value per image), want [N,K] for [reward.output] index = %d", where, t.Name, t.Type, onnxrt.FormatDims(t.Dims), s.cfg.Output.Index)
		}
	case 2:
		if t.Dims[1] >= 0 && int64(s.cfg.Output.Index) >= t.Dims[1] {
			return fmt.Errorf("model %s: output %q: got %s %s, want more than %d columns for [reward.output] index = %d", where, t.Name, t.Type, onnxrt.FormatDims(t.Dims), s.cfg.Output.Index, s.cfg.Output.Index)
		}
	default:
		return fmt.Errorf("model %s: output %q: got %s %s, want float32 [N] or [N,K] (from %s)", where, t.Name, t.Type, onnxrt.FormatDims(t.Dims), what)
	}
	return nil
}

// checkAnyRank finds the tensor and checks its element type only.
func (w tensorWant) checkAnyRank(path string, infos []onnxrt.TensorInfo) (onnxrt.TensorInfo, error) {
	for _, t := range infos {
		if t.Name == w.name {
			w.dims = make([]int64, len(t.Dims))
			for i := range w.dims {
				w.dims[i] = -1
			}
			break
		}
	}
	return w.check(path, infos)
}

func (s *scalarScorer) Score(ctx context.Context, b *Batch) ([]float64, map[string][]float64, error) {
	px, err := b.Pixels(s.cfg.Image.Spec)
	if err != nil {
		return nil, nil, err
	}
	in := map[string]onnxrt.Tensor{s.cfg.Image.Input: px}
	if err := s.text.feed(b.Prompts, in); err != nil {
		return nil, nil, err
	}
	out, err := s.m.run(ctx, in, s.output)
	if err != nil {
		return nil, nil, err
	}
	raw := out[s.output]
	n := len(b.Images)
	cols := 1
	if len(raw.Shape) == 2 {
		cols = int(raw.Shape[1])
	}
	if r := len(raw.Shape); r < 1 || r > 2 || raw.Shape[0] != int64(n) || len(raw.Float32) != n*cols || s.cfg.Output.Index >= cols {
		return nil, nil, fmt.Errorf("model %s: output %q has shape %s for a batch of %d, want [%d] or [%d,K] with K > index %d", s.m.where(), s.output, onnxrt.FormatDims(raw.Shape), n, n, n, s.cfg.Output.Index)
	}
	vals := make([]float64, n)
	for i := range vals {
		vals[i] = *s.cfg.Output.Scale*float64(raw.Float32[i*cols+s.cfg.Output.Index]) + s.cfg.Output.Offset
	}
	if err := finite(vals); err != nil {
		return nil, nil, fmt.Errorf("model %s: output %q: %w", s.m.where(), s.output, err)
	}
	return vals, nil, nil
}

func (s *scalarScorer) Close() error { return s.m.close() }
