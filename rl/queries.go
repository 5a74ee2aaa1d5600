package rl

import (
	"fmt"
	"math"
)

// SDPO's latent-similarity reward prediction (Zhang et al., "Aligning Few-Step Diffusion Models
// with Dense Reward Difference Learning", arXiv 2411.11727; code github.com/ZiyiZhang27/sdpo,
// diffusers_patch/pipeline_with_logprob_sdpo.py and scripts/train_sdpo.py), inside DenseGRPO.
//
// DenseGRPO scores the clean latent at the end of the look-ahead from every state x_k. With
// Method.Queries = K > 0 only K of a trajectory's rewarded states are decoded and scored (the
// queries); every other R_k is predicted from them. The look-ahead still integrates every state,
// so the prediction sees every clean latent; only decoding and scoring are skipped.
//
// What SDPO's code does, and this file with it:
//   - The states compared are clean latents, flattened; similarity is torch.cosine_similarity
//     of the flattened latents (x·y / max(‖x‖·‖y‖, 1e-8)), raw: no clipping, no softmax, no
//     temperature.
//   - Queried: the first state and the last, then the state whose summed similarity to those is
//     least — SDPO's anchor = argmin_k (sim(k, first) + sim(k, last)). SDPO has K = 3 only; for
//     K > 3 this adds states greedily by the same rule, the least summed similarity to every
//     state already chosen. Ties go to the lowest step (torch.argmin's first index). Unlike
//     SDPO's argmin, the states already chosen are not candidates again, so K queries are K
//     distinct states (SDPO's argmin could, for a degenerate trajectory, pick the first or last
//     again).
//   - Predicted: R̂_s = Σ_j cos(s, q_j)·R_{q_j} / Σ_j cos(s, q_j) over the queried q_j; a queried
//     state keeps its scored reward (SDPO overwrites those entries with the queried rewards).
//     SDPO divides by the sum of raw cosines whatever its sign; where that sum is not positive
//     (possible only with negative cosines) the weighted average is undefined, and here the
//     state takes the reward of its most similar query instead.
//
// The adaptation to DenseGRPO: SDPO's states are its sampler's one-step x̂0 predictions; here
// they are DenseGRPO's look-ahead ends from x_0 … x_need (RewardStates) and the trajectory's own
// final latent x_T, which is SDPO's "last" and always queried (it is the reward every method
// reports).

// RewardStates returns the states k of a schedule of steps T whose reward dense training needs
// for trained steps: the look-aheads from x_0 … x_min(trained, T−1), then the final state x_T.
// Their number is the largest Method.Queries.
func RewardStates(steps, trained int) []int {
	var out []int
	for k := 0; k <= min(trained, steps-1); k++ {
		out = append(out, k)
	}
	return append(out, steps)
}

// Queries is SDPO's choice for one trajectory: which of its rewarded states (indices into
// RewardStates) are scored, and how similar every state is to each of them.
type Queries struct {
	// Queried are indices of the scored states, in the order chosen: first, last, then greedily.
	Queried []int
	// Cos[s][j] is the cosine similarity of state s's clean latent with state Queried[j]'s.
	Cos [][]float64
}

// cosine is torch.cosine_similarity of two flattened latents, accumulated in float64.
func cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		x, y := float64(a[i]), float64(b[i])
		dot += x * y
		na += x * x
		nb += y * y
	}
	return dot / math.Max(math.Sqrt(na)*math.Sqrt(nb), 1e-8)
}

// SelectQueries chooses k of the states whose clean latents are latents (in state order, all of
// one length) as SDPO does: the first, the last, then repeatedly the state least similar in sum
// to those already chosen.
func SelectQueries(latents [][]float32, k int) (Queries, error) {
	n := len(latents)
	if n < 2 || k < 2 || k > n {
		return Queries{}, fmt.Errorf("select queries: %d of %d states, want 2 … %d of at least 2", k, n, n)
	}
	for s, x := range latents {
		if len(x) != len(latents[0]) || len(x) == 0 {
			return Queries{}, fmt.Errorf("select queries: state %d has %d values, want %d (as state 0) and > 0", s, len(x), len(latents[0]))
		}
	}
	q := Queries{Cos: make([][]float64, n)}
	chosen := make([]bool, n)
	sum := make([]float64, n) // Σ over the chosen of cos(s, chosen)
	add := func(c int) {
		q.Queried, chosen[c] = append(q.Queried, c), true
		for s, x := range latents {
			cs := cosine(x, latents[c])
			if s == c {
				cs = 1 // cos(x, x), whatever the rounding
			}
			q.Cos[s] = append(q.Cos[s], cs)
			sum[s] += cs
		}
	}
	add(0)
	add(n - 1)
	for len(q.Queried) < k {
		best := -1
		for s := range n {
			if !chosen[s] && (best < 0 || sum[s] < sum[best]) {
				best = s
			}
		}
		add(best)
	}
	return q, nil
}

