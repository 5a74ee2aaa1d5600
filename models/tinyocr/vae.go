package tinyocr

import (
	"fmt"
	"slices"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// Image and latent geometry of the tiny VAE: 32×128×3 pixels ↔ 4×8×32 latent (downsample 4).
// The tiny-ocr renderer (datasets/ocrtiny) draws images of this size; a test of package
// pretrain, which feeds one to the other, checks that they agree.
const (
	ImageHeight    = 32
	ImageWidth     = 128
	ImageChannels  = 3
	LatentChannels = 4
	Downsample     = 4
	LatentHeight   = ImageHeight / Downsample
	LatentWidth    = ImageWidth / Downsample
)

// VAEConfig sizes the VAE. All convolutions run on the 8×32 latent grid: the encoder first
// folds each 4×4 pixel block into 48 channels, the decoder ends by unfolding 48 channels into a
// 4×4×3 block, so the cost is that of a small CNN on 256 positions.
type VAEConfig struct {
	// Hidden is the channel width of the convolutions. Default 32.
	Hidden int
	// EncoderBlocks and DecoderBlocks count the residual blocks (two 3×3 convs each).
	// Defaults 1 and 1.
	EncoderBlocks int
	DecoderBlocks int
}

// DefaultVAEConfig is the configuration of the committed weights.
func DefaultVAEConfig() VAEConfig {
	return VAEConfig{Hidden: 32, EncoderBlocks: 1, DecoderBlocks: 1}
}

// Validate checks every field.
func (c VAEConfig) Validate() error {
	if c.Hidden < 1 {
		return fmt.Errorf("vae config: field hidden: got %d, want >= 1", c.Hidden)
	}
	if c.EncoderBlocks < 0 || c.DecoderBlocks < 0 {
		return fmt.Errorf("vae config: fields encoder_blocks/decoder_blocks: got %d/%d, want >= 0", c.EncoderBlocks, c.DecoderBlocks)
	}
	return nil
}

// resBlock is h + conv2(silu(conv1(silu(h)))) in scope ctx ("conv1", "conv2"); conv2 starts at
// zero so a new block is the identity.
func resBlock(ctx *mlctx.Context, h *Node) *Node {
	c := h.Shape().Dim(-1)
	r := conv2D(ctx.In("conv1"), silu(h), c, 3, fanInStd(9*c))
	r = conv2D(ctx.In("conv2"), silu(r), c, 3, 0)
	return Add(h, r)
}

// VAEEncode maps images [B,3,32,128] (NCHW, float32 in [0,1]) to the mean and log-variance of
// the posterior, each [B,4,8,32] (NCHW), unscaled. Variables live under ctx's scope:
// conv_in, mid_block.resnets.N.conv{1,2}, conv_out (diffusers-like names; conv_out gives 8
// channels, mean then logvar, as diffusers' quant_conv output).
func VAEEncode(ctx *mlctx.Context, cfg VAEConfig, images *Node) (mean, logvar *Node) {
	want := []int{images.Shape().Dim(0), ImageChannels, ImageHeight, ImageWidth}
	if images.Rank() != 4 || !slices.Equal(images.Shape().Dimensions, want) {
		panic(fmt.Errorf("VAEEncode: want images [B,%d,%d,%d], got %s", ImageChannels, ImageHeight, ImageWidth, images.Shape()))
	}
	x := TransposeAllDims(images, 0, 2, 3, 1) // NHWC
	x = AddScalar(MulScalar(x, 2), -1)        // [-1,1]
	x = spaceToDepth(x, Downsample)           // [B,8,32,48]
	in := x.Shape().Dim(-1)
	h := conv2D(ctx.In("conv_in"), x, cfg.Hidden, 3, fanInStd(9*in))
	for i := range cfg.EncoderBlocks {
		h = resBlock(ctx.In("mid_block").In("resnets").In(fmt.Sprint(i)), h)
	}
	h = conv2D(ctx.In("conv_out"), silu(h), 2*LatentChannels, 3, 0.1*fanInStd(9*cfg.Hidden))
	h = TransposeAllDims(h, 0, 3, 1, 2) // NCHW [B,8,8,32]
	mean, logvar = splitHalves(h)
	return mean, ClipScalar(logvar, -30, 20)
}

// VAEDecode maps unscaled latents z [B,4,8,32] (NCHW) to images [B,3,32,128] (NCHW, in
// [0,1] through a sigmoid). Variables under ctx's scope: conv_in, mid_block.resnets.N.conv{1,2},
// conv_out (48 = 3·4·4 channels unfolded in (C, fy, fx) order, ONNX DepthToSpace mode CRD).
func VAEDecode(ctx *mlctx.Context, cfg VAEConfig, z *Node) *Node {
	want := []int{z.Shape().Dim(0), LatentChannels, LatentHeight, LatentWidth}
	if z.Rank() != 4 || !slices.Equal(z.Shape().Dimensions, want) {
		panic(fmt.Errorf("VAEDecode: want z [B,%d,%d,%d], got %s", LatentChannels, LatentHeight, LatentWidth, z.Shape()))
	}
	x := TransposeAllDims(z, 0, 2, 3, 1) // [B,8,32,4]
	h := conv2D(ctx.In("conv_in"), x, cfg.Hidden, 3, fanInStd(9*LatentChannels))
	for i := range cfg.DecoderBlocks {
		h = resBlock(ctx.In("mid_block").In("resnets").In(fmt.Sprint(i)), h)
	}
	out := ImageChannels * Downsample * Downsample
	h = conv2D(ctx.In("conv_out"), silu(h), out, 3, fanInStd(9*cfg.Hidden))
	h = depthToSpace(h, Downsample)                 // [B,32,128,3]
	return Sigmoid(TransposeAllDims(h, 0, 3, 1, 2)) // [B,3,32,128]
}

// splitHalves splits axis 1 of x [B,2C,...] into [B,C,...] twice. It selects with a 0/1 mask
// and a sum instead of Slice, whose gradient (Pad) SimpleGo v0.26.0 lacks.
func splitHalves(x *Node) (first, second *Node) {
	dims := x.Shape().Dimensions
	c := dims[1] / 2
	pair := append([]int{dims[0], 2, c}, dims[2:]...)
	x = Reshape(x, pair...)
	maskShape := make([]int, len(pair))
	for i := range maskShape {
		maskShape[i] = 1
	}
	maskShape[1] = 2
	g := x.Graph()
	m0 := Const(g, tensors.FromFlatDataAndDimensions([]float32{1, 0}, maskShape...))
	m1 := Const(g, tensors.FromFlatDataAndDimensions([]float32{0, 1}, maskShape...))
	return ReduceSum(Mul(x, m0), 1), ReduceSum(Mul(x, m1), 1)
}

// VAEScaling maps VAE latents to the model space the transformer works in, as diffusers'
// VAE config does: scaled = (z − ShiftFactor)·ScalingFactor, z = scaled/ScalingFactor + ShiftFactor.
type VAEScaling struct {
	ScalingFactor float32 `json:"scaling_factor"`
	ShiftFactor   float32 `json:"shift_factor"`
}

// Scale maps an unscaled latent to model space.
func (s VAEScaling) Scale(z *Node) *Node {
	return MulScalar(AddScalar(z, -float64(s.ShiftFactor)), float64(s.ScalingFactor))
}

// Unscale maps a model-space latent back to the VAE's latent.
func (s VAEScaling) Unscale(scaled *Node) *Node {
	return AddScalar(MulScalar(scaled, 1/float64(s.ScalingFactor)), float64(s.ShiftFactor))
}

// VAELoss is the training objective of one batch of images [B,3,32,128]: a latent is sampled
// by reparameterisation (noise [B,4,8,32] standard normal, given), decoded, and compared with
// the input by mean squared error plus mean absolute error; klWeight times the mean KL
// divergence to N(0,1) per latent element is added. It returns the loss and its reconstruction
// part (for logging).
func VAELoss(ctx *mlctx.Context, cfg VAEConfig, images, noise *Node, klWeight float64) (loss, rec *Node) {
	mean, logvar := VAEEncode(ctx.In("encoder"), cfg, images)
	z := Add(mean, Mul(Exp(MulScalar(logvar, 0.5)), noise))
	out := VAEDecode(ctx.In("decoder"), cfg, z)
	diff := Sub(out, images)
	rec = Add(ReduceAllMean(Square(diff)), ReduceAllMean(Abs(diff)))
	// KL(N(μ,σ²) ‖ N(0,1)) = ½(μ² + σ² − 1 − log σ²) per element.
	kl := MulScalar(ReduceAllMean(Sub(Add(Square(mean), Exp(logvar)), AddScalar(logvar, 1))), 0.5)
	return Add(rec, MulScalar(kl, klWeight)), rec
}
