package rewards

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/ocr"
)

// BenchmarkOCROverhead scores 8 rendered words (48 px high, so the recogniser's resize is a
// copy) through the rewards layer — batching, recogniser input, session pool, CTC decoding,
// edit-distance scoring, weighting — and runs the raw recogniser session on the same prepared
// batch, in the same iteration. It reports both times and their ratio (rewards/raw).
func BenchmarkOCROverhead(b *testing.B) {
	set, sc := openOCRSet(b, false)
	defer set.Close()
	face := loadFace(b, monoTTF, 30)
	images := make([]Image, 8)
	prompts := make([]Prompt, 8)
	for i := range images {
		w := ocrWords[i]
		line := renderLine(face, w)
		images[i] = line.Crop(0, (line.H-48)/2, line.W, (line.H-48)/2+48)
		prompts[i] = Prompt{Text: fmt.Sprintf("a sign that says %q", w)}
	}
	data, width := ocr.RecInput(images, sc.cfg.OCR.MaxWidth)
	in := map[string]onnxrt.Tensor{"x": {Shape: []int64{8, 3, ocr.RecHeight, int64(width)}, Float32: data}}
	raw := sc.rec.sessions[0]
	ctx := context.Background()
	var rawT, layerT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := raw.Run(ctx, in); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		got, err := set.Score(ctx, images, prompts)
		if err != nil {
			b.Fatal(err)
		}
		layerT += time.Since(t1)
		rawT += t1.Sub(t0)
		if got.ByName["ocr"][0] != 1 {
			b.Fatalf("%q scored %v, want 1", ocrWords[0], got.ByName["ocr"][0])
		}
	}
	b.ReportMetric(float64(rawT.Milliseconds())/float64(b.N), "raw-ms/op")
	b.ReportMetric(float64(layerT.Milliseconds())/float64(b.N), "rewards-ms/op")
	b.ReportMetric(float64(layerT)/float64(rawT), "overhead-ratio")
}

// BenchmarkOCRBatchSize scores what one dense tiny-ocr minibatch hands the score stage — 144
// images of 32×128 (16 trajectories × 9 states) — through the OCR reward with two sessions
// (tiny-ocr.toml's concurrency), at several batch_size values, interleaved in every iteration
// so that a shared machine's noise hits each alike. It reports seconds per 144 images for each
// (batch-N-s/op); batch_size = 8 is the default. Random pixels: the recogniser's work does not
// depend on what the image shows.
func BenchmarkOCRBatchSize(b *testing.B) {
	const n = 144
	rng := rand.New(rand.NewPCG(1, 2))
	images := make([]Image, n)
	prompts := make([]Prompt, n)
	for i := range images {
		images[i] = Image{W: 128, H: 32, Pix: make([]float32, 3*32*128)}
		for j := range images[i].Pix {
			images[i].Pix[j] = rng.Float32()
		}
		prompts[i] = Prompt{Text: `a sign that says "K4RT"`}
	}
	sizes := []int{1, 2, 4, 8, 16, 36, 72}
	sets := make([]*Set, len(sizes))
	for i, size := range sizes {
		c := ocrConfig(b, false)
		c.BatchSize, c.Concurrency = size, 2
		s, err := Open(context.Background(), []Config{c}, "", onnxrt.Config{IntraOpThreads: 1})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		sets[i] = s
	}
	ctx := context.Background()
	spent := make([]time.Duration, len(sizes))
	b.ResetTimer()
	for range b.N {
		for i, s := range sets {
			t0 := time.Now()
			if _, err := s.Score(ctx, images, prompts); err != nil {
				b.Fatal(err)
			}
			spent[i] += time.Since(t0)
		}
	}
	for i, size := range sizes {
		b.ReportMetric(spent[i].Seconds()/float64(b.N), fmt.Sprintf("batch-%d-s/op", size))
	}
}
