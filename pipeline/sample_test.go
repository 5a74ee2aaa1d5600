package pipeline

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rl"
)

// With the zero-velocity model image k is sigmoid of its own initial noise rl.InitialNoise(seed, k)
// (first 3 channels, HWC): check pixel (x,y) channel c against x0[c,y,x].
func TestSampleZeroVelocity(t *testing.T) {
	cfg, files := fixture(t)
	writeZeroModel(t, files)
	p := newTestPolicy(t, cfg, "")
	res, err := Sample(context.Background(), cfg, p, SampleOptions{Prompts: []string{"a", "b"}, N: 3, Seed: 11, Score: true})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.Prompts) != "[a a a b b b]" || len(res.Images) != 6 {
		t.Fatalf("prompts %v, %d images; want [a a a b b b] and 6", res.Prompts, len(res.Images))
	}
	for k, im := range res.Images {
		x0 := rl.InitialNoise(11, k, 4*4*8)
		if im.W != 8 || im.H != 4 {
			t.Fatalf("image %d is %dx%d, want 8x4", k, im.W, im.H)
		}
		for y := range 4 {
			for x := range 8 {
				for c := range 3 {
					if got, want := float64(im.Pix[(y*8+x)*3+c]), sigmoid(x0[(c*4+y)*8+x]); math.Abs(got-want) > 1e-6 {
						t.Fatalf("image %d pixel (%d,%d) channel %d = %v, want %v", k, x, y, c, got, want)
					}
				}
			}
		}
		if got, want := res.Scores.ByName["bright"][k], brightness(11, k); math.Abs(got-want) > 1e-5 {
			t.Errorf("image %d: score %v, want %v", k, got, want)
		}
	}
	if _, err := Sample(context.Background(), cfg, p, SampleOptions{}); err == nil || !strings.Contains(err.Error(), "got 0 prompts") {
		t.Errorf("no prompts: error %v", err)
	}
}

func solid(w, h int, r, g, b float32) rewards.Image {
	im := rewards.Image{W: w, H: h, Pix: make([]float32, w*h*3)}
	for i := 0; i < w*h; i++ {
		im.Pix[3*i], im.Pix[3*i+1], im.Pix[3*i+2] = r, g, b
	}
	return im
}

// Geometry of a grid of three 8×4 images in 2 columns with one-line labels: scale
// ⌈192/8⌉ = 24, cells 192×96, label 1·13+4 = 17 px; width 4 + 2·(192+4) = 396, height
// 4 + 2·(96+17+4) = 238. Cell (col 1, row 0) starts at x = 4+196 = 200, y = 4; its label band
// spans y = 100..116; row 1 starts at y = 4+117 = 121.
func TestWriteGrid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grid.png")
	imgs := []rewards.Image{solid(8, 4, 1, 0, 0), solid(8, 4, 0, 1, 0), solid(8, 4, 0, 0, 1)}
	if err := WriteGrid(path, imgs, []string{"red", "green", "blue"}, []string{"r", "g", "b"}, 2); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 396 || b.Dy() != 238 {
		t.Fatalf("grid %dx%d, want 396x238", b.Dx(), b.Dy())
	}
	rgb := func(x, y int) [3]uint8 {
		c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
		return [3]uint8{c.R, c.G, c.B}
	}
	for _, tc := range []struct {
		x, y int
		want [3]uint8
	}{
		{0, 0, [3]uint8{160, 160, 160}},     // outer gap
		{4, 4, [3]uint8{255, 0, 0}},         // first cell, top left
		{195, 99, [3]uint8{255, 0, 0}},      // first cell, bottom right
		{200, 4, [3]uint8{0, 255, 0}},       // second cell
		{4, 121, [3]uint8{0, 0, 255}},       // row 1
		{390, 116, [3]uint8{255, 255, 255}}, // end of the second label band
		{200, 150, [3]uint8{160, 160, 160}}, // the empty fourth cell
	} {
		if got := rgb(tc.x, tc.y); got != tc.want {
			t.Errorf("pixel (%d,%d) = %v, want %v", tc.x, tc.y, got, tc.want)
		}
	}
	// The label band of the first cell holds black text pixels.
	dark := 0
	for y := 100; y < 117; y++ {
		for x := 4; x < 196; x++ {
			if rgb(x, y) == [3]uint8{0, 0, 0} {
				dark++
			}
		}
	}
	if dark < 10 {
		t.Errorf("label band has %d black pixels, want text", dark)
	}
	if err := WriteGrid(path, imgs, []string{"one"}, nil, 2); err == nil || !strings.Contains(err.Error(), "1 labels for 3 images") {
		t.Errorf("label count: error %v", err)
	}
	if err := WriteGrid(path, nil, nil, nil, 2); err == nil || !strings.Contains(err.Error(), "no images") {
		t.Errorf("no images: error %v", err)
	}
	nan := solid(2, 2, 0, 0, 0)
	nan.Pix[4] = float32(math.NaN())
	if err := WriteGrid(path, []rewards.Image{nan}, nil, nil, 0); err == nil || !strings.Contains(err.Error(), "image 0: image 2x2: pixel (1,0) channel 1 is NaN") {
		t.Errorf("NaN image: error %v", err)
	}
}

func TestGridWithoutLabels(t *testing.T) {
	// 256-px-wide images are not scaled; no label band: 4 + 256 + 4 wide, 4 + 2 + 4 high.
	img, err := Grid([]rewards.Image{solid(256, 2, 0.5, 0.5, 0.5)}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds() != image.Rect(0, 0, 264, 10) {
		t.Errorf("bounds %v, want 264x10", img.Bounds())
	}
	if c := img.RGBAAt(4, 4); c != (color.RGBA{128, 128, 128, 255}) { // 0.5·255 + 0.5 = 128
		t.Errorf("pixel %v, want 128 grey", c)
	}
}

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		s     string
		width int
		want  string
	}{
		{`a sign that says "K4RT"`, 12, `["a sign that" "says \"K4RT\""]`},
		{"abcdefghij", 4, `["abcd" "efgh" "ij"]`},
		{"one\ntwo three", 20, `["one" "two three"]`},
		{"a b c d e f g h i", 3, `["a b" "c d" "e f" "..."]`}, // 5 lines, 4 kept: the 4th cut to width-3 = 0 chars + "..."
		{"", 5, `[""]`},
	} {
		if got := fmt.Sprintf("%q", wrap(tc.s, tc.width, 4)); got != tc.want {
			t.Errorf("wrap(%q, %d) = %s, want %s", tc.s, tc.width, got, tc.want)
		}
	}
}

func TestWriteImages(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	paths, err := WriteImages(dir, []rewards.Image{solid(3, 2, 1, 1, 1), solid(3, 2, 0, 0, 0)}, []string{`a sign that says "K4RT"`, "!!"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "000-a-sign-that-says-K4RT.png"), filepath.Join(dir, "001.png")}
	if fmt.Sprint(paths) != fmt.Sprint(want) {
		t.Fatalf("paths %v, want %v", paths, want)
	}
	f, err := os.Open(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() != 3 || img.Bounds().Dy() != 2 {
		t.Fatalf("decode %s: %v, %v", paths[0], img, err)
	}
}
