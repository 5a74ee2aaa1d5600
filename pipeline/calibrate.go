package pipeline

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/gomlx/gomlx/backends"

	"github.com/densegrpo/densegrpo/pipeline/runfiles"
	"github.com/densegrpo/densegrpo/rl"
)

// CalibrateOptions are the choices of Calibrate that are not in the config.
type CalibrateOptions struct {
	// Out is the psi.json to write.
	Out string
	// Log receives one line per round (nil: discarded).
	Log io.Writer
	// Backend, if not nil, replaces the config's GoMLX backend.
	Backend backends.Backend
}

// Calibrate runs DenseGRPO's exploration-space calibration (Algorithm 1) on the base model:
// each round samples calibrate.trajectories trajectories, one per training prompt, with the
// current ψ, computes their step rewards ΔR_k by ODE look-ahead, and moves ψ(k) up where the
// signs of ΔR_k are balanced and down where they are one-sided. ψ is written to opts.Out for
// training to read through sampler.psi.
func Calibrate(ctx context.Context, cfg Config, opts CalibrateOptions) (rl.Calibration, error) {
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	if cfg.Sampler.Kind != rl.KindSDE {
		return rl.Calibration{}, fmt.Errorf("calibrate: sampler.kind is %q; ψ calibrates the Flow-SDE (\"sde\")", cfg.Sampler.Kind)
	}
	frozen, err := OpenFrozen(ctx, cfg)
	if err != nil {
		return rl.Calibration{}, err
	}
	defer frozen.Close()
	policy, err := NewPolicy(cfg, PolicyOptions{Backend: opts.Backend})
	if err != nil {
		return rl.Calibration{}, err
	}
	defer policy.Close()
	if err := policy.Check(frozen.TextEncoder, frozen.VAE); err != nil {
		return rl.Calibration{}, err
	}
	// One trajectory per prompt, ΔR_k at every step.
	cal := cfg
	cal.Sampler.GroupSize = 1
	cal.Sampler.Psi = ""
	cal.Prompts.PerEpoch = cfg.Calibrate.Trajectories
	cal.GRPO.TimestepFraction = 1
	cal.Dense.Enabled = true // ΔR_k at every step, whatever the training config says
	// Every state scored, whatever dense.queries says: calibration balances the signs of ΔR_k,
	// which a predicted reward can flip (metrics query_delta_sign count how often), so ψ would
	// be fitted to the prediction's errors; and it runs once, offline, so its cost is not the
	// training loop's.
	cal.Dense.Queries = 0
	cal.GRPO.Beta = 0 // calibration does not train, so needs no KL reference
	t, err := newTrainer(ctx, cal, policy, frozen)
	if err != nil {
		return rl.Calibration{}, err
	}
	defer t.close()
	sched := t.col.sampler.Schedule()
	ccfg := rl.CalibrateConfig{Iterations: cfg.Calibrate.Iterations, NoiseLevel: cfg.Sampler.NoiseLevel,
		Eps1: cfg.Calibrate.Epsilon1, Eps2: cfg.Calibrate.Epsilon2}
	deltas := func(ctx context.Context, iteration int, psi []float32) ([][]float64, error) {
		if err := t.col.sampler.SetPsi(psi); err != nil {
			return nil, err
		}
		c, err := t.collect(ctx)
		if err != nil {
			return nil, fmt.Errorf("calibration round %d: %w", iteration+1, err)
		}
		mean, _ := rl.MeanStd(c.rewards.Final())
		fmt.Fprintf(log, "round %d: reward %.4f\n", iteration+1, mean)
		return c.rewards.Delta, nil
	}
	res, err := rl.Calibrate(ctx, sched, ccfg, deltas)
	if err != nil {
		return rl.Calibration{}, err
	}
	f := runfiles.Psi{Sigmas: sched.Sigmas, Start: sched.InitialPsi(cfg.Sampler.NoiseLevel), Psi: res.Psi, NoiseLevel: cfg.Sampler.NoiseLevel}
	for i, r := range res.Rounds {
		f.Iterations = append(f.Iterations, runfiles.PsiIteration{Iteration: i + 1, Psi: r.Psi, Pos: r.Positive, Neg: r.Negative})
	}
	if err := runfiles.WritePsi(opts.Out, &f); err != nil {
		return rl.Calibration{}, err
	}
	writePsiTable(log, f)
	return res, nil
}

// writePsiTable prints ψ per step with the sign counts of the last round.
func writePsiTable(w io.Writer, f runfiles.Psi) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "k\tσ_k\tψ start\tψ\t#ΔR>0\t#ΔR<0\t")
	last := f.Iterations[len(f.Iterations)-1]
	for k := range f.Psi {
		fmt.Fprintf(tw, "%d\t%.4f\t%.4f\t%.4f\t%d\t%d\t\n", k, f.Sigmas[k], f.Start[k], f.Psi[k], last.Pos[k], last.Neg[k])
	}
	tw.Flush()
}
