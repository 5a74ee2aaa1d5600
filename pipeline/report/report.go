// Package report owns the run report: one self-contained HTML page (inline SVG charts drawn
// here, sample grids embedded as base64 PNG, no scripts or external assets) built from one or
// more run directories, and a PNG of the reward curves for the README.
//
// It reads what the trainer writes into runs/<name>/: metrics.jsonl (one JSON object per
// epoch, every field but "epoch" optional), config.toml (only [dense] enabled, for the legend),
// psi.json and samples/*.png. Missing optional pieces are left out with a note; a metrics line
// that does not decode is an error naming file:line. Files are written atomically.
package report

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"path/filepath"
	"sort"
	"strings"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// Chart sizes in the page.
const (
	wideW, wideH   = 1080, 360
	smallW, smallH = 530, 270
)

// files writes the report and the curves PNG; tests replace its CreateTemp to make the disk
// fail.
var files atomicfile.Writer

// Write builds the HTML report of the runs in runDirs and writes it atomically to out.
func Write(ctx context.Context, runDirs []string, out string) error {
	runs, err := loadRunsCtx(ctx, runDirs)
	if err != nil {
		return err
	}
	page, err := buildPage(ctx, runs)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write report %s: %w", out, err)
	}
	if err := files.Write(out, func(w io.Writer) error { _, err := w.Write(page); return err }); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func loadRuns(runDirs []string) ([]*Run, error) {
	return loadRunsCtx(context.Background(), runDirs)
}

// loadRunsCtx loads every run; runs sharing a base name are named by their cleaned paths.
func loadRunsCtx(ctx context.Context, runDirs []string) ([]*Run, error) {
	if len(runDirs) == 0 {
		return nil, errors.New("load runs: no run directories given")
	}
	runs := make([]*Run, 0, len(runDirs))
	count := map[string]int{}
	for _, dir := range runDirs {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("load run %s: %w", dir, err)
		}
		r, err := LoadRun(dir)
		if err != nil {
			return nil, fmt.Errorf("load run %s: %w", dir, err)
		}
		runs = append(runs, r)
		count[r.Name]++
	}
	for _, r := range runs {
		if count[r.Name] > 1 {
			r.Name = filepath.Clean(r.Dir)
		}
	}
	return runs, nil
}

// curveChart is metric against xKey ("epoch" or a scalar such as "samples") for every run, in
// the run's colour, dashed when dense rewards are off; "X_mean" gets a ± band from "X_std"
// when the run logs it.
func curveChart(runs []*Run, metric, xKey string) *lineChart {
	stdKey := ""
	if base, ok := strings.CutSuffix(metric, "_mean"); ok {
		stdKey = base + "_std"
	}
	title := metric
	c := &lineChart{xLabel: xKey, integerX: xKey == runfiles.KeyEpoch}
	if xKey == runfiles.KeySamples {
		c.xLabel = "samples (trajectories trained on)"
	}
	banded, whiskers := false, false
	for i, r := range runs {
		s := series{label: r.Label(), color: runColor(i), dash: r.Dense == "off"}
		// An evaluation's mean gets ± its standard error over the test prompts, and a run with
		// one or two evaluations (before and after) is drawn as points: a line between two
		// means reads as a trend that two noisy points do not show.
		eval := metric == runfiles.KeyEvalRewardMean
		var errs []float64
		hasErr := false
		var std []float64
		hasStd := false
		for _, e := range r.Epochs {
			y, ok := e.Value(metric)
			if !ok {
				continue
			}
			x := float64(e.Epoch)
			if xKey != runfiles.KeyEpoch {
				if x, ok = e.Value(xKey); !ok {
					continue
				}
			}
			sd, ok := e.Value(stdKey)
			hasStd = hasStd || ok
			s.x, s.y, std = append(s.x, x), append(s.y, y), append(std, sd)
			if eval {
				_, se := runfiles.MeanStdErr(e.Totals)
				errs, hasErr = append(errs, se), hasErr || len(e.Totals) > 1
			}
		}
		if eval {
			s.points = len(s.x) < 3
			if hasErr {
				s.err, whiskers = errs, true
			}
		}
		if hasStd {
			banded = true
			for j := range std {
				s.lo, s.hi = append(s.lo, s.y[j]-std[j]), append(s.hi, s.y[j]+std[j])
			}
		}
		c.series = append(c.series, s)
	}
	if banded {
		title += " ± " + stdKey
	}
	if whiskers {
		title += " ± standard error over the test prompts"
	}
	c.title = title + " vs " + xKey
	return c
}

