package ocrread

import (
	"context"
	"image"
	"math"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/models/onnxrt"
)

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"ABC", "", 3}, {"", "AB", 2},
		{"K4RT", "K4RT", 0},
		{"K4RT", "K4R", 1},  // one deletion
		{"K4RT", "X4RT", 1}, // one substitution
		{"KART", "K4RT", 1},
		{"ABCD", "BADC", 3}, // no transpositions in Levenshtein: 3 edits
		{"東AB", "AB", 1},    // counted in runes, not bytes
	}
	for _, tt := range tests {
		if got := EditDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("EditDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestScore(t *testing.T) {
	tests := []struct {
		read, target string
		want         float64
	}{
		{"K4RT", "K4RT", 1},
		{"\u3000K4RT號", "K4RT", 1}, // contained
		{"K4 RT", "K4RT", 1},       // spaces removed
		{"Ｋ４RT", "K4RT", 1},        // full-width forms mapped to ASCII
		{"K4R", "K4RT", 0.75},      // 1 − 1/4
		{"", "K4RT", 0},            // distance 4 = len
		{"XXXXXXXX", "AB", 0},      // distance capped at len
		{"AB", "", 0},
	}
	for _, tt := range tests {
		if got := Score(tt.read, tt.target); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("Score(%q, %q) = %g, want %g", tt.read, tt.target, got, tt.want)
		}
	}
}

// The rendered test targets must be legible to PP-OCRv4: this is what makes the OCR reward of
// a perfect generator close to 1. Measured: mean score 0.99+ on the first 100 test targets.
func TestRenderedTestTargetsAreLegible(t *testing.T) {
	r, err := Open(onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatalf("%v (CPU ONNX Runtime tests never skip)", err)
	}
	defer r.Close()
	path, err := ocrtiny.SplitPath("test")
	if err != nil {
		t.Fatal(err)
	}
	prompts, err := ocrtiny.LoadPrompts(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	imgs := make([]image.Image, n)
	for i := range n {
		if imgs[i], err = ocrtiny.Render(prompts[i].Target, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	texts, err := r.Read(context.Background(), imgs)
	if err != nil {
		t.Fatal(err)
	}
	sum, contained := 0.0, 0
	var misses []string
	for i, s := range texts {
		sum += Score(s, prompts[i].Target)
		if strings.Contains(Normalize(s), prompts[i].Target) {
			contained++
		} else {
			misses = append(misses, prompts[i].Target+"→"+s)
		}
	}
	t.Logf("mean score %.4f, %d/%d contained; misses %q", sum/n, contained, n, misses)
	if sum/n < 0.98 || contained < 92 {
		t.Errorf("mean score %.4f, %d/%d contained; want >= 0.98 and >= 92", sum/n, contained, n)
	}
}

func TestReadErrors(t *testing.T) {
	r, err := Open(onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Read(context.Background(), []image.Image{image.NewRGBA(image.Rect(0, 0, 0, 5))}); err == nil {
		t.Error("Read accepted an empty image")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	img, _ := ocrtiny.Render("AB", 1)
	if _, err := r.Read(ctx, []image.Image{img}); err == nil {
		t.Error("Read ran under a cancelled context")
	}
	if _, err := OpenFiles("/nonexistent.onnx", "/nonexistent.txt", onnxrt.Config{}); err == nil || !strings.Contains(err.Error(), "nonexistent.txt") {
		t.Errorf("OpenFiles error %v, want one naming the keys file", err)
	}
}
