package frozen

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// Tensor names of the VAE decoder graph: input model-space latents float32 [B,C,h,w]; output
// images float32 [B,3,H,W] in [0,1].
const (
	LatentInput = "latent"
	ImageOutput = "image"
)

// Image is a decoded RGB image: Pix holds H rows of W pixels of 3 float32 values (R, G, B) in
// [0,1]. Its fields are those of rewards.Image (rewards/preprocess.Image), so
// rewards.Image(img) converts one without copying.
type Image struct {
	W, H int
	Pix  []float32
}

// VAEOptions configures OpenVAEDecoder.
type VAEOptions struct {
	// Runtime selects the ONNX Runtime library, provider and threads.
	Runtime onnxrt.Config
	// BatchSize caps the latents per ONNX run (>= 1). Default 16. A graph with a fixed batch
	// dim runs exactly that many rows (the last run padded).
	BatchSize int
	// LatentShape [C,h,w] is one latent's shape; needed only where the graph leaves a dim
	// dynamic, and checked against the fixed ones.
	LatentShape []int
	// ScalingFactor, if > 0, maps latents to latents/ScalingFactor + ShiftFactor before the
	// graph runs, as diffusers' pipelines do before AutoencoderKL.decode (SD3.5: 1.5305 and
	// 0.0609, from vae/config.json), for graphs that take the VAE's own latent space
	// (exporters/sd3). 0 feeds latents unchanged (the tiny-ocr graph applies its factors
	// itself).
	ScalingFactor, ShiftFactor float64
}

// VAEDecoder is an opened ONNX VAE decoder.
type VAEDecoder struct {
	path   string
	sess   *onnxrt.Session
	latent []int // [C,h,w]
	image  []int // [H,W] where declared, -1 otherwise
	batch  int
	fixed  bool
	scale  float32 // ScalingFactor, 0 = none
	shift  float32
}

// OpenVAEDecoder opens the ONNX VAE decoder at path and checks that it declares input
// `latent` float32 [B,C,h,w] and output `image` float32 [B,3,H,W].
func OpenVAEDecoder(path string, opts VAEOptions) (*VAEDecoder, error) {
	if opts.BatchSize == 0 {
		opts.BatchSize = 16
	}
	if opts.BatchSize < 1 {
		return nil, fmt.Errorf("open VAE decoder %s: batch size %d, want >= 1", path, opts.BatchSize)
	}
	if opts.LatentShape != nil && len(opts.LatentShape) != 3 {
		return nil, fmt.Errorf("open VAE decoder %s: latent shape %v, want [C,h,w]", path, opts.LatentShape)
	}
	if opts.ScalingFactor < 0 || math.IsNaN(opts.ScalingFactor) {
		return nil, fmt.Errorf("open VAE decoder %s: scaling factor %g, want > 0 (or 0 for none)", path, opts.ScalingFactor)
	}
	// The declared tensors are checked from the file before ONNX Runtime reads it.
	ins, outs, err := onnxrt.Inspect(path, opts.Runtime)
	if err != nil {
		return nil, fmt.Errorf("open VAE decoder: %w", err)
	}
	d := &VAEDecoder{path: path, batch: opts.BatchSize}
	if opts.ScalingFactor > 0 {
		d.scale, d.shift = float32(opts.ScalingFactor), float32(opts.ShiftFactor)
	}
	if err := d.check(ins, outs, opts.LatentShape); err != nil {
		return nil, err
	}
	if d.sess, err = onnxrt.Open(path, opts.Runtime); err != nil {
		return nil, fmt.Errorf("open VAE decoder: %w", err)
	}
	return d, nil
}

