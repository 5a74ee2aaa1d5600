package rl

import (
	"context"
	"fmt"
	"math"
)

// Scorer turns clean latents into rewards: the pipeline implements it by decoding with the ONNX
// VAE and scoring with the ONNX reward models. prompts[i] identifies latents[i]'s prompt (the
// value passed to DenseRewards as rowIDs, or the conditioning row). It returns one reward per
// latent.
type Scorer interface {
	Score(ctx context.Context, latents []Latent, prompts []int) ([]float64, error)
}

// DenseConfig configures the look-ahead of dense rewards.
type DenseConfig struct {
	// Lookahead caps the number of ODE steps of each look-ahead; 0 means the remaining steps of
	// the schedule (the DenseGRPO default). With a cap n smaller than the T−k remaining steps,
	// the look-ahead from x_k visits n+1 sigmas of the remaining schedule, evenly spread by index
	// (σ_k, …, σ_T); n = 1 is the one-step prediction x̂0 = x_k − σ_k·v.
	Lookahead int
	// Steps is the number of leading steps that need ΔR_k (the trained steps); 0 means all T.
	// Look-aheads are run from x_0 … x_{Steps} only (x_T is scored directly).
	Steps int
	// Batch is the number of look-ahead paths per graph call; 0 means the number of samples.
	Batch int
}

// DenseRewards holds R_k and ΔR_k of every sample.
type DenseRewards struct {
	// R[i][k] is the reward of sample i's look-ahead from x_k, k = 0 … Steps; R[i][T] is the
	// sample's own final reward (R has T+1 entries; entries Steps+1 … T−1 that were not needed are
	// NaN).
	R [][]float64
	// Delta[i][k] = R[i][k+1] − R[i][k] for k = 0 … Steps−1.
	Delta [][]float64
}

// Final returns each sample's own reward R_T.
func (d DenseRewards) Final() []float64 {
	out := make([]float64, len(d.R))
	for i, r := range d.R {
		out[i] = r[len(r)-1]
	}
	return out
}

// LookaheadSigmas returns the sigmas a look-ahead from x_k visits: all of σ_k … σ_T, or, with a
// cap n < T−k, the n+1 sigmas at indices k + round(j·(T−k)/n), j = 0 … n.
func LookaheadSigmas(sched Schedule, k, lookahead int) []float32 {
	steps := sched.Steps()
	remaining := steps - k
	if lookahead <= 0 || lookahead >= remaining {
		return append([]float32(nil), sched.Sigmas[k:]...)
	}
	out := make([]float32, lookahead+1)
	for j := range out {
		idx := k + int(math.Round(float64(j*remaining)/float64(lookahead)))
		out[j] = sched.Sigmas[idx]
	}
	return out
}

// Slot names the look-ahead of sample Sample from state x_Step.
type Slot struct{ Sample, Step int }

// LookaheadPaths returns the ODE look-aheads dense rewards need from the rollouts tr: one per
// sample i and state x_k, k = 0 … need (capped at T−1: x_T is already clean), along
// LookaheadSigmas(k, lookahead), grouped by k. The first Euler step of each is taken here with
// the velocity the rollout already computed at x_k (tr.V), so a path starts at its second sigma
// and a one-step look-ahead (the x̂0 prediction, and every path from x_{T−1}) needs no model call.
func LookaheadPaths(tr *Trajectories, need, lookahead int) ([]ODEPath, []Slot) {
	steps, b, l := tr.Schedule.Steps(), tr.Len(), tr.LatentSize()
	var paths []ODEPath
	var slots []Slot
	for k := 0; k <= min(need, steps-1); k++ {
		sigmas := LookaheadSigmas(tr.Schedule, k, lookahead)
		dt := sigmas[1] - sigmas[0]
		for i := range b {
			x, v := tr.X[k][i*l:(i+1)*l], tr.V[k][i*l:(i+1)*l]
			next := make([]float32, l)
			for e := range next {
				next[e] = x[e] + v[e]*dt
			}
			paths = append(paths, ODEPath{Prompt: tr.Prompts[i], X: next, Sigmas: sigmas[1:]})
			slots = append(slots, Slot{i, k})
		}
	}
	return paths, slots
}

