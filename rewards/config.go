package rewards

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/geneval"
	"github.com/densegrpo/densegrpo/rewards/ocr"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// Config is one `[[reward]]` block of the training TOML. Which fields a kind reads is listed
// on each field; a field a kind does not read must be left out.
type Config struct {
	// Name identifies the reward in scores and logs; unique within a run.
	Name string `toml:"name"`
	// Weight multiplies the reward in the weighted total (any finite value; default 1).
	Weight *float64 `toml:"weight"`
	// Kind selects the scorer: onnx-scalar, clip-score, ocr, geneval or remote (see Kinds).
	Kind string `toml:"kind"`
	// Model is the ONNX file (relative paths are against the config file's directory):
	// the scorer (onnx-scalar), the joint image+text graph (clip-score), the recogniser
	// (ocr) or the detector (geneval).
	Model string `toml:"model"`
	// ImageModel and TextModel are clip-score's two towers (instead of Model).
	ImageModel string `toml:"image_model"`
	TextModel  string `toml:"text_model"`
	// Detector is ocr's optional DB text detector; without it the whole image is one line.
	Detector string `toml:"detector"`
	// Keys is ocr's character dictionary (ppocr_keys_v1.txt).
	Keys string `toml:"keys"`
	// Classes is geneval's class-names file, one name per line in label order.
	Classes string `toml:"classes"`
	// BatchSize caps the images per model run (default 8).
	BatchSize int `toml:"batch_size"`
	// Concurrency is the number of sessions of each model, run in parallel (default 1).
	Concurrency int `toml:"concurrency"`

	Image   ImageConfig   `toml:"image"`
	Text    TextConfig    `toml:"text"`
	Output  OutputConfig  `toml:"output"`
	OCR     OCRConfig     `toml:"ocr"`
	Geneval GenevalConfig `toml:"geneval"`
	Remote  RemoteConfig  `toml:"remote"`
	Color   ColorConfig   `toml:"color"`
	// ONNX (`[reward.onnx]`) overrides the process-wide ONNX Runtime settings ([onnx]) for
	// this reward's sessions: provider, device, threads, size limit. Default none.
	ONNX *onnxrt.Override `toml:"onnx"`
}

// ColorConfig is `[reward.color]`: geneval's colour classifier, GenEval's CLIP zero-shot over
// its ten colour names and three templates per object class, run on each object's crop (pixels
// outside its mask replaced by background). Without it, geneval names colours by a pixel rule
// (rewards/geneval.PixelColor), which is not GenEval's.
type ColorConfig struct {
	// ImageModel and TextModel are a CLIP's towers as exporters/clip writes them
	// (pixel_values → image_embeds, input_ids → text_embeds). GenEval uses OpenAI's ViT-L/14.
	ImageModel string `toml:"image_model"`
	TextModel  string `toml:"text_model"`
	// Vocab, Merges, MaxLength (default 77), PadID and Special are the CLIP tokenizer's, as in
	// [reward.text] with tokenizer = "clip-bpe".
	Vocab     string   `toml:"vocab"`
	Merges    string   `toml:"merges"`
	MaxLength int      `toml:"max_length"`
	PadID     *int64   `toml:"pad_id"`
	Special   []string `toml:"special"`
	// Size is the CLIP input side: each crop's shortest edge is resized to it and the centre
	// cut (default 224); Resize the filter (default "bicubic"); Mean and Std (default OpenAI
	// CLIP's) normalise it.
	Size   int               `toml:"size"`
	Resize preprocess.Filter `toml:"resize"`
	Mean   []float32         `toml:"mean"`
	Std    []float32         `toml:"std"`
	// Background fills the pixels outside an object's mask (default GenEval's "#999": 0.6).
	Background []float32 `toml:"background"`
}

// colorSpec is the crop's preprocessing.
func (c ColorConfig) colorSpec() preprocess.Spec {
	return preprocess.Spec{Size: []int{c.Size, c.Size}, Resize: c.Resize, Crop: "center", Mean: c.Mean, Std: c.Std}.Defaults()
}

// ImageConfig is `[reward.image]`: the model input the image feeds and how it is prepared.
type ImageConfig struct {
	// Input is the graph input name (default "pixel_values"; ocr: the detector's input "x").
	Input string `toml:"input"`
	preprocess.Spec
}

