// Package runfiles owns the schemas of the run-directory files that more than one package
// reads: metrics.jsonl (Line, one per epoch) and psi.json (Psi). The pipeline writes them, and
// the report and --resume read them, through these types only, so every key is spelled here
// (in the struct tags; the Key constants name the ones other packages draw by name, and a test
// checks them against the tags).
package runfiles

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strings"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/internal/limitfile"
)

// File names in a run directory.
const (
	MetricsFile = "metrics.jsonl"
	PsiFile     = "psi.json"
	// SamplesDir holds the PNG grids: eval-EPOCH.png, epoch-EPOCH.png and BeforeAfterFile.
	SamplesDir = "samples"
	// BeforeAfterFile (in SamplesDir) shows the first test prompts before and after training.
	BeforeAfterFile = "before-after.png"
)

// Stage names, the keys of Train.StageSeconds, in pipeline order (Stages).
const (
	StageRollout   = "rollout"
	StageLookahead = "lookahead"
	StageDecode    = "decode"
	StageScore     = "score"
	StageTrain     = "train"
)

// Stages lists the stages in pipeline order.
var Stages = []string{StageRollout, StageLookahead, StageDecode, StageScore, StageTrain}

// Keys of metrics lines that other packages draw by name (each is a tag below).
const (
	KeyEpoch            = "epoch"
	KeySamples          = "samples"
	KeyRewardMean       = "reward_mean"
	KeyRewardStd        = "reward_std"
	KeyLoss             = "loss"
	KeyPolicyLoss       = "policy_loss"
	KeyKL               = "kl"
	KeyApproxKL         = "approx_kl"
	KeyClipFrac         = "clip_frac"
	KeyRatioMean        = "ratio_mean"
	KeyGradNorm         = "grad_norm"
	KeyUpdates          = "updates"
	KeyDropped          = "dropped"
	KeyDensePosFrac     = "dense_pos_frac"
	KeyDenseDeltaMean   = "dense_delta_mean"
	KeyDenseDeltaStd    = "dense_delta_std"
	KeyScoredImages     = "scored_images"
	KeyQueryRCorr       = "query_r_corr"
	KeyQueryRMAE        = "query_r_mae"
	KeyQueryDeltaSign   = "query_delta_sign"
	KeyQueryDeltaCorr   = "query_delta_corr"
	KeyQueryDeltaZero   = "query_delta_zero"
	KeyQueryDeltaMoved  = "query_delta_sign_moved"
	KeyQueryFrac        = "query_frac"
	KeyStageSeconds     = "stage_seconds"
	KeyWallSeconds      = "wall_seconds"
	KeySamplesPerSecond = "samples_per_second"
	KeyElapsedSeconds   = "elapsed_seconds"
	KeyEvalRewardMean   = "eval_reward_mean"
	KeyEvalN            = "eval_n"
	KeyEvalTotals       = "eval_totals"
	KeyEvalHeldoutMean  = "eval_heldout_mean"
)

// Prefixes of the per-reward keys: "reward/<name>" (Train.Rewards), "eval/<name>"
// (Eval.Rewards) and "heldout/<name>" (Eval.Heldout).
const (
	RewardPrefix  = "reward/"
	EvalPrefix    = "eval/"
	HeldoutPrefix = "heldout/"
)

// Line is one line of metrics.jsonl: one epoch. Epoch 0 is the evaluation before training
// (Train nil); Eval is set on the epochs that evaluated. Not-a-number values are written as
// JSON null and read back as NaN.
type Line struct {
	Epoch int `json:"epoch"`
	*Train
	*Eval
	// Other holds numeric fields of other names (a line of another version), kept so a report
	// can still draw them.
	Other map[string]float64 `json:"-"`

	// present, for a decoded line, is the set of keys it had; a field not in it is absent, not
	// zero. Nil for a line made in memory (every field of a non-nil part is present).
	present map[string]bool
}

