package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "sample", summary: "draw images of prompts with the policy (ODE) into a labelled grid or a directory", run: runSample})
}

func runSample(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("sample", "", out)
	pf := addPolicyFlags(fs)
	var prompts []string
	fs.Func("prompt", "prompt to draw (repeatable)", func(s string) error {
		prompts = append(prompts, s)
		return nil
	})
	n := fs.Int("n", 1, "images per prompt")
	steps := fs.Int("steps", 0, "Euler ODE steps (default: the config's eval.steps, 40)")
	seed := fs.Int64("seed", 0, "noise seed: image k starts from noise seeded with (seed, k) (default: the config's run.seed)")
	outPath := fs.String("out", "", "x.png: one grid with each prompt under its image; dir/: one PNG per image (required)")
	cols := fs.Int("cols", 0, "grid columns (default: n, or 4 for a single image per prompt)")
	score := fs.Bool("score", false, "score the images with the config's rewards and add the reward to the labels")
	beforeAfter := fs.Bool("before-after", false, "with --lora or --checkpoint: draw every image also with the base model from the same noise, side by side (a .png grid)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("unexpected arguments %q", pos)
	}
	prompts = trimAll(prompts)
	if len(prompts) == 0 {
		return usageError("--prompt is required")
	}
	if *n < 1 || *steps < 0 {
		return usageError("-n %d, --steps %d: want n >= 1 and steps >= 1", *n, *steps)
	}
	toDir := strings.HasSuffix(*outPath, "/") || strings.HasSuffix(*outPath, string(filepath.Separator))
	if st, err := os.Stat(*outPath); err == nil && st.IsDir() {
		toDir = true
	}
	if *outPath == "" || (!toDir && !strings.EqualFold(filepath.Ext(*outPath), ".png")) {
		return usageError("--out %q: want a .png file (a grid) or a directory ending in / (one PNG per image)", *outPath)
	}
	if *beforeAfter && (toDir || (pf.lora == "" && pf.checkpoint == "")) {
		return usageError("--before-after wants --lora or --checkpoint (the after) and a .png --out")
	}
	seedSet := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "seed" {
			seedSet = true
		}
	})
	cfg, policy, desc, err := pf.load()
	if err != nil {
		return err
	}
	defer policy.Close()
	if !seedSet {
		*seed = cfg.Run.Seed
	}
	fmt.Fprintf(out, "policy: %s\nbackend: %s\n", desc, policy.BackendDesc)
	opts := pipeline.SampleOptions{Prompts: prompts, N: *n, Steps: *steps, Seed: *seed, Score: *score, Progress: os.Stderr}
	res, err := pipeline.Sample(ctx, cfg, policy, opts)
	if err != nil {
		return err
	}
	if *beforeAfter {
		opts.Base = true
		base, err := pipeline.Sample(ctx, cfg, policy, opts)
		if err != nil {
			return err
		}
		var before, after []float64
		if *score {
			before, after = base.Scores.Total, res.Scores.Total
		}
		if err := pipeline.WriteBeforeAfter(*outPath, res.Prompts, base.Images, res.Images, before, after); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s (%d images, each before and after)\n", *outPath, len(res.Images))
		return nil
	}
	labels := append([]string(nil), res.Prompts...)
	if res.Scores != nil {
		for i := range labels {
			labels[i] += fmt.Sprintf("\nreward %.3f", res.Scores.Total[i])
		}
	}
	if toDir {
		paths, err := pipeline.WriteImages(*outPath, res.Images, res.Prompts)
		if err != nil {
			return err
		}
		for i, p := range paths {
			line := p
			if res.Scores != nil {
				line += fmt.Sprintf("  reward %.4f", res.Scores.Total[i])
			}
			fmt.Fprintln(out, line)
		}
		return nil
	}
	c := *cols
	if c <= 0 {
		c = *n
		if *n == 1 {
			c = gridCols(len(res.Images))
		}
	}
	if err := pipeline.WriteGrid(*outPath, res.Images, labels, res.Prompts, c); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s (%d images)\n", *outPath, len(res.Images))
	return nil
}
