// Package ocrread checks the legibility of tiny-ocr images with the PP-OCRv4 recogniser (the
// same third-party model the OCR reward runs): it resizes an image to the recogniser's
// 48-pixel height, runs it through ONNX Runtime and greedy-decodes the CTC output with the
// reward's dictionary and decoder (rewards/ocr). It is the measuring stick of the dataset and
// of the tiny VAE's reconstructions, not the reward itself; what it reads is scored with the
// reward's own Flow-GRPO score, ocr.Score.
package ocrread

import (
	"context"
	"fmt"
	"image"
	"image/color"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/ocr"
)

// InputHeight is the recogniser's fixed input height.
const InputHeight = 48

// Reader runs the PP-OCRv4 recogniser. Read is safe for concurrent use.
type Reader struct {
	session *onnxrt.Session
	input   string
	output  string
	dict    ocr.Dict
}

// Open loads the recogniser and its keys file from the setup cache (.cache/ocr).
func Open(cfg onnxrt.Config) (*Reader, error) {
	model, err := onnxrt.FindCached("ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		return nil, err
	}
	keys, err := onnxrt.FindCached("ocr/ppocr_keys_v1.txt")
	if err != nil {
		return nil, err
	}
	return OpenFiles(model, keys, cfg)
}

// OpenFiles loads the recogniser model and keys file from explicit paths.
func OpenFiles(model, keys string, cfg onnxrt.Config) (*Reader, error) {
	dict, err := ocr.LoadDict(keys)
	if err != nil {
		return nil, err
	}
	s, err := onnxrt.Open(model, cfg)
	if err != nil {
		return nil, err
	}
	if len(s.Inputs()) != 1 || len(s.Outputs()) != 1 {
		s.Close()
		return nil, fmt.Errorf("open OCR recogniser %s: got %d inputs and %d outputs, want 1 and 1", model, len(s.Inputs()), len(s.Outputs()))
	}
	out := s.Outputs()[0]
	if n := out.Dims[len(out.Dims)-1]; n != int64(dict.Classes()) {
		s.Close()
		return nil, fmt.Errorf("open OCR recogniser %s: output %q has %d classes, keys file %s gives %d", model, out.Name, n, keys, dict.Classes())
	}
	return &Reader{session: s, input: s.Inputs()[0].Name, output: out.Name, dict: dict}, nil
}

// Close releases the session.
func (r *Reader) Close() error { return r.session.Close() }

// Read recognises the text of each image. Images of one call are batched together; they are
// resized to height 48 keeping their aspect ratio and right-padded (with the normalised
// value 0, as PaddleOCR pads) to the widest one.
func (r *Reader) Read(ctx context.Context, imgs []image.Image) ([]string, error) {
	if len(imgs) == 0 {
		return nil, nil
	}
	widths := make([]int, len(imgs))
	maxW := 0
	for i, img := range imgs {
		b := img.Bounds()
		if b.Dx() == 0 || b.Dy() == 0 {
			return nil, fmt.Errorf("read image %d: empty image", i)
		}
		widths[i] = max(1, (b.Dx()*InputHeight+b.Dy()/2)/b.Dy())
		maxW = max(maxW, widths[i])
	}
	n := len(imgs)
	x := make([]float32, n*3*InputHeight*maxW)
	for i, img := range imgs {
		Preprocess(img, widths[i], x[i*3*InputHeight*maxW:(i+1)*3*InputHeight*maxW], maxW)
	}
	out, err := r.session.Run(ctx, map[string]onnxrt.Tensor{
		r.input: {Shape: []int64{int64(n), 3, InputHeight, int64(maxW)}, Float32: x},
	}, r.output)
	if err != nil {
		return nil, fmt.Errorf("read %d images: %w", n, err)
	}
	probs := out[r.output]
	steps, classes := int(probs.Shape[1]), int(probs.Shape[2])
	texts := make([]string, n)
	for i := range n {
		texts[i], _ = r.dict.DecodeCTC(probs.Float32[i*steps*classes:(i+1)*steps*classes], steps, classes)
	}
	return texts, nil
}

// Preprocess writes img resized (bilinear) to InputHeight×w into dst laid out [3,48,stride]
// as BGR, (v/255 − 0.5)/0.5; columns w..stride stay as they are (0 = PaddleOCR's padding).
func Preprocess(img image.Image, w int, dst []float32, stride int) {
	b := img.Bounds()
	sx := float64(b.Dx()) / float64(w)
	sy := float64(b.Dy()) / float64(InputHeight)
	at := func(x, y int) color.NRGBA {
		x = min(max(x, 0), b.Dx()-1)
		y = min(max(y, 0), b.Dy()-1)
		return color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
	}
	plane := InputHeight * stride
	for y := range InputHeight {
		fy := (float64(y)+0.5)*sy - 0.5
		y0 := int(floor(fy))
		ty := fy - float64(y0)
		for x := range w {
			fx := (float64(x)+0.5)*sx - 0.5
			x0 := int(floor(fx))
			tx := fx - float64(x0)
			c00, c10, c01, c11 := at(x0, y0), at(x0+1, y0), at(x0, y0+1), at(x0+1, y0+1)
			lerp := func(a, b, c, d uint8) float64 {
				top := float64(a)*(1-tx) + float64(b)*tx
				bot := float64(c)*(1-tx) + float64(d)*tx
				return top*(1-ty) + bot*ty
			}
			rgb := [3]float64{
				lerp(c00.R, c10.R, c01.R, c11.R),
				lerp(c00.G, c10.G, c01.G, c11.G),
				lerp(c00.B, c10.B, c01.B, c11.B),
			}
			for ch := range 3 {
				v := rgb[2-ch] // BGR
				dst[ch*plane+y*stride+x] = float32((v/255 - 0.5) / 0.5)
			}
		}
	}
}

func floor(v float64) float64 {
	i := float64(int(v))
	if i > v {
		return i - 1
	}
	return i
}