// Train are the statistics of a training epoch.
type Train struct {
	// Samples is the number of trajectories sampled so far (cumulative).
	Samples int `json:"samples"`
	// RewardMean and RewardStd are over the epoch's final rewards (weighted total).
	RewardMean float64 `json:"reward_mean"`
	RewardStd  float64 `json:"reward_std"`
	// Rewards is each reward alone (mean at the final images), written as "reward/<name>".
	Rewards map[string]float64 `json:"-"`
	// Loss is the GRPO objective, PolicyLoss its clipped-ratio part, KL the KL to the
	// reference: means over the trained samples and steps.
	Loss       float64 `json:"loss"`
	PolicyLoss float64 `json:"policy_loss"`
	KL         float64 `json:"kl"`
	// ApproxKL = ½·mean((log p_θ − log p_old)²), ClipFrac the fraction of clipped ratios,
	// RatioMean the mean ratio.
	ApproxKL  float64 `json:"approx_kl"`
	ClipFrac  float64 `json:"clip_frac"`
	RatioMean float64 `json:"ratio_mean"`
	// GradNorm is the global gradient norm before clipping (mean over updates).
	GradNorm float64 `json:"grad_norm"`
	// Updates is the number of AdamW steps, Dropped the samples left out for zero advantages.
	Updates int `json:"updates"`
	Dropped int `json:"dropped"`
	// DensePosFrac, DenseDeltaMean and DenseDeltaStd are, per trained step k (DenseGRPO only),
	// the fraction of ΔR_k > 0 and the mean and std of ΔR_k.
	DensePosFrac   []float64 `json:"dense_pos_frac,omitempty"`
	DenseDeltaMean []float64 `json:"dense_delta_mean,omitempty"`
	DenseDeltaStd  []float64 `json:"dense_delta_std,omitempty"`
	// ScoredImages is the number of images decoded and scored in the epoch (with
	// dense.queries > 0, K per trajectory, all of them in an audited epoch).
	ScoredImages int `json:"scored_images"`
	// QueryRCorr, QueryRMAE, QueryDeltaSign and QueryFrac measure SDPO's predicted rewards
	// (dense.queries > 0) against every state scored, on an audited epoch's trajectories
	// (rl.QueryAccuracy): per state k = 0 … trained, the correlation and mean absolute
	// difference of the R_k training used with the scored R_k and the fraction of samples whose
	// state k was queried; per trained step, the fraction whose ΔR_k has the scored ΔR_k's
	// sign, the correlation of the two ΔR_k, the fraction whose scored ΔR_k is 0 and the sign
	// agreement among the others.
	QueryRCorr      []float64 `json:"query_r_corr,omitempty"`
	QueryRMAE       []float64 `json:"query_r_mae,omitempty"`
	QueryDeltaSign  []float64 `json:"query_delta_sign,omitempty"`
	QueryDeltaCorr  []float64 `json:"query_delta_corr,omitempty"`
	QueryDeltaZero  []float64 `json:"query_delta_zero,omitempty"`
	QueryDeltaMoved []float64 `json:"query_delta_sign_moved,omitempty"`
	QueryFrac       []float64 `json:"query_frac,omitempty"`
	// StageSeconds are the busy seconds of each stage (Stages).
	StageSeconds map[string]float64 `json:"stage_seconds"`
	// CollectWallSeconds is the wall time of rollout → score, WallSeconds of the whole epoch,
	// ElapsedSeconds since the run started (across resumes).
	CollectWallSeconds float64 `json:"collect_wall_seconds"`
	WallSeconds        float64 `json:"wall_seconds"`
	SamplesPerSecond   float64 `json:"samples_per_second"`
	ElapsedSeconds     float64 `json:"elapsed_seconds"`
}

// Eval is an evaluation: EMA adapters (the base model at epoch 0), ODE sampling of the test
// prompts.
type Eval struct {
	RewardMean float64 `json:"eval_reward_mean"`
	N          int     `json:"eval_n"`
	// Totals is each prompt's weighted total, so two evaluations can be compared prompt by
	// prompt.
	Totals []float64 `json:"eval_totals"`
	// Rewards is each reward and extra metric alone ("ocr", "ocr.exact"), written as
	// "eval/<name>".
	Rewards map[string]float64 `json:"-"`
	// HeldoutMean is the mean weighted total of the held-out rewards ([[eval.reward]]), nil
	// (and not written) without them; Heldout each held-out reward and extra metric alone,
	// written as "heldout/<name>".
	HeldoutMean *float64           `json:"eval_heldout_mean"`
	Heldout     map[string]float64 `json:"-"`
}

// field is one tagged field of Train or Eval.
type field struct {
	key   string
	index int
}

var (
	trainFields = tagged(reflect.TypeFor[Train]())
	evalFields  = tagged(reflect.TypeFor[Eval]())
)

// tagged lists the JSON-tagged fields of a struct type.
func tagged(t reflect.Type) []field {
	var out []field
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, field{name, i})
		}
	}
	return out
}

// Keys returns every fixed key a line may have, sorted (the per-reward keys are prefixed by
// RewardPrefix or EvalPrefix).
func Keys() []string {
	keys := []string{KeyEpoch}
	for _, f := range append(append([]field(nil), trainFields...), evalFields...) {
		keys = append(keys, f.key)
	}
	sort.Strings(keys)
	return keys
}

// jsonNumber maps NaN and ±Inf to nil (JSON null): JSON has no such numbers.
func jsonNumber(v float64) any {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return v
}

