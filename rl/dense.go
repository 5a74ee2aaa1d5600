package rl

import (
	"context"
	"fmt"
	"math"
)

// Method is the choice between Flow-GRPO (sparse: the final reward broadcast to every trained
// step) and DenseGRPO (dense: a reward per step from ODE look-ahead), made once from the
// configuration. It owns everything the choice changes: which latents an epoch scores
// (Targets), how their rewards become R_k and ΔR_k (Rewards), and the advantages (Advantages).
type Method struct {
	// Dense selects DenseGRPO; false is exactly Flow-GRPO.
	Dense bool
	// Lookahead caps the number of ODE steps of each look-ahead; 0 means the remaining steps of
	// the schedule (the DenseGRPO default). With a cap n smaller than the T−k remaining steps,
	// the look-ahead from x_k visits n+1 sigmas of the remaining schedule, evenly spread by index
	// (σ_k, …, σ_T); n = 1 is the one-step prediction x̂0 = x_k − σ_k·v.
	Lookahead int
	// Trained is the number of leading steps trained (⌊T·timestep_fraction⌋), which are the
	// steps that need ΔR_k: look-aheads run from x_0 … x_Trained only (x_T is scored directly).
	Trained int
	// Advantage normalises and clips the advantages.
	Advantage AdvantageConfig
	// Queries, with dense rewards, is SDPO's number K of rewarded states per trajectory that are
	// decoded and scored (queries.go): the first, the last and K−2 chosen by latent similarity;
	// every other R_k is predicted from them. 0 scores every state (DenseGRPO as published);
	// otherwise 2 … MaxQueries.
	Queries int
	// Audit, with Queries > 0, also scores every state that is not queried, so that the
	// predictions can be measured against the scores of the same trajectories
	// (Rewards.Accuracy); training still uses the predictions. Set per epoch by the caller.
	Audit bool
}

// Validate checks the method against a schedule of T steps.
func (m Method) Validate(steps int) error {
	switch {
	case m.Trained < 1 || m.Trained > steps:
		return fmt.Errorf("method: trained steps: got %d, want 1 … %d", m.Trained, steps)
	case m.Lookahead < 0:
		return fmt.Errorf("method: lookahead: got %d, want >= 0 (0 = all remaining steps)", m.Lookahead)
	case m.Dense && m.Queries != 0 && (m.Queries < 2 || m.Queries > MaxQueries(steps, m.Trained)):
		return fmt.Errorf("method: queries: got %d, want %s", m.Queries, QueriesWant(steps, m.Trained))
	}
	return m.Advantage.validate()
}

// QueriesWant says what Method.Queries may be for a schedule of steps T and trained steps, for
// error messages.
func QueriesWant(steps, trained int) string {
	n := MaxQueries(steps, trained)
	return fmt.Sprintf("0 (score every state) or 2 … %d: the first and last states are always queried, and there are %d states with a reward (the look-aheads from x_0 … x_%d and x_%d)", n, n, n-2, steps)
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

// Slot names the latent scored for sample Sample at state x_Step: the end of its look-ahead
// from x_Step, or its own final latent when Step = T.
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
			next := append([]float32(nil), tr.X[k][i*l:(i+1)*l]...)
			eulerStep(next, tr.V[k][i*l:(i+1)*l], dt)
			paths = append(paths, ODEPath{Prompt: tr.Prompts[i], X: next, Sigmas: sigmas[1:]})
			slots = append(slots, Slot{i, k})
		}
	}
	return paths, slots
}

// Targets are the clean latents a rollout batch needs scored, Latents[j] for Slots[j]: with
// dense rewards the ends of the look-aheads from x_0 … x_Trained, then (both methods) every
// sample's own final latent x_T. With Method.Queries > 0 only the queried states are listed
// (all of them when audited).
type Targets struct {
	Latents [][]float32
	Slots   []Slot
	// Queries[i], with Method.Queries > 0, is sample i's SDPO choice over its rewarded states
	// (RewardStates); nil otherwise.
	Queries []Queries
}