// pairedChart draws several metrics of every run on one chart: the run's colour, the first
// metric solid and the others dashed — the training judge against the held-out ones.
func pairedChart(runs []*Run, metrics []string) *lineChart {
	c := &lineChart{xLabel: runfiles.KeyEpoch, integerX: true, title: strings.Join(metrics, " and ") + " vs epoch (dashed: " + strings.Join(metrics[1:], ", ") + ")"}
	for i, r := range runs {
		for j, m := range metrics {
			s := series{label: r.Label() + ", " + m, color: runColor(i), dash: j > 0}
			for _, e := range r.Epochs {
				if y, ok := e.Value(m); ok {
					s.x, s.y = append(s.x, float64(e.Epoch)), append(s.y, y)
				}
			}
			if len(s.x) > 0 {
				c.series = append(c.series, s)
			}
		}
	}
	return c
}

// page accumulates the HTML.
type page struct {
	bytes.Buffer
}

func (p *page) f(format string, args ...any) { fmt.Fprintf(&p.Buffer, format, args...) }

func (p *page) note(format string, args ...any) {
	p.f(`<p class="note">%s</p>`+"\n", esc(fmt.Sprintf(format, args...)))
}

const css = `body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:1120px;margin:0 auto;padding:16px 20px 40px;background:#fafafa}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
nav a{margin-right:12px}.grid{display:flex;flex-wrap:wrap;gap:10px}svg{max-width:100%;height:auto;border:1px solid #e4e4e4;background:#fff}
table{border-collapse:collapse;font-size:13px;margin:6px 0;background:#fff}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
.note{color:#666;font-style:italic;font-size:13px;margin:4px 0}figure{margin:8px 0}figcaption{font-size:13px;color:#444}img.grid{max-width:100%;border:1px solid #ddd;image-rendering:pixelated}
.swatch{display:inline-block;width:10px;height:10px;margin-right:5px;vertical-align:baseline}`

// buildPage renders the whole report.
func buildPage(ctx context.Context, runs []*Run) ([]byte, error) {
	p := &page{}
	p.f("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>DenseGRPO report: %s</title>\n<style>%s</style></head><body>\n",
		esc(runNames(runs)), css)
	p.f("<h1>DenseGRPO report</h1>\n<nav><a href=\"#summary\">summary</a><a href=\"#rewards\">rewards</a><a href=\"#eval\">evaluation</a><a href=\"#optim\">optimisation</a><a href=\"#dense\">dense rewards</a><a href=\"#queries\">predicted rewards</a><a href=\"#psi\">ψ(k)</a><a href=\"#timings\">timings</a><a href=\"#samples\">samples</a></nav>\n")
	sections := []func(*page, []*Run) error{summarySection, rewardSection, evalSection, optimSection, denseSection, querySection, psiSection, timingSection, sampleSection}
	for _, s := range sections {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("build report: %w", err)
		}
		if err := s(p, runs); err != nil {
			return nil, err
		}
	}
	p.f("</body></html>\n")
	return p.Bytes(), nil
}

func runNames(runs []*Run) string {
	names := make([]string, len(runs))
	for i, r := range runs {
		names[i] = r.Name
	}
	return strings.Join(names, ", ")
}