// jsonValue is a field's value for encoding, non-finite floats as null.
func jsonValue(v reflect.Value) (any, bool) {
	switch x := v.Interface().(type) {
	case float64:
		return jsonNumber(x), true
	case []float64:
		if x == nil {
			return nil, false
		}
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonNumber(e)
		}
		return out, true
	case map[string]float64:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonNumber(e)
		}
		return out, true
	case *float64: // optional: absent when nil
		if x == nil {
			return nil, false
		}
		return jsonNumber(*x), true
	default:
		return x, true
	}
}

// MarshalJSON writes the line as one flat JSON object, keys sorted.
func (l Line) MarshalJSON() ([]byte, error) {
	m := map[string]any{KeyEpoch: l.Epoch}
	add := func(v reflect.Value, fields []field, prefix string, rewards map[string]float64) {
		for _, f := range fields {
			if x, ok := jsonValue(v.Field(f.index)); ok {
				m[f.key] = x
			}
		}
		for name, r := range rewards {
			m[prefix+name] = jsonNumber(r)
		}
	}
	if l.Train != nil {
		add(reflect.ValueOf(*l.Train), trainFields, RewardPrefix, l.Train.Rewards)
	}
	if l.Eval != nil {
		add(reflect.ValueOf(*l.Eval), evalFields, EvalPrefix, l.Eval.Rewards)
		for name, r := range l.Eval.Heldout {
			m[HeldoutPrefix+name] = jsonNumber(r)
		}
	}
	for k, v := range l.Other {
		if _, taken := m[k]; !taken {
			m[k] = jsonNumber(v)
		}
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads a line. "epoch" is required; a known key of the wrong type is an error
// naming it; null numbers read as NaN; other numeric keys go to Other, other values are
// skipped.
func (l *Line) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	out := Line{present: map[string]bool{}}
	r, ok := raw[KeyEpoch]
	if !ok {
		return fmt.Errorf("missing field %q", KeyEpoch)
	}
	if err := json.Unmarshal(r, &out.Epoch); err != nil {
		return fmt.Errorf("field %s: %w", KeyEpoch, err)
	}
	delete(raw, KeyEpoch)
	var train Train
	var eval Eval
	read := func(v reflect.Value, fields []field) (bool, error) {
		any := false
		for _, f := range fields {
			r, ok := raw[f.key]
			if !ok {
				continue
			}
			delete(raw, f.key)
			any = true
			out.present[f.key] = true
			if err := decodeField(r, v.Field(f.index)); err != nil {
				return false, fmt.Errorf("field %s: %w", f.key, err)
			}
		}
		return any, nil
	}
	hasTrain, err := read(reflect.ValueOf(&train).Elem(), trainFields)
	if err != nil {
		return err
	}
	hasEval, err := read(reflect.ValueOf(&eval).Elem(), evalFields)
	if err != nil {
		return err
	}
	for k, r := range raw {
		var v *float64
		if err := json.Unmarshal(r, &v); err != nil {
			if strings.HasPrefix(k, RewardPrefix) || strings.HasPrefix(k, EvalPrefix) || strings.HasPrefix(k, HeldoutPrefix) {
				return fmt.Errorf("field %s: %w", k, err)
			}
			continue // not a number: a field no one here draws
		}
		x := math.NaN()
		if v != nil {
			x = *v
		}
		out.present[k] = true
		switch {
		case strings.HasPrefix(k, RewardPrefix):
			if train.Rewards == nil {
				train.Rewards = map[string]float64{}
			}
			train.Rewards[strings.TrimPrefix(k, RewardPrefix)], hasTrain = x, true
		case strings.HasPrefix(k, EvalPrefix):
			if eval.Rewards == nil {
				eval.Rewards = map[string]float64{}
			}
			eval.Rewards[strings.TrimPrefix(k, EvalPrefix)], hasEval = x, true
		case strings.HasPrefix(k, HeldoutPrefix):
			if eval.Heldout == nil {
				eval.Heldout = map[string]float64{}
			}
			eval.Heldout[strings.TrimPrefix(k, HeldoutPrefix)], hasEval = x, true
		default:
			if out.Other == nil {
				out.Other = map[string]float64{}
			}
			out.Other[k] = x
		}
	}
	if hasTrain {
		out.Train = &train
	}
	if hasEval {
		out.Eval = &eval
	}
	*l = out
	return nil
}

// decodeField decodes r into the field v, null numbers (alone, in arrays, in objects) as NaN.
func decodeField(r json.RawMessage, v reflect.Value) error {
	switch p := v.Addr().Interface().(type) {
	case *float64:
		var x *float64
		if err := json.Unmarshal(r, &x); err != nil {
			return err
		}
		*p = nanIfNil(x)
	case *[]float64:
		var xs []*float64
		if err := json.Unmarshal(r, &xs); err != nil {
			return err
		}
		*p = make([]float64, len(xs))
		for i, x := range xs {
			(*p)[i] = nanIfNil(x)
		}
	case **float64:
		var x *float64
		if err := json.Unmarshal(r, &x); err != nil {
			return err
		}
		v := nanIfNil(x)
		*p = &v
	case *map[string]float64:
		var xs map[string]*float64
		if err := json.Unmarshal(r, &xs); err != nil {
			return err
		}
		*p = make(map[string]float64, len(xs))
		for k, x := range xs {
			(*p)[k] = nanIfNil(x)
		}
	default:
		return json.Unmarshal(r, p)
	}
	return nil
}

func nanIfNil(x *float64) float64 {
	if x == nil {
		return math.NaN()
	}
	return *x
}

// has reports whether the line has key (a decoded line: it had the key; a line made in
// memory: the key's part is set).
func (l *Line) has(key string) bool { return l.present == nil || l.present[key] }

// Scalars returns every number of the line by key, the per-reward ones prefixed, NaN and
// absent fields left out ("epoch" is not among them).
func (l *Line) Scalars() map[string]float64 {
	out := map[string]float64{}
	put := func(k string, v float64) {
		if l.has(k) && !math.IsNaN(v) && !math.IsInf(v, 0) {
			out[k] = v
		}
	}
	add := func(v reflect.Value, fields []field, prefix string, rewards map[string]float64) {
		for _, f := range fields {
			switch x := v.Field(f.index).Interface().(type) {
			case float64:
				put(f.key, x)
			case *float64:
				if x != nil {
					put(f.key, *x)
				}
			case int:
				put(f.key, float64(x))
			}
		}
		for name, r := range rewards {
			put(prefix+name, r)
		}
	}
	if l.Train != nil {
		add(reflect.ValueOf(*l.Train), trainFields, RewardPrefix, l.Train.Rewards)
	}
	if l.Eval != nil {
		add(reflect.ValueOf(*l.Eval), evalFields, EvalPrefix, l.Eval.Rewards)
		for name, r := range l.Eval.Heldout {
			put(HeldoutPrefix+name, r)
		}
	}
	for k, v := range l.Other {
		put(k, v)
	}
	return out
}

// Vectors returns the per-step arrays the line has (DenseGRPO's dense_* statistics) by key.
func (l *Line) Vectors() map[string][]float64 {
	out := map[string][]float64{}
	if l.Train == nil {
		return out
	}
	for _, f := range trainFields {
		if x, ok := reflect.ValueOf(*l.Train).Field(f.index).Interface().([]float64); ok && x != nil && l.has(f.key) {
			out[f.key] = x
		}
	}
	return out
}

// ReadMetrics reads metrics.jsonl. A line that does not decode is an error naming file:line,
// except an unterminated last line (a run killed while writing it), which is dropped.
func ReadMetrics(path string) ([]Line, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	var out []Line
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 64<<20)
	for n := 1; sc.Scan(); n++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		var l Line
		if err := json.Unmarshal(text, &l); err != nil {
			if !bytes.HasSuffix(data, []byte("\n")) && n == bytes.Count(data, []byte("\n"))+1 {
				break // the unterminated last line
			}
			return nil, fmt.Errorf("read metrics %s:%d: %w", path, n, err)
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics %s: %w", path, err)
	}
	return out, nil
}

