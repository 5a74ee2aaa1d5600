package mmdit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/densegrpo/densegrpo/internal/limitfile"
)

// Config sizes the transformer. Field names and meanings are those of
// diffusers' SD3Transformer2DModel config.json, so a real checkpoint's config
// loads unchanged.
type Config struct {
	// SampleSize is the nominal latent height/width (pixels of the latent, not
	// of the image). It only sets the position-embedding base size
	// sample_size/patch_size. SD3.5-M: 128.
	SampleSize int `json:"sample_size"`
	// PatchSize is the side of the square latent patch that becomes a token. SD3: 2.
	PatchSize int `json:"patch_size"`
	// InChannels is the number of latent channels. SD3: 16.
	InChannels int `json:"in_channels"`
	// NumLayers is the number of joint transformer blocks; the last one is
	// context_pre_only (its text stream output is dropped). SD3.5-M: 24.
	NumLayers int `json:"num_layers"`
	// AttentionHeadDim is the per-head width. SD3: 64.
	AttentionHeadDim int `json:"attention_head_dim"`
	// NumAttentionHeads; the model width is heads·head_dim. SD3.5-M: 24.
	NumAttentionHeads int `json:"num_attention_heads"`
	// JointAttentionDim is the width of the text encoder's token states. SD3: 4096.
	JointAttentionDim int `json:"joint_attention_dim"`
	// CaptionProjectionDim is context_embedder's output width; it must equal
	// the model width. SD3.5-M: 1536.
	CaptionProjectionDim int `json:"caption_projection_dim"`
	// PooledProjectionDim is the width of the pooled text embedding. SD3: 2048.
	PooledProjectionDim int `json:"pooled_projection_dim"`
	// OutChannels is the number of predicted velocity channels; null or 0
	// means InChannels.
	OutChannels int `json:"out_channels"`
	// PosEmbedMaxSize is the side (in patches) of the fixed sin-cos position
	// grid from which the centre is cropped. SD3.5-M: 384.
	PosEmbedMaxSize int `json:"pos_embed_max_size"`
	// QKNorm is "rms_norm" (SD3.5) or "" / null (SD3) for no query/key norm.
	QKNorm string `json:"qk_norm"`
	// DualAttentionLayers lists the blocks that add a second, image-only
	// self-attention attn2 (SD3.5 MMDiT-X). SD3.5-M: 0..12.
	DualAttentionLayers []int `json:"dual_attention_layers"`
}

// configKeys are the JSON keys LoadConfig accepts; keys starting with "_"
// (diffusers' "_class_name", "_diffusers_version", ...) are ignored.
var configKeys = []string{
	"sample_size", "patch_size", "in_channels", "num_layers", "attention_head_dim",
	"num_attention_heads", "joint_attention_dim", "caption_projection_dim",
	"pooled_projection_dim", "out_channels", "pos_embed_max_size", "qk_norm",
	"dual_attention_layers",
}

// LoadConfig reads a diffusers-style config.json strictly: an unknown key
// (other than "_"-prefixed bookkeeping keys) is an error. The result is
// defaulted and validated.
func LoadConfig(path string) (Config, error) {
	data, err := limitfile.Read(path, limitfile.Config, "a JSON config")
	if err != nil {
		return Config{}, fmt.Errorf("read mmdit config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("decode mmdit config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes, defaults and validates a JSON config (see LoadConfig).
func ParseConfig(data []byte) (Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return Config{}, err
	}
	var unknown []string
	for k := range raw {
		if !strings.HasPrefix(k, "_") && !slices.Contains(configKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return Config{}, fmt.Errorf("unknown keys %q (known: %s)", unknown, strings.Join(configKeys, ", "))
	}
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, err
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// withDefaults resolves the fields diffusers allows to be null.
func (c Config) withDefaults() Config {
	if c.OutChannels == 0 {
		c.OutChannels = c.InChannels
	}
	return c
}

// InnerDim is the model width, heads·head_dim.
func (c Config) InnerDim() int { return c.NumAttentionHeads * c.AttentionHeadDim }

// BaseSize is the position-embedding base size, sample_size/patch_size, as
// diffusers' PatchEmbed computes it.
func (c Config) BaseSize() int { return c.SampleSize / c.PatchSize }

// IsDualAttention reports whether block i has the extra attn2.
func (c Config) IsDualAttention(i int) bool { return slices.Contains(c.DualAttentionLayers, i) }

// Validate checks every field; the error names the field, the value and what
// is wanted.
func (c Config) Validate() error {
	positive := []struct {
		name string
		v    int
	}{
		{"sample_size", c.SampleSize}, {"patch_size", c.PatchSize}, {"in_channels", c.InChannels},
		{"num_layers", c.NumLayers}, {"attention_head_dim", c.AttentionHeadDim},
		{"num_attention_heads", c.NumAttentionHeads}, {"joint_attention_dim", c.JointAttentionDim},
		{"caption_projection_dim", c.CaptionProjectionDim}, {"pooled_projection_dim", c.PooledProjectionDim},
		{"out_channels", c.OutChannels}, {"pos_embed_max_size", c.PosEmbedMaxSize},
	}
	for _, f := range positive {
		if f.v <= 0 {
			return fmt.Errorf("field %s: got %d, want > 0", f.name, f.v)
		}
	}
	if c.SampleSize%c.PatchSize != 0 {
		return fmt.Errorf("field sample_size: got %d, want a multiple of patch_size %d", c.SampleSize, c.PatchSize)
	}
	if c.CaptionProjectionDim != c.InnerDim() {
		return fmt.Errorf("field caption_projection_dim: got %d, want num_attention_heads·attention_head_dim = %d (the text stream joins the image stream's attention)", c.CaptionProjectionDim, c.InnerDim())
	}
	if c.InnerDim()%4 != 0 {
		return fmt.Errorf("field num_attention_heads·attention_head_dim: got %d, want a multiple of 4 (2-D sin-cos position embedding)", c.InnerDim())
	}
	if c.PosEmbedMaxSize < c.BaseSize() {
		return fmt.Errorf("field pos_embed_max_size: got %d, want >= sample_size/patch_size = %d", c.PosEmbedMaxSize, c.BaseSize())
	}
	if c.QKNorm != "" && c.QKNorm != "rms_norm" {
		return fmt.Errorf("field qk_norm: got %q, want \"rms_norm\" or null", c.QKNorm)
	}
	seen := map[int]bool{}
	for _, l := range c.DualAttentionLayers {
		if l < 0 || l >= c.NumLayers {
			return fmt.Errorf("field dual_attention_layers: got layer %d, want 0 <= layer < num_layers %d", l, c.NumLayers)
		}
		if seen[l] {
			return fmt.Errorf("field dual_attention_layers: layer %d listed twice", l)
		}
		seen[l] = true
	}
	return nil
}
