package pipeline

import (
	"context"
	"fmt"
	"math"

	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rl"
)

// collector runs the data-collection stages of an epoch against one policy: rollout (SDE or
// CPS), look-ahead (ODE from every x_k, dense only), decode (ONNX VAE) and score (ONNX
// rewards). The algorithm of each stage is rl's; the collector supplies the engines, the text
// encoder, the decoder and the reward models.
type collector struct {
	cfg     Config
	policy  *Policy
	frozen  *Frozen
	sampler *rl.Sampler
	// method is the dense/sparse choice, made once from the config (Config.Method).
	method rl.Method
	// engines make the flows; flow runs rollouts and look-aheads, renewed by the trainer for
	// each epoch's weights.
	engines   *engineSet
	flow      rl.Flow
	closeFlow func()
	// ref, if set (grpo.beta > 0), computes the KL reference's velocities of the trained steps
	// during the rollout (Trajectories.VRef), so the training graph need not run the reference
	// model.
	ref      *rl.Flow
	closeRef func()
}

// closeInference releases the epoch's flow, if any.
func (c *collector) closeInference() {
	if c.closeFlow != nil {
		c.closeFlow()
	}
	c.flow, c.closeFlow = rl.Flow{}, nil
}

// close releases the collector's engines.
func (c *collector) close() {
	c.closeInference()
	if c.closeRef != nil {
		c.closeRef()
	}
	c.ref, c.closeRef = nil, nil
}

// epochBatch is one rollout minibatch as it moves through the stages.
type epochBatch struct {
	prompts []rewards.Prompt // the prompt (text and metadata) of each conditioning row
	ids     []int            // the epoch-wide prompt index of each conditioning row (advantage groups)
	seed    uint64
	cond    rl.Conditioning
	traj    *rl.Trajectories
	// targets are the latents to decode and score (rl.Method.Targets).
	targets rl.Targets
	images  []rewards.Image
	scores  rewards.Scores
}

// stages are the epoch's stage functions; method is the collector's, with this epoch's audit
// choice (rl.Method.Audit).
func (c *collector) stages(method rl.Method, prompts []rewards.Prompt, ids []int, perBatch int, seeds []uint64) stageFuncs[*epochBatch] {
	return stageFuncs[*epochBatch]{
		rollout: func(ctx context.Context, j int) (*epochBatch, error) {
			lo, hi := j*perBatch, min((j+1)*perBatch, len(prompts))
			b := &epochBatch{prompts: prompts[lo:hi], ids: ids[lo:hi], seed: seeds[j]}
			var err error
			if b.cond, err = c.policy.Condition(ctx, c.frozen.TextEncoder, texts(b.prompts), Guidance(c.cfg)); err != nil {
				return nil, err
			}
			if b.traj, err = c.sampler.Rollout(ctx, c.flow, b.cond, b.seed); err != nil {
				return nil, err
			}
			if c.ref != nil {
				if err := b.traj.AddReference(ctx, *c.ref, b.cond, method.Trained); err != nil {
					return nil, err
				}
			}
			return b, nil
		},
		lookahead: func(ctx context.Context, b *epochBatch) (err error) {
			b.targets, err = method.Targets(ctx, c.flow, b.cond, b.traj)
			return err
		},
		decode: func(ctx context.Context, b *epochBatch) (err error) {
			b.images, err = c.frozen.Decode(ctx, b.targets.Latents)
			return err
		},
		score: func(ctx context.Context, b *epochBatch) (err error) {
			rp := make([]rewards.Prompt, len(b.targets.Slots))
			for j, s := range b.targets.Slots {
				rp[j] = b.prompts[b.traj.Prompts[s.Sample]]
			}
			b.scores, err = c.frozen.Rewards.Score(ctx, b.images, rp)
			return err
		},
	}
}

// epochRewards are the rewards of an epoch's samples, in minibatch order.
type epochRewards struct {
	rl.Rewards
	// ByName[name][i] is each reward alone at sample i's final image.
	ByName map[string][]float64
	// Scored is the number of images decoded and scored.
	Scored int
}

// gatherRewards assembles the scored minibatches into per-sample rewards (rl.Method.Rewards),
// first checking that no total is NaN or infinite, which is an error naming the prompt and the
// reward that gave it.
func gatherRewards(batches []*epochBatch, method rl.Method) (epochRewards, error) {
	out := epochRewards{ByName: map[string][]float64{}}
	scored := make([]rl.Scored, len(batches))
	for bi, b := range batches {
		steps := b.traj.Schedule.Steps()
		for j, s := range b.targets.Slots {
			if v := b.scores.Total[j]; math.IsNaN(v) || math.IsInf(v, 0) {
				return epochRewards{}, fmt.Errorf("reward of prompt %q is %v: %s", b.prompts[b.traj.Prompts[s.Sample]].Text, v, badRewards(b.scores, j))
			}
			if s.Step == steps {
				for _, name := range b.scores.Names {
					out.ByName[name] = append(out.ByName[name], b.scores.ByName[name][j])
				}
			}
		}
		scored[bi] = rl.Scored{Traj: b.traj, Slots: b.targets.Slots, Scores: b.scores.Total, Groups: b.ids, Queries: b.targets.Queries}
		out.Scored += len(b.targets.Slots)
	}
	var err error
	out.Rewards, err = method.Rewards(scored)
	return out, err
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
