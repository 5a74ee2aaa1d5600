package preprocess

import (
	"fmt"
	"strings"
)

// Spec declares how an Image becomes a model input. It is the pixel part of a reward's
// `[reward.image]` TOML table; the zero value (after Defaults) means: native size, RGB, NCHW,
// values in [0,1], no normalisation.
type Spec struct {
	// Size is the model input [height, width] in pixels. Empty: the image's own size.
	Size []int `toml:"size"`
	// Resize is the resampling filter: "nearest", "bilinear" (default) or "bicubic".
	Resize Filter `toml:"resize"`
	// Crop is "none" (default: stretch to Size) or "center" (scale so the image covers Size,
	// keeping its aspect ratio, then cut the centre — CLIP's preprocessing).
	Crop string `toml:"crop"`
	// Channels is the channel order fed to the model: "RGB" (default) or "BGR".
	Channels string `toml:"channels"`
	// Layout is "NCHW" (default) or "NHWC".
	Layout string `toml:"layout"`
	// Range maps [0,1] pixel values linearly onto [Range[0], Range[1]] before mean/std.
	// Default [0, 1]; [0, 255] for models fed bytes.
	Range []float32 `toml:"range"`
	// Mean and Std (three values each, in the order of Channels, in Range units) normalise
	// each channel as (v − mean)/std. Default: mean 0, std 1.
	Mean []float32 `toml:"mean"`
	Std  []float32 `toml:"std"`
}

// Defaults returns s with every empty field set to its documented default.
func (s Spec) Defaults() Spec {
	if s.Resize == "" {
		s.Resize = Bilinear
	}
	if s.Crop == "" {
		s.Crop = "none"
	}
	if s.Channels == "" {
		s.Channels = "RGB"
	}
	if s.Layout == "" {
		s.Layout = "NCHW"
	}
	if len(s.Range) == 0 {
		s.Range = []float32{0, 1}
	}
	if len(s.Mean) == 0 {
		s.Mean = []float32{0, 0, 0}
	}
	if len(s.Std) == 0 {
		s.Std = []float32{1, 1, 1}
	}
	return s
}

// Validate checks a defaulted Spec; errors name the field as `image.FIELD: got X, want Y`.
func (s Spec) Validate() error {
	if len(s.Size) != 0 {
		if len(s.Size) != 2 || s.Size[0] <= 0 || s.Size[1] <= 0 || s.Size[0] > 1<<14 || s.Size[1] > 1<<14 {
			return fmt.Errorf("image.size: got %v, want [height, width] with each in 1..16384", s.Size)
		}
	}
	switch s.Resize {
	case Nearest, Bilinear, Bicubic:
	default:
		return fmt.Errorf("image.resize: got %q, want \"nearest\", \"bilinear\" or \"bicubic\"", s.Resize)
	}
	switch s.Crop {
	case "none":
	case "center":
		if len(s.Size) == 0 {
			return fmt.Errorf("image.crop: got \"center\" without image.size, want a size to crop to")
		}
	default:
		return fmt.Errorf("image.crop: got %q, want \"none\" or \"center\"", s.Crop)
	}
	if s.Channels != "RGB" && s.Channels != "BGR" {
		return fmt.Errorf("image.channels: got %q, want \"RGB\" or \"BGR\"", s.Channels)
	}
	if s.Layout != "NCHW" && s.Layout != "NHWC" {
		return fmt.Errorf("image.layout: got %q, want \"NCHW\" or \"NHWC\"", s.Layout)
	}
	if len(s.Range) != 2 || !(s.Range[0] < s.Range[1]) {
		return fmt.Errorf("image.range: got %v, want [low, high] with low < high", s.Range)
	}
	if len(s.Mean) != 3 {
		return fmt.Errorf("image.mean: got %d values, want 3", len(s.Mean))
	}
	if len(s.Std) != 3 {
		return fmt.Errorf("image.std: got %d values, want 3", len(s.Std))
	}
	for i, v := range s.Std {
		if !(v > 0) {
			return fmt.Errorf("image.std[%d]: got %v, want > 0", i, v)
		}
	}
	for i, v := range s.Mean {
		if v != v {
			return fmt.Errorf("image.mean[%d]: got NaN, want a number", i)
		}
	}
	return nil
}

