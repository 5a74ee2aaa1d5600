package runfiles

import (
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every Key constant is a key of the schema (a tag of Line's parts), so a renamed field cannot
// leave another package drawing a key no line has.
func TestKeysAreTags(t *testing.T) {
	keys := Keys()
	for _, k := range []string{KeyEpoch, KeySamples, KeyRewardMean, KeyRewardStd, KeyLoss, KeyPolicyLoss, KeyKL,
		KeyApproxKL, KeyClipFrac, KeyRatioMean, KeyGradNorm, KeyUpdates, KeyDropped, KeyDensePosFrac,
		KeyDenseDeltaMean, KeyDenseDeltaStd, KeyStageSeconds, KeyWallSeconds, KeySamplesPerSecond,
		KeyElapsedSeconds, KeyEvalRewardMean, KeyEvalN, KeyEvalTotals, KeyEvalHeldoutMean, KeyScoredImages, KeyQueryRCorr, KeyQueryRMAE,
		KeyQueryDeltaSign, KeyQueryDeltaCorr, KeyQueryDeltaZero, KeyQueryDeltaMoved, KeyQueryFrac} {
		if !slices.Contains(keys, k) {
			t.Errorf("key constant %q is no field of Line (keys %v)", k, keys)
		}
	}
}

func fullLine() Line {
	return Line{Epoch: 3, Train: &Train{
		Samples: 96, RewardMean: 0.5, RewardStd: 0.25, Rewards: map[string]float64{"ocr": 0.5},
		Loss: 1e-4, PolicyLoss: 2e-4, KL: math.NaN(), ApproxKL: 1e-9, ClipFrac: 0, RatioMean: 1, GradNorm: 0.75,
		Updates: 2, Dropped: 1, DensePosFrac: []float64{0.5, 0.25}, DenseDeltaMean: []float64{0.125, -0.5},
		DenseDeltaStd: []float64{1, math.Inf(1)}, ScoredImages: 64, QueryRCorr: []float64{1, math.NaN(), 0.5},
		QueryRMAE: []float64{0, 0.25, 0.125}, QueryDeltaSign: []float64{0.75, 0.5}, QueryDeltaCorr: []float64{0.5, -0.25}, QueryDeltaZero: []float64{0.25, 0}, QueryDeltaMoved: []float64{math.NaN(), 0.5}, QueryFrac: []float64{1, 0.5, 0.25}, StageSeconds: map[string]float64{StageRollout: 1.5, StageTrain: 2},
		CollectWallSeconds: 3, WallSeconds: 5, SamplesPerSecond: 6.4, ElapsedSeconds: 15,
	}, Eval: &Eval{RewardMean: 0.625, N: 2, Totals: []float64{0.5, 0.75}, Rewards: map[string]float64{"ocr": 0.625, "ocr.exact": 0.5}}}
}

// The encoding is the flat, key-sorted object earlier versions wrote from a map, with JSON
// null where a value is not a number; decoding gives the line back, null as NaN.
func TestLineRoundTrip(t *testing.T) {
	data, err := json.Marshal(fullLine())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"approx_kl":1e-9,"clip_frac":0,"collect_wall_seconds":3,"dense_delta_mean":[0.125,-0.5],` +
		`"dense_delta_std":[1,null],"dense_pos_frac":[0.5,0.25],"dropped":1,"elapsed_seconds":15,"epoch":3,` +
		`"eval/ocr":0.625,"eval/ocr.exact":0.5,"eval_n":2,"eval_reward_mean":0.625,"eval_totals":[0.5,0.75],` +
		`"grad_norm":0.75,"kl":null,"loss":0.0001,"policy_loss":0.0002,` +
		`"query_delta_corr":[0.5,-0.25],"query_delta_sign":[0.75,0.5],"query_delta_sign_moved":[null,0.5],"query_delta_zero":[0.25,0],"query_frac":[1,0.5,0.25],"query_r_corr":[1,null,0.5],"query_r_mae":[0,0.25,0.125],` +
		`"ratio_mean":1,"reward/ocr":0.5,` +
		`"reward_mean":0.5,"reward_std":0.25,"samples":96,"samples_per_second":6.4,"scored_images":64,` +
		`"stage_seconds":{"rollout":1.5,"train":2},"updates":2,"wall_seconds":5}`
	if string(data) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", data, want)
	}
	var back Line
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(back.Train.KL) || !math.IsInf(fullLine().Train.DenseDeltaStd[1], 1) || !math.IsNaN(back.Train.DenseDeltaStd[1]) {
		t.Errorf("non-finite values: kl %v, dense_delta_std %v; want NaN for each null", back.Train.KL, back.Train.DenseDeltaStd)
	}
	again, err := json.Marshal(back)
	if err != nil || string(again) != want {
		t.Errorf("re-encoded (err %v)\n%s\nwant\n%s", err, again, want)
	}
	sc := back.Scalars()
	if _, ok := sc[KeyKL]; ok || sc["reward/ocr"] != 0.5 || sc["eval/ocr.exact"] != 0.5 || sc[KeyUpdates] != 2 {
		t.Errorf("scalars %v: want no kl (NaN), reward/ocr 0.5, eval/ocr.exact 0.5, updates 2", sc)
	}
	if v := back.Vectors(); len(v) != 10 || v[KeyDensePosFrac][1] != 0.25 || !math.IsNaN(v[KeyQueryRCorr][1]) {
		t.Errorf("vectors %v, want the three dense statistics and the seven of the predicted rewards", v)
	}
}

// Held-out rewards ([[eval.reward]]) are written as eval_heldout_mean and heldout/<name> and read
// back; a line without them has neither key.
func TestLineHeldout(t *testing.T) {
	mean := 0.25
	l := Line{Epoch: 2, Eval: &Eval{RewardMean: 0.75, N: 1, Totals: []float64{0.75}, Rewards: map[string]float64{"ocr": 0.75},
		HeldoutMean: &mean, Heldout: map[string]float64{"judge": 0.25, "judge.exact": 0}}}
	data, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"epoch":2,"eval/ocr":0.75,"eval_heldout_mean":0.25,"eval_n":1,"eval_reward_mean":0.75,"eval_totals":[0.75],"heldout/judge":0.25,"heldout/judge.exact":0}`
	if string(data) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", data, want)
	}
	var back Line
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back.Eval.HeldoutMean == nil || *back.Eval.HeldoutMean != 0.25 || back.Eval.Heldout["judge.exact"] != 0 || back.Eval.Heldout["judge"] != 0.25 {
		t.Errorf("decoded %+v", back.Eval)
	}
	if sc := back.Scalars(); sc[KeyEvalHeldoutMean] != 0.25 || sc[HeldoutPrefix+"judge"] != 0.25 {
		t.Errorf("scalars %v", sc)
	}
	l.Eval.HeldoutMean, l.Eval.Heldout = nil, nil
	if data, _ = json.Marshal(l); strings.Contains(string(data), "heldout") {
		t.Errorf("without held-out rewards: %s", data)
	}
	if err := json.Unmarshal(data, &back); err != nil || back.Eval.HeldoutMean != nil {
		t.Errorf("decoded without held-out: %v, %v", err, back.Eval.HeldoutMean)
	}
	if _, ok := back.Scalars()[KeyEvalHeldoutMean]; ok {
		t.Errorf("scalars without held-out have %s", KeyEvalHeldoutMean)
	}
}

