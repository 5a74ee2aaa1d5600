package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	exptinyocr "github.com/densegrpo/densegrpo/exporters/tinyocr"
	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// Weight files of the tiny-ocr frozen parts, next to the transformer's weights by default.
const (
	TextEncoderWeightsFile = "text_encoder.safetensors"
	VAEWeightsFile         = "vae.safetensors"
)

// setupCacheOCR are the files scripts/setup.sh puts in .cache/ocr/; a reward path with one of
// these names is copied from there.
var setupCacheOCR = []string{"ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ppocr_keys_v1.txt"}

// ExportOptions are the choices of ExportModels that are not in the config.
type ExportOptions struct {
	// TextEncoderWeights and VAEWeights are the tiny-ocr weight files of the frozen parts;
	// "" means TextEncoderWeightsFile and VAEWeightsFile beside model.weights.
	TextEncoderWeights, VAEWeights string
	// Log receives one line per file (nil: discarded).
	Log io.Writer
	// Python runs the SD3 exporter when model.snapshot must be exported; "" = the
	// repository's .venv/bin/python.
	Python string
}

// ExportModels writes every ONNX file cfg names (`pipeline export-models`): the tiny-ocr text
// encoder and VAE decoder from their weights (a file whose weights are absent is kept if it
// exists) or, with model.diffusers, an SD3 export (exportSD3); the PP-OCRv4 files of the
// rewards from the setup cache; then it opens them all as a run would, checking their declared
// tensors.
func ExportModels(ctx context.Context, cfg Config, opts ExportOptions) error {
	out := opts.Log
	if out == nil {
		out = io.Discard
	}
	if cfg.Model.Diffusers != "" {
		if err := exportSD3(ctx, cfg, opts, out); err != nil {
			return err
		}
	} else if err := exportTiny(cfg, opts, out); err != nil {
		return err
	}
	for _, r := range cfg.Rewards {
		for _, p := range []string{r.Model, r.ImageModel, r.TextModel, r.Detector, r.Keys, r.Classes, r.Text.Vocab, r.Text.Merges} {
			if p == "" {
				continue
			}
			if err := exportRewardFile(out, r.Name, p); err != nil {
				return err
			}
		}
	}
	// Every file now exists: open them as a run would, checking their declared tensors.
	f, err := OpenFrozen(ctx, cfg)
	if err != nil {
		return fmt.Errorf("check exported models: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(out, "checked: text encoder, VAE decoder and %d reward(s) open with the declared tensors\n", len(cfg.Rewards))
	return nil
}

// exportTiny writes the tiny-ocr text encoder and VAE decoder graphs from their weights.
func exportTiny(cfg Config, opts ExportOptions, out io.Writer) error {
	weightsDir := filepath.Dir(cfg.Resolve(cfg.Model.Weights))
	teWeights, vaeWeights := opts.TextEncoderWeights, opts.VAEWeights
	if teWeights == "" {
		teWeights = filepath.Join(weightsDir, TextEncoderWeightsFile)
	}
	if vaeWeights == "" {
		vaeWeights = filepath.Join(weightsDir, VAEWeightsFile)
	}

	te := cfg.Resolve(cfg.TextEncoder.Model)
	if err := exportFrom(out, te, teWeights, "text encoder", func() ([]byte, error) {
		ts, _, err := tinyocr.ReadTextEncoder(teWeights, tinyocr.TextEncoderPrefix)
		if err != nil {
			return nil, err
		}
		m, err := exptinyocr.TextEncoderModel(ts, tinyocr.TextEncoderPrefix)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", teWeights, err)
		}
		return m.Marshal()
	}); err != nil {
		return err
	}
	vae := cfg.Resolve(cfg.VAE.Decoder)
	return exportFrom(out, vae, vaeWeights, "VAE decoder", func() ([]byte, error) {
		w, err := tinyocr.ReadVAE(vaeWeights)
		if err != nil {
			return nil, err
		}
		m, err := exptinyocr.VAEDecoderModel(w)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", vaeWeights, err)
		}
		return m.Marshal()
	})
}

// exportFrom writes the ONNX file target built by build from the weight file source. Without
// the weights an existing target is kept (it may come from elsewhere, e.g. a Python exporter);
// a missing one is an error.
func exportFrom(out io.Writer, target, source, what string, build func() ([]byte, error)) error {
	if _, err := os.Stat(source); err != nil {
		if _, terr := os.Stat(target); terr == nil {
			fmt.Fprintf(out, "kept %s (no tiny-ocr weights at %s)\n", target, source)
			return nil
		}
		return fmt.Errorf("export %s %s: weights %s: %w", what, target, source, err)
	}
	data, err := build()
	if err != nil {
		return fmt.Errorf("export %s %s: %w", what, target, err)
	}
	return install(out, target, data)
}

// exportRewardFile copies a PP-OCRv4 file from the setup cache to path; any other reward file
// must already exist.
func exportRewardFile(out io.Writer, reward, path string) error {
	base := filepath.Base(path)
	for _, name := range setupCacheOCR {
		if name != base {
			continue
		}
		src, err := onnxrt.FindCached(filepath.Join("ocr", name))
		if err != nil {
			return fmt.Errorf("export reward %q file %s: %w", reward, path, err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("export reward %q file %s: %w", reward, path, err)
		}
		return install(out, path, data)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("export reward %q: %s: %w (export-models only writes the tiny-ocr and PP-OCRv4 files; provide this one)", reward, path, err)
	}
	fmt.Fprintf(out, "kept %s (reward %q)\n", path, reward)
	return nil
}

// install writes data to path unless it already holds exactly data, atomically (see
// internal/atomicfile), so a reader never sees a partial file.
func install(out io.Writer, path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		fmt.Fprintf(out, "up to date %s\n", path)
		return nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("install %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	if err := atomicfile.WriteBytes(path, data); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	fmt.Fprintf(out, "wrote %s (%d bytes)\n", path, len(data))
	return nil
}