// Key identifies the transform: two Specs with the same key produce the same tensor from the
// same image, so a batch computes each key once however many rewards share it.
func (s Spec) Key() string {
	return fmt.Sprintf("size=%v resize=%s crop=%s ch=%s layout=%s range=%v mean=%v std=%v",
		s.Size, s.Resize, s.Crop, s.Channels, s.Layout, s.Range, s.Mean, s.Std)
}

// OutSize returns the [height, width] the transform produces for im.
func (s Spec) OutSize(im Image) (h, w int) {
	if len(s.Size) == 2 {
		return s.Size[0], s.Size[1]
	}
	return im.H, im.W
}

// Geometry resizes (and crops) im to the Spec's size, without the value transform.
func (s Spec) Geometry(im Image) Image {
	h, w := s.OutSize(im)
	if s.Crop != "center" {
		return Resize(im, w, h, s.Resize)
	}
	// Scale so the image covers h×w, then cut the centre. The long side is truncated and the
	// offset floored, as transformers' CLIPImageProcessor does (int(size·long/short),
	// (H − h)//2).
	rw, rh := CoverSize(im.W, im.H, w, h)
	r := Resize(im, rw, rh, s.Resize)
	x0, y0 := (rw-w)/2, (rh-h)/2
	return r.Crop(x0, y0, x0+w, y0+h)
}

// CoverSize is the size an imW×imH image is resized to so that it covers w×h keeping its
// aspect ratio: the side that fits exactly, the other int(side·ratio) (truncated, as
// transformers and torchvision compute it).
func CoverSize(imW, imH, w, h int) (rw, rh int) {
	if float64(w)*float64(imH) >= float64(h)*float64(imW) { // width decides
		return w, max(int(float64(w)*float64(imH)/float64(imW)), h)
	}
	return max(int(float64(h)*float64(imW)/float64(imH)), w), h
}

// Apply writes the model input for im into dst, which must hold 3·h·w values for the
// (h, w) of OutSize, in the Spec's layout.
func (s Spec) Apply(im Image, dst []float32) error {
	g := s.Geometry(im)
	n := g.W * g.H
	if len(dst) != 3*n {
		return fmt.Errorf("preprocess into %d values: want %d (3×%d×%d)", len(dst), 3*n, g.H, g.W)
	}
	lo, span := s.Range[0], s.Range[1]-s.Range[0]
	for c := 0; c < 3; c++ {
		src := c // RGB source channel feeding output channel c
		if s.Channels == "BGR" {
			src = 2 - c
		}
		mean, inv := s.Mean[c], 1/s.Std[c]
		for p := 0; p < n; p++ {
			v := (lo + g.Pix[p*3+src]*span - mean) * inv
			if s.Layout == "NCHW" {
				dst[c*n+p] = v
			} else {
				dst[p*3+c] = v
			}
		}
	}
	return nil
}

// Dims returns the model-input dims of one batch of n images of size h×w in the layout.
func (s Spec) Dims(n, h, w int) []int64 {
	if s.Layout == "NHWC" {
		return []int64{int64(n), int64(h), int64(w), 3}
	}
	return []int64{int64(n), 3, int64(h), int64(w)}
}

// Describe is a short human description used in error messages.
func (s Spec) Describe() string {
	size := "native size"
	if len(s.Size) == 2 {
		size = fmt.Sprintf("%dx%d (h×w)", s.Size[0], s.Size[1])
	}
	return strings.Join([]string{size, s.Layout, s.Channels}, " ")
}
