// Package preprocess owns the pixel side of reward models: the project's image type (RGB,
// height×width×channel, values in [0,1]), resampling with nearest / bilinear / bicubic
// filters, crops, and the declared transform (size, crop, channel order, layout, value range,
// mean/std) that turns a decoded image into a model's input tensor.
//
// Nothing here knows about ONNX Runtime: a Spec writes float32 values into a caller's buffer.
package preprocess

import (
	"fmt"
	"image"
	"math"

	"github.com/densegrpo/densegrpo/internal/imagefile"
)

// Image is a decoded RGB image: Pix holds H rows of W pixels of 3 float32 values (R, G, B),
// each in [0,1].
type Image struct {
	W, H int
	Pix  []float32
}

// NewImage returns a black w×h image.
func NewImage(w, h int) Image {
	return Image{W: w, H: h, Pix: make([]float32, w*h*3)}
}

// Check reports an image that cannot be scored: a zero or negative size, a pixel buffer of
// the wrong length, or a value that is NaN or infinite.
func (im Image) Check() error {
	if im.W <= 0 || im.H <= 0 {
		return fmt.Errorf("image size %dx%d: want width and height > 0", im.W, im.H)
	}
	if len(im.Pix) != im.W*im.H*3 {
		return fmt.Errorf("image %dx%d: got %d values, want %d (RGB)", im.W, im.H, len(im.Pix), im.W*im.H*3)
	}
	for i, v := range im.Pix {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("image %dx%d: pixel (%d,%d) channel %d is %v", im.W, im.H, (i/3)%im.W, (i/3)/im.W, i%3, v)
		}
	}
	return nil
}

// At returns channel c of pixel (x, y).
func (im Image) At(x, y, c int) float32 { return im.Pix[(y*im.W+x)*3+c] }

// Crop returns the pixels of the rectangle [x0,x1)×[y0,y1), clamped to the image. An empty
// rectangle gives a 1×1 crop of the nearest pixel so callers never divide by zero.
func (im Image) Crop(x0, y0, x1, y1 int) Image {
	x0, x1 = clampInt(x0, 0, im.W-1), clampInt(x1, 1, im.W)
	y0, y1 = clampInt(y0, 0, im.H-1), clampInt(y1, 1, im.H)
	if x1 <= x0 {
		x1 = x0 + 1
	}
	if y1 <= y0 {
		y1 = y0 + 1
	}
	out := NewImage(x1-x0, y1-y0)
	for y := y0; y < y1; y++ {
		copy(out.Pix[(y-y0)*out.W*3:(y-y0+1)*out.W*3], im.Pix[(y*im.W+x0)*3:(y*im.W+x1)*3])
	}
	return out
}

