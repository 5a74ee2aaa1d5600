package mmdit

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// benchConfig is large enough that reading dominates a load: width 512 (8 heads × 64),
// 8 blocks, a 294 MB F32 checkpoint.
func benchConfig() Config {
	return Config{
		SampleSize: 32, PatchSize: 2, InChannels: 16, NumLayers: 8, AttentionHeadDim: 64,
		NumAttentionHeads: 8, JointAttentionDim: 256, CaptionProjectionDim: 512,
		PooledProjectionDim: 128, OutChannels: 16, PosEmbedMaxSize: 32, QKNorm: "rms_norm",
	}
}

// BenchmarkLoad reads a checkpoint of base weights into a fresh context; BenchmarkLoadLoRA
// reads rank-32 adapters (8 MB) on every attention projection. Both use only API that
// predates the header validation, so the same file measures a load before and after it.
func BenchmarkLoad(b *testing.B) {
	benchLoad(b, nil, func(m *Model, ctx *mlctx.Context, path string) error {
		if err := m.Init(ctx, 1); err != nil {
			return err
		}
		return m.SaveBase(ctx, path)
	}, (*Model).Load)
}

func BenchmarkLoadLoRA(b *testing.B) {
	benchLoad(b, &LoRAConfig{Rank: 32, Alpha: 64}, func(m *Model, ctx *mlctx.Context, path string) error {
		if err := m.InitLoRA(ctx, 1); err != nil {
			return err
		}
		return m.SaveLoRA(ctx, path)
	}, (*Model).LoadLoRA)
}

// benchLoad writes a file with save, then times load of it into fresh contexts.
func benchLoad(b *testing.B, lora *LoRAConfig, save, load func(*Model, *mlctx.Context, string) error) {
	m, err := New(benchConfig(), lora)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "w.safetensors")
	if err := save(m, mlctx.New(), path); err != nil {
		b.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Size())
	// CPU time per load is reported too: on a shared machine it moves less than wall time.
	cpu0 := cpuSeconds(b)
	b.ResetTimer()
	for range b.N {
		if err := load(m, mlctx.New(), path); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric((cpuSeconds(b)-cpu0)/float64(b.N), "cpu-s/op")
}

// cpuSeconds is the user + system CPU time of the process so far.
func cpuSeconds(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