// Targets integrates the look-aheads of tr (dense only; batches of one state's paths, so no
// batch is padded) and lists them with the final latents; with Method.Queries > 0 it chooses
// each trajectory's queries from all of them and keeps only those (unless auditing). c must be
// the conditioning tr was sampled with, flow the policy it was sampled with.
func (m Method) Targets(ctx context.Context, flow Flow, c Conditioning, tr *Trajectories) (Targets, error) {
	var t Targets
	if m.Dense {
		paths, slots := LookaheadPaths(tr, m.Trained, m.Lookahead)
		clean, err := flow.IntegrateODE(ctx, c, paths, tr.Len())
		if err != nil {
			return Targets{}, fmt.Errorf("look-ahead: %w", err)
		}
		t.Latents, t.Slots = clean, slots
	}
	steps := tr.Schedule.Steps()
	for i := range tr.Len() {
		t.Latents = append(t.Latents, tr.Latent(steps, i))
		t.Slots = append(t.Slots, Slot{Sample: i, Step: steps})
	}
	if m.Dense && m.Queries > 0 {
		return m.query(t, tr)
	}
	return t, nil
}

// query chooses each sample's queries among the targets t (every rewarded state of every
// sample) and, unless auditing, drops the targets that are not queried.
func (m Method) query(t Targets, tr *Trajectories) (Targets, error) {
	states := RewardStates(tr.Schedule.Steps(), m.Trained)
	index := make(map[int]int, len(states)) // step → position in states
	for s, k := range states {
		index[k] = s
	}
	byState := make([][][]float32, tr.Len())
	for i := range byState {
		byState[i] = make([][]float32, len(states))
	}
	for j, sl := range t.Slots {
		s, ok := index[sl.Step]
		if !ok {
			return Targets{}, fmt.Errorf("queries: sample %d: target at x_%d is not a rewarded state %v", sl.Sample, sl.Step, states)
		}
		byState[sl.Sample][s] = t.Latents[j]
	}
	keep := make([][]bool, tr.Len())
	t.Queries = make([]Queries, tr.Len())
	for i, latents := range byState {
		q, err := SelectQueries(latents, m.Queries)
		if err != nil {
			return Targets{}, fmt.Errorf("queries: sample %d: %w", i, err)
		}
		t.Queries[i], keep[i] = q, make([]bool, len(states))
		for _, s := range q.Queried {
			keep[i][s] = true
		}
	}
	if m.Audit {
		return t, nil
	}
	var out Targets
	for j, sl := range t.Slots {
		if keep[sl.Sample][index[sl.Step]] {
			out.Latents = append(out.Latents, t.Latents[j])
			out.Slots = append(out.Slots, sl)
		}
	}
	out.Queries = t.Queries
	return out, nil
}

// Scored is a rollout batch with the rewards of its Targets.
type Scored struct {
	Traj *Trajectories
	// Slots and Scores: Scores[j] is the reward of the latent of Slots[j] (Targets.Slots).
	Slots  []Slot
	Scores []float64
	// Groups[p] is the advantage group of the batch's conditioning row p (its prompt's index in
	// the epoch), so the samples of one prompt are compared with each other.
	Groups []int
	// Queries are Targets.Queries: with them, the rewards of the states not queried are
	// predicted.
	Queries []Queries
}

// Rewards are the rewards of an epoch's samples, in batch order.
type Rewards struct {
	// R[i][k] is the reward of sample i's look-ahead from x_k (NaN where not computed), R[i][T]
	// its own final reward.
	R [][]float64
	// Delta[i][k] = R[i][k+1] − R[i][k] for the trained steps (dense only).
	Delta [][]float64
	// Group[i] is sample i's advantage group.
	Group []int
	// Accuracy, for an audited epoch (Method.Audit), measures R (predicted where not queried)
	// against every state scored; nil otherwise.
	Accuracy *QueryAccuracy
}

// Final returns each sample's own reward R_T.
func (r Rewards) Final() []float64 {
	out := make([]float64, len(r.R))
	for i, row := range r.R {
		out[i] = row[len(row)-1]
	}
	return out
}

