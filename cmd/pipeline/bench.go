package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "bench", summary: "measure epoch wall time: overlap vs sequential, dense vs sparse", run: runBench})
}

func runBench(ctx context.Context, args []string, out io.Writer) (err error) {
	fs := newFlags("bench", "", out)
	config := fs.String("config", "", "training TOML (required)")
	epochs := fs.Int("epochs", 2, "measured epochs per variant (after one warm-up epoch each)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole benchmark to this file (go tool pprof)")
	var sets, variants setFlag
	fs.Var(&sets, "set", "override a config value for every variant, key=value (repeatable)")
	fs.Var(&variants, "variant", "a variant NAME:key=value,key=value (repeatable; default: dense overlapped, dense sequential, sparse overlapped)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *config == "" || *epochs < 1 {
		return usageError("want --config FILE, --epochs >= 1 and no other arguments")
	}
	var vs []pipeline.BenchVariant
	for _, v := range variants {
		name, list, ok := strings.Cut(v, ":")
		if !ok || name == "" {
			return usageError("--variant %q: want NAME:key=value,…", v)
		}
		vs = append(vs, pipeline.BenchVariant{Name: name, Sets: strings.Split(list, ",")})
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("cpu profile %s: %w", *cpuProfile, err)
		}
		// The profile is written when it stops; a failed close means it is incomplete.
		defer func() {
			pprof.StopCPUProfile()
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("cpu profile %s: %w", *cpuProfile, cerr)
			}
		}()
	}
	res, err := pipeline.Bench(ctx, *config, sets, pipeline.BenchOptions{Variants: vs, Epochs: *epochs, Log: out})
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	res.WriteTable(out)
	return nil
}
