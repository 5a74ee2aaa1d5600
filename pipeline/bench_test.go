package pipeline

import (
	"context"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
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
