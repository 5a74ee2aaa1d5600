package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/densegrpo/densegrpo/internal/limitfile"
	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "compare-evals", summary: "compare evaluations prompt by prompt (files written by eval --json)", run: runCompareEvals})
}

// runCompareEvals compares each AFTER evaluation with BEFORE prompt by prompt. Evaluations
// with the same config, eval.prompts and run.seed see the same prompts and initial noise, so
// the paired difference is far less noisy than the difference of their means.
func runCompareEvals(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("compare-evals", "BEFORE.json AFTER.json…", out)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usageError("want BEFORE.json and at least one AFTER.json (written by eval --json), got %d files", len(pos))
	}
	before, err := readEvalJSON(pos[0])
	if err != nil {
		return err
	}
	for _, path := range pos[1:] {
		after, err := readEvalJSON(path)
		if err != nil {
			return err
		}
		change, err := pipeline.CompareEvals(before, after)
		if err != nil {
			return fmt.Errorf("compare %s with %s: %w", pos[0], path, err)
		}
		fmt.Fprintf(out, "%s (%.4f) → %s (%.4f): %s\n", pos[0], before.RewardMean, path, after.RewardMean, change)
	}
	return nil
}

// readEvalJSON reads a file written by eval --json.
func readEvalJSON(path string) (pipeline.EvalResult, error) {
	var r pipeline.EvalResult
	data, err := limitfile.Read(path, limitfile.Data, "the output of eval --json")
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("%s: not the output of eval --json: %w", path, err)
	}
	if len(r.Totals) == 0 || len(r.Totals) != len(r.Prompts) {
		return r, fmt.Errorf("%s: %d per-prompt totals for %d prompts, want one per prompt (the output of eval --json)", path, len(r.Totals), len(r.Prompts))
	}
	return r, nil
}
