// Package imagefile reads images that come from outside the program — PNG or JPEG, told apart
// by their first bytes — and checks the size their header declares before any pixel is
// decoded. A decoder allocates the whole image from the declared size, so a 467-byte PNG that
// declares 100000×100000 pixels, or a 1 MB compressed bomb of a 1-bit image, would otherwise
// cost tens of gigabytes before the first pixel is read.
package imagefile

import (
	"bufio"
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"os"
)

// Limits bound the declared size of an image.
type Limits struct {
	// MaxSide bounds the width and the height, each.
	MaxSide int
	// MaxPixels bounds width × height.
	MaxPixels int64
}

// DefaultLimits admit 4096×4096 pixels (16 MP: 64 MiB as 8-bit RGBA, 192 MiB as the rewards'
// float32 RGB) with no side beyond 16384, the largest image.size a reward may declare.
var DefaultLimits = Limits{MaxSide: 16384, MaxPixels: 4096 * 4096}

// Header is what an image file declares before its pixels.
type Header struct {
	// Format is "png" or "jpeg".
	Format        string
	Width, Height int
}

var (
	pngMagic  = []byte("\x89PNG\r\n\x1a\n")
	jpegMagic = []byte{0xff, 0xd8, 0xff}
)

// ReadHeader reads the format and the declared size from the start of r.
func ReadHeader(r io.Reader) (Header, error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(len(pngMagic))
	var h Header
	var cfg image.Config
	var err error
	switch {
	case bytes.HasPrefix(magic, pngMagic):
		h.Format = "png"
		cfg, err = png.DecodeConfig(br)
	case bytes.HasPrefix(magic, jpegMagic):
		h.Format = "jpeg"
		cfg, err = jpeg.DecodeConfig(br)
	default:
		return h, fmt.Errorf("not a PNG or JPEG file (starts with %q)", magic)
	}
	if err != nil {
		return h, fmt.Errorf("read %s header: %w", h.Format, err)
	}
	h.Width, h.Height = cfg.Width, cfg.Height
	return h, nil
}

// Check reports a declared size beyond the limits.
func (l Limits) Check(h Header) error {
	if h.Width <= 0 || h.Height <= 0 {
		return fmt.Errorf("%s declares %d×%d pixels, want width and height > 0", h.Format, h.Width, h.Height)
	}
	if h.Width > l.MaxSide || h.Height > l.MaxSide {
		return fmt.Errorf("%s declares %d×%d pixels, want each side at most %d", h.Format, h.Width, h.Height, l.MaxSide)
	}
	if px := int64(h.Width) * int64(h.Height); px > l.MaxPixels {
		return fmt.Errorf("%s declares %d×%d = %d pixels, want at most %d", h.Format, h.Width, h.Height, px, l.MaxPixels)
	}
	return nil
}

// Decode decodes the PNG or JPEG image in r after checking its declared size against lim.
func Decode(r io.ReadSeeker, lim Limits) (image.Image, Header, error) {
	h, err := ReadHeader(r)
	if err != nil {
		return nil, h, err
	}
	if err := lim.Check(h); err != nil {
		return nil, h, err
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, h, err
	}
	var img image.Image
	switch h.Format {
	case "png":
		img, err = png.Decode(bufio.NewReader(r))
	default:
		img, err = jpeg.Decode(bufio.NewReader(r))
	}
	if err != nil {
		return nil, h, fmt.Errorf("decode %s: %w", h.Format, err)
	}
	return img, h, nil
}

// Read decodes the PNG or JPEG file at path after checking its declared size against lim.
// Errors name the file.
func Read(path string, lim Limits) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read image: %w", err)
	}
	defer f.Close()
	img, _, err := Decode(f, lim)
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", path, err)
	}
	return img, nil
}

// ReadFileHeader reads the declared format and size of the image file at path.
func ReadFileHeader(path string) (Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, fmt.Errorf("read image: %w", err)
	}
	defer f.Close()
	h, err := ReadHeader(f)
	if err != nil {
		return h, fmt.Errorf("read image %s: %w", path, err)
	}
	return h, nil
}
