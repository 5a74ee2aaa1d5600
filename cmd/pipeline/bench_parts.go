package main

import (
	"context"
	"io"
	"os"

	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "bench parts", summary: "time the parts of an epoch on command from stdin (the PyTorch comparison drives it)", run: runBenchParts})
}

func runBenchParts(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("bench parts", "", out)
	config := fs.String("config", "", "training TOML (required)")
	dump := fs.String("dump", "", "write the data of one rollout minibatch, the adapters, a velocity and the epoch's images to this safetensors file")
	var sets setFlag
	fs.Var(&sets, "set", "override a config value, key=value (repeatable)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *config == "" {
		return usageError("want --config FILE and no other arguments")
	}
	// Commands come on stdin, one JSON result per line goes to stdout; progress to stderr.
	return pipeline.BenchParts(ctx, *config, sets, pipeline.BenchPartsOptions{Dump: *dump, In: os.Stdin, Out: out, Log: os.Stderr})
}
