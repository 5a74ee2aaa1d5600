package tinyocr

import (
	"fmt"
	"sync"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// VAE runs trained VAE weights on a GoMLX backend: Encode gives model-space (scaled) latents
// of images, Decode turns model-space latents back into images. Safe for concurrent use
// (calls are serialised).
type VAE struct {
	Config  VAEConfig
	Scaling VAEScaling

	mu  sync.Mutex
	ctx *mlctx.Context
	enc *mlctx.Exec
	dec *mlctx.Exec
}

// LoadVAE reads a weight file (see SaveVAE) and prepares it on backend.
func LoadVAE(backend backends.Backend, path string) (*VAE, error) {
	w, err := ReadVAE(path)
	if err != nil {
		return nil, err
	}
	return NewVAE(backend, w)
}

// NewVAE prepares w on backend.
func NewVAE(backend backends.Backend, w *VAEWeights) (*VAE, error) {
	mctx := mlctx.New()
	if err := ImportVariables(mctx, w.Tensors, VAEParamShapes(w.Config)); err != nil {
		return nil, fmt.Errorf("load VAE: %w", err)
	}
	return newVAEFromContext(backend, mctx, w.Config, w.Scaling)
}

func newVAEFromContext(backend backends.Backend, mctx *mlctx.Context, cfg VAEConfig, scaling VAEScaling) (*VAE, error) {
	// Reuse: a variable missing from mctx is a graph-building error, never a silent random init.
	frozen := mctx.Reuse()
	v := &VAE{Config: cfg, Scaling: scaling, ctx: frozen}
	var err error
	v.enc, err = mlctx.NewExec(backend, frozen, func(c *mlctx.Context, images *Node) *Node {
		mean, _ := VAEEncode(c.In("encoder"), cfg, images)
		return scaling.Scale(mean)
	})
	if err != nil {
		return nil, fmt.Errorf("load VAE: encoder: %w", err)
	}
	v.dec, err = mlctx.NewExec(backend, frozen, func(c *mlctx.Context, latents *Node) *Node {
		return VAEDecode(c.In("decoder"), cfg, scaling.Unscale(latents))
	})
	if err != nil {
		return nil, fmt.Errorf("load VAE: decoder: %w", err)
	}
	return v, nil
}

// Encode maps n images float32 NCHW [n,3,32,128] in [0,1] to the scaled posterior means,
// float32 NCHW [n,4,8,32].
func (v *VAE) Encode(images []float32, n int) ([]float32, error) {
	if len(images) != n*ImageChannels*ImageHeight*ImageWidth || n < 1 {
		return nil, fmt.Errorf("VAE encode: got %d values for %d images, want %d", len(images), n, n*ImageChannels*ImageHeight*ImageWidth)
	}
	return v.run(v.enc, "encode", tensors.FromFlatDataAndDimensions(images, n, ImageChannels, ImageHeight, ImageWidth))
}

// Decode maps n scaled latents float32 NCHW [n,4,8,32] to images float32 NCHW [n,3,32,128]
// in [0,1].
func (v *VAE) Decode(latents []float32, n int) ([]float32, error) {
	if len(latents) != n*LatentChannels*LatentHeight*LatentWidth || n < 1 {
		return nil, fmt.Errorf("VAE decode: got %d values for %d latents, want %d", len(latents), n, n*LatentChannels*LatentHeight*LatentWidth)
	}
	return v.run(v.dec, "decode", tensors.FromFlatDataAndDimensions(latents, n, LatentChannels, LatentHeight, LatentWidth))
}

func (v *VAE) run(e *mlctx.Exec, what string, in *tensors.Tensor) (out []float32, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var outs []*tensors.Tensor
	if perr := tryPanic(func() { outs, err = e.Exec(in) }); perr != nil {
		return nil, fmt.Errorf("VAE %s: %w", what, perr)
	}
	if err != nil {
		return nil, fmt.Errorf("VAE %s: %w", what, err)
	}
	defer outs[0].FinalizeAll()
	out, err = tensors.CopyFlatData[float32](outs[0])
	if err != nil {
		return nil, fmt.Errorf("VAE %s: %w", what, err)
	}
	return out, nil
}

// Close releases the compiled graphs.
func (v *VAE) Close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.enc.Finalize()
	v.dec.Finalize()
}

// FitScaling returns the scaling that gives the latents (unscaled posterior means, any
// length) mean 0 and standard deviation 1, as diffusers fits scaling_factor/shift_factor.
func FitScaling(latents []float32) (VAEScaling, error) {
	if len(latents) < 2 {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: %d values, want >= 2", len(latents))
	}
	var sum, sq float64
	for _, x := range latents {
		sum += float64(x)
	}
	mean := sum / float64(len(latents))
	for _, x := range latents {
		d := float64(x) - mean
		sq += d * d
	}
	std := sqrt(sq / float64(len(latents)))
	if !(std > 0) {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: latents have standard deviation %g", std)
	}
	return VAEScaling{ScalingFactor: float32(1 / std), ShiftFactor: float32(mean)}, nil
}

// InitVAE creates freshly initialised VAE weights of cfg (as training starts from), with
// GoMLX's initialisers seeded by seed.
func InitVAE(backend backends.Backend, cfg VAEConfig, scaling VAEScaling, seed int64) (*VAEWeights, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mctx := mlctx.New()
	mctx.SetParam(mlctx.ParamInitialSeed, seed)
	images := make([]float32, ImageChannels*ImageHeight*ImageWidth)
	noise := make([]float32, LatentChannels*LatentHeight*LatentWidth)
	if _, err := mlctx.ExecOnceN(backend, mctx, func(c *mlctx.Context, images, noise *Node) []*Node {
		loss, rec := VAELoss(c, cfg, images, noise, 0)
		return []*Node{loss, rec}
	}, tensors.FromFlatDataAndDimensions(images, 1, ImageChannels, ImageHeight, ImageWidth),
		tensors.FromFlatDataAndDimensions(noise, 1, LatentChannels, LatentHeight, LatentWidth)); err != nil {
		return nil, fmt.Errorf("init VAE: %w", err)
	}
	ts, err := ExportVariables(mctx, VAEParamShapes(cfg))
	if err != nil {
		return nil, fmt.Errorf("init VAE: %w", err)
	}
	return &VAEWeights{Config: cfg, Scaling: scaling, Tensors: ts}, nil
}
