package pipeline

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/densegrpo/densegrpo/pipeline/progress"
	"github.com/densegrpo/densegrpo/pipeline/promptfile"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rl"
)

// loadPrompts reads a prompt file: text, or JSON Lines with per-prompt metadata. key names the
// config field in errors.
func loadPrompts(path, key string) (promptfile.File, error) {
	f, err := promptfile.Load(path)
	if err != nil {
		return f, fmt.Errorf("%s: %w", key, err)
	}
	return f, nil
}

// checkPrompts asks the rewards that read prompt metadata whether they can score every prompt
// (where names prompt i in errors), so a prompt they could not score fails before any image is
// generated.
func checkPrompts(prompts []rewards.Prompt, where func(i int) string, sets ...*rewards.Set) error {
	for i, p := range prompts {
		for _, set := range sets {
			if err := set.CheckPrompt(p); err != nil {
				return fmt.Errorf("%s: %w", where(i), err)
			}
		}
	}
	return nil
}

// promptsAt names prompt i of a file as "KEY: PATH:LINE".
func promptsAt(key string, f promptfile.File) func(int) string {
	return func(i int) string { return key + ": " + f.Where(i) }
}

// texts lists the prompts' texts.
func texts(prompts []rewards.Prompt) []string {
	out := make([]string, len(prompts))
	for i, p := range prompts {
		out[i] = p.Text
	}
	return out
}

// generator runs the deterministic Euler ODE of a policy and decodes the clean latents.
type generator struct {
	policy *Policy
	frozen *Frozen
	flow   rl.Flow
	close  func()
	sched  rl.Schedule
	batch  int
	seed   int64
}

// newGenerator makes the ODE sampler of the policy: with its adapters, or (base) the base model
// alone.
func newGenerator(cfg Config, policy *Policy, f *Frozen, steps, batch int, seed int64, base bool) (*generator, error) {
	if err := policy.Check(f.TextEncoder, f.VAE); err != nil {
		return nil, err
	}
	sched, err := rl.SD3Schedule(steps, cfg.Sampler.Shift)
	if err != nil {
		return nil, err
	}
	engines := &engineSet{cfg: cfg, policy: policy, latent: f.VAE.LatentShape()}
	flow, closeFlow, err := engines.flow(!base)
	if err != nil {
		return nil, err
	}
	return &generator{policy: policy, frozen: f, flow: flow, close: closeFlow, sched: sched, batch: batch, seed: seed}, nil
}

// run generates image first+j for prompts[j], j = 0…len(prompts)−1 (len(prompts) <= batch).
// Every run has exactly the generator's batch size (the prompts are padded by repeating the
// last one), so a GoMLX engine compiles one graph.
func (g *generator) run(ctx context.Context, prompts []string, first int) ([]rewards.Image, error) {
	padded := make([]string, g.batch)
	ids := make([]int, g.batch)
	for j := range padded {
		padded[j] = prompts[min(j, len(prompts)-1)]
		ids[j] = first + min(j, len(prompts)-1)
	}
	cond, err := g.policy.Condition(ctx, g.frozen.TextEncoder, padded, g.flow.Guidance)
	if err != nil {
		return nil, err
	}
	ls := g.frozen.VAE.LatentShape()
	latents, err := g.flow.SampleODE(ctx, cond, g.sched, g.seed, ids, ls[0]*ls[1]*ls[2])
	if err != nil {
		return nil, err
	}
	return g.frozen.Decode(ctx, latents[:len(prompts)])
}

// EvalOptions are the choices of Evaluate that are not in the config.
type EvalOptions struct {
	// Frozen are the opened text encoder, VAE and rewards; nil opens them from the config
	// and closes them at the end.
	Frozen *Frozen
	// Prompts, if not nil, replace the test prompts of the config.
	Prompts []rewards.Prompt
	// KeepImages keeps the decoded images in the result (for a grid).
	KeepImages bool
	// Base evaluates the base model (the adapters switched off) instead of the policy.
	Base bool
	// Progress receives a progress bar (nil: none).
	Progress io.Writer
	// Log, if not nil, is told when a remote reward of the frozen models Evaluate opens waits
	// for its server (each retry, then the answer), as a run's log is.
	Log io.Writer
}

