package pipeline

import (
	"context"
	"fmt"
	"math"

	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rl"
)

// collector runs the data-collection stages of an epoch against one policy: rollout (SDE),
// look-ahead (ODE from every x_k, dense only), decode (ONNX VAE) and score (ONNX rewards).
type collector struct {
	cfg     Config
	policy  *Policy
	frozen  *Frozen
	sampler *rl.Sampler
	// inf runs rollouts and look-aheads; the trainer renews it for each epoch's weights.
	inf inference
	// ref, if not nil, computes the KL reference's velocities of the trained steps during the
	// rollout (Trajectories.VRef), so the training graph need not run the reference model.
	ref   *onnxPolicy
	sched rl.Schedule
	// need is the number of leading steps whose step reward ΔR_k is needed (the trained steps).
	need int
	// dense: look-ahead from every x_k; otherwise only the final images are scored.
	dense bool
}

// epochBatch is one rollout minibatch as it moves through the stages.
type epochBatch struct {
	prompts []string // the prompt of each conditioning row
	ids     []int    // the epoch-wide prompt index of each conditioning row (advantage groups)
	seed    uint64
	cond    rl.Conditioning
	traj    *rl.Trajectories
	// clean are the latents to decode: the look-ahead results of (sample, step) slots, then
	// every sample's own final latent (step = T).
	clean  [][]float32
	slots  []rl.Slot
	images []rewards.Image
	scores rewards.Scores
}

func (c *collector) stages(prompts []string, ids []int, perBatch int, seeds []uint64) stageFuncs[*epochBatch] {
	return stageFuncs[*epochBatch]{
		rollout: func(ctx context.Context, j int) (*epochBatch, error) {
			lo, hi := j*perBatch, min((j+1)*perBatch, len(prompts))
			b := &epochBatch{prompts: prompts[lo:hi], ids: ids[lo:hi], seed: seeds[j]}
			var err error
			if b.cond, err = c.policy.Condition(ctx, c.frozen.TextEncoder, b.prompts, Guidance(c.cfg)); err != nil {
				return nil, err
			}
			if b.traj, err = c.sampler.RolloutWith(ctx, b.cond, b.seed, c.inf.velocity); err != nil || c.ref == nil {
				return b, err
			}
			for k := range c.need {
				v, err := c.ref.Velocity(ctx, b.cond, b.traj.X[k], c.sched.Sigmas[k], b.traj.Prompts)
				if err != nil {
					return nil, fmt.Errorf("reference velocity at step %d: %w", k, err)
				}
				b.traj.VRef = append(b.traj.VRef, v)
			}
			return b, nil
		},
		lookahead: c.lookahead,
		decode: func(ctx context.Context, b *epochBatch) (err error) {
			b.images, err = c.frozen.Decode(ctx, b.clean)
			return err
		},
		score: func(ctx context.Context, b *epochBatch) (err error) {
			rp := make([]rewards.Prompt, len(b.slots))
			for j, s := range b.slots {
				rp[j] = rewards.Prompt{Text: b.prompts[b.traj.Prompts[s.Sample]]}
			}
			b.scores, err = c.frozen.Rewards.Score(ctx, b.images, rp)
			return err
		},
	}
}

// lookahead integrates the ODE from x_k of every sample for k = 0 … need (capped at T−1; x_T
// is already clean) when dense rewards are on, and appends every sample's final latent.
func (c *collector) lookahead(ctx context.Context, b *epochBatch) error {
	tr := b.traj
	steps, n, l := c.sched.Steps(), tr.Len(), tr.LatentSize()
	b.clean, b.slots = nil, nil
	if c.dense {
		paths, slots := rl.LookaheadPaths(tr, c.need, c.cfg.Dense.Lookahead)
		// Batches of n paths: the paths of one k have one length, so no batch is padded.
		clean, err := c.inf.ode.IntegrateODE(ctx, b.cond, paths, n)
		if err != nil {
			return err
		}
		b.clean, b.slots = clean, slots
	}
	for i := range n {
		b.clean = append(b.clean, tr.X[steps][i*l:(i+1)*l])
		b.slots = append(b.slots, rl.Slot{Sample: i, Step: steps})
	}
	return nil
}

// epochRewards are the rewards of an epoch's samples, in minibatch order.
type epochRewards struct {
	// R[i][k] is the reward of sample i's look-ahead from x_k (NaN where not computed), R[i][T]
	// its own final reward.
	R [][]float64
	// Delta[i][k] = R[i][k+1] − R[i][k] for the trained steps (dense only).
	Delta [][]float64
	// ByName[name][i] is each reward alone at the final image.
	ByName map[string][]float64
	// Group[i] is sample i's prompt index in the epoch.
	Group []int
}

// gatherRewards assembles the scored minibatches into per-sample rewards, checking that none
// is NaN or infinite.
func gatherRewards(batches []*epochBatch, steps, need int, dense bool) (epochRewards, error) {
	var out epochRewards
	out.ByName = map[string][]float64{}
	for _, b := range batches {
		base := len(out.R)
		for i := range b.traj.Len() {
			row := make([]float64, steps+1)
			for k := range row {
				row[k] = math.NaN()
			}
			out.R = append(out.R, row)
			out.Group = append(out.Group, b.ids[b.traj.Prompts[i]])
		}
		for j, s := range b.slots {
			v := b.scores.Total[j]
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return epochRewards{}, fmt.Errorf("reward of prompt %q is %v: %s", b.prompts[b.traj.Prompts[s.Sample]], v, badRewards(b.scores, j))
			}
			out.R[base+s.Sample][s.Step] = v
			if s.Step == steps {
				for _, name := range b.scores.Names {
					out.ByName[name] = append(out.ByName[name], b.scores.ByName[name][j])
				}
			}
		}
	}
	if dense {
		out.Delta = make([][]float64, len(out.R))
		for i, r := range out.R {
			out.Delta[i] = rl.StepRewards(r, need)
		}
	}
	return out, nil
}

// badRewards names the rewards that are not finite at image j.
func badRewards(s rewards.Scores, j int) string {
	var bad []string
	for _, name := range s.Names {
		if v := s.ByName[name][j]; math.IsNaN(v) || math.IsInf(v, 0) {
			bad = append(bad, fmt.Sprintf("reward %q gave %v", name, v))
		}
	}
	if len(bad) == 0 {
		return "the weighted total is not finite"
	}
	return fmt.Sprint(bad)
}

// Final returns each sample's own reward R_T.
func (r epochRewards) Final() []float64 {
	out := make([]float64, len(r.R))
	for i, row := range r.R {
		out[i] = row[len(row)-1]
	}
	return out
}

// denseStats returns, per trained step, the fraction of ΔR_k > 0 and the mean and std of ΔR_k.
func denseStats(delta [][]float64) (pos, mean, std []float64) {
	if len(delta) == 0 {
		return nil, nil, nil
	}
	steps := len(delta[0])
	pos, mean, std = make([]float64, steps), make([]float64, steps), make([]float64, steps)
	n := float64(len(delta))
	for k := range steps {
		var sum, sq float64
		for _, row := range delta {
			if row[k] > 0 {
				pos[k]++
			}
			sum += row[k]
		}
		mean[k] = sum / n
		for _, row := range delta {
			sq += (row[k] - mean[k]) * (row[k] - mean[k])
		}
		pos[k] /= n
		std[k] = math.Sqrt(sq / n)
	}
	return pos, mean, std
}
