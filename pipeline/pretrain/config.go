package pretrain

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// Config is the whole pretraining configuration, one TOML file. Every field is documented
// where declared (unit, range, default); Default holds every default in one place; Validate
// checks every field; unknown keys are errors. Relative paths resolve against the directory
// of the TOML file.
type Config struct {
	Model  ModelConfig  `toml:"model"`
	Data   DataConfig   `toml:"data"`
	Train  TrainConfig  `toml:"train"`
	Sigma  SigmaConfig  `toml:"sigma"`
	Output OutputConfig `toml:"output"`

	// Path is the file the config was read from ("" for a config built in code). Not a key.
	Path string `toml:"-"`
}

// ModelConfig names the models: the transformer to train, the text encoder trained with it
// and the frozen VAE whose latent space the transformer works in.
type ModelConfig struct {
	// Transformer is the MMDiT JSON config (diffusers SD3Transformer2DModel field names).
	// Required.
	Transformer string `toml:"transformer"`
	// VAE is the frozen tiny VAE's weight file (tinyocr.SaveVAE format). Required.
	VAE string `toml:"vae"`
	// TextEncoder sizes the jointly trained text encoder.
	TextEncoder TextEncoderConfig `toml:"text_encoder"`
	// SlotAttentionInit starts attention head 0 of every block as a lookup of the quoted
	// character drawn in the image token's cell (see initSlotAttention). Fresh runs only.
	// Default false.
	SlotAttentionInit bool `toml:"slot_attention_init"`
}

// DataConfig is where training images come from.
type DataConfig struct {
	// Prompts is the training prompt file, one prompt a line with its target in double
	// quotes (datasets/ocr-tiny/train.txt). Required.
	Prompts string `toml:"prompts"`
	// CaptionDropout is the probability in [0, 1) that a sample's prompt is replaced by the
	// empty prompt, so the model also learns the unconditional velocity (classifier-free
	// guidance). Default 0.1.
	CaptionDropout float64 `toml:"caption_dropout"`
	// Prefetch is how many batches are rendered and encoded ahead of the training step (>= 1).
	// Default 2.
	Prefetch int `toml:"prefetch"`
}

// TrainConfig is the optimisation.
type TrainConfig struct {
	// Seed of every random draw: model initialisation, prompts, render seeds, caption
	// dropout, σ and noise. Batch s is drawn from (seed, s) alone, so a resumed run sees the
	// same batches. Default 1.
	Seed uint64 `toml:"seed"`
	// BatchSize is the number of images per step (>= 1). Default 32.
	BatchSize int `toml:"batch_size"`
	// Steps is the number of optimiser steps (>= 1); the learning-rate schedule spans them.
	// Default 3000.
	Steps int `toml:"steps"`
	// TimeBudget stops training after this much wall time of one invocation (Go duration,
	// "45m"); "" or "0s" is no limit. With a budget the cosine schedule advances by
	// max(step/steps, elapsed/budget), so the learning rate anneals by the deadline even on
	// a slower machine (the run is then not bit-reproducible). Default "".
	TimeBudget string `toml:"time_budget"`
	// LR is the peak AdamW learning rate (> 0). Default 1e-3.
	LR float64 `toml:"lr"`
	// Schedule is "cosine" (linear warm-up, then cosine decay to LR·MinLRRatio) or
	// "constant" (linear warm-up, then LR). Default "cosine".
	Schedule string `toml:"schedule"`
	// WarmupSteps of linear warm-up from LR/WarmupSteps to LR (>= 0). Default 100.
	WarmupSteps int `toml:"warmup_steps"`
	// MinLRRatio is the final learning rate of the cosine schedule as a fraction of LR, in
	// [0, 1]. Default 0.05.
	MinLRRatio float64 `toml:"min_lr_ratio"`
	// WeightDecay is AdamW's decoupled weight decay (>= 0). Default 1e-4.
	WeightDecay float64 `toml:"weight_decay"`
	// EMADecay is the largest decay of the exponential moving average of the transformer and
	// text encoder weights, min((1+n)/(10+n), EMADecay) after n steps; the final files hold
	// the average (checkpoints hold both). In [0, 1); 0 writes the last step's weights.
	// Default 0.
	EMADecay float64 `toml:"ema_decay"`
	// GradClip is the maximum global L2 norm of the gradient (> 0; 0 disables). Default 1.0.
	GradClip float64 `toml:"grad_clip"`
	// Workers compute the gradients of equal shards of each batch at once (>= 1, dividing
	// BatchSize); one SimpleGo computation keeps about one core busy. The step is the same
	// up to float rounding. Default 2.
	Workers int `toml:"workers"`
	// Backend for GoMLX: one of nn.BackendSpecs ("auto", "go", "xla:cpu", "xla:cuda").
	// Default "go".
	Backend nn.Backend `toml:"backend"`
}

