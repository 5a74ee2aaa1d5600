package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
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
	// Psi is psi.json, nil when the run has none.
	Psi *Psi
	// Sample is the path of the newest samples/*.png by name, "" when there is none.
	Sample string
}

// Label is the run's legend entry: its name plus "dense on/off" when known.
func (r *Run) Label() string {
	if r.Dense == "" {
		return r.Name
	}
	return r.Name + " (dense " + r.Dense + ")"
}

// Epoch is one line of metrics.jsonl. Only the epoch number is required; every other field
// is optional and kept by its JSON key.
type Epoch struct {
	// Epoch is the epoch number; 0 is the evaluation before training.
	Epoch int
	// Scalars holds every numeric field by key: "samples" (cumulative trajectories trained
	// on, up to and including this epoch), "reward_mean", "reward_std", "reward/<kind>",
	// "loss", "policy_loss", "kl", "approx_kl", "clip_frac", "grad_norm",
	// "eval_reward_mean", "eval/<kind>", "wall_seconds", "elapsed_seconds",
	// "samples_per_second", "dropped", ... A JSON null is treated as absent.
	Scalars map[string]float64
	// Vectors holds numeric arrays by key, indexed by sampler step k (0-based):
	// "dense_pos_frac", "dense_delta_mean", "dense_delta_std".
	Vectors map[string][]float64
	// Stages is "stage_seconds": seconds spent per pipeline stage in this epoch.
	Stages map[string]float64
}

// Value returns the scalar field key, if the line had it as a finite number.
func (e *Epoch) Value(key string) (float64, bool) {
	v, ok := e.Scalars[key]
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

// Psi is psi.json, written by `pipeline calibrate`.
type Psi struct {
	// Sigmas are the T+1 schedule values σ_0..σ_T.
	Sigmas []float64 `json:"sigmas"`
	// Start is the schedule ψ(k) = a·sqrt(σ_k/(1−σ_k)) the calibration started from, T values.
	Start []float64 `json:"start"`
	// Psi is the calibrated ψ(k), T values.
	Psi []float64 `json:"psi"`
	// Iterations is the calibration history.
	Iterations []PsiIteration `json:"iterations"`
}

// PsiIteration is one iteration of the calibration: ψ after the update and the per-step counts
// of positive and negative step rewards ΔR_k it was decided on.
type PsiIteration struct {
	Iteration int       `json:"iteration"`
	Psi       []float64 `json:"psi"`
	Pos       []int     `json:"pos"`
	Neg       []int     `json:"neg"`
}

// vectorKeys and stagesKey are the fields that must not be numbers; any other known field must
// be a number or null.
var vectorKeys = map[string]bool{"dense_pos_frac": true, "dense_delta_mean": true, "dense_delta_std": true}

const stagesKey = "stage_seconds"

// LoadRun reads a run directory: metrics.jsonl (required), config.toml, psi.json and
// samples/*.png (optional).
func LoadRun(dir string) (*Run, error) {
	r := &Run{Dir: dir, Name: filepath.Base(filepath.Clean(dir))}
	var err error
	if r.Epochs, err = readMetrics(filepath.Join(dir, "metrics.jsonl")); err != nil {
		return nil, err
	}
	if r.Dense, err = readDense(filepath.Join(dir, "config.toml")); err != nil {
		return nil, err
	}
	if r.Psi, err = readPsi(filepath.Join(dir, "psi.json")); err != nil {
		return nil, err
	}
	pngs, err := filepath.Glob(filepath.Join(dir, "samples", "*.png"))
	if err != nil {
		return nil, fmt.Errorf("list samples of %s: %w", dir, err)
	}
	if len(pngs) > 0 {
		sort.Strings(pngs)
		r.Sample = pngs[len(pngs)-1]
	}
	return r, nil
}

// readMetrics reads metrics.jsonl; a line that does not decode is an error naming file:line.
func readMetrics(path string) ([]Epoch, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open metrics: %w", err)
	}
	defer f.Close()
	byEpoch := map[int]Epoch{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 64<<20)
	for line := 1; sc.Scan(); line++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		e, err := parseEpoch(text)
		if err != nil {
			return nil, fmt.Errorf("read metrics %s:%d: %w", path, line, err)
		}
		byEpoch[e.Epoch] = e
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics %s: %w", path, err)
	}
	epochs := make([]Epoch, 0, len(byEpoch))
	for _, e := range byEpoch {
		epochs = append(epochs, e)
	}
	sort.Slice(epochs, func(i, j int) bool { return epochs[i].Epoch < epochs[j].Epoch })
	return epochs, nil
}

// parseEpoch decodes one metrics line.
func parseEpoch(line []byte) (Epoch, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(line, &fields); err != nil {
		return Epoch{}, err
	}
	e := Epoch{Scalars: map[string]float64{}, Vectors: map[string][]float64{}}
	raw, ok := fields["epoch"]
	if !ok {
		return Epoch{}, errors.New(`missing field "epoch"`)
	}
	if err := json.Unmarshal(raw, &e.Epoch); err != nil {
		return Epoch{}, fmt.Errorf("field epoch: %w", err)
	}
	for key, raw := range fields {
		if key == "epoch" || string(raw) == "null" {
			continue
		}
		switch {
		case key == stagesKey:
			if err := json.Unmarshal(raw, &e.Stages); err != nil {
				return Epoch{}, fmt.Errorf("field %s: %w", key, err)
			}
		case vectorKeys[key]:
			var v []float64
			if err := json.Unmarshal(raw, &v); err != nil {
				return Epoch{}, fmt.Errorf("field %s: %w", key, err)
			}
			e.Vectors[key] = v
		default:
			var v float64
			if err := json.Unmarshal(raw, &v); err != nil {
				// Fields the report does not draw (a prompt, a flag) may be any JSON.
				if knownScalar(key) {
					return Epoch{}, fmt.Errorf("field %s: %w", key, err)
				}
				continue
			}
			e.Scalars[key] = v
		}
	}
	return e, nil
}

// knownScalar reports whether the report draws key as a number, so that another type is an
// error rather than a field to skip.
func knownScalar(key string) bool {
	switch key {
	case "samples", "reward_mean", "reward_std", "loss", "policy_loss", "kl", "approx_kl",
		"clip_frac", "grad_norm", "eval_reward_mean", "wall_seconds", "elapsed_seconds",
		"samples_per_second", "dropped":
		return true
	}
	return strings.HasPrefix(key, "reward/") || strings.HasPrefix(key, "eval/")
}

// readDense reads [dense] enabled from the resolved config; a missing file or key is "".
func readDense(path string) (string, error) {
	var cfg map[string]any
	if _, err := toml.DecodeFile(path, &cfg); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("read config %s: %w", path, err)
	}
	dense, ok := cfg["dense"].(map[string]any)
	if !ok {
		return "", nil
	}
	switch v := dense["enabled"].(type) {
	case bool:
		if v {
			return "on", nil
		}
		return "off", nil
	case nil:
		return "", nil
	default:
		return "", fmt.Errorf("read config %s: dense.enabled: got %v (%T), want a boolean", path, v, v)
	}
}

// readPsi reads psi.json; a missing file is nil.
func readPsi(path string) (*Psi, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read psi: %w", err)
	}
	var p Psi
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("decode psi %s: %w", path, err)
	}
	return &p, nil
}
