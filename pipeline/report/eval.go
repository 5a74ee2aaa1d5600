package report

import (
	"fmt"
	"math"
	"sort"

	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// evalSection draws the evaluations: each mean with its standard error over the test prompts,
// and — where a run logged per-prompt totals at epoch 0 and later — the change against its base
// evaluation prompt by prompt (same prompts, same noise), which is what says whether training
// helped: its standard error is far smaller than either mean's.
func evalSection(p *page, runs []*Run) error {
	p.f("<h2 id=\"eval\">Evaluation</h2>\n")
	c := curveChart(runs, runfiles.KeyEvalRewardMean, runfiles.KeyEpoch)
	if c.empty() {
		p.note("no run logs eval_reward_mean: evaluation omitted")
		return nil
	}
	p.f("%s\n", c.svg(wideW, wideH))
	for _, r := range runs {
		if _, _, ok := last(r, runfiles.KeyEvalRewardMean); !ok {
			p.note("%s: no evaluation logged", r.Name)
		}
	}
	changes := evalChanges(runs)
	if ch := changeChart(runs, changes); ch != nil {
		p.f("%s\n", ch.svg(wideW, smallH))
		p.f("<table><tr><th>run</th><th>epoch</th><th>prompts</th><th>eval_reward_mean ± SE</th><th>change vs epoch 0 ± SE (paired)</th><th>in SEs</th><th>better / worse / same</th></tr>\n")
		for i, r := range runs {
			for _, c := range changes[i] {
				p.f("<tr><td>%s%s</td><td>%d</td><td>%d</td><td>%.4f ± %.4f</td><td>%+.4f ± %.4f</td><td>%+.1f</td><td>%d / %d / %d</td></tr>\n",
					swatch(runColor(i)), esc(r.Name), c.epoch, c.N, c.mean, c.meanSE, c.Mean, c.StdErr, c.Sigmas(), c.Better, c.Worse, c.Same)
			}
		}
		p.f("</table>\n")
	}
	componentCharts(p, runs, runfiles.EvalPrefix)
	if h := pairedChart(runs, []string{runfiles.KeyEvalRewardMean, runfiles.KeyEvalHeldoutMean}); hasMetric(runs, runfiles.KeyEvalHeldoutMean) {
		p.f("<h3>Training judge against held-out judges</h3>\n")
		p.note("eval_reward_mean is the evaluation scored by the rewards the policy trains on; eval_heldout_mean by the [[eval.reward]] blocks it never sees. Reward hacking shows as the two parting.")
		p.f("%s\n", h.svg(wideW, wideH))
		if keys := keysWithPrefix(runs, runfiles.HeldoutPrefix); len(keys) > 1 {
			p.f("<div class=\"grid\">")
			for _, k := range keys {
				p.f("%s\n", curveChart(runs, k, runfiles.KeyEpoch).svg(smallW, smallH))
			}
			p.f("</div>\n")
		}
	}
	return nil
}

// evalChange is one evaluation of a run compared with the run's epoch-0 evaluation.
type evalChange struct {
	runfiles.Change
	epoch        int
	mean, meanSE float64
}

// evalChanges lists, per run, its later evaluations paired with its epoch-0 one; runs without
// per-prompt totals at epoch 0, or evaluations of another prompt count, are left out.
func evalChanges(runs []*Run) [][]evalChange {
	out := make([][]evalChange, len(runs))
	for i, r := range runs {
		var base []float64
		for _, e := range r.Epochs {
			if e.Epoch == 0 {
				base = e.Totals
			}
		}
		if len(base) < 2 {
			continue
		}
		for _, e := range r.Epochs {
			if e.Epoch == 0 || len(e.Totals) != len(base) {
				continue
			}
			c, err := runfiles.Paired(base, e.Totals)
			if err != nil {
				continue
			}
			m, se := runfiles.MeanStdErr(e.Totals)
			out[i] = append(out[i], evalChange{Change: c, epoch: e.Epoch, mean: m, meanSE: se})
		}
	}
	return out
}

// changeChart is a bar per run and evaluation epoch: the mean change against epoch 0 with ± its
// paired standard error; nil when no run has one.
func changeChart(runs []*Run, changes [][]evalChange) *barChart {
	epochs := map[int]bool{}
	for _, cs := range changes {
		for _, c := range cs {
			epochs[c.epoch] = true
		}
	}
	if len(epochs) == 0 {
		return nil
	}
	var cats []int
	for e := range epochs {
		cats = append(cats, e)
	}
	sort.Ints(cats)
	ch := &barChart{title: "eval_reward_mean − epoch 0, prompt by prompt (± paired standard error)", xLabel: "epoch"}
	for _, e := range cats {
		ch.categories = append(ch.categories, fmt.Sprint(e))
	}
	for i, r := range runs {
		if len(changes[i]) == 0 {
			continue
		}
		s := barSeries{label: r.Label(), color: runColor(i), values: make([]float64, len(cats)), err: make([]float64, len(cats))}
		for j := range s.values {
			s.values[j] = math.NaN()
		}
		for _, c := range changes[i] {
			j := sort.SearchInts(cats, c.epoch)
			s.values[j], s.err[j] = c.Mean, c.StdErr
		}
		ch.series = append(ch.series, s)
	}
	return ch
}