// SigmaConfig is how training noise levels σ are drawn: u from Sampling, then the SD3 shift
// σ = shift·u / (1 + (shift−1)·u).
type SigmaConfig struct {
	// Sampling is "logit-normal" (u = sigmoid(n), n ~ N(Mean, Std²), SD3's default) or
	// "uniform" (u ~ U(0, 1)). Default "logit-normal".
	Sampling string `toml:"sampling"`
	// Mean of the logit-normal. Default 0.
	Mean float64 `toml:"mean"`
	// Std of the logit-normal (> 0). Default 1.
	Std float64 `toml:"std"`
	// Shift of the SD3 schedule (> 0; 1 is no shift). Default 3.
	Shift float64 `toml:"shift"`
}

// OutputConfig is what is written where.
type OutputConfig struct {
	// Dir receives transformer.safetensors, text_encoder.safetensors, loss.jsonl,
	// config.toml and checkpoints/. Required.
	Dir string `toml:"dir"`
	// CheckpointEvery writes a checkpoint every N steps (>= 1). Default 250.
	CheckpointEvery int `toml:"checkpoint_every"`
	// KeepCheckpoints is how many recent checkpoints are kept (>= 1). Default 2.
	KeepCheckpoints int `toml:"keep_checkpoints"`
	// LogEvery writes a loss.jsonl line every N steps (>= 1), the mean over those steps.
	// Default 10.
	LogEvery int `toml:"log_every"`
}

// Default returns the configuration with every default set and the required paths empty.
func Default() Config {
	return Config{
		Model: ModelConfig{TextEncoder: DefaultTextEncoderConfig()},
		Data:  DataConfig{CaptionDropout: 0.1, Prefetch: 2},
		Train: TrainConfig{
			Seed: 1, BatchSize: 32, Steps: 3000, LR: 1e-3, Schedule: "cosine", WarmupSteps: 100,
			MinLRRatio: 0.05, WeightDecay: 1e-4, GradClip: 1, Workers: 2, Backend: "go",
		},
		Sigma:  SigmaConfig{Sampling: "logit-normal", Mean: 0, Std: 1, Shift: 3},
		Output: OutputConfig{CheckpointEvery: 250, KeepCheckpoints: 2, LogEvery: 10},
	}
}

