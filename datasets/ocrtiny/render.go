package ocrtiny

import (
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"image/draw"
	"math"
	"math/rand/v2"
	"sync"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gomono"
	"golang.org/x/image/font/gofont/gomonobold"
	"golang.org/x/image/font/gofont/gomonobolditalic"
	"golang.org/x/image/font/gofont/gomonoitalic"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/font/sfnt"
	"golang.org/x/image/math/fixed"
)

// Image geometry. The latent of the tiny VAE is 4×(Height/4)×(Width/4) and the MMDiT takes
// 2×2 latent patches, so one transformer token covers PatchPixels×PatchPixels pixels.
// Characters sit in CellWidth-wide cells starting LeftMargin pixels from the left edge, so one
// character is exactly two tokens wide and character k of every string lies under the same
// tokens: the transformer learns one place per character instead of one per string length.
const (
	Height      = 32
	Width       = 128
	Channels    = 3
	CellWidth   = 16
	PatchPixels = 8
	// LeftMargin is the paper left of the first cell.
	LeftMargin = 2 * PatchPixels
	// NumCells is how many character cells fit right of the margin.
	NumCells = (Width - LeftMargin) / CellWidth
)

// Face is one of the Go fonts the renderer draws with. All are monospaced with a 16 px
// advance at MaxFontSize, so the character cells line up with the token grid.
type Face int

const (
	MonoRegular Face = iota
	MonoBold
	MonoItalic
	MonoBoldItalic
	numFaces
)

var faceNames = [numFaces]string{"gomono", "gomonobold", "gomonoitalic", "gomonobolditalic"}

func (f Face) String() string {
	if f < 0 || f >= numFaces {
		return fmt.Sprintf("Face(%d)", int(f))
	}
	return faceNames[f]
}

// Font sizes in pixels. MaxFontSize = 16·2048/1229 gives Go Mono's advance of 1229/2048 em
// exactly one 16 px cell; smaller sizes are centred inside the cell.
const (
	MinFontSize = 24.5
	MaxFontSize = CellWidth * 2048.0 / 1229.0
)

// Ink is dark and paper light, of any hue: relative luminance of ink at most MaxInkLuminance,
// of paper at least MinPaperLuminance, so their contrast is at least the difference (0.48).
const (
	MaxInkLuminance   = 0.12
	MinPaperLuminance = 0.6
)

// styleFaces are the faces StyleFor draws from: upright ones, whose glyphs stay inside their
// cells (the italics lean into the next cell).
var styleFaces = []Face{MonoRegular, MonoBold}

// Style is every free choice of one rendering.
type Style struct {
	Face     Face
	FontSize float64 // pixels per em, in [MinFontSize, MaxFontSize]
	Ink      color.RGBA
	Paper    color.RGBA
	// DX, DY are sub-token offsets in pixels, in [-1,1].
	DX, DY int
}

var (
	fontsOnce sync.Once
	fonts     [numFaces]*sfnt.Font
	fontsErr  error
)

func loadFonts() error {
	fontsOnce.Do(func() {
		for i, ttf := range [numFaces][]byte{gomono.TTF, gomonobold.TTF, gomonoitalic.TTF, gomonobolditalic.TTF} {
			f, err := opentype.Parse(ttf)
			if err != nil {
				fontsErr = fmt.Errorf("parse font %s: %w", Face(i), err)
				return
			}
			fonts[i] = f
		}
	})
	return fontsErr
}

// newRand returns the generator of one (text, seed) pair: PCG (stable across Go releases)
// seeded with seed and the FNV-1a hash of text, so two strings under the same seed differ.
func newRand(text string, seed uint64) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(text))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// StyleFor draws the style of (text, seed) deterministically.
func StyleFor(text string, seed uint64) Style {
	r := newRand(text, seed)
	st := Style{
		Face:     styleFaces[r.IntN(len(styleFaces))],
		FontSize: MinFontSize + (MaxFontSize-MinFontSize)*r.Float64(),
		DX:       r.IntN(3) - 1,
		DY:       r.IntN(3) - 1,
	}
	st.Ink, st.Paper = colours(r)
	return st
}

