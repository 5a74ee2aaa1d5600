package rl

import (
	"context"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// TestToyLearns is the shortened toy: both sparse and dense GRPO must raise the mean reward of
// the pretrained 2-D flow model above its base value.
func TestToyLearns(t *testing.T) {
	cfg := DefaultToyConfig(1)
	cfg.Backend = nntest.Backend(t)
	cfg.PretrainSteps, cfg.PretrainBatch, cfg.Epochs, cfg.EvalEvery, cfg.EvalSamples = 300, 128, 16, 4, 256
	res, err := RunToy(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pretrain loss %.4f, base reward %.4f", res.PretrainLoss, res.BaseReward)
	t.Logf("sparse eval %v (%.1fs)", res.Sparse.Eval, res.Sparse.Seconds)
	t.Logf("dense  eval %v (%.1fs)", res.Dense.Eval, res.Dense.Seconds)
	if res.BaseReward < 0.3 || res.BaseReward > 0.7 {
		t.Errorf("base reward %.4f, want about 0.5 (both modes learnt)", res.BaseReward)
	}
	for name, c := range map[string]ToyCurve{"sparse": res.Sparse, "dense": res.Dense} {
		if c.Final() < res.BaseReward+0.05 {
			t.Errorf("%s: final reward %.4f, want >= base %.4f + 0.05", name, c.Final(), res.BaseReward)
		}
	}
}

// BenchmarkToyDenseVsSparse runs the full toy for three seeds and reports, per seed, the base
// and final rewards of both methods and how many epochs dense needs to reach sparse's final
// reward. Run with: go test ./rl/ -run '^$' -bench ToyDenseVsSparse -benchtime 1x -v
func BenchmarkToyDenseVsSparse(b *testing.B) {
	for range b.N {
		var sparseFinal, denseFinal, fewer float64
		for _, seed := range []uint64{1, 2, 3} {
			cfg := DefaultToyConfig(seed)
			cfg.Backend = nntest.Backend(b)
			res, err := RunToy(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			target := res.Sparse.Final()
			ds, ss := res.Dense.EpochsToReach(target), res.Sparse.EpochsToReach(target)
			b.Logf("seed %d: base %.4f | sparse final %.4f (reached at epoch %d, %.1fs) | dense final %.4f (reaches sparse's final at epoch %d, %.1fs)",
				seed, res.BaseReward, target, ss, res.Sparse.Seconds, res.Dense.Final(), ds, res.Dense.Seconds)
			b.Logf("seed %d: sparse eval %.3f", seed, res.Sparse.Eval)
			b.Logf("seed %d: dense  eval %.3f", seed, res.Dense.Eval)
			sparseFinal += target / 3
			denseFinal += res.Dense.Final() / 3
			if ds >= 0 && ds < ss {
				fewer++
			}
		}
		b.ReportMetric(sparseFinal, "sparse_final_reward")
		b.ReportMetric(denseFinal, "dense_final_reward")
		b.ReportMetric(fewer, "seeds_dense_faster")
	}
}
