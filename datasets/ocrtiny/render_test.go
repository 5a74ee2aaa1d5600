package ocrtiny

import (
	"image"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLuminance(t *testing.T) {
	tests := []struct {
		c    color.RGBA
		want float64
	}{
		{color.RGBA{0, 0, 0, 255}, 0},
		{color.RGBA{255, 255, 255, 255}, 1},
		{color.RGBA{255, 0, 0, 255}, 0.2126}, // the Rec. 709 weights of the primaries
		{color.RGBA{0, 255, 0, 255}, 0.7152},
		{color.RGBA{0, 0, 255, 255}, 0.0722},
		{color.RGBA{10, 10, 10, 255}, 10.0 / 255 / 12.92}, // linear segment below 0.04045
	}
	for _, tt := range tests {
		if got := Luminance(tt.c); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Luminance(%v) = %g, want %g", tt.c, got, tt.want)
		}
	}
}

func TestCheckText(t *testing.T) {
	for _, s := range []string{"A", "K4RT", "O0", "ABCDEFG"} {
		if err := CheckText(s); err != nil {
			t.Errorf("CheckText(%q): %v", s, err)
		}
	}
	for _, s := range []string{"", "ABCDEFGH", "ab", "A B", "É"} {
		if err := CheckText(s); err == nil {
			t.Errorf("CheckText(%q) accepted", s)
		}
	}
	if _, err := Render("k4rt", 1); err == nil {
		t.Error("Render of lower case accepted")
	}
}

func TestRenderDeterministic(t *testing.T) {
	a, err := RenderPixels("K4RT", 3)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := RenderPixels("K4RT", 3)
	c, _ := RenderPixels("K4RT", 4)
	d, _ := RenderPixels("K4RX", 3)
	if !equal(a, b) {
		t.Error("same (text, seed) rendered differently")
	}
	if equal(a, c) || equal(a, d) {
		t.Error("different seed or text rendered the same image")
	}
}

func equal(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStyleVariety(t *testing.T) {
	faces := map[Face]int{}
	const n = 2000
	for seed := range uint64(n) {
		st := StyleFor("AB12", seed)
		faces[st.Face]++
		if li, lp := Luminance(st.Ink), Luminance(st.Paper); li > MaxInkLuminance || lp < MinPaperLuminance {
			t.Fatalf("seed %d: ink luminance %.3f (want <= %g), paper %.3f (want >= %g)", seed, li, MaxInkLuminance, lp, MinPaperLuminance)
		}
		if st.FontSize < MinFontSize || st.FontSize > MaxFontSize || st.DX < -1 || st.DX > 1 || st.DY < -1 || st.DY > 1 {
			t.Fatalf("seed %d: style %+v out of range", seed, st)
		}
	}
	// The two upright faces drawn uniformly: 1000 each, binomial sd ≈ 22.
	if len(faces) != 2 || faces[MonoRegular] < 900 || faces[MonoBold] < 900 {
		t.Errorf("faces drawn %v of %d, want about 1000 each of %s and %s", faces, n, MonoRegular, MonoBold)
	}
}

// Image statistics: values in [0,1]; the margins left and right of the text cells are
// pure paper; ink covers a plausible share of the cells; the inked columns span the cells.
func TestRenderStats(t *testing.T) {
	for seed := range uint64(200) {
		text := []string{"K4R", "ZZ9Q", "ABCDE", "WM8X1J"}[seed%4]
		st := StyleFor(text, seed)
		pix, err := RenderPixels(text, seed)
		if err != nil {
			t.Fatal(err)
		}
		if len(pix) != Height*Width*Channels {
			t.Fatalf("len %d, want %d", len(pix), Height*Width*Channels)
		}
		paper := [3]float32{float32(st.Paper.R) / 255, float32(st.Paper.G) / 255, float32(st.Paper.B) / 255}
		x0 := LeftMargin
		x1 := x0 + len(text)*CellWidth
		inked, minX, maxX := 0, Width, -1
		for y := range Height {
			for x := range Width {
				p := pix[(y*Width+x)*3:]
				diff := 0.0
				for c := range 3 {
					if p[c] < 0 || p[c] > 1 {
						t.Fatalf("seed %d: pixel (%d,%d) channel %d = %g outside [0,1]", seed, y, x, c, p[c])
					}
					diff = math.Max(diff, math.Abs(float64(p[c]-paper[c])))
				}
				if diff > 0.1 {
					inked++
					minX, maxX = min(minX, x), max(maxX, x)
				}
			}
		}
		// Offsets move the glyphs by 1 px.
		if minX < x0-2 || maxX > x1+2 {
			t.Errorf("seed %d %q: ink in columns [%d,%d], cells are [%d,%d)", seed, text, minX, maxX, x0, x1)
		}
		if minX > x0+CellWidth/2 || maxX < x1-CellWidth/2 {
			t.Errorf("seed %d %q: ink in columns [%d,%d] does not span cells [%d,%d)", seed, text, minX, maxX, x0, x1)
		}
		share := float64(inked) / float64(Height*len(text)*CellWidth)
		if share < 0.08 || share > 0.6 {
			t.Errorf("seed %d %q: ink covers %.2f of the cells, want 0.08..0.6", seed, text, share)
		}
	}
}

func TestPixelsRoundTrip(t *testing.T) {
	img, err := Render("Q7", 11)
	if err != nil {
		t.Fatal(err)
	}
	back, err := FromPixels(Pixels(img), Height, Width)
	if err != nil {
		t.Fatal(err)
	}
	for i := range img.Pix {
		if img.Pix[i] != back.Pix[i] {
			t.Fatalf("byte %d: %d != %d", i, img.Pix[i], back.Pix[i])
		}
	}
	if _, err := FromPixels(make([]float32, 5), 2, 2); err == nil {
		t.Error("FromPixels accepted 5 values for 2×2×3")
	}
	batch, err := RenderBatch([]string{"Q7", "AB"}, []uint64{11, 12})
	if err != nil {
		t.Fatal(err)
	}
	if !equal(batch[:Height*Width*3], Pixels(img)) || len(batch) != 2*Height*Width*3 {
		t.Error("RenderBatch item 0 differs from Render")
	}
}

func TestPNGRoundTrip(t *testing.T) {
	img, _ := Render("PNG1", 2)
	path := t.TempDir() + "/x.png"
	if err := SavePNG(path, img); err != nil {
		t.Fatal(err)
	}
	back, err := LoadPNG(path)
	if err != nil {
		t.Fatal(err)
	}
	if !equal(Pixels(img), Pixels(back)) {
		t.Error("PNG round trip changed the pixels")
	}
	g := Grid([]image.Image{img, back, img}, 2)
	if g.Bounds().Dx() != 2*(Width+2)+2 || g.Bounds().Dy() != 2*(Height+2)+2 {
		t.Errorf("grid bounds %v", g.Bounds())
	}
}

// An image PNG cannot encode (0×0) leaves the previous file and no temporary file.
func TestSavePNGFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.png")
	img, _ := Render("OLD", 1)
	if err := SavePNG(path, img); err != nil {
		t.Fatal(err)
	}
	err := SavePNG(path, image.NewRGBA(image.Rect(0, 0, 0, 0)))
	if err == nil || !strings.HasPrefix(err.Error(), "save PNG "+path+": ") || !strings.Contains(err.Error(), "encode: ") {
		t.Errorf("error %v, want a save PNG encode error naming %s", err, path)
	}
	back, err := LoadPNG(path)
	if err != nil || !equal(Pixels(back), Pixels(img)) {
		t.Errorf("the old PNG did not survive the failed save (%v)", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only x.png", len(entries))
	}
}