// Predict returns every state's reward from the scored rewards of the queried states
// (scored[j] of state Queried[j]): the scored reward itself for a queried state, the
// cosine-weighted average of the scored rewards for the others.
func (q Queries) Predict(scored []float64) ([]float64, error) {
	if len(scored) != len(q.Queried) {
		return nil, fmt.Errorf("predict rewards: %d scores for %d queried states", len(scored), len(q.Queried))
	}
	out := make([]float64, len(q.Cos))
	for s, cos := range q.Cos {
		var num, den float64
		nearest := 0
		for j, c := range cos {
			num += c * scored[j]
			den += c
			if c > cos[nearest] {
				nearest = j
			}
		}
		if den > 0 {
			out[s] = num / den
		} else {
			out[s] = scored[nearest]
		}
	}
	for j, s := range q.Queried {
		out[s] = scored[j]
	}
	return out, nil
}

// MaxQueries is the largest Method.Queries for a schedule of steps T and trained steps: the
// number of rewarded states.
func MaxQueries(steps, trained int) int { return len(RewardStates(steps, trained)) }

// QueryAccuracy measures the predicted rewards against the fully scored ones of the same
// trajectories (an audited epoch, Method.Audit).
type QueryAccuracy struct {
	// RCorr[k] is the Pearson correlation over the epoch's samples of the R_k training used
	// (scored where queried, predicted elsewhere) and the scored R_k, k = 0 … Trained; NaN
	// where either has no variance. RMAE[k] is their mean absolute difference.
	RCorr, RMAE []float64
	// DeltaSign[k] is the fraction of samples whose ΔR_k has the sign (−, 0, +) of the fully
	// scored ΔR_k, k = 0 … Trained−1: what the dense advantages learn from. DeltaCorr[k] is the
	// correlation of the two ΔR_k (NaN without variance), DeltaZero[k] the fraction of samples
	// whose scored ΔR_k is exactly 0 (a discrete reward such as OCR's often does not change
	// over one step, and a predicted ΔR_k is then a small non-zero number of either sign).
	// DeltaSignMoved[k] is DeltaSign among the samples whose scored ΔR_k is not 0 — does the
	// prediction point the way the reward moved — NaN when every scored ΔR_k is 0.
	DeltaSign, DeltaCorr, DeltaZero, DeltaSignMoved []float64
	// Queried[k] is the fraction of samples whose state k was queried, k = 0 … Trained.
	Queried []float64
}

// queryAccuracy compares used (the rewards training used) with full (every state scored),
// rows R[i][k]; queried[i][k] says whether sample i's state k was queried.
func queryAccuracy(used, full [][]float64, queried [][]bool, trained int) QueryAccuracy {
	n := len(used)
	a := QueryAccuracy{RCorr: make([]float64, trained+1), RMAE: make([]float64, trained+1),
		DeltaSign: make([]float64, trained), DeltaCorr: make([]float64, trained), DeltaZero: make([]float64, trained),
		DeltaSignMoved: make([]float64, trained), Queried: make([]float64, trained+1)}
	x, y := make([]float64, n), make([]float64, n)
	for k := 0; k <= trained; k++ {
		var diff float64
		count := 0
		for i := range n {
			x[i], y[i] = used[i][k], full[i][k]
			diff += math.Abs(x[i] - y[i])
			if queried[i][k] {
				count++
			}
		}
		a.RCorr[k], a.RMAE[k], a.Queried[k] = pearson(x, y), diff/float64(n), float64(count)/float64(n)
	}
	for k := range trained {
		agree, zero, agreeMoved := 0, 0, 0
		for i := range n {
			x[i], y[i] = used[i][k+1]-used[i][k], full[i][k+1]-full[i][k]
			same := sign(x[i]) == sign(y[i])
			if same {
				agree++
			}
			if y[i] == 0 {
				zero++
			} else if same {
				agreeMoved++
			}
		}
		a.DeltaSign[k], a.DeltaZero[k], a.DeltaCorr[k] = float64(agree)/float64(n), float64(zero)/float64(n), pearson(x, y)
		a.DeltaSignMoved[k] = math.NaN()
		if zero < n {
			a.DeltaSignMoved[k] = float64(agreeMoved) / float64(n-zero)
		}
	}
	return a
}

func sign(v float64) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}

// pearson is the correlation of x and y, NaN when either is constant.
func pearson(x, y []float64) float64 {
	mx, sx := MeanStd(x)
	my, sy := MeanStd(y)
	if !(sx > 0 && sy > 0) {
		return math.NaN()
	}
	var c float64
	for i := range x {
		c += (x[i] - mx) * (y[i] - my)
	}
	return c / float64(len(x)) / (sx * sy)
}