// EvalResult is one evaluation: the mean rewards over N test prompts.
type EvalResult struct {
	N int `json:"n"`
	// RewardMean is the mean weighted total reward.
	RewardMean float64 `json:"eval_reward_mean"`
	// Rewards is the mean of each reward alone.
	Rewards map[string]float64 `json:"rewards"`
	// Extra is the mean of each secondary metric ("ocr.exact", ...).
	Extra map[string]float64 `json:"-"`
	// Prompts, Totals (the weighted total of each image) and, with KeepImages, Images are per
	// image, in prompt order. Per-image totals let two evaluations with the same seed be
	// compared prompt by prompt (a paired difference is far less noisy than two means).
	Prompts []string        `json:"prompts"`
	Totals  []float64       `json:"totals"`
	Images  []rewards.Image `json:"-"`
	// HeldoutMean is the mean weighted total of the held-out rewards ([[eval.reward]]) and
	// Heldout each of them (and their extra metrics) alone; nil without held-out rewards.
	HeldoutMean *float64           `json:"eval_heldout_mean,omitempty"`
	Heldout     map[string]float64 `json:"heldout,omitempty"`
}

// Evaluate samples one image per test prompt (cfg.Prompts.Test, the first cfg.Eval.Prompts of
// them, 0 = all) with the deterministic Euler ODE over the SD3 schedule of cfg.Eval.Steps steps
// (shift cfg.Sampler.Shift), in batches of cfg.Eval.BatchSize, decodes them with the VAE and
// scores them with the rewards. Prompt i's initial noise is rl.InitialNoise(cfg.Run.Seed, i, …),
// so evaluations before and after training see the same noise, whatever the batch size.
func Evaluate(ctx context.Context, cfg Config, policy *Policy, opts EvalOptions) (EvalResult, error) {
	prompts := opts.Prompts
	where := func(i int) string { return fmt.Sprintf("prompt %d", i) }
	if prompts == nil {
		file, err := loadPrompts(cfg.Resolve(cfg.Prompts.Test), "prompts.test")
		if err != nil {
			return EvalResult{}, fmt.Errorf("evaluate: %w", err)
		}
		prompts, where = file.Prompts, promptsAt("prompts.test", file)
		if n := cfg.Eval.Prompts; n > 0 && n < len(prompts) {
			prompts = prompts[:n]
		}
	}
	if len(prompts) == 0 {
		return EvalResult{}, fmt.Errorf("evaluate: no prompts")
	}
	f := opts.Frozen
	if f == nil {
		var err error
		if f, err = OpenFrozen(ctx, cfg); err != nil {
			return EvalResult{}, fmt.Errorf("evaluate: %w", err)
		}
		defer f.Close()
		if opts.Log != nil {
			f.LogRetries(opts.Log)
		}
	}
	sets := []*rewards.Set{f.Rewards}
	if f.Heldout != nil {
		sets = append(sets, f.Heldout)
	}
	if err := checkPrompts(prompts, where, sets...); err != nil {
		return EvalResult{}, fmt.Errorf("evaluate: %w", err)
	}
	gen, err := newGenerator(cfg, policy, f, cfg.Eval.Steps, min(cfg.Eval.BatchSize, len(prompts)), cfg.Run.Seed, opts.Base)
	if err != nil {
		return EvalResult{}, fmt.Errorf("evaluate: %w", err)
	}
	defer gen.close()
	var bar *progress.Bar
	if opts.Progress != nil {
		bar = progress.New(opts.Progress, "eval", len(prompts))
		defer bar.Done()
	}
	res := EvalResult{N: len(prompts), Rewards: map[string]float64{}, Extra: map[string]float64{}, Prompts: texts(prompts)}
	var sum, heldoutSum float64
	if f.Heldout != nil {
		res.Heldout = map[string]float64{}
	}
	for lo := 0; lo < len(prompts); lo += gen.batch {
		hi := min(lo+gen.batch, len(prompts))
		imgs, err := gen.run(ctx, texts(prompts[lo:hi]), lo)
		if err != nil {
			return EvalResult{}, fmt.Errorf("evaluate prompts %d..%d: %w", lo, hi-1, err)
		}
		scores, err := f.Rewards.Score(ctx, imgs, prompts[lo:hi])
		if err != nil {
			return EvalResult{}, fmt.Errorf("evaluate prompts %d..%d: %w", lo, hi-1, err)
		}
		for _, v := range scores.Total {
			sum += v
		}
		res.Totals = append(res.Totals, scores.Total...)
		for name, vs := range scores.ByName {
			for _, v := range vs {
				res.Rewards[name] += v
			}
		}
		for name, vs := range scores.Extra {
			for _, v := range vs {
				res.Extra[name] += v
			}
		}
		if f.Heldout != nil {
			// The same images, judged by rewards the policy never trains on.
			held, err := f.Heldout.Score(ctx, imgs, prompts[lo:hi])
			if err != nil {
				return EvalResult{}, fmt.Errorf("evaluate prompts %d..%d: held-out: %w", lo, hi-1, err)
			}
			for _, v := range held.Total {
				heldoutSum += v
			}
			for _, m := range []map[string][]float64{held.ByName, held.Extra} {
				for name, vs := range m {
					for _, v := range vs {
						res.Heldout[name] += v
					}
				}
			}
		}
		if opts.KeepImages {
			res.Images = append(res.Images, imgs...)
		}
		if bar != nil {
			bar.Add(len(imgs))
			bar.SetSuffix(fmt.Sprintf("reward %.4f", sum/float64(hi)))
		}
	}
	n := float64(len(prompts))
	res.RewardMean = sum / n
	for name := range res.Rewards {
		res.Rewards[name] /= n
	}
	for name := range res.Extra {
		res.Extra[name] /= n
	}
	if f.Heldout != nil {
		mean := heldoutSum / n
		res.HeldoutMean = &mean
		for name := range res.Heldout {
			res.Heldout[name] /= n
		}
	}
	return res, nil
}

