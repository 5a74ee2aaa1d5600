package pipeline

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

func TestBenchMeasuresEveryVariant(t *testing.T) {
	cfg, _ := fixture(t)
	res, err := Bench(context.Background(), cfg.Path, smallRun, BenchOptions{Epochs: 1, Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Variants) != len(DefaultBenchVariants) {
		t.Fatalf("measured %d variants, want %d", len(res.Variants), len(DefaultBenchVariants))
	}
	_, cpuOK := processCPU()
	for v := range res.Variants {
		if len(res.Seconds[v]) != 1 || !(res.Mean(v) > 0) {
			t.Errorf("variant %s: seconds %v, want one positive measurement", res.Variants[v], res.Seconds[v])
		}
		if cpuOK && (len(res.CPU[v]) != 1 || !(res.CPU[v][0] > 0)) {
			t.Errorf("variant %s: CPU seconds %v, want one positive measurement", res.Variants[v], res.CPU[v])
		}
	}
	// Only dense variants integrate look-aheads; sparse ones merely pass the final latents on.
	if d, s := res.Stages[0][StageLookahead], res.Stages[2][StageLookahead]; !(s < d/10) {
		t.Errorf("look-ahead seconds dense %v, sparse %v: want sparse's a small fraction", d, s)
	}
	// smallRun: 4 samples of 3 steps (2 trained): 4 images each (3 look-aheads, the final) dense,
	// 1 sparse.
	if !slices.Equal(res.Images, []int{16, 16, 4}) {
		t.Errorf("images per variant %v, want [16 16 4]", res.Images)
	}
	var b strings.Builder
	res.WriteTable(&b)
	if !strings.Contains(b.String(), "dense sequential") || !strings.Contains(b.String(), "× first") || !strings.Contains(b.String(), "cores") {
		t.Errorf("table:\n%s", b.String())
	}
}

// Every variant runs on its own frozen models: a variant that changes a reward is measured
// with that reward, not the first variant's (here its model is missing, which must show).
func TestBenchVariantOwnsItsFrozenModels(t *testing.T) {
	cfg, _ := fixture(t)
	_, err := Bench(context.Background(), cfg.Path, smallRun, BenchOptions{Epochs: 1, Backend: nntest.Backend(t), Variants: []BenchVariant{
		{"default", nil},
		{"other reward", []string{"reward.bright.model=missing.onnx"}},
	}})
	if err == nil {
		t.Fatal("Bench succeeded with a missing reward model in the second variant")
	}
	for _, want := range []string{`bench variant "other reward"`, "missing.onnx"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q: want it to contain %q", err, want)
		}
	}
}

// BenchParts answers every part's command with its timings and dumps one rollout minibatch, the
// adapters, a velocity and the epoch's images and rewards with consistent shapes.
func TestBenchPartsServesEveryPart(t *testing.T) {
	cfg, _ := fixture(t)
	dump := filepath.Join(t.TempDir(), "bench-data.safetensors")
	var out strings.Builder
	in := strings.NewReader("velocity 2\nlookahead 1\ntrain 1\nreference 1\nscore 1\nepoch 1\nquit\n")
	err := BenchParts(context.Background(), cfg.Path, smallRun, BenchPartsOptions{Dump: dump, In: in, Out: &out, Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 7 || lines[0] != `{"ready": true}` {
		t.Fatalf("output:\n%s\nwant the ready line and one line per command", out.String())
	}
	for i, want := range []struct {
		part string
		reps int
	}{{PartVelocity, 2}, {PartLookahead, 1}, {PartTrain, 1}, {PartReference, 1}, {PartScore, 1}, {PartEpoch, 1}} {
		var res struct {
			Part       string    `json:"part"`
			Seconds    []float64 `json:"seconds"`
			CPUSeconds []float64 `json:"cpu_seconds"`
		}
		if err := json.Unmarshal([]byte(lines[i+1]), &res); err != nil {
			t.Fatalf("line %q: %v", lines[i+1], err)
		}
		if res.Part != want.part || len(res.Seconds) != want.reps || len(res.CPUSeconds) != want.reps || !(res.Seconds[0] > 0) {
			t.Errorf("line %q: want part %q with %d positive timings", lines[i+1], want.part, want.reps)
		}
	}
	ts, meta, err := safetensors.Read(dump)
	if err != nil {
		t.Fatal(err)
	}
	x, v, imgs, scores := ts["x"].Shape, ts["v"].Shape, ts["images"].Shape, ts["scores"].Shape
	// smallRun: 3 steps; x holds the 4 states x_0 … x_3 of the minibatch, v the 3 velocities.
	if len(x) != 5 || x[0] != 4 || v[0] != 3 || x[1] != v[1] || len(imgs) != 4 || imgs[0] != scores[0] || imgs[3] != 3 {
		t.Errorf("dump shapes: x %v, v %v, images %v, scores %v", x, v, imgs, scores)
	}
	if got, want := ts["check_velocity"].Shape, ts["check_x"].Shape; !slices.Equal(got, want) {
		t.Errorf("check velocity %v, want the shape of check_x %v", got, want)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(meta["bench"]), &m); err != nil || len(m["image_prompts"].([]any)) != imgs[0] {
		t.Errorf("metadata %q: %v; want one prompt per image", meta["bench"], err)
	}
	nLoRA := 0
	for k := range ts {
		if strings.HasPrefix(k, "lora.") && strings.HasSuffix(k, ".lora_A.weight") {
			nLoRA++
		}
	}
	if nLoRA == 0 {
		t.Error("dump holds no adapters")
	}
	// A command the server does not know ends it with an error naming the command.
	err = BenchParts(context.Background(), cfg.Path, smallRun, BenchPartsOptions{In: strings.NewReader("sprint 3\n"), Out: io.Discard, Backend: nntest.Backend(t)})
	if err == nil || !strings.Contains(err.Error(), `"sprint 3"`) {
		t.Errorf("unknown command: error %v, want it named", err)
	}
}
