package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/densegrpo/densegrpo/pipeline/pretrain"
	"github.com/densegrpo/densegrpo/pipeline/progress"
)

func init() {
	register(command{name: "pretrain", summary: "pretrain the tiny-ocr transformer and text encoder by flow matching", run: runPretrain})
}

func runPretrain(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("pretrain", "", out)
	configPath := fs.String("config", "configs/pretrain-tiny.toml", "pretraining config (TOML)")
	resume := fs.Bool("resume", false, "continue from the newest checkpoint in the output dir")
	export := fs.String("export-checkpoint", "", "write the final weight files of the output dir from this checkpoint directory (an earlier step of a run) instead of training")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("unexpected arguments %q", pos)
	}
	cfg, err := pretrain.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	if *export != "" {
		if *resume {
			return usageError("--export-checkpoint and --resume exclude each other")
		}
		res, err := pretrain.Export(cfg, *export, pretrain.Options{})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "exported step %d of %s\ntransformer  %s\ntext encoder %s\n", res.Steps, res.Checkpoint, res.Transformer, res.TextEncoder)
		return nil
	}
	opts := pretrain.Options{Resume: *resume, Progress: out}
	if !progress.IsTerminal(out) {
		// Off a terminal the bar only prints its final line; a log gets a line per window.
		opts.Log = out
	}
	fmt.Fprintf(out, "pretrain %s: %d steps of batch %d (time budget %q), output %s\n",
		*configPath, cfg.Train.Steps, cfg.Train.BatchSize, cfg.Train.TimeBudget, cfg.Output.Dir)
	res, err := pretrain.Run(ctx, cfg, opts)
	if err != nil {
		if errors.Is(err, context.Canceled) && res.Checkpoint != "" {
			fmt.Fprintf(out, "interrupted after step %d; checkpoint %s\n", res.Steps, res.Checkpoint)
		}
		return err
	}
	fmt.Fprintf(out, "stopped by %s after step %d: loss %.4f, %.3f steps/s\ntransformer  %s\ntext encoder %s\ncheckpoint   %s\n",
		res.Stopped, res.Steps, res.LastLoss, res.StepsPerSecond, res.Transformer, res.TextEncoder, res.Checkpoint)
	return nil
}
