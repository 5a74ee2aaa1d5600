package preprocess

import (
	"math"
	"strings"
	"testing"
)

// row builds a 1-pixel-high grey image whose pixel values are vals (all three channels).
func row(vals ...float32) Image {
	im := NewImage(len(vals), 1)
	for i, v := range vals {
		im.Pix[i*3], im.Pix[i*3+1], im.Pix[i*3+2] = v, v, v
	}
	return im
}

func reds(im Image) []float32 {
	out := make([]float32, im.W*im.H)
	for i := range out {
		out[i] = im.Pix[i*3]
	}
	return out
}

func TestResize(t *testing.T) {
	tests := []struct {
		name string
		in   Image
		w    int
		f    Filter
		want []float32
	}{
		// Upsampling [0,1] ×2, pixel centres aligned: output centres at source x = 0.25, 0.75,
		// 1.25, 1.75 (in pixel-centre units 0.5 apart); the triangle kernel gives
		// 0 (clamped at the edge), 0.25, 0.75, 1.
		{"bilinear up", row(0, 1), 4, Bilinear, []float32{0, 0.25, 0.75, 1}},
		// Downsampling ×2 widens the triangle to radius 2: both source pixels sit at distance
		// 0.5 from the centre, weight 0.75 each, normalised to 0.5 → the mean.
		{"bilinear down", row(0, 1), 1, Bilinear, []float32{0.5}},
		// Nearest of 4→2: output centres map to source 1.0 and 3.0 → pixels 1 and 3.
		{"nearest down", row(0.1, 0.2, 0.3, 0.4), 2, Nearest, []float32{0.2, 0.4}},
		// Bicubic on a constant stays constant (weights are normalised).
		{"bicubic constant", row(0.5, 0.5, 0.5), 7, Bicubic, []float32{0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}},
		// Bicubic 4→2 of the ramp 0,1,2,3: the first output's centre is source x = 1.0 and the
		// kernel is stretched ×2, so pixels 0..3 (centres 0.5..3.5) sit at −0.25, 0.25, 0.75,
		// 1.25 with Keys weights 0.8672, 0.8672, 0.2266, −0.0703 (sum 1.8907):
		// (0·0.8672 + 1·0.8672 + 2·0.2266 − 3·0.0703)/1.8907 = 0.5868; the second is 3 − 0.5868.
		{"bicubic ramp", row(0, 1, 2, 3), 2, Bicubic, []float32{0.5868, 2.4132}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := reds(Resize(tt.in, tt.w, 1, tt.f))
			for i := range tt.want {
				if math.Abs(float64(got[i]-tt.want[i])) > 1e-3 {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestApply(t *testing.T) {
	im := NewImage(1, 1)
	copy(im.Pix, []float32{0.2, 0.4, 0.6})
	spec := Spec{Channels: "BGR", Range: []float32{0, 255}, Mean: []float32{1, 2, 3}, Std: []float32{2, 2, 2}}.Defaults()
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	dst := make([]float32, 3)
	if err := spec.Apply(im, dst); err != nil {
		t.Fatal(err)
	}
	// BGR: channel 0 is blue 0.6·255 = 153 → (153−1)/2 = 76; green 102 → (102−2)/2 = 50;
	// red 51 → (51−3)/2 = 24.
	want := []float32{76, 50, 24}
	for i := range want {
		if math.Abs(float64(dst[i]-want[i])) > 1e-3 {
			t.Fatalf("got %v, want %v", dst, want)
		}
	}
}

func TestLayoutAndCenterCrop(t *testing.T) {
	// A 4×2 image, red = x/3: center crop to 2×2 keeps columns 1 and 2 (scale 1).
	im := NewImage(4, 2)
	for y := 0; y < 2; y++ {
		for x := 0; x < 4; x++ {
			im.Pix[(y*4+x)*3] = float32(x) / 3
		}
	}
	for _, layout := range []string{"NCHW", "NHWC"} {
		spec := Spec{Size: []int{2, 2}, Crop: "center", Layout: layout}.Defaults()
		dst := make([]float32, 12)
		if err := spec.Apply(im, dst); err != nil {
			t.Fatal(err)
		}
		red := func(y, x int) float32 {
			if layout == "NCHW" {
				return dst[y*2+x]
			}
			return dst[(y*2+x)*3]
		}
		if math.Abs(float64(red(1, 0)-1.0/3)) > 1e-6 || math.Abs(float64(red(0, 1)-2.0/3)) > 1e-6 {
			t.Errorf("%s: red at (1,0),(0,1) = %v,%v, want 1/3, 2/3", layout, red(1, 0), red(0, 1))
		}
	}
}

func TestCheck(t *testing.T) {
	nan := NewImage(2, 2)
	nan.Pix[7] = float32(math.NaN())
	for _, tt := range []struct {
		im   Image
		want string
	}{
		{Image{}, "size 0x0"},
		{Image{W: 2, H: 2, Pix: make([]float32, 3)}, "got 3 values, want 12"},
		{nan, "pixel (0,1) channel 1 is NaN"},
	} {
		err := tt.im.Check()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Check() = %v, want an error containing %q", err, tt.want)
		}
	}
	if err := NewImage(1, 1).Check(); err != nil {
		t.Errorf("1×1 black image: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		spec Spec
		want string
	}{
		{Spec{Size: []int{224}}, "image.size: got [224]"},
		{Spec{Resize: "lanczos"}, `image.resize: got "lanczos"`},
		{Spec{Crop: "center"}, "without image.size"},
		{Spec{Channels: "RGBA"}, `image.channels: got "RGBA"`},
		{Spec{Layout: "CHW"}, `image.layout: got "CHW"`},
		{Spec{Range: []float32{1, 0}}, "image.range"},
		{Spec{Mean: []float32{1}}, "image.mean: got 1 values"},
		{Spec{Std: []float32{1, 0, 1}}, "image.std[1]: got 0"},
	} {
		err := tt.spec.Defaults().Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: Validate() = %v, want %q", tt.spec, err, tt.want)
		}
	}
}
