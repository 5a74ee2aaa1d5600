// Package mmdit owns the project's trainable flow transformer: the MMDiT of
// Stable Diffusion 3 / 3.5 (diffusers' SD3Transformer2DModel, including the
// SD3.5 MMDiT-X dual-attention blocks and RMS query/key norms) in GoMLX, sized
// by a diffusers-style JSON config, with LoRA adapters on configurable linear
// layers and safetensors save/load under diffusers (base) and PEFT (LoRA)
// tensor names.
//
// Weight names are data: every tensor lives in the GoMLX variable whose scope
// path, relative to the context the model is used with, is the checkpoint key
// (KeyToScope / ScopeToKey), and Config.Params is the single list of keys and
// shapes.
//
// The model predicts the flow-matching velocity v = x1 − x0 (σ = 1 is noise)
// from latents x_σ, the timestep 1000·σ, the text encoder's token states and
// its pooled embedding. All matrix products go through package nn.
package mmdit

import (
	"fmt"
	"math"
	"slices"

	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

const (
	// timestepChannels is the width of the sinusoidal timestep features.
	timestepChannels = 256
	// ffMult is the feed-forward expansion of diffusers' FeedForward.
	ffMult = 4
	// NormEpsilon is the epsilon of every LayerNorm and RMSNorm of the model.
	NormEpsilon = 1e-6
)

// Model is an MMDiT of a given config, optionally with LoRA adapters. It holds
// no weights: they live in the GoMLX context passed to its methods.
type Model struct {
	Config Config
	// LoRA, if not nil, adds adapters; base weights are then created/loaded
	// as not trainable.
	LoRA *LoRAConfig
}

// New validates the configs and returns the model.
func New(cfg Config, lora *LoRAConfig) (*Model, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mmdit config: %w", err)
	}
	if lora != nil {
		if err := lora.Validate(cfg); err != nil {
			return nil, fmt.Errorf("mmdit: %w", err)
		}
	}
	return &Model{Config: cfg, LoRA: lora}, nil
}

// NumParams is the number of base-model parameters.
func (m *Model) NumParams() int { return m.Config.NumParams() }

// NumLoRAParams is the number of adapter parameters (0 without LoRA).
func (m *Model) NumLoRAParams() int {
	if m.LoRA == nil {
		return 0
	}
	n := 0
	for _, p := range m.LoRA.Params(m.Config) {
		n += numElements(p.Shape)
	}
	return n
}

// Forward builds the velocity prediction.
//
// Inputs (float32):
//   - latents [B, in_channels, H, W], H and W multiples of patch_size and at
//     most pos_embed_max_size·patch_size;
//   - timestep [B], 1000·σ;
//   - encoderHidden [B, L, joint_attention_dim], the text tokens;
//   - pooled [B, pooled_projection_dim], the pooled text embedding.
//
// Output: velocity [B, out_channels, H, W] float32.
//
// withLoRA selects, at graph-build time, whether the adapters are applied;
// false gives the base (reference) model from the same variables. The
// variables must exist (Init / Load, and InitLoRA / LoadLoRA for withLoRA).
// Like all graph building it panics on shape errors or missing variables.
func (m *Model) Forward(ctx *mlctx.Context, latents, timestep, encoderHidden, pooled *Node, withLoRA bool) *Node {
	c := m.Config
	if withLoRA && m.LoRA == nil {
		panic(fmt.Errorf("mmdit: Forward with LoRA on a model without a LoRA config"))
	}
	for _, in := range []struct {
		name string
		n    *Node
		rank int
	}{{"latents", latents, 4}, {"timestep", timestep, 1}, {"encoderHidden", encoderHidden, 3}, {"pooled", pooled, 2}} {
		if in.n.Rank() != in.rank || in.n.DType() != dtypes.Float32 {
			panic(fmt.Errorf("mmdit: %s: got %s, want rank-%d float32", in.name, in.n.Shape(), in.rank))
		}
	}
	batch := latents.Shape().Dim(0)
	h, w := latents.Shape().Dim(2), latents.Shape().Dim(3)
	want := [][]int{
		{batch, c.InChannels, h, w}, {batch}, {batch, encoderHidden.Shape().Dim(1), c.JointAttentionDim}, {batch, c.PooledProjectionDim},
	}
	got := [][]int{latents.Shape().Dimensions, timestep.Shape().Dimensions, encoderHidden.Shape().Dimensions, pooled.Shape().Dimensions}
	names := []string{"latents", "timestep", "encoderHidden", "pooled"}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			panic(fmt.Errorf("mmdit: %s: got shape %v, want %v", names[i], got[i], want[i]))
		}
	}
	p := c.PatchSize
	if h%p != 0 || w%p != 0 || h/p > c.PosEmbedMaxSize || w/p > c.PosEmbedMaxSize {
		panic(fmt.Errorf("mmdit: latents %dx%d: want multiples of patch_size %d of at most pos_embed_max_size·patch_size = %d",
			h, w, p, c.PosEmbedMaxSize*p))
	}

	b := m.newBuilder(ctx, latents.Graph(), withLoRA)
	x := b.patchEmbed(latents)
	temb := b.timeTextEmbed(timestep, pooled)
	txt := b.linear("context_embedder", encoderHidden)
	for i := 0; i < c.NumLayers; i++ {
		txt, x = b.jointBlock(i, x, txt, temb)
	}
	x = b.adaNormContinuous("norm_out", x, temb)
	x = b.linear("proj_out", x)
	return unpatchify(x, batch, h/p, w/p, p, c.OutChannels)
}

