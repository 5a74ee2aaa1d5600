package main

import (
	"context"
	"fmt"
	"io"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "export-lora", summary: "write a run's EMA adapters as a PEFT adapter folder (eval/sample --lora, peft's PeftModel.from_pretrained)", run: runExportLoRA})
}

func runExportLoRA(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("export-lora", "", out)
	run := fs.String("run", "", "run directory: its newest checkpoint is exported")
	ckpt := fs.String("checkpoint", "", "run checkpoint directory (RUN/checkpoints/epoch-N) to export instead of the newest")
	dir := fs.String("out", "", "adapter folder to write: "+mmdit.PEFTAdapterModel+", "+mmdit.PEFTAdapterConfig+", "+pipeline.AdapterInfoFile+" (required)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("unexpected arguments %q", pos)
	}
	if (*run == "") == (*ckpt == "") || *dir == "" {
		return usageError("want --out DIR and one of --run RUN_DIR or --checkpoint CHECKPOINT_DIR")
	}
	src := *run + *ckpt
	info, err := pipeline.ExportLoRA(src, *dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s: EMA adapters of %s %s (%s + %s, seed %d, epoch %d, %d samples), LoRA r %d, alpha %g\n",
		*dir, info.Run, info.Checkpoint, info.Method, info.Sampler, info.Seed, info.Epoch, info.Samples, info.Rank, info.Alpha)
	fmt.Fprintf(out, "evaluate with: pipeline eval --config CONFIG --lora %s\n", *dir)
	return nil
}