// LoadConfig reads, defaults, resolves and validates the TOML file at path.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read pretrain config: %w", err)
	}
	cfg, err := ParseConfig(data, path)
	if err != nil {
		return Config{}, fmt.Errorf("decode pretrain config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes TOML over the defaults strictly (an unknown key is an error naming it),
// resolves relative paths against path's directory and validates the result.
func ParseConfig(data []byte, path string) (Config, error) {
	cfg := Default()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cfg)
	if err != nil {
		return Config{}, err
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return Config{}, fmt.Errorf("unknown keys %s", strings.Join(keys, ", "))
	}
	cfg.Path = path
	cfg.resolvePaths()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// resolvePaths makes the relative file paths relative to the config file's directory.
func (c *Config) resolvePaths() {
	if c.Path == "" {
		return
	}
	dir := filepath.Dir(c.Path)
	for _, p := range []*string{&c.Model.Transformer, &c.Model.VAE, &c.Data.Prompts, &c.Output.Dir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// Budget returns the parsed time budget (0: none).
func (c TrainConfig) Budget() time.Duration {
	d, _ := time.ParseDuration(c.TimeBudget)
	return d
}

// Validate checks every field; the error names the field, what it got and what is wanted.
func (c Config) Validate() error {
	type check struct {
		bad         bool
		field, want string
		got         any
	}
	budgetErr := error(nil)
	if c.Train.TimeBudget != "" {
		var d time.Duration
		d, budgetErr = time.ParseDuration(c.Train.TimeBudget)
		if budgetErr == nil && d < 0 {
			budgetErr = fmt.Errorf("negative")
		}
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	checks := []check{
		{c.Model.Transformer == "", "model.transformer", "the MMDiT JSON config file", `""`},
		{c.Model.VAE == "", "model.vae", "the VAE weight file", `""`},
		{c.Data.Prompts == "", "data.prompts", "the training prompt file", `""`},
		{!(c.Data.CaptionDropout >= 0 && c.Data.CaptionDropout < 1), "data.caption_dropout", "0 <= p < 1", c.Data.CaptionDropout},
		{c.Data.Prefetch < 1, "data.prefetch", ">= 1", c.Data.Prefetch},
		{c.Train.BatchSize < 1, "train.batch_size", ">= 1", c.Train.BatchSize},
		{c.Train.Steps < 1, "train.steps", ">= 1", c.Train.Steps},
		{budgetErr != nil, "train.time_budget", `a Go duration >= 0 such as "45m"`, fmt.Sprintf("%q", c.Train.TimeBudget)},
		{!(c.Train.LR > 0) || !finite(c.Train.LR), "train.lr", "> 0", c.Train.LR},
		{c.Train.Schedule != "cosine" && c.Train.Schedule != "constant", "train.schedule", `"cosine" or "constant"`, fmt.Sprintf("%q", c.Train.Schedule)},
		{c.Train.WarmupSteps < 0, "train.warmup_steps", ">= 0", c.Train.WarmupSteps},
		{!(c.Train.MinLRRatio >= 0 && c.Train.MinLRRatio <= 1), "train.min_lr_ratio", "0 <= r <= 1", c.Train.MinLRRatio},
		{!(c.Train.WeightDecay >= 0) || !finite(c.Train.WeightDecay), "train.weight_decay", ">= 0", c.Train.WeightDecay},
		{!(c.Train.EMADecay >= 0 && c.Train.EMADecay < 1), "train.ema_decay", "in [0, 1)", c.Train.EMADecay},
		{!(c.Train.GradClip >= 0) || !finite(c.Train.GradClip), "train.grad_clip", ">= 0 (0 disables)", c.Train.GradClip},
		{c.Train.Workers < 1 || c.Train.BatchSize%max(1, c.Train.Workers) != 0, "train.workers", fmt.Sprintf(">= 1 and dividing train.batch_size (%d)", c.Train.BatchSize), c.Train.Workers},
		{!c.Train.Backend.Valid(), "train.backend", "one of " + strings.Join(nn.BackendSpecs, ", "), fmt.Sprintf("%q", c.Train.Backend)},
		{c.Sigma.Sampling != "logit-normal" && c.Sigma.Sampling != "uniform", "sigma.sampling", `"logit-normal" or "uniform"`, fmt.Sprintf("%q", c.Sigma.Sampling)},
		{!finite(c.Sigma.Mean), "sigma.mean", "a finite number", c.Sigma.Mean},
		{!(c.Sigma.Std > 0) || !finite(c.Sigma.Std), "sigma.std", "> 0", c.Sigma.Std},
		{!(c.Sigma.Shift > 0) || !finite(c.Sigma.Shift), "sigma.shift", "> 0", c.Sigma.Shift},
		{c.Output.Dir == "", "output.dir", "an output directory", `""`},
		{c.Output.CheckpointEvery < 1, "output.checkpoint_every", ">= 1", c.Output.CheckpointEvery},
		{c.Output.KeepCheckpoints < 1, "output.keep_checkpoints", ">= 1", c.Output.KeepCheckpoints},
		{c.Output.LogEvery < 1, "output.log_every", ">= 1", c.Output.LogEvery},
	}
	for _, ch := range checks {
		if ch.bad {
			return fmt.Errorf("field %s: got %v, want %s", ch.field, ch.got, ch.want)
		}
	}
	if err := c.Model.TextEncoder.Validate(); err != nil {
		return err
	}
	return nil
}

// Encode writes the configuration as TOML (the resolved config saved in the output dir).
func (c Config) Encode() ([]byte, error) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return nil, fmt.Errorf("encode pretrain config: %w", err)
	}
	return buf.Bytes(), nil
}

// TextEncoderConfig sizes the jointly trained text encoder (tinyocr.TextEncoderConfig). Its
// widths must equal the transformer's joint_attention_dim and pooled_projection_dim.
type TextEncoderConfig struct {
	// Dim is the width of the per-token output (>= 1). Default tinyocr's (64).
	Dim int `toml:"dim"`
	// PooledDim is the width of the pooled output (>= 1). Default tinyocr's (64).
	PooledDim int `toml:"pooled_dim"`
	// Hidden is the width of the MLP block (>= 1). Default tinyocr's (128).
	Hidden int `toml:"hidden"`
}

// DefaultTextEncoderConfig is tinyocr's default size.
func DefaultTextEncoderConfig() TextEncoderConfig {
	d := tinyocr.DefaultTextEncoderConfig()
	return TextEncoderConfig{Dim: d.Dim, PooledDim: d.PooledDim, Hidden: d.Hidden}
}

func (c TextEncoderConfig) tinyocr() tinyocr.TextEncoderConfig {
	return tinyocr.TextEncoderConfig{Dim: c.Dim, PooledDim: c.PooledDim, Hidden: c.Hidden}
}

// Validate checks every field.
func (c TextEncoderConfig) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"dim", c.Dim}, {"pooled_dim", c.PooledDim}, {"hidden", c.Hidden}} {
		if f.v < 1 {
			return fmt.Errorf("field model.text_encoder.%s: got %d, want >= 1", f.name, f.v)
		}
	}
	return nil
}