// Rewards assembles the scored batches of an epoch: R_k of every sample and, with dense
// rewards, the step rewards ΔR_k = R_{k+1} − R_k of the trained steps. A reward that is not
// finite is an error naming its sample and state.
//
// With queries (Scored.Queries) the states that were not queried get SDPO's predicted rewards;
// in an audited epoch the scores of those states are compared with the predictions
// (Rewards.Accuracy) and then set aside.
func (m Method) Rewards(batches []Scored) (Rewards, error) {
	var out Rewards
	var full [][]float64 // audited: every state scored, per sample
	var queried [][]bool // audited: queried[i][k]
	for bi, b := range batches {
		steps := b.Traj.Schedule.Steps()
		if len(b.Scores) != len(b.Slots) {
			return Rewards{}, fmt.Errorf("rewards: batch %d: %d scores for %d slots", bi, len(b.Scores), len(b.Slots))
		}
		base := len(out.R)
		for i := range b.Traj.Len() {
			row := make([]float64, steps+1)
			for k := range row {
				row[k] = math.NaN()
			}
			out.R = append(out.R, row)
			p := b.Traj.Prompts[i]
			if p >= len(b.Groups) {
				return Rewards{}, fmt.Errorf("rewards: batch %d: sample %d has conditioning row %d, but %d groups", bi, i, p, len(b.Groups))
			}
			out.Group = append(out.Group, b.Groups[p])
		}
		for j, s := range b.Slots {
			v := b.Scores[j]
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return Rewards{}, fmt.Errorf("rewards: batch %d: sample %d at x_%d: reward is %v", bi, s.Sample, s.Step, v)
			}
			out.R[base+s.Sample][s.Step] = v
		}
		if len(b.Queries) == 0 {
			continue
		}
		if len(b.Queries) != b.Traj.Len() {
			return Rewards{}, fmt.Errorf("rewards: batch %d: queries of %d samples for %d", bi, len(b.Queries), b.Traj.Len())
		}
		states := RewardStates(steps, m.Trained)
		for i, q := range b.Queries {
			scored := out.R[base+i]
			used, err := predictRow(q, states, scored)
			if err != nil {
				return Rewards{}, fmt.Errorf("rewards: batch %d: sample %d: %w", bi, i, err)
			}
			out.R[base+i] = used
			if !m.Audit {
				continue
			}
			isQueried := make([]bool, steps+1)
			for _, s := range q.Queried {
				isQueried[states[s]] = true
			}
			for _, k := range states {
				if math.IsNaN(scored[k]) {
					return Rewards{}, fmt.Errorf("rewards: batch %d: sample %d: audited epoch, but x_%d was not scored", bi, i, k)
				}
			}
			full = append(full, scored)
			queried = append(queried, isQueried)
		}
	}
	if full != nil {
		if len(full) != len(out.R) {
			return Rewards{}, fmt.Errorf("rewards: audited %d of %d samples, want all", len(full), len(out.R))
		}
		acc := queryAccuracy(out.R, full, queried, m.Trained)
		out.Accuracy = &acc
	}
	if m.Dense {
		out.Delta = make([][]float64, len(out.R))
		for i, r := range out.R {
			out.Delta[i] = StepRewards(r, m.Trained)
			for k, d := range out.Delta[i] {
				if math.IsNaN(d) {
					return Rewards{}, fmt.Errorf("rewards: sample %d step %d: ΔR is NaN (a look-ahead was not scored)", i, k)
				}
			}
		}
	}
	return out, nil
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

// predictRow returns the rewards training uses for one sample: its scored row where queried,
// SDPO's prediction at the other rewarded states, NaN elsewhere.
func predictRow(q Queries, states []int, scored []float64) ([]float64, error) {
	got := make([]float64, len(q.Queried))
	for j, s := range q.Queried {
		if got[j] = scored[states[s]]; math.IsNaN(got[j]) {
			return nil, fmt.Errorf("queried state x_%d was not scored", states[s])
		}
	}
	pred, err := q.Predict(got)
	if err != nil {
		return nil, err
	}
	if len(pred) != len(states) {
		return nil, fmt.Errorf("queries cover %d states, want %d", len(pred), len(states))
	}
	used := make([]float64, len(scored))
	for k := range used {
		used[k] = math.NaN()
	}
	for s, k := range states {
		used[k] = pred[s]
	}
	return used, nil
}

// Advantages are the GRPO advantages of the trained steps, out[i][k]: DenseAdvantages of ΔR_k
// with dense rewards, SparseAdvantages of R_T otherwise.
func (m Method) Advantages(r Rewards) ([][]float64, error) {
	if m.Dense {
		return DenseAdvantages(r.Delta, r.Group, m.Trained, m.Advantage)
	}
	return SparseAdvantages(r.Final(), r.Group, m.Trained, m.Advantage)
}

// DeltaStats returns, per step k of delta[i][k], the fraction of ΔR_k > 0 and the mean and
// population std of ΔR_k (nil for no samples).
func DeltaStats(delta [][]float64) (pos, mean, std []float64) {
	if len(delta) == 0 {
		return nil, nil, nil
	}
	steps := len(delta[0])
	pos, mean, std = make([]float64, steps), make([]float64, steps), make([]float64, steps)
	col := make([]float64, len(delta))
	for k := range steps {
		for i, row := range delta {
			col[i] = row[k]
			if row[k] > 0 {
				pos[k]++
			}
		}
		pos[k] /= float64(len(delta))
		mean[k], std[k] = MeanStd(col)
	}
	return pos, mean, std
}