func swatch(c color.RGBA) string {
	return fmt.Sprintf(`<span class="swatch" style="background:%s"></span>`, hexColor(c))
}

// last returns the value of key at the latest epoch that has it.
func last(r *Run, key string) (float64, int, bool) {
	for i := len(r.Epochs) - 1; i >= 0; i-- {
		if v, ok := r.Epochs[i].Value(key); ok {
			return v, r.Epochs[i].Epoch, true
		}
	}
	return 0, 0, false
}

func first(r *Run, key string) (float64, int, bool) {
	for _, e := range r.Epochs {
		if v, ok := e.Value(key); ok {
			return v, e.Epoch, true
		}
	}
	return 0, 0, false
}

func cell(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	return fmtValue(v)
}

func summarySection(p *page, runs []*Run) error {
	p.f("<h2 id=\"summary\">Summary</h2>\n<table><tr><th>run</th><th>dense</th><th>last epoch</th><th>samples</th><th>reward_mean (last)</th><th>eval_reward_mean (first → last)</th><th>best eval</th><th>elapsed</th><th>directory</th></tr>\n")
	for i, r := range runs {
		lastEpoch := "–"
		if len(r.Epochs) > 0 {
			lastEpoch = fmt.Sprint(r.Epochs[len(r.Epochs)-1].Epoch)
		}
		samples, _, okS := last(r, runfiles.KeySamples)
		reward, _, okR := last(r, runfiles.KeyRewardMean)
		eval := "–"
		if e0, ep0, ok := first(r, runfiles.KeyEvalRewardMean); ok {
			e1, ep1, _ := last(r, runfiles.KeyEvalRewardMean)
			eval = fmt.Sprintf("%s (epoch %d) → %s (epoch %d)", fmtValue(e0), ep0, fmtValue(e1), ep1)
		}
		best, bestOK := math.Inf(-1), false
		for _, e := range r.Epochs {
			if v, ok := e.Value(runfiles.KeyEvalRewardMean); ok && v > best {
				best, bestOK = v, true
			}
		}
		elapsed := "–"
		if v, _, ok := last(r, runfiles.KeyElapsedSeconds); ok {
			elapsed = fmtDuration(v)
		}
		dense := r.Dense
		if dense == "" {
			dense = "?"
		}
		p.f("<tr><td>%s%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n",
			swatch(runColor(i)), esc(r.Name), dense, lastEpoch, cell(samples, okS), cell(reward, okR), esc(eval), cell(best, bestOK), elapsed, esc(r.Dir))
	}
	p.f("</table>\n")
	for _, r := range runs {
		if r.Dense == "" {
			p.note("%s: no [dense] enabled in config.toml; its legend entry does not say whether dense rewards were on", r.Name)
		}
	}
	return nil
}