// Summary formats r on one line: "n=400 eval_reward_mean=0.6123 ocr=0.6123 ocr.exact=0.41",
// then, with held-out rewards, "eval_heldout_mean=0.55 heldout/judge=0.55 …".
func (r EvalResult) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "n=%d eval_reward_mean=%.4f", r.N, r.RewardMean)
	put := func(m map[string]float64, prefix string) {
		names := make([]string, 0, len(m))
		for name := range m {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			fmt.Fprintf(&b, " %s%s=%.4f", prefix, name, m[name])
		}
	}
	put(r.Rewards, "")
	put(r.Extra, "")
	if r.HeldoutMean != nil {
		fmt.Fprintf(&b, " eval_heldout_mean=%.4f", *r.HeldoutMean)
		put(r.Heldout, "heldout/")
	}
	return b.String()
}

// EvalChange compares two evaluations of the same prompts with the same initial noise (before
// and after training) prompt by prompt: runfiles.Change.
type EvalChange = runfiles.Change

// CompareEvals pairs before and after prompt by prompt. It needs the per-prompt totals of both,
// for the same number of prompts, at least two; where both list their prompts (a run's restored
// base evaluation has totals only), the lists must be equal, or the pairs would mean nothing.
func CompareEvals(before, after EvalResult) (EvalChange, error) {
	if len(before.Prompts) > 0 && len(after.Prompts) > 0 && len(before.Totals) == len(after.Totals) && !slices.Equal(before.Prompts, after.Prompts) {
		return EvalChange{}, fmt.Errorf("compare evaluations: %d and %d prompts that differ; want evaluations of the same prompts (same config and eval.prompts)",
			len(before.Prompts), len(after.Prompts))
	}
	return runfiles.Paired(before.Totals, after.Totals)
}