// builder carries what every layer needs while one graph is built.
type builder struct {
	m        *Model
	ctx      *mlctx.Context
	g        *Graph
	shapes   map[string][]int
	withLoRA bool
}

func (m *Model) newBuilder(ctx *mlctx.Context, g *Graph, withLoRA bool) *builder {
	b := &builder{m: m, ctx: ctx, g: g, shapes: map[string][]int{}, withLoRA: withLoRA}
	for _, p := range m.Config.Params() {
		b.shapes[p.Key] = p.Shape
	}
	if withLoRA {
		for _, p := range m.LoRA.Params(m.Config) {
			b.shapes[p.Key] = p.Shape
		}
	}
	return b
}

// param returns the graph value of the variable holding checkpoint key.
func (b *builder) param(key string) *Node {
	shape, ok := b.shapes[key]
	if !ok {
		panic(fmt.Errorf("mmdit: tensor %q is not declared by the config", key))
	}
	v, err := lookupVariable(b.ctx, key)
	if err != nil {
		panic(err)
	}
	if v == nil {
		panic(fmt.Errorf("mmdit: missing tensor %q (want %v): initialise or load the model first", key, shape))
	}
	if !slices.Equal(v.Shape().Dimensions, shape) || v.DType() != dtypes.Float32 {
		panic(fmt.Errorf("mmdit: tensor %q: variable has shape %s, want float32%v", key, v.Shape(), shape))
	}
	return v.ValueGraph(b.g)
}

// lookupVariable returns the variable of a checkpoint key under ctx's scope,
// or nil if it does not exist.
func lookupVariable(ctx *mlctx.Context, key string) (*mlctx.Variable, error) {
	scope, name, err := KeyToScope(key)
	if err != nil {
		return nil, err
	}
	return ctx.GetVariableByScopeAndName(joinRoot(ctx.Scope(), scope), name), nil
}

// linear applies the torch linear layer `module` to x [..., in] → [..., out],
// plus its LoRA update (α/r)·B·A·x when adapters are on and it is targeted.
func (b *builder) linear(module string, x *Node) *Node {
	y := nn.Linear(x, b.param(module+".weight"), b.param(module+".bias"))
	if b.withLoRA && b.m.LoRA.Matches(module) {
		a := nn.Linear(x, b.param(module+".lora_A.weight"), nil)
		ba := nn.Linear(a, b.param(module+".lora_B.weight"), nil)
		y = Add(y, MulScalar(ba, b.m.LoRA.Scale()))
	}
	return y
}