// TextConfig is `[reward.text]`: the prompt tokenizer and the graph inputs it feeds.
type TextConfig struct {
	// Tokenizer is "none" (default: no text input), "chars" or "clip-bpe".
	Tokenizer string `toml:"tokenizer"`
	// Input is the graph input of the int64 ids [N, MaxLength] (default "input_ids").
	Input string `toml:"input"`
	// MaskInput, if set, is a graph input fed the attention mask (1 token, 0 padding).
	MaskInput string `toml:"mask_input"`
	// Vocab is chars' one-character-per-line file (optional: code points without it) or
	// clip-bpe's vocab.json. Merges is clip-bpe's merges.txt.
	Vocab  string `toml:"vocab"`
	Merges string `toml:"merges"`
	// MaxLength is the fixed row length (default 77).
	MaxLength int `toml:"max_length"`
	// PadID pads rows (default: 0 for chars, <|endoftext|> for clip-bpe).
	PadID *int64 `toml:"pad_id"`
	// UnkID replaces characters missing from a chars vocabulary (default 0).
	UnkID int64 `toml:"unk_id"`
	// Special lists clip-bpe's extra special tokens: literal strings cut out of the prompt
	// and given their own id, as transformers does with a tokenizer's added special tokens
	// (laion's CLIP tokenizers, PickScore's among them, pad with "!" and list it here).
	Special []string `toml:"special"`
}

// OutputConfig is `[reward.output]`: which graph outputs hold the result and how a raw value
// becomes the reward: reward = scale·raw + offset.
type OutputConfig struct {
	// Name is the scalar output (onnx-scalar) or the recogniser's softmax (ocr); default:
	// the graph's first output.
	Name string `toml:"name"`
	// Index picks a column when the scalar output is [N, K] (default 0).
	Index int `toml:"index"`
	// Scale and Offset map the raw value (default 1 and 0). PickScore as Flow-GRPO: 1/26.
	Scale  *float64 `toml:"scale"`
	Offset float64  `toml:"offset"`
	// ImageEmbeds and TextEmbeds are clip-score's [N, D] outputs (defaults "image_embeds",
	// "text_embeds").
	ImageEmbeds string `toml:"image_embeds"`
	TextEmbeds  string `toml:"text_embeds"`
	// LogitScale multiplies the cosine (clip-score; default 100, CLIP's exp(4.6052)).
	// LogitScaleOutput instead reads it from a scalar graph output (e.g. "logit_scale").
	LogitScale       float64 `toml:"logit_scale"`
	LogitScaleOutput string  `toml:"logit_scale_output"`
	// Detector layout (geneval): Boxes [N,K,4] (or [K,4] for batch 1), Scores [N,K], Labels
	// [N,K] (int64 or float class indices into the classes file), optional Masks [N,K,H,W].
	Boxes  string `toml:"boxes"`
	Scores string `toml:"scores"`
	Labels string `toml:"labels"`
	Masks  string `toml:"masks"`
	// BoxFormat is "xyxy" (default) or "xywh"; Normalized boxes are in [0,1] of the
	// detector input instead of its pixels.
	BoxFormat  string `toml:"box_format"`
	Normalized bool   `toml:"normalized"`
	// MaskThreshold binarises Masks (default 0.5).
	MaskThreshold float32 `toml:"mask_threshold"`
	// Metric is geneval's reported reward: "score" (Flow-GRPO partial score, default),
	// "strict" (Flow-GRPO strict accuracy) or "correct" (GenEval accuracy). All three are
	// also reported as NAME.score, NAME.strict and NAME.correct.
	Metric string `toml:"metric"`
}

// OCRConfig is `[reward.ocr]`: the detector's DB post-processing and the recogniser's width.
// With a detector, `[reward.image]` declares the detector's input; PP-OCRv4's is
// channels = "BGR", mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225], and, without
// a size, each image is scaled to at most 960 px and rounded to multiples of 32.
type OCRConfig struct {
	ocr.DBOptions
	// DetectorOutput is the detector's probability-map output (default: its first output).
	DetectorOutput string `toml:"detector_output"`
	// RecInput is the recogniser's image input (default "x").
	RecInput string `toml:"rec_input"`
	// MaxWidth caps the recogniser input width in pixels (default 960).
	MaxWidth int `toml:"max_width"`
}

// GenevalConfig is `[reward.geneval]`: GenEval's detection-filtering constants.
type GenevalConfig struct {
	geneval.Options
}

// RemoteConfig is `[reward.remote]`: a scorer served by an inference server over the KServe v2
// / Open Inference Protocol (NVIDIA Triton, MLServer, KServe). Kind "remote" sends what
// "onnx-scalar" would feed its graph — the prepared images and, with a tokenizer, the ids —
// and reads the same output, so swapping the kind keeps the rewards.
type RemoteConfig struct {
	// URL is the server's base URL, http://HOST:PORT (Triton's HTTP port is 8000).
	URL string `toml:"url"`
	// Model and Version name the served model (Version empty: the server's choice).
	Model   string `toml:"model"`
	Version string `toml:"version"`
	// Timeout bounds one request (default "30s").
	Timeout string `toml:"timeout"`
	// Retries is how often a request is sent again after a transient failure (the server
	// unreachable, a timeout, HTTP 429/500/502/503/504; default 8). Backoff is the first wait
	// (default "250ms"), doubling up to MaxBackoff (default "8s").
	Retries    *int   `toml:"retries"`
	Backoff    string `toml:"backoff"`
	MaxBackoff string `toml:"max_backoff"`
	// Binary sends tensors in Triton's binary data extension instead of JSON arrays.
	Binary bool `toml:"binary"`
}

