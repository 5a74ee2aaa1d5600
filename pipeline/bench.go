package pipeline

import (
	"context"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/gomlx/gomlx/backends"

	"github.com/densegrpo/densegrpo/rl"
)

// BenchVariant is one configuration measured by Bench: the config with Sets applied.
type BenchVariant struct {
	Name string
	Sets []string
}

// DefaultBenchVariants compare what the design promises: overlap against the same stages one
// after another, and dense rewards against sparse ones at the same batch.
var DefaultBenchVariants = []BenchVariant{
	{"dense overlapped", []string{"dense.enabled=true", "pipeline.overlap=true"}},
	{"dense sequential", []string{"dense.enabled=true", "pipeline.overlap=false"}},
	{"sparse overlapped", []string{"dense.enabled=false", "pipeline.overlap=true"}},
}

// BenchResult is the epoch wall time of every variant, measured round-robin.
type BenchResult struct {
	Variants []string
	// Seconds[v] are the wall times of variant v's measured epochs.
	Seconds [][]float64
	// CPU[v] are the process CPU seconds (all threads, user + system) of those epochs; empty
	// where the platform does not report them.
	CPU [][]float64
	// Stages[v] are the summed busy seconds per stage of variant v.
	Stages []map[string]float64
	// Images[v] is the number of images variant v decoded and scored in its measured epochs.
	Images []int
}

// Mean returns variant v's mean epoch wall time.
func (r BenchResult) Mean(v int) float64 {
	m, _ := rl.MeanStd(r.Seconds[v])
	return m
}

// BenchOptions are the choices of Bench.
type BenchOptions struct {
	Variants []BenchVariant
	// Epochs measured per variant, after one unmeasured warm-up epoch (graph compilation).
	Epochs  int
	Backend backends.Backend
	Log     io.Writer
}

// Bench measures the epoch wall time of each variant of cfg, each on its own policy and frozen
// models. Epochs run round-robin (variant 1, 2, 3, 1, 2, 3, …) so that a shared, noisy machine
// slows every variant alike; each variant trains its own adapters from the same start, so the
// work per epoch is the same as in a real run. Nothing is written to disk.
func Bench(ctx context.Context, cfgPath string, sets []string, opts BenchOptions) (BenchResult, error) {
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	variants := opts.Variants
	if len(variants) == 0 {
		variants = DefaultBenchVariants
	}
	cfgs := make([]Config, len(variants))
	for i, v := range variants {
		c, err := Load(cfgPath, append(append([]string{}, sets...), v.Sets...))
		if err != nil {
			return BenchResult{}, fmt.Errorf("bench variant %q: %w", v.Name, err)
		}
		cfgs[i] = c
	}
	res := BenchResult{Seconds: make([][]float64, len(variants)), CPU: make([][]float64, len(variants)),
		Stages: make([]map[string]float64, len(variants)), Images: make([]int, len(variants))}
	trainers := make([]*trainer, len(variants))
	for i, c := range cfgs {
		res.Variants = append(res.Variants, variants[i].Name)
		res.Stages[i] = map[string]float64{}
		// Each variant opens its own frozen models: a variant may change them (a reward's
		// concurrency or batch size, the ONNX threads), and sharing the first variant's
		// would measure that variant under another's settings.
		frozen, err := OpenFrozen(ctx, c)
		if err != nil {
			return res, fmt.Errorf("bench variant %q: %w", variants[i].Name, err)
		}
		defer frozen.Close()
		policy, err := NewPolicy(c, PolicyOptions{Backend: opts.Backend})
		if err != nil {
			return res, fmt.Errorf("bench variant %q: %w", variants[i].Name, err)
		}
		defer policy.Close()
		if trainers[i], err = newTrainer(ctx, c, policy, frozen); err != nil {
			return res, fmt.Errorf("bench variant %q: %w", variants[i].Name, err)
		}
		defer trainers[i].close()
	}
	for round := 0; round <= max(opts.Epochs, 1); round++ {
		for i, t := range trainers {
			start := time.Now()
			cpu0, cpuOK := processCPU()
			line, err := t.runEpoch(ctx)
			if err != nil {
				return res, fmt.Errorf("bench variant %q: %w", variants[i].Name, err)
			}
			wall := time.Since(start).Seconds()
			cpu1, _ := processCPU()
			if round == 0 {
				fmt.Fprintf(log, "%-20s warm-up epoch %.1fs\n", variants[i].Name, wall)
				continue
			}
			res.Seconds[i] = append(res.Seconds[i], wall)
			if cpuOK {
				res.CPU[i] = append(res.CPU[i], (cpu1 - cpu0).Seconds())
			}
			for s, v := range line.Train.StageSeconds {
				res.Stages[i][s] += v
			}
			res.Images[i] += line.Train.ScoredImages
			fmt.Fprintf(log, "%-20s epoch %d %.1fs\n", variants[i].Name, round, wall)
		}
	}
	return res, nil
}

// WriteTable prints each variant's mean epoch time, its ratio to the first variant, its mean
// CPU seconds per epoch and the cores they kept busy on average (CPU / wall: on 2 cores,
// overlap can gain at most 2 / cores of the sequential variant), the images it decoded and
// scored per epoch, and its mean busy seconds per stage.
func (r BenchResult) WriteTable(w io.Writer) {
	stageSet := map[string]bool{}
	for _, st := range r.Stages {
		for s := range st {
			stageSet[s] = true
		}
	}
	var stages []string
	for s := range stageSet {
		stages = append(stages, s)
	}
	sort.Strings(stages)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "variant\tepochs\tepoch s\t× first\tcpu s\tcores\timages")
	for _, s := range stages {
		fmt.Fprintf(tw, "\t%s s", s)
	}
	fmt.Fprintln(tw)
	for v, name := range r.Variants {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f", name, len(r.Seconds[v]), r.Mean(v), r.Mean(v)/r.Mean(0))
		if v < len(r.CPU) && len(r.CPU[v]) == len(r.Seconds[v]) && len(r.CPU[v]) > 0 {
			cpu, _ := rl.MeanStd(r.CPU[v])
			fmt.Fprintf(tw, "\t%.2f\t%.2f", cpu, cpu/r.Mean(v))
		} else {
			fmt.Fprint(tw, "\t-\t-")
		}
		if v < len(r.Images) {
			fmt.Fprintf(tw, "\t%d", r.Images[v]/max(1, len(r.Seconds[v])))
		} else {
			fmt.Fprint(tw, "\t-")
		}
		for _, s := range stages {
			fmt.Fprintf(tw, "\t%.2f", r.Stages[v][s]/float64(len(r.Seconds[v])))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}
