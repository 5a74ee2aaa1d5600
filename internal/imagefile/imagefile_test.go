package imagefile

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/imagefile/imagefiletest"
)

func zlibBytes(t testing.TB, raw []byte) []byte {
	var b bytes.Buffer
	z, _ := zlib.NewWriterLevel(&b, zlib.BestCompression)
	z.Write(raw)
	z.Close()
	return b.Bytes()
}

func encoded(t testing.TB, img image.Image, format string) []byte {
	var b bytes.Buffer
	var err error
	switch format {
	case "png":
		err = png.Encode(&b, img)
	case "jpeg":
		err = jpeg.Encode(&b, img, &jpeg.Options{Quality: 90})
	case "gif":
		err = gif.Encode(&b, img, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func testImage(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(x * 8), uint8(y * 8), 100, 255})
		}
	}
	return img
}

// jpegWithSize rewrites the frame size in a JPEG's SOF0 marker.
func jpegWithSize(t testing.TB, data []byte, w, h uint16) []byte {
	out := append([]byte{}, data...)
	i := bytes.Index(out, []byte{0xff, 0xc0})
	if i < 0 {
		t.Fatal("no SOF0 marker")
	}
	// FF C0, length (2), precision (1), height (2), width (2)
	binary.BigEndian.PutUint16(out[i+5:], h)
	binary.BigEndian.PutUint16(out[i+7:], w)
	return out
}

func TestDecode(t *testing.T) {
	small := testImage(12, 7)
	pngData, jpegData := encoded(t, small, "png"), encoded(t, small, "jpeg")
	row := make([]byte, 1+100000/8) // filter byte + one row of 1-bit pixels
	bomb := zlibBytes(t, bytes.Repeat(row, 64))
	cases := []struct {
		name string
		data []byte
		lim  Limits
		want string // "" = decodes
		fmt  string
	}{
		{"png", pngData, DefaultLimits, "", "png"},
		{"jpeg", jpegData, DefaultLimits, "", "jpeg"},
		{"png at the pixel limit", pngData, Limits{MaxSide: 12, MaxPixels: 84}, "", "png"},
		{"png one pixel over", pngData, Limits{MaxSide: 12, MaxPixels: 83}, "png declares 12×7 = 84 pixels, want at most 83", ""},
		{"png side over", pngData, Limits{MaxSide: 11, MaxPixels: 1000}, "png declares 12×7 pixels, want each side at most 11", ""},
		{"png 100000x100000 RGBA", imagefiletest.PNG(100000, 100000, 8, 6, zlibBytes(t, []byte{0})), DefaultLimits, "png declares 100000×100000 pixels, want each side at most 16384", ""},
		{"png 1-bit bomb", imagefiletest.PNG(100000, 100000, 1, 0, bomb), DefaultLimits, "png declares 100000×100000 pixels", ""},
		{"png wide and flat", imagefiletest.PNG(16384, 16384, 8, 2, zlibBytes(t, []byte{0})), DefaultLimits, "png declares 16384×16384 = 268435456 pixels, want at most 16777216", ""},
		{"jpeg 65535x65535", jpegWithSize(t, jpegData, 65535, 65535), DefaultLimits, "jpeg declares 65535×65535 pixels", ""},
		{"jpeg 5000x5000", jpegWithSize(t, jpegData, 5000, 5000), DefaultLimits, "jpeg declares 5000×5000 = 25000000 pixels, want at most 16777216", ""},
		{"gif", encoded(t, small, "gif"), DefaultLimits, `not a PNG or JPEG file (starts with "GIF89a`, ""},
		{"text", []byte("hello"), DefaultLimits, `not a PNG or JPEG file (starts with "hello")`, ""},
		{"empty", nil, DefaultLimits, "not a PNG or JPEG file", ""},
		{"truncated png", pngData[:len(pngData)/2], DefaultLimits, "decode png", ""},
		{"png header only", pngData[:20], DefaultLimits, "read png header", ""},
		{"truncated jpeg", jpegData[:len(jpegData)-10], DefaultLimits, "decode jpeg", ""},
		{"png with too little data", imagefiletest.PNG(64, 64, 8, 2, zlibBytes(t, []byte{0, 1, 2})), DefaultLimits, "decode png", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, h, err := Decode(bytes.NewReader(c.data), c.lim)
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Decode error %v, want %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Format != c.fmt || h.Width != 12 || h.Height != 7 || img.Bounds().Dx() != 12 || img.Bounds().Dy() != 7 {
				t.Errorf("Decode: header %+v, bounds %v", h, img.Bounds())
			}
		})
	}
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.jpg")
	if err := os.WriteFile(good, encoded(t, testImage(5, 4), "jpeg"), 0o644); err != nil {
		t.Fatal(err)
	}
	if img, err := Read(good, DefaultLimits); err != nil || img.Bounds().Dx() != 5 {
		t.Fatalf("Read = %v, %v", img, err)
	}
	if h, err := ReadFileHeader(good); err != nil || h != (Header{"jpeg", 5, 4}) {
		t.Fatalf("ReadFileHeader = %+v, %v", h, err)
	}
	big := filepath.Join(dir, "big.png")
	if err := os.WriteFile(big, imagefiletest.PNG(100000, 100000, 8, 6, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Read(big, DefaultLimits)
	if err == nil || !strings.HasPrefix(err.Error(), "read image "+big+": png declares 100000×100000 pixels") {
		t.Fatalf("Read error %v, want the file and the declared size", err)
	}
	if _, err := Read(filepath.Join(dir, "missing.png"), DefaultLimits); err == nil || !strings.Contains(err.Error(), "missing.png") {
		t.Fatalf("missing file: error %v", err)
	}
}

// FuzzDecode: arbitrary bytes never panic, and nothing beyond the limits is decoded.
func FuzzDecode(f *testing.F) {
	small := testImage(6, 5)
	f.Add(encoded(f, small, "png"))
	f.Add(encoded(f, small, "jpeg"))
	f.Add(encoded(f, image.NewGray16(image.Rect(0, 0, 3, 9)), "png"))
	f.Add(encoded(f, image.NewPaletted(image.Rect(0, 0, 4, 4), color.Palette{color.Black, color.White}), "png"))
	f.Add(imagefiletest.PNG(100000, 100000, 1, 0, zlibBytes(f, make([]byte, 1000))))
	f.Add(jpegWithSize(f, encoded(f, small, "jpeg"), 65535, 65535))
	lim := Limits{MaxSide: 256, MaxPixels: 1 << 12}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, h, err := Decode(bytes.NewReader(data), lim)
		if err != nil {
			return
		}
		b := img.Bounds()
		if b.Dx() != h.Width || b.Dy() != h.Height || lim.Check(h) != nil {
			t.Fatalf("decoded %v for header %+v within %+v", b, h, lim)
		}
	})
}