func clampInt(v, lo, hi int) int {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

// Filter names a resampling kernel.
type Filter string

// The filters a Spec may declare.
const (
	Nearest  Filter = "nearest"
	Bilinear Filter = "bilinear"
	Bicubic  Filter = "bicubic"
)

// support is the kernel radius at scale 1.
func (f Filter) support() float64 {
	switch f {
	case Bilinear:
		return 1
	case Bicubic:
		return 2
	default:
		return 0.5
	}
}

// weight evaluates the kernel at distance x (in source pixels at scale 1).
func (f Filter) weight(x float64) float64 {
	x = math.Abs(x)
	switch f {
	case Bilinear: // triangle
		if x < 1 {
			return 1 - x
		}
		return 0
	case Bicubic: // Keys cubic with a = -0.5, as PIL and OpenCV use
		const a = -0.5
		if x < 1 {
			return ((a+2)*x-(a+3))*x*x + 1
		}
		if x < 2 {
			return (((x-5)*x+8)*x - 4) * a
		}
		return 0
	default: // box of width 1: nearest neighbour at scale 1
		if x < 0.5 {
			return 1
		}
		return 0
	}
}

// Resize resamples im to w×h with filter f. Downscaling widens the kernel by the scale factor
// (anti-aliasing, as PIL does), so a shrunk image averages the pixels it covers instead of
// sampling them. Nearest never blends: it picks the pixel whose centre is nearest.
func Resize(im Image, w, h int, f Filter) Image {
	if w == im.W && h == im.H {
		return Image{W: w, H: h, Pix: append([]float32(nil), im.Pix...)}
	}
	if f == Nearest {
		out := NewImage(w, h)
		for y := 0; y < h; y++ {
			sy := min(int((float64(y)+0.5)*float64(im.H)/float64(h)), im.H-1)
			for x := 0; x < w; x++ {
				sx := min(int((float64(x)+0.5)*float64(im.W)/float64(w)), im.W-1)
				copy(out.Pix[(y*w+x)*3:(y*w+x)*3+3], im.Pix[(sy*im.W+sx)*3:(sy*im.W+sx)*3+3])
			}
		}
		return out
	}
	// Separable: horizontal pass into a w×im.H buffer, then vertical.
	xw := weights(im.W, w, f)
	yw := weights(im.H, h, f)
	tmp := make([]float32, w*im.H*3)
	for y := 0; y < im.H; y++ {
		row := im.Pix[y*im.W*3 : (y+1)*im.W*3]
		for x, k := range xw {
			var r, g, b float64
			for i, wt := range k.w {
				p := row[(k.first+i)*3:]
				r += wt * float64(p[0])
				g += wt * float64(p[1])
				b += wt * float64(p[2])
			}
			o := (y*w + x) * 3
			tmp[o], tmp[o+1], tmp[o+2] = float32(r), float32(g), float32(b)
		}
	}
	out := NewImage(w, h)
	for y, k := range yw {
		for x := 0; x < w; x++ {
			var r, g, b float64
			for i, wt := range k.w {
				p := tmp[((k.first+i)*w+x)*3:]
				r += wt * float64(p[0])
				g += wt * float64(p[1])
				b += wt * float64(p[2])
			}
			o := (y*w + x) * 3
			out.Pix[o], out.Pix[o+1], out.Pix[o+2] = float32(r), float32(g), float32(b)
		}
	}
	return out
}

type kernel struct {
	first int
	w     []float64
}

// weights computes, for each of dst output positions, the source taps and their normalised
// weights when mapping src samples onto dst (pixel centres aligned, as PIL does).
func weights(src, dst int, f Filter) []kernel {
	scale := float64(src) / float64(dst)
	fs := max(scale, 1)
	support := f.support() * fs
	out := make([]kernel, dst)
	for i := range out {
		centre := (float64(i) + 0.5) * scale
		lo := max(int(math.Floor(centre-support)), 0)
		hi := min(int(math.Ceil(centre+support)), src)
		k := kernel{first: lo}
		var sum float64
		for j := lo; j < hi; j++ {
			wt := f.weight((float64(j) + 0.5 - centre) / fs)
			k.w = append(k.w, wt)
			sum += wt
		}
		if sum == 0 { // can only happen for degenerate sizes; fall back to the nearest tap
			j := min(max(int(centre), 0), src-1)
			k = kernel{first: j, w: []float64{1}}
			sum = 1
		}
		for j := range k.w {
			k.w[j] /= sum
		}
		out[i] = k
	}
	return out
}

// FromImage converts any decoded image to an Image (alpha is dropped, 16-bit channels kept
// at full precision).
func FromImage(src image.Image) Image {
	b := src.Bounds()
	im := NewImage(b.Dx(), b.Dy())
	for y := 0; y < im.H; y++ {
		for x := 0; x < im.W; x++ {
			r, g, bl, _ := src.At(b.Min.X+x, b.Min.Y+y).RGBA()
			o := (y*im.W + x) * 3
			im.Pix[o], im.Pix[o+1], im.Pix[o+2] = float32(r)/0xffff, float32(g)/0xffff, float32(bl)/0xffff
		}
	}
	return im
}

// ReadImage decodes a PNG or JPEG file into an Image after checking the size its header
// declares against lim (see internal/imagefile), so an image that would not fit is refused
// before any pixel is decoded.
func ReadImage(path string, lim imagefile.Limits) (Image, error) {
	src, err := imagefile.Read(path, lim)
	if err != nil {
		return Image{}, err
	}
	im := FromImage(src)
	if err := im.Check(); err != nil {
		return Image{}, fmt.Errorf("image %s: %w", path, err)
	}
	return im, nil
}