// patchEmbed turns latents [B, C, H, W] into tokens [B, (H/p)·(W/p), d]: the
// conv with kernel = stride = p as a matmul over flattened patches (patch
// features ordered (c, i, j) like the conv weight [d, C, p, p]), plus the
// cropped sin-cos position embedding. Tokens are row-major over the patch grid.
func (b *builder) patchEmbed(latents *Node) *Node {
	c := b.m.Config
	p, d := c.PatchSize, c.InnerDim()
	dims := latents.Shape().Dimensions
	batch, ch, h, w := dims[0], dims[1], dims[2]/p, dims[3]/p
	x := Reshape(latents, batch, ch, h, p, w, p)
	x = TransposeAllDims(x, 0, 2, 4, 1, 3, 5) // [B, h, w, C, p, p]
	x = Reshape(x, batch, h*w, ch*p*p)
	weight := Reshape(b.param("pos_embed.proj.weight"), d, ch*p*p)
	x = nn.Linear(x, weight, b.param("pos_embed.proj.bias"))
	pos := Const(b.g, PosEmbed2D(d, c.PosEmbedMaxSize, c.BaseSize(), h, w))
	return Add(x, Reshape(pos, 1, h*w, d))
}

// timeTextEmbed is CombinedTimestepTextProjEmbeddings: MLP(sinusoid(t)) +
// MLP(pooled), both SiLU MLPs; timestep [B], pooled [B, P] → [B, d].
func (b *builder) timeTextEmbed(timestep, pooled *Node) *Node {
	t := TimestepFeatures(timestep, timestepChannels)
	t = b.linear("time_text_embed.timestep_embedder.linear_1", t)
	t = b.linear("time_text_embed.timestep_embedder.linear_2", silu(t))
	y := b.linear("time_text_embed.text_embedder.linear_1", pooled)
	y = b.linear("time_text_embed.text_embedder.linear_2", silu(y))
	return Add(t, y)
}

// TimestepFeatures is diffusers' Timesteps(num_channels, flip_sin_to_cos=True,
// downscale_freq_shift=0): for t [B] float32 it returns [B, channels] =
// [cos(t·f_0..f_{n-1}), sin(t·f_0..f_{n-1})] with n = channels/2 and
// f_i = exp(−ln(10000)·i/n).
func TimestepFeatures(t *Node, channels int) *Node {
	half := channels / 2
	freqs := make([]float32, half)
	for i := range freqs {
		freqs[i] = float32(math.Exp(-math.Log(10000) * float64(i) / float64(half)))
	}
	args := Mul(Reshape(t, t.Shape().Dim(0), 1), Reshape(Const(t.Graph(), freqs), 1, half))
	return Concatenate([]*Node{Cos(args), Sin(args)}, 1)
}

// PosEmbed2D is diffusers' get_2d_sincos_pos_embed on a max×max grid with
// coordinates i·base/max, cropped to the centred h×w window exactly as
// PatchEmbed.cropped_pos_embed does (top = (max−h)/2, left = (max−w)/2).
// Result: [h·w, dim] flattened row-major; token (r, c) is
// [E(x_c), E(y_r)] with E(p) = [sin(p·ω_k), cos(p·ω_k)] over
// ω_k = 10000^(−k/(dim/4)), k < dim/4 (the first half encodes the column —
// diffusers' meshgrid puts w first).
func PosEmbed2D(dim, max, base, h, w int) [][]float32 {
	top, left := (max-h)/2, (max-w)/2
	quarter := dim / 4
	omega := make([]float64, quarter)
	for k := range omega {
		omega[k] = 1 / math.Pow(10000, float64(k)/float64(quarter))
	}
	// Coordinates are float32 in diffusers (arange(float32) / (max/base)).
	coord := func(i int) float64 { return float64(float32(i) / float32(float64(max)/float64(base))) }
	out := make([][]float32, h*w)
	for r := 0; r < h; r++ {
		for c := 0; c < w; c++ {
			row := make([]float32, dim)
			x, y := coord(left+c), coord(top+r)
			for k, om := range omega {
				row[k] = float32(math.Sin(x * om))
				row[quarter+k] = float32(math.Cos(x * om))
				row[2*quarter+k] = float32(math.Sin(y * om))
				row[3*quarter+k] = float32(math.Cos(y * om))
			}
			out[r*w+c] = row
		}
	}
	return out
}

func silu(x *Node) *Node { return Mul(x, Sigmoid(x)) }

// geluTanh is GELU with the tanh approximation (torch approximate="tanh").
func geluTanh(x *Node) *Node {
	inner := MulScalar(Add(x, MulScalar(Mul(Square(x), x), 0.044715)), math.Sqrt(2/math.Pi))
	return Mul(x, MulScalar(OnePlus(Tanh(inner)), 0.5))
}

