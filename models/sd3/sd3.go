// Package sd3 owns an exported Stable Diffusion 3 / 3.5 model as the Go side runs it: the
// manifest exporters/sd3 writes (ONNX text encoders and VAE decoder, tokenizer folders, VAE
// factors, scheduler shift, where the diffusers transformer folder is), checked file by file,
// and the frozen parts and the MMDiT opened from it.
package sd3

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/densegrpo/densegrpo/internal/limitfile"
	"github.com/densegrpo/densegrpo/models/frozen"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// ManifestFile is the manifest's name inside an export folder.
const ManifestFile = "manifest.json"

// Format and Version are what this package reads.
const (
	Format  = "densegrpo-sd3-export"
	Version = 1
)

// Manifest describes one export folder. Paths inside are relative to the folder.
type Manifest struct {
	// Dir is the export folder (not in the file).
	Dir          string        `json:"-"`
	Format       string        `json:"format"`
	Version      int           `json:"version"`
	Pipeline     string        `json:"pipeline"`
	Transformer  Transformer   `json:"transformer"`
	TextEncoders []TextEncoder `json:"text_encoders"`
	VAE          VAE           `json:"vae"`
	Scheduler    Scheduler     `json:"scheduler"`
}

// Transformer is the diffusers SD3Transformer2DModel folder (config.json and safetensors).
type Transformer struct {
	Dir string `json:"dir"`
}

// TextEncoder is one exported text encoder.
type TextEncoder struct {
	// Name is the snapshot's component: text_encoder, text_encoder_2, text_encoder_3.
	Name string `json:"name"`
	// Kind is "clip" or "t5".
	Kind string `json:"kind"`
	// Model is the ONNX file; Tokenizer the tokenizer folder.
	Model     string `json:"model"`
	Tokenizer string `json:"tokenizer"`
	// MaxLength of the token rows: 77 (CLIP), 256 (T5, the pipeline's max_sequence_length).
	MaxLength int `json:"max_length"`
	// HiddenSize is the per-token width; ProjectionDim CLIP's pooled width.
	HiddenSize    int    `json:"hidden_size"`
	ProjectionDim int    `json:"projection_dim"`
	DType         string `json:"dtype"`
}

// VAE is the exported decoder and diffusers' latent convention.
type VAE struct {
	Decoder        string  `json:"decoder"`
	LatentChannels int     `json:"latent_channels"`
	ScaleFactor    int     `json:"scale_factor"`
	ScalingFactor  float64 `json:"scaling_factor"`
	ShiftFactor    float64 `json:"shift_factor"`
}

// Scheduler is the snapshot's FlowMatchEulerDiscreteScheduler settings.
type Scheduler struct {
	Class             string  `json:"class"`
	Shift             float64 `json:"shift"`
	NumTrainTimesteps int     `json:"num_train_timesteps"`
}

// ReadManifest reads and checks dir/manifest.json: format and version, the encoders' kinds in
// SD3's order (CLIP-L, CLIP-G, optionally T5), positive factors, and that every file it names
// exists. A diffusers snapshot given instead of an export is named as such.
func ReadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, ManifestFile)
	raw, err := limitfile.Read(path, limitfile.Config, "a JSON config")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(filepath.Join(dir, "model_index.json")); serr == nil {
				return nil, fmt.Errorf("read SD3 export %s: this is a diffusers snapshot, not an export; run `just export-models MODEL_DIR=%s OUT=DIR` and point at DIR", dir, dir)
			}
		}
		return nil, fmt.Errorf("read SD3 export: %w", err)
	}
	m := &Manifest{}
	if err := json.Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("read SD3 export %s: %w", path, err)
	}
	m.Dir = dir
	if err := m.check(path); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Manifest) check(path string) error {
	bad := func(field string, got any, want string) error {
		return fmt.Errorf("read SD3 export %s: field %s: got %v, want %s", path, field, got, want)
	}
	if m.Format != Format {
		return bad("format", fmt.Sprintf("%q", m.Format), fmt.Sprintf("%q", Format))
	}
	if m.Version != Version {
		return bad("version", m.Version, fmt.Sprint(Version))
	}
	if n := len(m.TextEncoders); n != 2 && n != 3 {
		return bad("text_encoders", fmt.Sprintf("%d entries", n), "CLIP-L, CLIP-G and optionally T5")
	}
	for i, te := range m.TextEncoders {
		field := fmt.Sprintf("text_encoders[%d]", i)
		want := "clip"
		if i == 2 {
			want = "t5"
		}
		if te.Kind != want {
			return bad(field+".kind", fmt.Sprintf("%q", te.Kind), fmt.Sprintf("%q (SD3's order: CLIP-L, CLIP-G, T5)", want))
		}
		if te.MaxLength <= 0 {
			return bad(field+".max_length", te.MaxLength, "> 0")
		}
		if err := m.exists(path, field+".model", te.Model, false); err != nil {
			return err
		}
		if err := m.exists(path, field+".tokenizer", te.Tokenizer, true); err != nil {
			return err
		}
	}
	if err := m.exists(path, "vae.decoder", m.VAE.Decoder, false); err != nil {
		return err
	}
	if !(m.VAE.ScalingFactor > 0) {
		return bad("vae.scaling_factor", m.VAE.ScalingFactor, "> 0")
	}
	if m.VAE.LatentChannels <= 0 || m.VAE.ScaleFactor <= 0 {
		return bad("vae.latent_channels/scale_factor", fmt.Sprintf("%d/%d", m.VAE.LatentChannels, m.VAE.ScaleFactor), "> 0")
	}
	if !(m.Scheduler.Shift > 0) {
		return bad("scheduler.shift", m.Scheduler.Shift, "> 0")
	}
	if err := m.exists(path, "transformer.dir", m.Transformer.Dir, true); err != nil {
		return err
	}
	return m.exists(path, "transformer.dir", filepath.Join(m.Transformer.Dir, mmdit.DiffusersConfig), false)
}