// A decoded line knows which keys it had: an absent field is not a zero; epoch 0 has no
// training part; unknown numbers are kept, other unknown values skipped; wrong types are
// errors naming the field.
func TestLinePartial(t *testing.T) {
	var l Line
	if err := json.Unmarshal([]byte(`{"epoch":0,"eval_reward_mean":0.3,"eval/ocr":0.3,"note":"x","custom":2}`), &l); err != nil {
		t.Fatal(err)
	}
	if l.Train != nil || l.Eval == nil || l.Eval.RewardMean != 0.3 || l.Other["custom"] != 2 {
		t.Fatalf("line %+v (eval %+v): want no training part, the evaluation and custom = 2", l, l.Eval)
	}
	if sc := l.Scalars(); len(sc) != 3 || sc["custom"] != 2 {
		t.Errorf("scalars %v, want eval_reward_mean, eval/ocr and custom only (no eval_n: absent)", sc)
	}
	if err := json.Unmarshal([]byte(`{"epoch":1,"samples":4,"reward_mean":0.5}`), &l); err != nil {
		t.Fatal(err)
	}
	if sc := l.Scalars(); len(sc) != 2 {
		t.Errorf("scalars %v, want samples and reward_mean only", sc)
	}
	for _, tc := range []struct{ text, want string }{
		{`{"reward_mean":0.1}`, `missing field "epoch"`},
		{`{"epoch":1.5}`, "field epoch"},
		{`{"epoch":1,"reward_mean":"high"}`, "field reward_mean"},
		{`{"epoch":1,"dense_pos_frac":0.5}`, "field dense_pos_frac"},
		{`{"epoch":1,"stage_seconds":[1,2]}`, "field stage_seconds"},
		{`{"epoch":1,"reward/ocr":"x"}`, "field reward/ocr"},
	} {
		if err := json.Unmarshal([]byte(tc.text), &l); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

// An unterminated last line (a run killed while writing it) is dropped; any other bad line is
// an error naming file:line.
func TestReadMetrics(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, MetricsFile)
	if err := os.WriteFile(path, []byte("{\"epoch\":0}\n\n{\"epoch\":1}\n{\"epoch\":2,\"lo"), 0o644); err != nil {
		t.Fatal(err)
	}
	lines, err := ReadMetrics(path)
	if err != nil || len(lines) != 2 || lines[1].Epoch != 1 {
		t.Fatalf("got %d lines (err %v), want epochs 0 and 1", len(lines), err)
	}
	if err := os.WriteFile(path, []byte("{\"epoch\":0}\n{\"epoch\":1,\"lo\n{\"epoch\":2}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMetrics(path); err == nil || !strings.Contains(err.Error(), MetricsFile+":2:") {
		t.Errorf("got %v, want an error naming %s:2", err, MetricsFile)
	}
}

// The committed ψ decodes and encodes back to the same bytes (calibrate writes this schema).
func TestPsiSchema(t *testing.T) {
	const shipped = "../../configs/tiny-ocr-psi.json"
	p, err := ReadPsi(shipped)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Psi) != len(p.Sigmas)-1 || len(p.Start) != len(p.Psi) || len(p.Iterations) == 0 || p.NoiseLevel == 0 {
		t.Fatalf("psi %+v: want T values of ψ and start, T+1 sigmas, a noise level and the history", p)
	}
	out := filepath.Join(t.TempDir(), PsiFile)
	if err := WritePsi(out, p); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(shipped)
	b, _ := os.ReadFile(out)
	if strings.TrimSpace(string(a)) != strings.TrimSpace(string(b)) {
		t.Errorf("re-encoded psi differs from %s", shipped)
	}
	if _, err := ReadPsi(filepath.Join(t.TempDir(), PsiFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing psi: got %v, want fs.ErrNotExist", err)
	}
}
