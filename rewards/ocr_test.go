package rewards

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// ocrWords are the strings the recogniser must read: words, mixed case, digits and
// letter-digit codes like the tiny-ocr task's.
var ocrWords = []string{
	"K4RT", "HELLO", "garden", "Mosaic", "7319", "river", "ZEBRA", "quantum", "Lantern", "B52X",
	"orbit", "Pixel", "FLOW", "sunset", "Q7M2", "window", "Delta", "maple", "NOVA", "tiger",
}

func ocrConfig(t testing.TB, detector bool) Config {
	c := Config{Name: "ocr", Kind: "ocr", Model: cached(t, "ocr/ch_PP-OCRv4_rec_infer.onnx"), Keys: cached(t, "ocr/ppocr_keys_v1.txt"), BatchSize: 8}
	if detector {
		c.Detector = cached(t, "ocr/ch_PP-OCRv4_det_infer.onnx")
		// PaddleOCR's detector preprocessing: BGR, ImageNet mean/std (applied in BGR order).
		c.Image.Channels = "BGR"
		c.Image.Mean = []float32{0.485, 0.456, 0.406}
		c.Image.Std = []float32{0.229, 0.224, 0.225}
	}
	return c
}

func openOCRSet(t testing.TB, detector bool) (*Set, *ocrScorer) {
	t.Helper()
	s, err := Open(context.Background(), []Config{ocrConfig(t, detector)}, "", onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	return s, s.rewards[0].scorer.(*ocrScorer)
}

// TestOCRReadsRenderedWords renders 20 strings in Go Mono and Go Regular (~36 px) on light
// paper; the real PP-OCRv4 recogniser must read at least 19 exactly, each scoring 1.0.
func TestOCRReadsRenderedWords(t *testing.T) {
	set, sc := openOCRSet(t, false)
	defer set.Close()
	faces := []struct {
		name string
		ttf  []byte
	}{{"gomono", monoTTF}, {"goregular", regularTTF}}
	for _, f := range faces {
		face := loadFace(t, f.ttf, 36)
		images := make([]Image, len(ocrWords))
		prompts := make([]Prompt, len(ocrWords))
		for i, w := range ocrWords {
			images[i] = renderLine(face, w)
			prompts[i] = Prompt{Text: fmt.Sprintf("a sign that says %q", w)}
		}
		scores, err := set.Score(context.Background(), images, prompts)
		if err != nil {
			t.Fatal(err)
		}
		// Score 1 means the target occurs in the text read; the exact reading of the misses
		// is logged for diagnosis.
		read := 0
		for i, w := range ocrWords {
			if scores.ByName["ocr"][i] == 1 {
				read++
			} else {
				texts, err := sc.Read(context.Background(), newBatch(images[i:i+1], prompts[i:i+1]))
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: %q read as %q (score %.3f)", f.name, w, texts[0], scores.ByName["ocr"][i])
			}
			if scores.Total[i] != scores.ByName["ocr"][i] {
				t.Errorf("total %v != ocr %v with weight 1", scores.Total[i], scores.ByName["ocr"][i])
			}
		}
		t.Logf("%s: read %d/%d (OCR score 1.0)", f.name, read, len(ocrWords))
		if read < 19 {
			t.Errorf("%s: read %d of %d words, want >= 19", f.name, read, len(ocrWords))
		}
	}
}

func newBatch(images []Image, prompts []Prompt) *Batch {
	return &Batch{Images: images, Prompts: prompts, cache: &prepCache{images: images, entries: map[string][]*prepEntry{}}}
}

// TestOCRDetectorFindsWord places a short word inside a 512×512 page; the DB detector must
// find it and the recogniser read it.
func TestOCRDetectorFindsWord(t *testing.T) {
	set, sc := openOCRSet(t, true)
	defer set.Close()
	face := loadFace(t, monoTTF, 40)
	images := []Image{renderAt(face, "K4RT", 512, 512, 170, 280), renderAt(face, "maple", 512, 512, 60, 120)}
	prompts := []Prompt{{Text: `a poster that says "K4RT"`}, {Text: `a sign that says "maple"`}}
	texts, err := sc.Read(context.Background(), newBatch(images, prompts))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"K4RT", "maple"} {
		if !strings.EqualFold(strings.ReplaceAll(texts[i], " ", ""), want) {
			t.Errorf("image %d: read %q, want %q", i, texts[i], want)
		}
	}
	scores, err := set.Score(context.Background(), images, prompts)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range scores.ByName["ocr"] {
		if v != 1 {
			t.Errorf("image %d: OCR score %v, want 1", i, v)
		}
	}
	// A blank page reads nothing: score 0, and the "exact" metric says so.
	blank := []Image{renderAt(face, "", 512, 512, 0, 0)}
	s2, err := set.Score(context.Background(), blank, []Prompt{{Text: `"K4RT"`}})
	if err != nil {
		t.Fatal(err)
	}
	if s2.ByName["ocr"][0] != 0 || s2.Extra["ocr.exact"][0] != 0 {
		t.Errorf("blank page: score %v exact %v, want 0 0", s2.ByName["ocr"][0], s2.Extra["ocr.exact"][0])
	}
}
