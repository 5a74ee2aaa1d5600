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
	// Deterministic (seeded): at this short budget dense is ahead of sparse.
	if res.Dense.Final() <= res.Sparse.Final() {
		t.Errorf("dense final %.4f, want above sparse final %.4f after %d epochs", res.Dense.Final(), res.Sparse.Final(), cfg.Epochs)
	}
}

// BenchmarkToyDenseVsSparse runs the full toy for three seeds and reports, per seed, the base
// and final rewards of both methods and the epochs each needs to reach (a) 90% of sparse's gain
// base → final and (b) sparse's final reward itself (the reward saturates near 1, so (b) is a
// statement about the tail). Run with:
//
//	GOMLX_NO_AUTO_INSTALL=1 go test ./rl/ -run '^$' -bench ToyDenseVsSparse -benchtime 1x -v
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
			final := res.Sparse.Final()
			gain90 := res.BaseReward + 0.9*(final-res.BaseReward)
			s90, d90 := res.Sparse.EpochsToReach(gain90), res.Dense.EpochsToReach(gain90)
			sFin, dFin := res.Sparse.EpochsToReach(final), res.Dense.EpochsToReach(final)
			b.Logf("seed %d: base %.4f, pretrain loss %.4f | final sparse %.4f dense %.4f | epochs to %.4f (90%% of sparse's gain): sparse %d dense %d | to sparse's final: sparse %d dense %d | %.1fs / %.1fs",
				seed, res.BaseReward, res.PretrainLoss, final, res.Dense.Final(), gain90, s90, d90, sFin, dFin, res.Sparse.Seconds, res.Dense.Seconds)
			b.Logf("seed %d: epochs %v", seed, res.Sparse.EvalEpochs)
			b.Logf("seed %d: sparse eval %.3f", seed, res.Sparse.Eval)
			b.Logf("seed %d: dense  eval %.3f", seed, res.Dense.Eval)
			sparseFinal += final / 3
			denseFinal += res.Dense.Final() / 3
			if d90 >= 0 && (s90 < 0 || d90 < s90) && dFin >= 0 && (sFin < 0 || dFin <= sFin) {
				fewer++
			}
		}
		b.ReportMetric(sparseFinal, "sparse_final_reward")
		b.ReportMetric(denseFinal, "dense_final_reward")
		b.ReportMetric(fewer, "seeds_dense_faster")
	}
}