// colours draws a dark ink and a light paper colour by rejection from uniform RGB.
func colours(r *rand.Rand) (ink, paper color.RGBA) {
	for ink = randomColour(r); Luminance(ink) > MaxInkLuminance; ink = randomColour(r) {
	}
	for paper = randomColour(r); Luminance(paper) < MinPaperLuminance; paper = randomColour(r) {
	}
	return ink, paper
}

func randomColour(r *rand.Rand) color.RGBA {
	return color.RGBA{R: uint8(r.IntN(256)), G: uint8(r.IntN(256)), B: uint8(r.IntN(256)), A: 255}
}

// Luminance is the relative luminance of c in [0,1] (Rec. 709 weights on linearised sRGB).
func Luminance(c color.RGBA) float64 {
	lin := func(v uint8) float64 {
		x := float64(v) / 255
		if x <= 0.04045 {
			return x / 12.92
		}
		return math.Pow((x+0.055)/1.055, 2.4)
	}
	return 0.2126*lin(c.R) + 0.7152*lin(c.G) + 0.0722*lin(c.B)
}

// CheckText reports whether text can be rendered: 1..NumCells characters of A–Z and 0–9.
func CheckText(text string) error {
	if len(text) == 0 || len(text) > NumCells {
		return fmt.Errorf("render %q: length %d, want 1..%d", text, len(text), NumCells)
	}
	for i := 0; i < len(text); i++ {
		if !isRenderable(text[i]) {
			return fmt.Errorf("render %q: character %q at %d is not in [A-Z0-9]", text, text[i], i)
		}
	}
	return nil
}

// Render draws text with the style of (text, seed).
func Render(text string, seed uint64) (*image.RGBA, error) {
	return RenderStyle(text, StyleFor(text, seed))
}

// RenderStyle draws text with st: paper fill, then each character centred horizontally in its
// cell, caps centred vertically, anti-aliased ink.
func RenderStyle(text string, st Style) (*image.RGBA, error) {
	if err := CheckText(text); err != nil {
		return nil, err
	}
	if st.Face < 0 || st.Face >= numFaces {
		return nil, fmt.Errorf("render %q: unknown face %d", text, int(st.Face))
	}
	if st.FontSize < MinFontSize-1e-9 || st.FontSize > MaxFontSize+1e-9 {
		return nil, fmt.Errorf("render %q: font size %g outside [%g, %g]", text, st.FontSize, MinFontSize, MaxFontSize)
	}
	if err := loadFonts(); err != nil {
		return nil, err
	}
	face, err := opentype.NewFace(fonts[st.Face], &opentype.FaceOptions{Size: st.FontSize, DPI: 72, Hinting: font.HintingNone})
	if err != nil {
		return nil, fmt.Errorf("render %q: face %s size %g: %w", text, st.Face, st.FontSize, err)
	}
	defer face.Close()

	img := image.NewRGBA(image.Rect(0, 0, Width, Height))
	draw.Draw(img, img.Bounds(), image.NewUniform(st.Paper), image.Point{}, draw.Src)

	// Centre the cap height (the height of "H"): baseline = (H + capHeight)/2.
	hBounds, _, ok := face.GlyphBounds('H')
	if !ok {
		return nil, fmt.Errorf("render %q: face %s has no glyph 'H'", text, st.Face)
	}
	capHeight := float64(-hBounds.Min.Y) / 64
	baseline := (float64(Height)+capHeight)/2 + float64(st.DY)
	x0 := LeftMargin + st.DX
	d := &font.Drawer{Dst: img, Src: image.NewUniform(st.Ink), Face: face}
	for i, r := range text {
		adv, ok := face.GlyphAdvance(r)
		if !ok {
			return nil, fmt.Errorf("render %q: face %s has no glyph %q", text, st.Face, r)
		}
		left := float64(x0+i*CellWidth) + (CellWidth-float64(adv)/64)/2
		d.Dot = fixed.Point26_6{X: fixed.Int26_6(math.Round(left * 64)), Y: fixed.Int26_6(math.Round(baseline * 64))}
		d.DrawString(string(r))
	}
	return img, nil
}
