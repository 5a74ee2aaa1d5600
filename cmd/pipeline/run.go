package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "run", summary: "train with DenseGRPO (Flow-GRPO with dense.enabled=false)", run: runRun})
	register(command{name: "calibrate", summary: "calibrate the per-step exploration noise ψ (DenseGRPO Algorithm 1)", run: runCalibrate})
}

// setFlag collects repeatable --set key=value overrides; every command that reads a config
// takes them through it.
type setFlag []string

func (s *setFlag) String() string     { return fmt.Sprint(*s) }
func (s *setFlag) Set(v string) error { *s = append(*s, v); return nil }

func runRun(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("run", "", out)
	config := fs.String("config", "", "training TOML")
	resume := fs.String("resume", "", "run directory to continue from its newest checkpoint (reads its config.toml)")
	var sets setFlag
	fs.Var(&sets, "set", "override a config value, key=value (repeatable), e.g. dense.enabled=false")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("unexpected arguments %v", pos)
	}
	var cfg pipeline.Config
	switch {
	case *resume != "" && *config != "":
		return usageError("--resume reads the run's own config.toml; give --config or --resume, not both")
	case *resume != "":
		cfg, err = pipeline.LoadRunConfig(*resume, sets)
		if err == nil {
			// The run directory is where it is, even if it was moved since.
			abs, aerr := filepath.Abs(*resume)
			if aerr != nil {
				return aerr
			}
			cfg.Run.OutDir, cfg.Run.Name = filepath.Dir(abs), filepath.Base(abs)
		}
	case *config != "":
		cfg, err = pipeline.Load(*config, sets)
	default:
		return usageError("--config (or --resume) is required")
	}
	if err != nil {
		return err
	}
	res, err := pipeline.Run(ctx, cfg, pipeline.RunOptions{Resume: *resume != "", Log: out})
	if err != nil {
		if errors.Is(err, context.Canceled) && res.Checkpoint != "" {
			fmt.Fprintf(out, "\nstopped; resume with: pipeline run --resume %s\n", res.Dir)
		}
		return err
	}
	if res.Finished != "" {
		fmt.Fprintln(out, res.Finished)
		return nil
	}
	fmt.Fprintf(out, "\nrun %s: %d epochs\n", res.Dir, res.Epochs)
	if res.EvalBefore != nil && res.EvalAfter != nil {
		fmt.Fprintf(out, "eval reward (ODE %d steps, %d test prompts): %.4f → %.4f (%+.4f)\n",
			cfg.Eval.Steps, res.EvalAfter.N, res.EvalBefore.RewardMean, res.EvalAfter.RewardMean,
			res.EvalAfter.RewardMean-res.EvalBefore.RewardMean)
		if change, err := pipeline.CompareEvals(*res.EvalBefore, *res.EvalAfter); err == nil {
			fmt.Fprintf(out, "prompt by prompt: %s\n", change)
			if s := change.Sigmas(); !math.IsNaN(s) && !math.IsInf(s, 0) {
				side := "above"
				if s < 0 {
					side = "below"
				}
				fmt.Fprintf(out, "the change is %.1f standard errors %s zero\n", math.Abs(s), side)
			}
		}
	}
	fmt.Fprintf(out, "report:  %s\nsamples: %s\ncheckpoint: %s\n", res.Report, filepath.Join(res.Dir, "samples"), res.Checkpoint)
	return nil
}

func runCalibrate(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("calibrate", "", out)
	config := fs.String("config", "", "training TOML (required)")
	psiOut := fs.String("out", "", "psi.json to write (default: RUN_DIR/psi.json)")
	var sets setFlag
	fs.Var(&sets, "set", "override a config value, key=value (repeatable)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *config == "" {
		return usageError("want --config FILE and no other arguments")
	}
	cfg, err := pipeline.Load(*config, sets)
	if err != nil {
		return err
	}
	path := *psiOut
	if path == "" {
		path = filepath.Join(pipeline.RunDir(cfg), "psi.json")
	}
	// sampler.psi resolves against the config's directory; an absolute path works anywhere.
	if path, err = filepath.Abs(path); err != nil {
		return err
	}
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return err
	}
	if _, err := pipeline.Calibrate(ctx, cfg, pipeline.CalibrateOptions{Out: path, Log: out}); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s; train with --set sampler.psi=%s\n", path, path)
	return nil
}

func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return nil
}