// ComputeDenseRewards computes DenseGRPO's step rewards for the rollouts tr: for each sample i and
// each needed state k < T, a deterministic ODE from x_k to a clean latent (all these paths batched
// together, see Sampler.IntegrateODE), scored by scorer; R at x_T is the sample's own reward; and
// ΔR_k = R_{k+1} − R_k. rowIDs maps a conditioning row to the prompt identity passed to the
// scorer (nil: the row itself). c must be the conditioning tr was sampled with.
func ComputeDenseRewards(ctx context.Context, s *Sampler, c Conditioning, tr *Trajectories, scorer Scorer, rowIDs []int, cfg DenseConfig) (DenseRewards, error) {
	steps, b := tr.Schedule.Steps(), tr.Len()
	need := cfg.Steps
	if need <= 0 || need > steps {
		need = steps
	}
	batch := cfg.Batch
	if batch <= 0 {
		batch = b
	}
	promptID := func(i int) (int, error) {
		row := tr.Prompts[i]
		if rowIDs == nil {
			return row, nil
		}
		if row >= len(rowIDs) {
			return 0, fmt.Errorf("sample %d has conditioning row %d, but rowIDs has %d entries", i, row, len(rowIDs))
		}
		return rowIDs[row], nil
	}
	paths, slots := LookaheadPaths(tr, need, cfg.Lookahead)
	clean, err := s.IntegrateODE(ctx, c, paths, batch)
	if err != nil {
		return DenseRewards{}, fmt.Errorf("dense rewards: look-ahead: %w", err)
	}
	latents := make([]Latent, 0, len(clean)+b)
	prompts := make([]int, 0, len(clean)+b)
	for j, d := range clean {
		id, err := promptID(slots[j].Sample)
		if err != nil {
			return DenseRewards{}, fmt.Errorf("dense rewards: %w", err)
		}
		latents = append(latents, Latent{Shape: append([]int(nil), tr.LatentShape...), Data: d})
		prompts = append(prompts, id)
	}
	for i, fin := range tr.Final() {
		id, err := promptID(i)
		if err != nil {
			return DenseRewards{}, fmt.Errorf("dense rewards: %w", err)
		}
		latents = append(latents, fin)
		prompts = append(prompts, id)
	}
	scores, err := scorer.Score(ctx, latents, prompts)
	if err != nil {
		return DenseRewards{}, fmt.Errorf("dense rewards: score %d latents: %w", len(latents), err)
	}
	if len(scores) != len(latents) {
		return DenseRewards{}, fmt.Errorf("dense rewards: scorer returned %d rewards for %d latents", len(scores), len(latents))
	}
	out := DenseRewards{R: make([][]float64, b), Delta: make([][]float64, b)}
	for i := range b {
		out.R[i] = make([]float64, steps+1)
		for k := range out.R[i] {
			out.R[i][k] = math.NaN()
		}
		out.R[i][steps] = scores[len(clean)+i]
	}
	for j, sl := range slots {
		out.R[sl.Sample][sl.Step] = scores[j]
	}
	return out, fillDeltas(&out, need)
}

// fillDeltas sets Delta[i][k] = R[i][k+1] − R[i][k] for k < need.
func fillDeltas(d *DenseRewards, need int) error {
	for i, r := range d.R {
		d.Delta[i] = StepRewards(r, need)
		for k, v := range d.Delta[i] {
			if math.IsNaN(v) {
				return fmt.Errorf("dense rewards: sample %d step %d: reward is NaN", i, k)
			}
		}
	}
	return nil
}

// StepRewards returns the step rewards ΔR_k = R_{k+1} − R_k, k = 0 … need−1, of one sample
// whose look-ahead rewards are r (r[k] from x_k, r[T] the final reward).
func StepRewards(r []float64, need int) []float64 {
	out := make([]float64, need)
	for k := range out {
		out[k] = r[k+1] - r[k]
	}
	return out
}