// exists checks that a named file (or folder) is there.
func (m *Manifest) exists(path, field, rel string, dir bool) error {
	if rel == "" {
		return fmt.Errorf("read SD3 export %s: field %s: empty", path, field)
	}
	st, err := os.Stat(m.Path(rel))
	switch {
	case err != nil:
		return fmt.Errorf("read SD3 export %s: field %s: %s: not found", path, field, m.Path(rel))
	case dir && !st.IsDir():
		return fmt.Errorf("read SD3 export %s: field %s: %s: want a folder", path, field, m.Path(rel))
	case !dir && st.IsDir():
		return fmt.Errorf("read SD3 export %s: field %s: %s: want a file", path, field, m.Path(rel))
	}
	return nil
}

// Path resolves a manifest path against the export folder.
func (m *Manifest) Path(rel string) string {
	if filepath.IsAbs(rel) {
		return rel
	}
	return filepath.Join(m.Dir, rel)
}

// TransformerDir is the diffusers transformer folder.
func (m *Manifest) TransformerDir() string { return m.Path(m.Transformer.Dir) }

// TransformerConfig reads the transformer's config.json.
func (m *Manifest) TransformerConfig() (mmdit.Config, error) {
	return mmdit.LoadDiffusersConfig(m.TransformerDir())
}

// TextEncoderOptions are the frozen.SD3TextEncoder options of the export: the CLIP pair, T5
// if exported, widths from the transformer config.
func (m *Manifest) TextEncoderOptions(rt onnxrt.Config, cfg mmdit.Config) frozen.SD3TextEncoderOptions {
	part := func(te TextEncoder) frozen.SD3Part {
		return frozen.SD3Part{Model: m.Path(te.Model), Tokenizer: m.Path(te.Tokenizer), MaxLength: te.MaxLength}
	}
	opts := frozen.SD3TextEncoderOptions{
		Runtime:           rt,
		CLIP:              [2]frozen.SD3Part{part(m.TextEncoders[0]), part(m.TextEncoders[1])},
		JointAttentionDim: cfg.JointAttentionDim,
	}
	if len(m.TextEncoders) == 3 {
		t5 := part(m.TextEncoders[2])
		opts.T5 = &t5
	}
	return opts
}

// VAEOptions are the frozen.VAEDecoder options of the export for latents of the given pixel
// size (height, width multiples of the VAE's scale factor).
func (m *Manifest) VAEOptions(rt onnxrt.Config, height, width int) (frozen.VAEOptions, error) {
	f := m.VAE.ScaleFactor
	if height <= 0 || width <= 0 || height%f != 0 || width%f != 0 {
		return frozen.VAEOptions{}, fmt.Errorf("SD3 export %s: image size %dx%d, want positive multiples of the VAE's scale factor %d", m.Dir, height, width, f)
	}
	return frozen.VAEOptions{
		Runtime:       rt,
		LatentShape:   []int{m.VAE.LatentChannels, height / f, width / f},
		ScalingFactor: m.VAE.ScalingFactor,
		ShiftFactor:   m.VAE.ShiftFactor,
	}, nil
}

// OpenTextEncoder opens the export's text encoders for a transformer of config cfg.
func (m *Manifest) OpenTextEncoder(rt onnxrt.Config, cfg mmdit.Config) (*frozen.SD3TextEncoder, error) {
	te, err := frozen.OpenSD3TextEncoder(m.TextEncoderOptions(rt, cfg))
	if err != nil {
		return nil, fmt.Errorf("SD3 export %s: %w", m.Dir, err)
	}
	if _, p := te.Dims(); p != cfg.PooledProjectionDim {
		te.Close()
		return nil, fmt.Errorf("SD3 export %s: CLIP projections give a pooled width of %d, the transformer's pooled_projection_dim is %d", m.Dir, p, cfg.PooledProjectionDim)
	}
	return te, nil
}

// OpenVAEDecoder opens the export's VAE decoder for images of height × width pixels.
func (m *Manifest) OpenVAEDecoder(rt onnxrt.Config, height, width, batch int) (*frozen.VAEDecoder, error) {
	opts, err := m.VAEOptions(rt, height, width)
	if err != nil {
		return nil, err
	}
	opts.BatchSize = batch
	return frozen.OpenVAEDecoder(m.Path(m.VAE.Decoder), opts)
}
