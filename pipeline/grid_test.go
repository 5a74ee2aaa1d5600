package pipeline

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/rewards"
)

// The grid of TestWriteGrid carries its layout: cells at (4,4), (200,4), (4,121), 8×4 at scale 24
// (the geometry derived there), with their prompts; cutting them out of the decoded PNG gives
// the source images at 8 bits.
func TestGridLayoutRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grid.png")
	ramp := rewards.Image{W: 8, H: 4, Pix: make([]float32, 8*4*3)}
	for i := range ramp.Pix {
		ramp.Pix[i] = float32(i%97) / 96
	}
	imgs := []rewards.Image{solid(8, 4, 1, 0, 0), ramp, solid(8, 4, 0, 0, 1)}
	prompts := []string{`a sign that says "AB"`, "ünïcode «ok»", ""}
	if err := WriteGrid(path, imgs, []string{"red", "ramp", "blue"}, prompts, 2); err != nil {
		t.Fatal(err)
	}
	layout, err := ReadGridLayout(path)
	if err != nil || layout == nil {
		t.Fatalf("ReadGridLayout = %v, %v; want the layout", layout, err)
	}
	want := []GridCell{{4, 4, 8, 4, 24, prompts[0]}, {200, 4, 8, 4, 24, prompts[1]}, {4, 121, 8, 4, 24, ""}}
	if len(layout.Cells) != len(want) {
		t.Fatalf("cells %+v, want %+v", layout.Cells, want)
	}
	for i := range want {
		if layout.Cells[i] != want[i] {
			t.Errorf("cell %d = %+v, want %+v", i, layout.Cells[i], want[i])
		}
	}
	// The file is still a PNG every decoder reads (the chunk's CRC is right).
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	b := decoded.Bounds()
	sheet := rewards.Image{W: b.Dx(), H: b.Dy(), Pix: make([]float32, 3*b.Dx()*b.Dy())}
	for y := range b.Dy() {
		for x := range b.Dx() {
			r, g, bl, _ := decoded.At(x, y).RGBA()
			i := (y*b.Dx() + x) * 3
			sheet.Pix[i], sheet.Pix[i+1], sheet.Pix[i+2] = float32(r>>8)/255, float32(g>>8)/255, float32(bl>>8)/255
		}
	}
	cells, err := GridImages(sheet, *layout)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cells {
		if c.W != 8 || c.H != 4 {
			t.Fatalf("cell %d is %d×%d, want 8×4", i, c.W, c.H)
		}
		for j, v := range c.Pix {
			if q := float32(byte8(imgs[i].Pix[j])) / 255; math.Abs(float64(v-q)) > 1e-7 {
				t.Fatalf("cell %d value %d = %v, want %v (the source at 8 bits)", i, j, v, q)
			}
		}
	}
	// A cell outside the image is an error naming it; a PNG without the chunk has no layout.
	bad := GridLayout{Cells: []GridCell{{X: 390, Y: 4, W: 8, H: 4, Scale: 24}}}
	if _, err := GridImages(sheet, bad); err == nil || !strings.Contains(err.Error(), "cell 0 (8×4 ×24 at 390,4) does not fit the 396×238 image") {
		t.Errorf("cell outside: error %v", err)
	}
	plain := filepath.Join(t.TempDir(), "plain.png")
	var buf bytes.Buffer
	if err := png.Encode(&buf, decoded); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := ReadGridLayout(plain); l != nil || err != nil {
		t.Errorf("plain PNG: layout %v, error %v; want none", l, err)
	}
}