func (d *VAEDecoder) check(inputs, outputs []onnxrt.TensorInfo, latentShape []int) error {
	const what = "VAE decoder"
	wantLatent := []int64{-1, -1, -1, -1}
	for i, v := range latentShape {
		wantLatent[i+1] = int64(v)
	}
	in, err := checkDeclared(what, d.path, inputs, tensorWant{"input", LatentInput, "float32", wantLatent})
	if err != nil {
		return err
	}
	if err := checkOnlyInputs(what, d.path, inputs, LatentInput); err != nil {
		return err
	}
	out, err := checkDeclared(what, d.path, outputs, tensorWant{"output", ImageOutput, "float32", []int64{in.Dims[0], 3, -1, -1}})
	if err != nil {
		return err
	}
	d.latent = make([]int, 3)
	for i := range 3 {
		switch {
		case in.Dims[i+1] > 0:
			d.latent[i] = int(in.Dims[i+1])
		case latentShape != nil:
			d.latent[i] = latentShape[i]
		default:
			return fmt.Errorf("VAE decoder %s: input %q declares %s: dim %d is dynamic, so the latent shape [C,h,w] must be given",
				d.path, LatentInput, onnxrt.FormatDims(in.Dims), i+1)
		}
		if d.latent[i] < 1 {
			return fmt.Errorf("VAE decoder %s: latent shape %v, want positive dims", d.path, d.latent)
		}
	}
	d.image = []int{int(out.Dims[2]), int(out.Dims[3])}
	if b := in.Dims[0]; b > 0 {
		d.batch, d.fixed = int(b), true
	}
	return nil
}

// Path is the ONNX file.
func (d *VAEDecoder) Path() string { return d.path }

// LatentShape is one latent's shape [C,h,w].
func (d *VAEDecoder) LatentShape() []int { return slices.Clone(d.latent) }

// ImageSize is the declared image [H,W], -1 for a dynamic dim.
func (d *VAEDecoder) ImageSize() (h, w int) { return d.image[0], d.image[1] }

// Decode decodes latents, each C·h·w float32 values in model space (row-major [C,h,w]), into
// images, in batches of at most the batch size. Decoded values are clamped to [0,1] (as
// diffusers' image post-processing does); a NaN or infinite value is an error naming the image.
func (d *VAEDecoder) Decode(ctx context.Context, latents [][]float32) ([]Image, error) {
	size := d.latent[0] * d.latent[1] * d.latent[2]
	for i, l := range latents {
		if len(l) != size {
			return nil, fmt.Errorf("decode latents with %s: latent %d has %d values, want %d (shape %v)", d.path, i, len(l), size, d.latent)
		}
	}
	out := make([]Image, 0, len(latents))
	for _, c := range chunks(len(latents), d.batch) {
		imgs, err := d.run(ctx, latents[c[0]:c[1]], c[0])
		if err != nil {
			return nil, err
		}
		out = append(out, imgs...)
	}
	return out, nil
}

// run decodes one batch; first is the index of its first latent in the Decode call.
func (d *VAEDecoder) run(ctx context.Context, latents [][]float32, first int) ([]Image, error) {
	rows := len(latents)
	if d.fixed {
		rows = d.batch
	}
	size := len(latents[0])
	data := make([]float32, 0, rows*size)
	for i := range rows {
		data = append(data, latents[min(i, len(latents)-1)]...)
	}
	if d.scale != 0 {
		for i, v := range data {
			data[i] = v/d.scale + d.shift
		}
	}
	shape := []int64{int64(rows), int64(d.latent[0]), int64(d.latent[1]), int64(d.latent[2])}
	res, err := d.sess.Run(ctx, map[string]onnxrt.Tensor{LatentInput: {Shape: shape, Float32: data}}, ImageOutput)
	if err != nil {
		return nil, fmt.Errorf("decode latents: %w", err)
	}
	img := res[ImageOutput]
	if len(img.Shape) != 4 || img.Shape[0] != int64(rows) || img.Shape[1] != 3 || len(img.Float32) != img.NumElements() {
		return nil, fmt.Errorf("decode latents with %s: output %q has shape %s, want [%d,3,H,W]", d.path, ImageOutput, onnxrt.FormatDims(img.Shape), rows)
	}
	h, w := int(img.Shape[2]), int(img.Shape[3])
	plane := h * w
	out := make([]Image, len(latents))
	for b := range out {
		src := img.Float32[b*3*plane : (b+1)*3*plane]
		pix := make([]float32, 3*plane)
		for c := range 3 {
			for i, v := range src[c*plane : (c+1)*plane] {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return nil, fmt.Errorf("decode latents with %s: image %d: pixel (%d,%d) channel %d is %v", d.path, first+b, i%w, i/w, c, v)
				}
				pix[3*i+c] = min(max(v, 0), 1)
			}
		}
		out[b] = Image{W: w, H: h, Pix: pix}
	}
	return out, nil
}

// Close releases the session.
func (d *VAEDecoder) Close() error { return d.sess.Close() }