// Table is the TOML array of tables training rewards are read from; HeldoutTable holds the
// held-out rewards that only score evaluations.
const (
	Table        = "reward"
	HeldoutTable = "eval.reward"
)

// table names block i of array in errors: `[[reward]] "ocr"` or `[[reward]] #2` when unnamed.
func (c *Config) table(array string, i int) string {
	if c.Name != "" {
		return fmt.Sprintf("[[%s]] %q", array, c.Name)
	}
	return fmt.Sprintf("[[%s]] #%d", array, i+1)
}

// defaults fills every unset field with its documented default, per kind.
func (c *Config) defaults() {
	if c.Weight == nil {
		w := 1.0
		c.Weight = &w
	}
	if c.BatchSize == 0 {
		c.BatchSize = 8
	}
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.Image.Input == "" {
		c.Image.Input = "pixel_values"
		if c.Kind == "ocr" {
			c.Image.Input = "x"
		}
	}
	c.Image.Spec = c.Image.Spec.Defaults()
	if c.Text.Tokenizer == "" {
		c.Text.Tokenizer = "none"
	}
	if c.Text.Tokenizer != "none" {
		if c.Text.Input == "" {
			c.Text.Input = "input_ids"
		}
		if c.Text.MaxLength == 0 {
			c.Text.MaxLength = 77
		}
	}
	if c.Output.Scale == nil {
		s := 1.0
		c.Output.Scale = &s
	}
	if c.Kind == "clip-score" {
		if c.Output.ImageEmbeds == "" {
			c.Output.ImageEmbeds = "image_embeds"
		}
		if c.Output.TextEmbeds == "" {
			c.Output.TextEmbeds = "text_embeds"
		}
		if c.Output.LogitScale == 0 && c.Output.LogitScaleOutput == "" {
			c.Output.LogitScale = 100
		}
	}
	if c.Kind == "geneval" {
		if c.Output.BoxFormat == "" {
			c.Output.BoxFormat = "xyxy"
		}
		if c.Output.MaskThreshold == 0 {
			c.Output.MaskThreshold = 0.5
		}
		if c.Output.Metric == "" {
			c.Output.Metric = "score"
		}
		c.Geneval.Options = c.Geneval.Options.Defaults()
	}
	if c.Kind == "ocr" {
		c.OCR.DBOptions = c.OCR.DBOptions.Defaults()
		if c.OCR.RecInput == "" {
			c.OCR.RecInput = "x"
		}
		if c.OCR.MaxWidth == 0 {
			c.OCR.MaxWidth = 960
		}
	}
}

// Validate defaults c and checks it without opening any file. Errors name the field as
// `FIELD: got X, want Y`.
func (c *Config) Validate() error {
	c.defaults()
	if c.Name == "" || strings.ContainsAny(c.Name, " \t\n\"") {
		return fmt.Errorf("name: got %q, want a non-empty name without spaces or quotes", c.Name)
	}
	if _, ok := kinds[c.Kind]; !ok {
		return fmt.Errorf("kind: got %q, want one of %s", c.Kind, strings.Join(Kinds(), ", "))
	}
	if w := *c.Weight; w != w || w > 1e300 || w < -1e300 {
		return fmt.Errorf("weight: got %v, want a finite number", w)
	}
	if c.BatchSize < 1 || c.BatchSize > 4096 {
		return fmt.Errorf("batch_size: got %d, want 1..4096", c.BatchSize)
	}
	if c.Concurrency < 1 || c.Concurrency > 64 {
		return fmt.Errorf("concurrency: got %d, want 1..64", c.Concurrency)
	}
	if err := c.Image.Spec.Validate(); err != nil {
		return err
	}
	if s := *c.Output.Scale; s != s || s == 0 {
		return fmt.Errorf("output.scale: got %v, want a non-zero number", s)
	}
	if c.Output.Index < 0 {
		return fmt.Errorf("output.index: got %d, want >= 0", c.Output.Index)
	}
	switch c.Text.Tokenizer {
	case "none":
		if c.Text.Vocab != "" || c.Text.Merges != "" || c.Text.MaskInput != "" || len(c.Text.Special) > 0 {
			return fmt.Errorf("text.tokenizer: got \"none\" with text.vocab/merges/mask_input/special set, want a tokenizer")
		}
	case "chars":
		if len(c.Text.Special) > 0 {
			return fmt.Errorf("text.special: set for tokenizer \"chars\", want it only with \"clip-bpe\"")
		}
		if c.Text.Merges != "" {
			return fmt.Errorf("text.merges: set for tokenizer \"chars\", want it only with \"clip-bpe\"")
		}
	case "clip-bpe":
		if c.Text.Vocab == "" || c.Text.Merges == "" {
			return fmt.Errorf("text.vocab/text.merges: got %q/%q, want both files for tokenizer \"clip-bpe\"", c.Text.Vocab, c.Text.Merges)
		}
	default:
		return fmt.Errorf("text.tokenizer: got %q, want \"none\", \"chars\" or \"clip-bpe\"", c.Text.Tokenizer)
	}
	if c.Text.Tokenizer != "none" && (c.Text.MaxLength < 2 || c.Text.MaxLength > 4096) {
		return fmt.Errorf("text.max_length: got %d, want 2..4096", c.Text.MaxLength)
	}
	if err := c.ONNX.Validate("onnx"); err != nil {
		return err
	}
	return kinds[c.Kind].Validate(c)
}