// Psi is psi.json: DenseGRPO's calibrated exploration noise ψ(k), written by `pipeline
// calibrate`, read by training (sampler.psi), copied into the run directory and drawn by the
// report.
type Psi struct {
	// Sigmas are the T+1 schedule values σ_0 … σ_T it was calibrated on.
	Sigmas []float32 `json:"sigmas"`
	// Start is the ψ(k) = a·sqrt(σ_k/(1−σ_k)) calibration started from, T values.
	Start []float32 `json:"start"`
	// Psi is the calibrated ψ(k), T values.
	Psi []float32 `json:"psi"`
	// NoiseLevel is a of Start.
	NoiseLevel float64 `json:"noise_level"`
	// Iterations is the calibration history.
	Iterations []PsiIteration `json:"iterations"`
}

// PsiIteration is one calibration round: the ψ it sampled with and, per step, how many ΔR_k
// were positive and negative.
type PsiIteration struct {
	Iteration int       `json:"iteration"`
	Psi       []float32 `json:"psi"`
	Pos       []int     `json:"pos"`
	Neg       []int     `json:"neg"`
}

// ReadPsi reads a psi.json; a missing file is an error wrapping fs.ErrNotExist.
func ReadPsi(path string) (*Psi, error) {
	data, err := limitfile.Read(path, limitfile.Data, "a psi.json")
	if err != nil {
		return nil, fmt.Errorf("read psi: %w", err)
	}
	var p Psi
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("decode psi %s: %w", path, err)
	}
	return &p, nil
}

// WritePsi writes p to path atomically, indented.
func WritePsi(path string, p *Psi) error {
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("write psi %s: %w", path, err)
	}
	return atomicfile.WriteBytes(path, data)
}
