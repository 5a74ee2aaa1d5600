package pretrain

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// cpuSeconds is the process's user+system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// benchTrainer builds a trainer of the committed data and text encoder with a transformer of
// layers × heads × headDim and qk_norm (JSON: null or "rms_norm"), on batches of size images
// split over workers; it compiles the step and returns the batch it compiled it with.
func benchTrainer(b *testing.B, layers, heads, headDim int, qkNorm string, size, workers int) (*trainer, batch) {
	dir := b.TempDir()
	model := fmt.Sprintf(`{"sample_size": 32, "patch_size": 2, "in_channels": 4, "out_channels": 4,
  "num_layers": %d, "attention_head_dim": %d, "num_attention_heads": %d, "joint_attention_dim": 64,
  "caption_projection_dim": %d, "pooled_projection_dim": 64, "pos_embed_max_size": 16, "qk_norm": %s}`,
		layers, headDim, heads, heads*headDim, qkNorm)
	cfg := Default()
	cfg.Model.Transformer = filepath.Join(dir, "m.json")
	if err := os.WriteFile(cfg.Model.Transformer, []byte(model), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg.Model.VAE = writeVAE(b, dir, true)
	cfg.Data.Prompts = filepath.Join("..", "..", "datasets", "ocr-tiny", "train.txt")
	cfg.Output.Dir = filepath.Join(dir, "out")
	cfg.Train.BatchSize, cfg.Train.Workers = size, workers
	t, err := newTrainer(cfg, Options{Backend: nntest.Backend(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(t.close)
	first, err := t.data.draw(0)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := t.runStep(first, 1e-3); err != nil { // compiles the step
		b.Fatal(err)
	}
	return t, first
}

// BenchmarkTrainStep measures the pretraining step at batch 32 (the text encoder of the
// committed default, L = 48 tokens) for candidate transformer sizes, and the data step
// (render + VAE encode of the default VAE size) that runs beside it. It reports wall and CPU
// seconds per step: on a shared machine CPU seconds are the stable figure. The SimpleGo
// backend of nn runs the ops of a step one after another (only large matrix products use
// both cores), so on an idle machine the wall time is close to the CPU time; the data step
// overlaps with it on the other core. Measured here (2-core AMD EPYC, shared): 4x4x16 3.5
// CPU-s, 6x4x16 6.2, 4x4x24 6.2, 4x4x32 9.5; data 0.55 CPU-s. Run:
//
//	GOMLX_NO_AUTO_INSTALL=1 go test ./pipeline/pretrain -run XXX -bench TrainStep -benchtime 3x
func BenchmarkTrainStep(b *testing.B) {
	sizes := []struct{ layers, heads, headDim int }{{4, 4, 16}, {6, 4, 16}, {4, 4, 24}, {4, 4, 32}}
	for _, s := range sizes {
		b.Run(fmt.Sprintf("%dx%dx%d", s.layers, s.heads, s.headDim), func(b *testing.B) {
			t, batch := benchTrainer(b, s.layers, s.heads, s.headDim, `"rms_norm"`, 32, 2)
			var err error
			b.ResetTimer()
			var stepWall, stepCPU, dataWall, dataCPU float64
			for i := range b.N {
				c0, w0 := cpuSeconds(), time.Now()
				batch, err = t.data.draw(i + 1)
				if err != nil {
					b.Fatal(err)
				}
				c1, w1 := cpuSeconds(), time.Now()
				if _, _, err := t.runStep(batch, 1e-3); err != nil {
					b.Fatal(err)
				}
				dataWall += w1.Sub(w0).Seconds()
				dataCPU += c1 - c0
				stepWall += time.Since(w1).Seconds()
				stepCPU += cpuSeconds() - c1
			}
			n := float64(b.N)
			b.ReportMetric(stepWall/n, "step-s")
			b.ReportMetric(stepCPU/n, "step-cpu-s")
			b.ReportMetric(dataWall/n, "data-s")
			b.ReportMetric(dataCPU/n, "data-cpu-s")
			b.Logf("%d parameters", t.model.NumParams())
		})
	}
}

// BenchmarkTrainStepBatch measures the CPU time per image of the default transformer's step
// (tiny-mmdit.json) at several batch sizes on one gradient worker: it is flat from batch 8 up
// (55, 49, 48, 48 CPU-ms at 4, 8, 16, 32 on the 2-core machine), so a smaller batch buys
// optimizer steps at no cost per image — why configs/pretrain-tiny.toml trains at batch 16.
func BenchmarkTrainStepBatch(b *testing.B) {
	for _, size := range []int{4, 8, 16, 32} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			t, batch := benchTrainer(b, 4, 4, 16, "null", size, 1)
			b.ResetTimer()
			var cpu float64
			for range b.N {
				c0 := cpuSeconds()
				if _, _, err := t.runStep(batch, 1e-3); err != nil {
					b.Fatal(err)
				}
				cpu += cpuSeconds() - c0
			}
			b.ReportMetric(cpu/float64(b.N*size)*1e3, "cpu-ms/image")
		})
	}
}