// ResolvePaths makes every relative file path in c relative to baseDir (the directory of the
// config file).
func (c *Config) ResolvePaths(baseDir string) {
	for _, p := range []*string{&c.Model, &c.ImageModel, &c.TextModel, &c.Detector, &c.Keys, &c.Classes, &c.Text.Vocab, &c.Text.Merges,
		&c.Color.ImageModel, &c.Color.TextModel, &c.Color.Vocab, &c.Color.Merges} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(baseDir, *p)
		}
	}
}

// ValidateAll validates every block and checks names are unique. Errors name the block.
func ValidateAll(cfgs []Config) error {
	if len(cfgs) == 0 {
		return errors.New("rewards: no [[reward]] block, want at least one")
	}
	return validateIn(cfgs, Table)
}

// validateIn validates the blocks of the array of tables array ("reward", "eval.reward").
func validateIn(cfgs []Config, array string) error {
	seen := map[string]int{}
	for i := range cfgs {
		if err := cfgs[i].Validate(); err != nil {
			return fmt.Errorf("%s: %w", cfgs[i].table(array, i), err)
		}
		if j, dup := seen[cfgs[i].Name]; dup {
			return fmt.Errorf("%s: name: %q is also the name of [[%s]] #%d, want unique names", cfgs[i].table(array, i), cfgs[i].Name, array, j+1)
		}
		seen[cfgs[i].Name] = i
	}
	return nil
}

// DecodePrimitive decodes the `reward` array of tables of the document md was decoded from
// (the pipeline's config keeps a `toml.Primitive` field tagged "reward") and returns the
// blocks, validated. An unknown key under any block is an error naming it. Relative paths are
// left as written; call ResolvePaths.
func DecodePrimitive(md toml.MetaData, prim toml.Primitive) ([]Config, error) {
	cfgs, err := DecodePrimitiveAt(md, prim, Table)
	if err != nil {
		return nil, err
	}
	if len(cfgs) == 0 {
		return nil, errors.New("rewards: no [[reward]] block, want at least one")
	}
	return cfgs, nil
}

// DecodePrimitiveAt decodes the array of tables at the dotted key array ("reward" or
// "eval.reward") of the document md was decoded from, as DecodePrimitive does; it may be
// empty. Errors name the array.
func DecodePrimitiveAt(md toml.MetaData, prim toml.Primitive, array string) ([]Config, error) {
	var cfgs []Config
	if err := md.PrimitiveDecode(prim, &cfgs); err != nil {
		return nil, fmt.Errorf("decode [[%s]]: %w", array, err)
	}
	path := strings.Split(array, ".")
	var unknown []string
	for _, k := range md.Undecoded() {
		if len(k) > len(path) && slices.Equal([]string(k[:len(path)]), path) {
			unknown = append(unknown, k.String())
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("decode [[%s]]: unknown key %s (a typo, or a field this version does not have)", array, strings.Join(unknown, ", "))
	}
	if err := validateIn(cfgs, array); err != nil {
		return nil, err
	}
	return cfgs, nil
}

// DecodeTOML decodes the `[[reward]]` blocks of a whole TOML document, ignoring its other
// tables, resolves relative paths against baseDir and validates them.
func DecodeTOML(data []byte, baseDir string) ([]Config, error) {
	var doc struct {
		Reward toml.Primitive `toml:"reward"`
	}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc)
	if err != nil {
		return nil, fmt.Errorf("decode TOML: %w", err)
	}
	if !md.IsDefined("reward") {
		return nil, errors.New("decode TOML: no [[reward]] block, want at least one")
	}
	cfgs, err := DecodePrimitive(md, doc.Reward)
	if err != nil {
		return nil, err
	}
	for i := range cfgs {
		cfgs[i].ResolvePaths(baseDir)
	}
	return cfgs, nil
}
