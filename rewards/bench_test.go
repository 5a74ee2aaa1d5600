package rewards

import (
	"context"
	"fmt"
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
