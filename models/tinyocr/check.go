package tinyocr

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// FitVAEScaling encodes n images of src (batch step 0) with the VAE variables of mctx and fits
// the latent scaling to the posterior means (see FitScaling).
func FitVAEScaling(backend backends.Backend, mctx *mlctx.Context, cfg VAEConfig, src ImageSource, n int) (VAEScaling, error) {
	images, err := src(0, n)
	if err != nil {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: %w", err)
	}
	v, err := newVAEFromContext(backend, mctx, cfg, VAEScaling{ScalingFactor: 1})
	if err != nil {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: %w", err)
	}
	defer v.Close()
	z, err := v.Encode(images, n)
	if err != nil {
		return VAEScaling{}, fmt.Errorf("fit VAE scaling: %w", err)
	}
	return FitScaling(z)
}
