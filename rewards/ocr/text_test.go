package ocr

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"abc", "", 3},
		{"kitten", "sitting", 3}, // k→s, e→i, +g
		{"flaw", "lawn", 2},      // −f, +n
		{"K4RT", "K4RT", 0},
		{"héllo", "hello", 1}, // runes, not bytes
	} {
		if got := EditDistance([]rune(tt.a), []rune(tt.b)); got != tt.want {
			t.Errorf("EditDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestScore(t *testing.T) {
	for _, tt := range []struct {
		read, target string
		want         float64
	}{
		{"K4RT", "K4RT", 1},
		{"k4rt", "K4RT", 1},              // case-insensitive
		{"hello world", "HelloWorld", 1}, // spaces removed
		{"xxK4RTyy", "K4RT", 1},          // target contained
		{"K4R", "K4RT", 0.75},            // distance 1 of 4
		{"", "K4RT", 0},                  // distance 4 of 4
		{"abcdefghij", "K4RT", 0},        // distance 10, capped at 4
		{"K4XT", "K4RT", 0.75},           // one substitution
		{"anything", "", 1},              // empty target occurs everywhere
		{"QZ", "K4RT", 1 - 4.0/4},        // 2 substitutions + 2 deletions = 4
		{"K RT", "K4RT", 0.75},           // "KRT": one insertion away
		{"K4RTK4RT", "K4RT K4RT", 1},     // spaces removed from both sides
		{"hcllo", "hello", 1 - 1.0/5},    // one of five
		{"WORLD", "hello world", 0.5},    // "world" vs "helloworld": 5 insertions of 10
	} {
		if got := Score(tt.read, tt.target); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("Score(%q, %q) = %v, want %v", tt.read, tt.target, got, tt.want)
		}
	}
}

func TestTarget(t *testing.T) {
	for prompt, want := range map[string]string{
		`a sign that says "K4RT"`:          "K4RT",
		`"hello world" written in the sky`: "hello world",
		`two "a" and "b"`:                  "a",
		`no quotes here`:                   "no quotes here",
		`dangling "quote`:                  "quote",
	} {
		if got := Target(prompt); got != want {
			t.Errorf("Target(%q) = %q, want %q", prompt, got, want)
		}
	}
}

func TestDecodeCTC(t *testing.T) {
	d := Dict{Keys: []string{"a", "b", "c"}} // classes: 0 blank, 1 a, 2 b, 3 c, 4 space
	const C = 5
	// Steps argmax: a a blank a b space b b c blank → "aa b" after merging repeats and
	// dropping blanks: a (merged a a), blank, a, b, " ", b (merged), c → "aab bc".
	seq := []int{1, 1, 0, 1, 2, 4, 2, 2, 3, 0}
	probs := make([]float32, len(seq)*C)
	for t, c := range seq {
		for k := 0; k < C; k++ {
			probs[t*C+k] = 0.05
		}
		probs[t*C+c] = 0.8
	}
	text, conf := d.DecodeCTC(probs, len(seq), C)
	if text != "aab bc" {
		t.Errorf("text = %q, want %q", text, "aab bc")
	}
	if math.Abs(float64(conf)-0.8) > 1e-6 {
		t.Errorf("conf = %v, want 0.8 (mean of kept steps)", conf)
	}
	if text, _ := d.DecodeCTC(make([]float32, 3*C), 3, C); text != "" {
		t.Errorf("all-blank decode = %q, want empty", text)
	}
}

func TestLoadDict(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.txt")
	if err := os.WriteFile(path, []byte("'\n0\n疗"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := LoadDict(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.Keys, []string{"'", "0", "疗"}) || d.Classes() != 5 || d.Text(3) != "疗" || d.Text(4) != " " {
		t.Errorf("dict = %q, classes %d", d.Keys, d.Classes())
	}
	if _, err := LoadDict(filepath.Join(t.TempDir(), "missing.txt")); err == nil {
		t.Error("missing keys file: no error")
	}
}

func TestDetectBoxes(t *testing.T) {
	// A 40×20 map with two text blobs: A at x 2..11, y 2..5 (10×4, prob 0.9) and B at
	// x 20..35, y 3..6 (16×4, prob 0.8) — same line, B right of A — and a 2×2 speck (too
	// small) and a faint 6×6 region at 0.35 (above threshold 0.3, mean below box 0.6).
	const w, h = 40, 20
	prob := make([]float32, w*h)
	fill := func(x0, y0, x1, y1 int, p float32) {
		for y := y0; y <= y1; y++ {
			for x := x0; x <= x1; x++ {
				prob[y*w+x] = p
			}
		}
	}
	fill(20, 3, 35, 6, 0.8)
	fill(2, 2, 11, 5, 0.9)
	fill(30, 15, 31, 16, 0.95)
	fill(2, 12, 7, 17, 0.35)
	// The image is twice the map size, so coordinates double.
	boxes, err := DetectBoxes(prob, w, h, 2*w, 2*h, DBOptions{}.Defaults())
	if err != nil {
		t.Fatal(err)
	}
	if len(boxes) != 2 {
		t.Fatalf("got %d boxes %+v, want 2", len(boxes), boxes)
	}
	// A: 10×4, d = 40·1.5/28 = 2.142857; x0 = (2−d)·2 and y0 = (2−d)·2 are negative →
	// clamped at 0; x1 = (12+d)·2, y1 = (6+d)·2.
	d := 40 * 1.5 / 28.0
	wantA := Box{X0: 0, Y0: 0, X1: (12 + d) * 2, Y1: (6 + d) * 2, Score: 0.9}
	// B: 16×4, d = 64·1.5/40 = 2.4.
	wantB := Box{X0: (20 - 2.4) * 2, Y0: (3 - 2.4) * 2, X1: (36 + 2.4) * 2, Y1: (7 + 2.4) * 2, Score: 0.8}
	// Reading order: tops 0 and 1.2 are within 10 px, so left to right: A then B.
	for i, want := range []Box{wantA, wantB} {
		got := boxes[i]
		if math.Abs(got.X0-want.X0) > 1e-9 || math.Abs(got.Y0-want.Y0) > 1e-9 || math.Abs(got.X1-want.X1) > 1e-9 ||
			math.Abs(got.Y1-want.Y1) > 1e-9 || math.Abs(float64(got.Score-want.Score)) > 1e-6 {
			t.Errorf("box %d = %+v, want %+v", i, got, want)
		}
	}
	if _, err := DetectBoxes(prob[:10], w, h, w, h, DBOptions{}.Defaults()); err == nil {
		t.Error("short map: no error")
	}
}

func TestReadingOrder(t *testing.T) {
	boxes := []Box{
		{X0: 50, Y0: 100}, // second line, right
		{X0: 60, Y0: 5},   // first line (tops 0 and 5 within 10 px), right
		{X0: 10, Y0: 0},   // first line, left
		{X0: 5, Y0: 104},  // second line, left
	}
	ReadingOrder(boxes)
	got := []float64{boxes[0].X0, boxes[1].X0, boxes[2].X0, boxes[3].X0}
	if !reflect.DeepEqual(got, []float64{10, 60, 5, 50}) {
		t.Errorf("order by x0 = %v, want [10 60 5 50]", got)
	}
}