func fmtDuration(sec float64) string {
	s := int(math.Round(sec))
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// keysWithPrefix lists the scalar keys starting with prefix that any run logs, sorted.
func keysWithPrefix(runs []*Run, prefix string) []string {
	var keys []string
	for _, k := range scalarKeys(runs) {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	return keys
}

// componentCharts draws one small chart per "<prefix><kind>" key when there is more than one
// kind (with one kind the component is the mean already drawn).
func componentCharts(p *page, runs []*Run, prefix string) {
	keys := keysWithPrefix(runs, prefix)
	if len(keys) < 2 {
		return
	}
	p.f("<h3>Per reward kind</h3>\n<div class=\"grid\">")
	for _, k := range keys {
		p.f("%s\n", curveChart(runs, k, runfiles.KeyEpoch).svg(smallW, smallH))
	}
	p.f("</div>\n")
}

func rewardSection(p *page, runs []*Run) error {
	p.f("<h2 id=\"rewards\">Training reward</h2>\n")
	c := curveChart(runs, runfiles.KeyRewardMean, runfiles.KeyEpoch)
	if c.empty() {
		p.note("no run logs reward_mean")
		return nil
	}
	p.f("%s\n", c.svg(wideW, wideH))
	if s := curveChart(runs, runfiles.KeyRewardMean, runfiles.KeySamples); !s.empty() {
		p.f("%s\n", s.svg(wideW, wideH))
	} else {
		p.note("no run logs samples: reward against samples omitted")
	}
	componentCharts(p, runs, runfiles.RewardPrefix)
	return nil
}

// hasMetric reports whether any run logs key.
func hasMetric(runs []*Run, key string) bool {
	for _, r := range runs {
		if _, _, ok := last(r, key); ok {
			return true
		}
	}
	return false
}

// optimKeys are the small multiples of the optimisation section, in order.
var optimKeys = []string{runfiles.KeyLoss, runfiles.KeyPolicyLoss, runfiles.KeyKL, runfiles.KeyApproxKL, runfiles.KeyClipFrac, runfiles.KeyGradNorm, runfiles.KeyDropped}

func optimSection(p *page, runs []*Run) error {
	p.f("<h2 id=\"optim\">Optimisation</h2>\n<div class=\"grid\">")
	var missing []string
	for _, k := range optimKeys {
		c := curveChart(runs, k, runfiles.KeyEpoch)
		if c.empty() {
			missing = append(missing, k)
			continue
		}
		p.f("%s\n", c.svg(smallW, smallH))
	}
	p.f("</div>\n")
	if len(missing) > 0 {
		p.note("not logged by any run: %s", strings.Join(missing, ", "))
	}
	return nil
}

// lighten mixes c with white: f = 0 is c, f = 1 is white.
func lighten(c color.RGBA, f float64) color.RGBA {
	m := func(v uint8) uint8 { return uint8(math.Round(float64(v) + (255-float64(v))*f)) }
	return color.RGBA{m(c.R), m(c.G), m(c.B), 0xff}
}

// stepStats returns the vector key of the latest epoch that has it, that epoch, and the mean
// over all epochs that have it, per step (steps absent from some epochs average over the rest).
func stepStats(r *Run, key string) (latest []float64, latestEpoch int, mean []float64, n int) {
	var sum []float64
	var cnt []int
	for _, e := range r.Epochs {
		v, ok := e.Vectors[key]
		if !ok || len(v) == 0 {
			continue
		}
		latest, latestEpoch = v, e.Epoch
		n++
		for len(sum) < len(v) {
			sum, cnt = append(sum, 0), append(cnt, 0)
		}
		for k, x := range v {
			if !math.IsNaN(x) && !math.IsInf(x, 0) {
				sum[k] += x
				cnt[k]++
			}
		}
	}
	mean = make([]float64, len(sum))
	for k := range sum {
		if cnt[k] > 0 {
			mean[k] = sum[k] / float64(cnt[k])
		}
	}
	return latest, latestEpoch, mean, n
}

// stepMeans is, per step, the mean over the run's epochs of the per-step vector key, skipping
// NaN (NaN where every epoch has NaN), and the number of epochs that have the vector.
func stepMeans(r *Run, key string) ([]float64, int) {
	_, _, mean, n := stepStats(r, key)
	for k := range mean {
		defined := false
		for _, e := range r.Epochs {
			if v := e.Vectors[key]; k < len(v) && !math.IsNaN(v[k]) {
				defined = true
			}
		}
		if !defined {
			mean[k] = math.NaN()
		}
	}
	return mean, n
}

func stepLabels(n int) []string {
	l := make([]string, n)
	for k := range l {
		l[k] = fmt.Sprint(k)
	}
	return l
}

func denseSection(p *page, runs []*Run) error {
	p.f("<h2 id=\"dense\">Dense rewards per step</h2>\n")
	p.f("<p class=\"note\">Step k is the transition x_k → x_{k+1}; ΔR_k = R_{k+1} − R_k is its step reward. pos_frac is the fraction of trajectories with ΔR_k &gt; 0.</p>\n")
	for i, r := range runs {
		latest, ep, mean, n := stepStats(r, runfiles.KeyDensePosFrac)
		latestD, epD, meanD, nD := stepStats(r, runfiles.KeyDenseDeltaMean)
		if n == 0 && nD == 0 {
			p.note("%s: no per-step dense statistics (dense rewards off or not logged)", r.Label())
			continue
		}
		p.f("<h3>%s%s</h3>\n<div class=\"grid\">", swatch(runColor(i)), esc(r.Label()))
		col := runColor(i)
		if n > 0 {
			c := &barChart{title: runfiles.KeyDensePosFrac + " per step", xLabel: "step k", categories: stepLabels(max(len(latest), len(mean))),
				series: []barSeries{
					{label: fmt.Sprintf("epoch %d", ep), color: col, values: latest},
					{label: fmt.Sprintf("mean of %d epochs", n), color: lighten(col, 0.55), values: mean},
				}}
			p.f("%s\n", c.svg(smallW, smallH))
		}
		if nD > 0 {
			var std []float64
			for _, e := range r.Epochs {
				if e.Epoch == epD {
					std = e.Vectors[runfiles.KeyDenseDeltaStd]
				}
			}
			label := fmt.Sprintf("epoch %d", epD)
			if std != nil {
				label += " (± std)"
			}
			c := &barChart{title: runfiles.KeyDenseDeltaMean + " per step", xLabel: "step k", categories: stepLabels(max(len(latestD), len(meanD))),
				series: []barSeries{
					{label: label, color: col, values: latestD, err: std},
					{label: fmt.Sprintf("mean of %d epochs", nD), color: lighten(col, 0.55), values: meanD},
				}}
			p.f("%s\n", c.svg(smallW, smallH))
		}
		p.f("</div>\n")
	}
	return nil
}

// querySection is the accuracy of SDPO's predicted rewards (dense.queries > 0) per step, from
// the audited epochs: the means over them of the query_* vectors.
func querySection(p *page, runs []*Run) error {
	p.f("<h2 id=\"queries\">Predicted rewards per step (dense.queries)</h2>\n")
	p.f("<p class=\"note\">With dense.queries = K only K states per trajectory are scored; the other R_k are predicted from them by latent similarity (SDPO). Audited epochs (dense.audit_every) score every state too: per state k, the fraction of trajectories whose x_k was queried, the correlation and mean absolute difference of the R_k training used with the scored R_k; per step k, the fraction of trajectories whose ΔR_k has the scored ΔR_k's sign (−, 0, +), the correlation of the two ΔR_k, the fraction of scored ΔR_k that are exactly 0 (a discrete reward often does not change over a step, while a predicted ΔR_k is a small number of either sign), and the sign agreement among the trajectories whose scored ΔR_k is not 0.</p>\n")
	for i, r := range runs {
		corr, n := stepMeans(r, runfiles.KeyQueryRCorr)
		mae, _ := stepMeans(r, runfiles.KeyQueryRMAE)
		frac, _ := stepMeans(r, runfiles.KeyQueryFrac)
		sign, _ := stepMeans(r, runfiles.KeyQueryDeltaSign)
		dcorr, _ := stepMeans(r, runfiles.KeyQueryDeltaCorr)
		zero, _ := stepMeans(r, runfiles.KeyQueryDeltaZero)
		moved, _ := stepMeans(r, runfiles.KeyQueryDeltaMoved)
		if n == 0 {
			p.note("%s: no audited epoch with predicted rewards (dense.queries = 0, or dense.audit_every = 0)", r.Label())
			continue
		}
		p.f("<h3>%s%s: mean of %d audited epochs</h3>\n", swatch(runColor(i)), esc(r.Label()), n)
		p.f("<table><tr><th>k</th><th>x_k queried</th><th>corr(R_k used, R_k scored)</th><th>mean |R_k used − R_k scored|</th><th>sign ΔR_k agrees</th><th>corr(ΔR_k used, ΔR_k scored)</th><th>scored ΔR_k = 0</th><th>sign agrees where scored ΔR_k ≠ 0</th></tr>\n")
		at := func(v []float64, k int) string {
			switch {
			case k >= len(v):
				return ""
			case math.IsNaN(v[k]):
				return "–" // undefined in every epoch (e.g. a correlation with no variance)
			}
			return fmt.Sprintf("%.3f", v[k])
		}
		for k := range max(len(corr), len(sign)) {
			p.f("<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n", k, at(frac, k), at(corr, k), at(mae, k), at(sign, k), at(dcorr, k), at(zero, k), at(moved, k))
		}
		p.f("</table>\n")
	}
	return nil
}

func indexSeries(label string, col color.RGBA, dash bool, ys []float64) series {
	s := series{label: label, color: col, dash: dash, y: ys}
	for k := range ys {
		s.x = append(s.x, float64(k))
	}
	return s
}

// maxPsiIterations is the most calibration iterations drawn; more are thinned evenly, keeping
// the first and the last.
const maxPsiIterations = 10

func psiSection(p *page, runs []*Run) error {
	p.f("<h2 id=\"psi\">Calibrated noise ψ(k)</h2>\n")
	for i, r := range runs {
		if r.Psi == nil {
			switch r.Sampler {
			case "cps":
				p.note("%s: CPS sampling, which has no ψ (its noise is s = σ_{k+1}·sin(a·π/2))", r.Label())
			case "sde":
				p.note("%s: no psi.json: trained without a calibrated ψ (sampler.psi), with s_k = a·sqrt(σ_k/(1−σ_k))", r.Label())
			default:
				p.note("%s: no psi.json (no calibrated ψ recorded in the run directory)", r.Label())
			}
			continue
		}
		ps, col := r.Psi, runColor(i)
		p.f("<h3>%s%s</h3>\n<div class=\"grid\">", swatch(col), esc(r.Label()))
		c := &lineChart{title: "ψ(k): start vs calibrated", xLabel: "step k", integerX: true}
		if len(ps.Start) > 0 {
			c.series = append(c.series, indexSeries("start a·sqrt(σ/(1−σ))", colGreyLine, true, f64s(ps.Start)))
		}
		if len(ps.Psi) > 0 {
			c.series = append(c.series, indexSeries("calibrated", col, false, f64s(ps.Psi)))
		}
		if !c.empty() {
			p.f("%s\n", c.svg(smallW, smallH))
		}
		if its := ps.Iterations; len(its) > 0 {
			h := &lineChart{title: "ψ(k) per calibration iteration", xLabel: "step k", integerX: true}
			pick := thin(len(its), maxPsiIterations)
			for j, idx := range pick {
				f := 0.0
				if len(pick) > 1 {
					f = 0.8 * (1 - float64(j)/float64(len(pick)-1))
				}
				h.series = append(h.series, indexSeries(fmt.Sprintf("it %d", its[idx].Iteration), lighten(col, f), false, f64s(its[idx].Psi)))
			}
			p.f("%s\n", h.svg(smallW, smallH))
		}
		p.f("</div>\n")
		if len(ps.Iterations) == 0 {
			p.note("%s: psi.json has no iteration history", r.Name)
			continue
		}
		p.f("<table><tr><th>iteration</th><th>mean ψ</th><th>Σ pos</th><th>Σ neg</th><th>max |pos − neg|</th></tr>\n")
		for _, it := range ps.Iterations {
			sumPos, sumNeg, worst := 0, 0, 0
			for k := range it.Pos {
				sumPos += it.Pos[k]
				if k < len(it.Neg) {
					worst = max(worst, abs(it.Pos[k]-it.Neg[k]))
				}
			}
			for _, v := range it.Neg {
				sumNeg += v
			}
			p.f("<tr><td>%d</td><td>%s</td><td>%d</td><td>%d</td><td>%d</td></tr>\n", it.Iteration, fmtValue(meanOf(f64s(it.Psi))), sumPos, sumNeg, worst)
		}
		p.f("</table>\n")
	}
	return nil
}

// f64s widens psi.json's float32 values for drawing.
func f64s(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// thin picks at most k of n indices, evenly spaced, always the first and the last.
func thin(n, k int) []int {
	if n <= k {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	idx := make([]int, k)
	for i := range idx {
		idx[i] = int(math.Round(float64(i) * float64(n-1) / float64(k-1)))
	}
	return idx
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func meanOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// stageNames lists the stages the runs log, pipeline order first.
func stageNames(runs ...*Run) []string {
	seen := map[string]bool{}
	for _, r := range runs {
		for _, e := range r.Epochs {
			for s := range e.Stages {
				seen[s] = true
			}
		}
	}
	var names []string
	for _, s := range runfiles.Stages { // pipeline order; other stages follow sorted by name
		if seen[s] {
			names = append(names, s)
			delete(seen, s)
		}
	}
	var rest []string
	for s := range seen {
		rest = append(rest, s)
	}
	sort.Strings(rest)
	return append(names, rest...)
}

func timingSection(p *page, runs []*Run) error {
	p.f("<h2 id=\"timings\">Stage timings</h2>\n")
	// A stage has the same colour in every run's chart.
	stageColor := map[string]color.RGBA{}
	for j, name := range stageNames(runs...) {
		stageColor[name] = palette[j%len(palette)]
	}
	for i, r := range runs {
		names := stageNames(r)
		if len(names) == 0 {
			p.note("%s: no stage_seconds logged", r.Label())
			continue
		}
		c := &barChart{title: "stage seconds per epoch (stacked) and " + runfiles.KeyWallSeconds, xLabel: "epoch", stacked: true}
		wall := &series{label: runfiles.KeyWallSeconds, color: colText}
		var rows []Epoch
		for _, e := range r.Epochs {
			if len(e.Stages) > 0 {
				rows = append(rows, e)
			}
		}
		totals := make([]float64, len(names))
		for j, name := range names {
			s := barSeries{label: name, color: stageColor[name]}
			for _, e := range rows {
				s.values = append(s.values, e.Stages[name])
				totals[j] += e.Stages[name]
			}
			c.series = append(c.series, s)
		}
		for k, e := range rows {
			c.categories = append(c.categories, fmt.Sprint(e.Epoch))
			if v, ok := e.Value(runfiles.KeyWallSeconds); ok {
				wall.x, wall.y = append(wall.x, float64(k)), append(wall.y, v)
			}
		}
		if len(wall.x) > 0 {
			c.overlay = wall
		}
		p.f("<h3>%s%s</h3>\n%s\n", swatch(runColor(i)), esc(r.Label()), c.svg(wideW, smallH))
		sum := 0.0
		for _, t := range totals {
			sum += t
		}
		p.f("<table><tr><th>stage</th><th>mean seconds / epoch</th><th>share</th></tr>\n")
		for j, name := range names {
			share := 0.0
			if sum > 0 {
				share = 100 * totals[j] / sum
			}
			p.f("<tr><td>%s</td><td>%s</td><td>%.1f%%</td></tr>\n", esc(name), fmtValue(totals[j]/float64(len(rows))), share)
		}
		p.f("</table>\n")
	}
	p.f("<div class=\"grid\">")
	for _, k := range []string{runfiles.KeyWallSeconds, runfiles.KeySamplesPerSecond} {
		if c := curveChart(runs, k, runfiles.KeyEpoch); !c.empty() {
			p.f("%s\n", c.svg(smallW, smallH))
		}
	}
	p.f("</div>\n")
	return nil
}
