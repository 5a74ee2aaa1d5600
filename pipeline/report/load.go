package report

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// Run is everything the report reads from one run directory.
type Run struct {
	// Dir is the run directory as given.
	Dir string
	// Name is the directory's base name (the cleaned path when two runs share a base name).
	Name string
	// Dense is "on" or "off" from config.toml's [dense] enabled, "" when it cannot be told
	// (no config.toml, or no such key).
	Dense string
	// Epochs are the lines of metrics.jsonl, sorted by epoch; a later line for the same epoch
	// (a resumed run re-writing it) replaces the earlier one.
	Epochs []Epoch
	// Sampler is config.toml's [sampler] kind ("sde", "cps"), "" when it cannot be told.
	Sampler string
	// Psi is psi.json, nil when the run has none.
	Psi *runfiles.Psi
	// Samples are the paths of samples/*.png in the order the report shows them: the
	// before/after grid, the evaluation grids (eval-*.png), the training grids (epoch-*.png),
	// then any other, each group by name.
	Samples []string
}

// Label is the run's legend entry: its name plus "dense on/off" when known.
func (r *Run) Label() string {
	if r.Dense == "" {
		return r.Name
	}
	return r.Name + " (dense " + r.Dense + ")"
}

// Epoch is one line of metrics.jsonl (runfiles.Line) as the charts read it: numbers, per-step
// arrays and stage seconds by key. Only the epoch number is required.
type Epoch struct {
	// Epoch is the epoch number; 0 is the evaluation before training.
	Epoch int
	// Scalars holds every numeric field by key (runfiles.Line.Scalars): "samples"
	// (cumulative trajectories trained on, up to and including this epoch), "reward_mean",
	// "reward/<name>", "loss", "eval_reward_mean", "eval/<name>", "wall_seconds", ... A JSON
	// null is treated as absent.
	Scalars map[string]float64
	// Vectors holds numeric arrays by key, indexed by sampler step k (0-based):
	// "dense_pos_frac", "dense_delta_mean", "dense_delta_std", and on audited epochs of a run
	// with dense.queries the "query_*" accuracy of the predicted rewards.
	Vectors map[string][]float64
	// Stages is "stage_seconds": seconds spent per pipeline stage in this epoch.
	Stages map[string]float64
	// Totals is "eval_totals" on evaluation epochs: each test prompt's reward, in prompt order.
	Totals []float64
}

// epochOf is the chart view of a metrics line.
func epochOf(l runfiles.Line) Epoch {
	e := Epoch{Epoch: l.Epoch, Scalars: l.Scalars(), Vectors: l.Vectors()}
	if l.Train != nil {
		e.Stages = l.Train.StageSeconds
	}
	if l.Eval != nil {
		e.Totals = l.Eval.Totals
	}
	return e
}

// Value returns the scalar field key, if the line had it as a finite number.
func (e *Epoch) Value(key string) (float64, bool) {
	v, ok := e.Scalars[key]
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

// LoadRun reads a run directory: metrics.jsonl (required), config.toml, psi.json and
// samples/*.png (optional).
func LoadRun(dir string) (*Run, error) {
	r := &Run{Dir: dir, Name: filepath.Base(filepath.Clean(dir))}
	var err error
	if r.Epochs, err = readMetrics(filepath.Join(dir, runfiles.MetricsFile)); err != nil {
		return nil, err
	}
	if r.Dense, r.Sampler, err = readConfig(filepath.Join(dir, "config.toml")); err != nil {
		return nil, err
	}
	if r.Psi, err = readPsi(filepath.Join(dir, runfiles.PsiFile)); err != nil {
		return nil, err
	}
	pngs, err := filepath.Glob(filepath.Join(dir, "samples", "*.png"))
	if err != nil {
		return nil, fmt.Errorf("list samples of %s: %w", dir, err)
	}
	r.Samples = sampleOrder(pngs)
	return r, nil
}

// sampleOrder sorts sample grid paths as Run.Samples lists them.
func sampleOrder(paths []string) []string {
	group := func(p string) int {
		switch b := filepath.Base(p); {
		case b == runfiles.BeforeAfterFile:
			return 0
		case strings.HasPrefix(b, "eval-"):
			return 1
		case strings.HasPrefix(b, "epoch-"):
			return 2
		}
		return 3
	}
	out := slices.Clone(paths)
	sort.Slice(out, func(i, j int) bool {
		if gi, gj := group(out[i]), group(out[j]); gi != gj {
			return gi < gj
		}
		return out[i] < out[j]
	})
	return out
}

// readMetrics reads metrics.jsonl (runfiles.ReadMetrics), one Epoch per epoch: a later line
// for the same epoch (a resumed run re-writing it) replaces the earlier one.
func readMetrics(path string) ([]Epoch, error) {
	lines, err := runfiles.ReadMetrics(path)
	if err != nil {
		return nil, err
	}
	byEpoch := map[int]Epoch{}
	for _, l := range lines {
		byEpoch[l.Epoch] = epochOf(l)
	}
	epochs := make([]Epoch, 0, len(byEpoch))
	for _, e := range byEpoch {
		epochs = append(epochs, e)
	}
	sort.Slice(epochs, func(i, j int) bool { return epochs[i].Epoch < epochs[j].Epoch })
	return epochs, nil
}

// readConfig reads [dense] enabled ("on"/"off") and [sampler] kind from the resolved config;
// a missing file or key is "".
func readConfig(path string) (dense, sampler string, err error) {
	var cfg map[string]any
	if _, err := toml.DecodeFile(path, &cfg); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", "", nil
		}
		return "", "", fmt.Errorf("read config %s: %w", path, err)
	}
	if s, ok := cfg["sampler"].(map[string]any); ok {
		sampler, _ = s["kind"].(string)
	}
	d, ok := cfg["dense"].(map[string]any)
	if !ok {
		return "", sampler, nil
	}
	switch v := d["enabled"].(type) {
	case bool:
		if v {
			return "on", sampler, nil
		}
		return "off", sampler, nil
	case nil:
		return "", sampler, nil
	default:
		return "", "", fmt.Errorf("read config %s: dense.enabled: got %v (%T), want a boolean", path, v, v)
	}
}

// readPsi reads psi.json; a missing file is nil.
func readPsi(path string) (*runfiles.Psi, error) {
	p, err := runfiles.ReadPsi(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return p, err
}
