package rewards

import (
	"image"
	"image/color"
	"image/draw"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gomono"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/onnxrt/onnxrttest"
)

func TestMain(m *testing.M) { onnxrttest.Main(m, "rewards (and the PP-OCRv4 files)") }

// cached returns a file of the setup cache (e.g. "ocr/ppocr_keys_v1.txt"), failing the test
// when setup has not run.
func cached(t testing.TB, rel string) string {
	t.Helper()
	p, err := onnxrt.FindCached(rel)
	if err != nil {
		t.Fatalf("%v (run scripts/setup.sh; these tests never skip)", err)
	}
	return p
}

func loadFace(t testing.TB, ttf []byte, size float64) font.Face {
	t.Helper()
	f, err := opentype.Parse(ttf)
	if err != nil {
		t.Fatal(err)
	}
	face, err := opentype.NewFace(f, &opentype.FaceOptions{Size: size, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		t.Fatal(err)
	}
	return face
}

// renderAt draws text in dark ink on light paper into a w×h canvas with the baseline at
// (x, y) and returns it as an Image.
func renderAt(face font.Face, text string, w, h, x, y int) Image {
	rgba := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(rgba, rgba.Bounds(), image.NewUniform(color.RGBA{245, 242, 232, 255}), image.Point{}, draw.Src)
	d := font.Drawer{Dst: rgba, Src: image.NewUniform(color.RGBA{20, 20, 30, 255}), Face: face, Dot: fixed.P(x, y)}
	d.DrawString(text)
	return fromRGBA(rgba)
}

// renderLine draws text as a single line with a margin around it, the recogniser's view.
func renderLine(face font.Face, text string) Image {
	adv := font.MeasureString(face, text).Ceil()
	m := face.Metrics()
	asc, desc := m.Ascent.Ceil(), m.Descent.Ceil()
	return renderAt(face, text, adv+24, asc+desc+16, 12, 8+asc)
}

func fromRGBA(rgba *image.RGBA) Image {
	b := rgba.Bounds()
	im := Image{W: b.Dx(), H: b.Dy(), Pix: make([]float32, b.Dx()*b.Dy()*3)}
	for y := 0; y < im.H; y++ {
		for x := 0; x < im.W; x++ {
			o := rgba.PixOffset(x, y)
			for c := 0; c < 3; c++ {
				im.Pix[(y*im.W+x)*3+c] = float32(rgba.Pix[o+c]) / 255
			}
		}
	}
	return im
}

var (
	monoTTF    = gomono.TTF
	regularTTF = goregular.TTF
)

// writeModel writes g as an ONNX file in dir and returns its path.
func writeModel(t testing.TB, dir string, g *onnx.Graph) string {
	t.Helper()
	path := filepath.Join(dir, g.Name+".onnx")
	if err := (&onnx.Model{Graph: g}).WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// meanModel is a brand-new scalar reward: score[n] = mean over channels and pixels of
// input[n], for an input named in of fixed size 3×h×w and a dynamic batch.
func meanModel(name, in string, h, w int64) *onnx.Graph {
	g := onnx.NewGraph(name)
	x := g.Input(in, onnx.Float32, onnx.Sym("N"), onnx.Dim{Value: 3}, onnx.Dim{Value: h}, onnx.Dim{Value: w})
	g.Node("ReduceMean", []string{x}, []string{"score"}, onnx.AttrInts("axes", 1, 2, 3), onnx.AttrInt("keepdims", 0))
	g.Output("score", onnx.Float32, onnx.Sym("N"))
	return g
}

// writeFile writes text into dir/name and returns the path.
func writeFile(t testing.TB, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
