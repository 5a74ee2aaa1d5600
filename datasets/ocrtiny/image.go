package ocrtiny

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/internal/imagefile"
)

// Pixels returns img as float32 RGB in [0,1], row-major [H,W,3].
func Pixels(img image.Image) []float32 {
	b := img.Bounds()
	out := make([]float32, 0, b.Dx()*b.Dy()*3)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			out = append(out, float32(c.R)/255, float32(c.G)/255, float32(c.B)/255)
		}
	}
	return out
}

// FromPixels turns float32 RGB [h,w,3] (values clamped to [0,1]) into an image.
func FromPixels(pix []float32, h, w int) (*image.RGBA, error) {
	if len(pix) != h*w*3 {
		return nil, fmt.Errorf("image from pixels: got %d values, want %d×%d×3 = %d", len(pix), h, w, h*w*3)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < h*w; i++ {
		for c := 0; c < 3; c++ {
			v := min(max(pix[3*i+c], 0), 1)
			img.Pix[4*i+c] = uint8(v*255 + 0.5)
		}
		img.Pix[4*i+3] = 255
	}
	return img, nil
}

// RenderPixels renders (text, seed) and returns it as float32 RGB [Height,Width,3] in [0,1].
func RenderPixels(text string, seed uint64) ([]float32, error) {
	img, err := Render(text, seed)
	if err != nil {
		return nil, err
	}
	return Pixels(img), nil
}

// RenderBatch renders texts[i] with seeds[i] into one float32 buffer [B,Height,Width,3].
func RenderBatch(texts []string, seeds []uint64) ([]float32, error) {
	if len(texts) != len(seeds) {
		return nil, fmt.Errorf("render batch: %d texts but %d seeds", len(texts), len(seeds))
	}
	out := make([]float32, 0, len(texts)*Height*Width*Channels)
	for i, t := range texts {
		pix, err := RenderPixels(t, seeds[i])
		if err != nil {
			return nil, err
		}
		out = append(out, pix...)
	}
	return out, nil
}

// Grid tiles images (all of the size of the first) into rows of cols, with a 2-px grey gap.
func Grid(imgs []image.Image, cols int) *image.RGBA {
	if len(imgs) == 0 || cols <= 0 {
		return image.NewRGBA(image.Rect(0, 0, 0, 0))
	}
	const gap = 2
	cw, ch := imgs[0].Bounds().Dx(), imgs[0].Bounds().Dy()
	cols = min(cols, len(imgs))
	rows := (len(imgs) + cols - 1) / cols
	out := image.NewRGBA(image.Rect(0, 0, cols*(cw+gap)+gap, rows*(ch+gap)+gap))
	for i := range out.Pix {
		out.Pix[i] = 128
	}
	for i, img := range imgs {
		x, y := gap+(i%cols)*(cw+gap), gap+(i/cols)*(ch+gap)
		b := img.Bounds()
		for yy := 0; yy < min(ch, b.Dy()); yy++ {
			for xx := 0; xx < min(cw, b.Dx()); xx++ {
				out.Set(x+xx, y+yy, img.At(b.Min.X+xx, b.Min.Y+yy))
			}
		}
	}
	return out
}

// SavePNG writes img to path atomically (see internal/atomicfile): a reader sees the old file
// or the whole new one.
func SavePNG(path string, img image.Image) error {
	err := atomicfile.Write(path, func(w io.Writer) error {
		if err := png.Encode(w, img); err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save PNG %s: %w", path, err)
	}
	return nil
}

// LoadPNG reads a PNG (or JPEG) image, refusing one whose header declares more than
// imagefile.DefaultLimits before decoding it.
func LoadPNG(path string) (image.Image, error) {
	return imagefile.Read(path, imagefile.DefaultLimits)
}