// layerNorm normalises the last axis without affine parameters (biased variance).
func layerNorm(x *Node) *Node {
	mean := ReduceAndKeep(x, ReduceMean, -1)
	centred := Sub(x, mean)
	variance := ReduceAndKeep(Square(centred), ReduceMean, -1)
	return Div(centred, Sqrt(AddScalar(variance, NormEpsilon))) // GoMLX has no Rsqrt gradient
}

// rmsNorm is diffusers' RMSNorm over the last axis with a learned scale [D].
func (b *builder) rmsNorm(key string, x *Node) *Node {
	ms := ReduceAndKeep(Square(x), ReduceMean, -1)
	y := Div(x, Sqrt(AddScalar(ms, NormEpsilon)))
	return Mul(y, ExpandLeftToRank(b.param(key), y.Rank()))
}

// modulate is x·(1 + scale) + shift with scale, shift [B, d] over x [B, N, d].
func modulate(x, shift, scale *Node) *Node {
	return Add(Mul(x, OnePlus(InsertAxes(scale, 1))), InsertAxes(shift, 1))
}

// chunks splits the adaLN projection of SiLU(temb) [B, n·d] into n [B, d]
// pieces, like torch.chunk. It selects with one-hot masks and a sum instead of
// Slice, whose gradient (Pad) SimpleGo does not implement; the values are
// exact (x·1 + 0·y terms).
func (b *builder) chunks(module string, temb *Node, n int) []*Node {
	y := b.linear(module, silu(temb))
	batch, d := y.Shape().Dim(0), y.Shape().Dim(1)/n
	y = Reshape(y, batch, n, d)
	out := make([]*Node, n)
	for i := range out {
		mask := make([]float32, n)
		mask[i] = 1
		out[i] = ReduceSum(Mul(y, Reshape(Const(b.g, mask), 1, n, 1)), 1)
	}
	return out
}

// adaNormContinuous is AdaLayerNormContinuous (no affine, eps 1e-6): the
// projection is chunked (scale, shift) — in that order.
func (b *builder) adaNormContinuous(module string, x, temb *Node) *Node {
	ch := b.chunks(module+".linear", temb, 2)
	return modulate(layerNorm(x), ch[1], ch[0])
}

// feedForward is diffusers' FeedForward(gelu-approximate): net.0.proj → GELU(tanh) → net.2.
func (b *builder) feedForward(module string, x *Node) *Node {
	return b.linear(module+".net.2", geluTanh(b.linear(module+".net.0.proj", x)))
}

// heads reshapes [B, N, H·D] to [B, H, N, D].
func (b *builder) heads(x *Node) *Node {
	c := b.m.Config
	dims := x.Shape().Dimensions
	return TransposeAllDims(Reshape(x, dims[0], dims[1], c.NumAttentionHeads, c.AttentionHeadDim), 0, 2, 1, 3)
}

// qkv projects x into per-head q, k, v with the optional RMS q/k norms.
func (b *builder) qkv(module, q, k, v, normQ, normK string, x *Node) (*Node, *Node, *Node) {
	qs := b.heads(b.linear(module+"."+q, x))
	ks := b.heads(b.linear(module+"."+k, x))
	vs := b.heads(b.linear(module+"."+v, x))
	if b.m.Config.QKNorm == "rms_norm" {
		qs = b.rmsNorm(module+"."+normQ+".weight", qs)
		ks = b.rmsNorm(module+"."+normK+".weight", ks)
	}
	return qs, ks, vs
}

// attention is softmax(q·kᵀ/√D)·v over [B, H, N, D] inputs, merged back to [B, N, H·D].
func (b *builder) attention(q, k, v *Node) *Node {
	c := b.m.Config
	q = MulScalar(q, 1/math.Sqrt(float64(c.AttentionHeadDim)))
	probs := Softmax(nn.BatchMatMul(q, k, true), -1)
	out := TransposeAllDims(nn.BatchMatMul(probs, v, false), 0, 2, 1, 3) // [B, N, H, D]
	dims := out.Shape().Dimensions
	return Reshape(out, dims[0], dims[1], c.InnerDim())
}

