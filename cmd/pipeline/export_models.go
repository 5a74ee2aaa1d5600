package main

import (
	"context"
	"io"

	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "export-models", summary: "write every ONNX file a config names (tiny-ocr text encoder and VAE or an SD3 export, PP-OCRv4)", run: runExportModels})
}

func runExportModels(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("export-models", "", out)
	configPath := fs.String("config", "", "training TOML whose [text_encoder], [vae] and [[reward]] files are written (required)")
	var sets setFlag
	fs.Var(&sets, "set", "override a config value, key=value (repeatable)")
	teWeights := fs.String("text-encoder-weights", "", "tiny-ocr text encoder weights (default: "+pipeline.TextEncoderWeightsFile+" beside model.weights)")
	vaeWeights := fs.String("vae-weights", "", "tiny-ocr VAE weights (default: "+pipeline.VAEWeightsFile+" beside model.weights)")
	python := fs.String("python", "", "Python that runs exporters/sd3 for model.snapshot (default: the repository's .venv/bin/python)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("unexpected arguments %q", pos)
	}
	if *configPath == "" {
		return usageError("--config is required")
	}
	cfg, err := pipeline.Load(*configPath, sets)
	if err != nil {
		return err
	}
	return pipeline.ExportModels(ctx, cfg, pipeline.ExportOptions{TextEncoderWeights: *teWeights, VAEWeights: *vaeWeights, Python: *python, Log: out})
}