// jointAttention is Attention with JointAttnProcessor2_0: image and text
// tokens attend jointly over the concatenated keys/values (image first);
// returns the image output (to_out.0) and, unless the block is
// context_pre_only, the text output (to_add_out). Softmax is per query, so
// attending with the image queries and the text queries separately equals
// diffusers' joint attention followed by the split (and needs no Slice); the
// last block's text queries would only feed the discarded text output, so
// they are not computed.
func (b *builder) jointAttention(module string, x, txt *Node, last bool) (*Node, *Node) {
	q, k, v := b.qkv(module, "to_q", "to_k", "to_v", "norm_q", "norm_k", x)
	tk := b.heads(b.linear(module+".add_k_proj", txt))
	tv := b.heads(b.linear(module+".add_v_proj", txt))
	if b.m.Config.QKNorm == "rms_norm" {
		tk = b.rmsNorm(module+".norm_added_k.weight", tk)
	}
	keys := Concatenate([]*Node{k, tk}, 2)
	values := Concatenate([]*Node{v, tv}, 2)
	xOut := b.linear(module+".to_out.0", b.attention(q, keys, values))
	if last {
		return xOut, nil
	}
	tq := b.heads(b.linear(module+".add_q_proj", txt))
	if b.m.Config.QKNorm == "rms_norm" {
		tq = b.rmsNorm(module+".norm_added_q.weight", tq)
	}
	return xOut, b.linear(module+".to_add_out", b.attention(tq, keys, values))
}

// jointBlock is JointTransformerBlock i: adaLN-Zero modulated joint
// attention and feed-forward for both streams (image x [B, N, d], text txt
// [B, L, d], conditioning temb [B, d]). The last block is context_pre_only:
// its text stream uses AdaLayerNormContinuous and is not updated (nil).
// Dual-attention blocks (SD3.5) add the image-only self-attention attn2.
func (b *builder) jointBlock(i int, x, txt, temb *Node) (*Node, *Node) {
	c := b.m.Config
	blk := fmt.Sprintf("transformer_blocks.%d", i)
	last := i == c.NumLayers-1
	dual := c.IsDualAttention(i)

	var mod []*Node // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp[, shift_msa2, scale_msa2, gate_msa2]
	if dual {
		mod = b.chunks(blk+".norm1.linear", temb, 9)
	} else {
		mod = b.chunks(blk+".norm1.linear", temb, 6)
	}
	xNormed := layerNorm(x)
	normX := modulate(xNormed, mod[0], mod[1])

	var normTxt *Node
	var cmod []*Node
	if last {
		normTxt = b.adaNormContinuous(blk+".norm1_context", txt, temb)
	} else {
		cmod = b.chunks(blk+".norm1_context.linear", temb, 6)
		normTxt = modulate(layerNorm(txt), cmod[0], cmod[1])
	}

	attnX, attnTxt := b.jointAttention(blk+".attn", normX, normTxt, last)
	x = Add(x, Mul(InsertAxes(mod[2], 1), attnX))
	if dual {
		normX2 := modulate(xNormed, mod[6], mod[7])
		q, k, v := b.qkv(blk+".attn2", "to_q", "to_k", "to_v", "norm_q", "norm_k", normX2)
		attn2 := b.linear(blk+".attn2.to_out.0", b.attention(q, k, v))
		x = Add(x, Mul(InsertAxes(mod[8], 1), attn2))
	}
	ff := b.feedForward(blk+".ff", modulate(layerNorm(x), mod[3], mod[4]))
	x = Add(x, Mul(InsertAxes(mod[5], 1), ff))
	if last {
		return nil, x
	}

	txt = Add(txt, Mul(InsertAxes(cmod[2], 1), attnTxt))
	ffTxt := b.feedForward(blk+".ff_context", modulate(layerNorm(txt), cmod[3], cmod[4]))
	txt = Add(txt, Mul(InsertAxes(cmod[5], 1), ffTxt))
	return txt, x
}

// unpatchify maps tokens [B, h·w, p·p·C] (features ordered (i, j, c)) to
// [B, C, h·p, w·p], as diffusers' einsum "nhwpqc->nchpwq".
func unpatchify(x *Node, batch, h, w, p, ch int) *Node {
	x = Reshape(x, batch, h, w, p, p, ch)
	x = TransposeAllDims(x, 0, 5, 1, 3, 2, 4) // [B, C, h, p, w, p]
	return Reshape(x, batch, ch, h*p, w*p)
}
