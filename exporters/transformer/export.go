// Package transformer writes the project's flow transformer (models/mmdit, the MMDiT of
// SD3/SD3.5) as an ONNX graph of the velocity prediction with fixed weights.
//
// Training needs the GoMLX graph (gradients, LoRA), but the look-ahead ODEs of DenseGRPO only
// need forward passes with the policy's current weights, and on CPU ONNX Runtime runs this
// small transformer several times faster than GoMLX's SimpleGo backend. So each epoch the
// pipeline folds the adapters into the base weights (mmdit.Model.MergedTensors), builds this
// graph from them and integrates the look-ahead in ONNX Runtime. The graph computes what
// mmdit.Model.Forward computes; the parity test holds the two to 1e-4.
//
// Graph: inputs hidden_states float32 [batch,C,H,W], timestep float32 [batch] (1000·σ),
// encoder_hidden_states float32 [batch,L,joint_attention_dim], pooled_projections float32
// [batch,pooled_projection_dim] (diffusers' names); output sample float32 [batch,C,H,W], the
// velocity. C, H and W are fixed when the graph is built (the position embedding is cropped to
// them); batch and L are free.
package transformer

import (
	"fmt"
	"io"
	"math"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

// Graph input and output names.
const (
	InputLatents      = "hidden_states"
	InputTimestep     = "timestep"
	InputPromptEmbeds = "encoder_hidden_states"
	InputPooled       = "pooled_projections"
	OutputVelocity    = "sample"
)

// Weights gives the exporter one tensor by checkpoint key (each key of the config's Params()
// is asked for once, as the graph is built), so a caller reading weights from a live model
// never holds a second copy of all of them.
type Weights func(key string) (safetensors.Tensor, error)

// MapWeights serves tensors held in a map.
func MapWeights(ts map[string]safetensors.Tensor) Weights {
	return func(key string) (safetensors.Tensor, error) {
		t, ok := ts[key]
		if !ok {
			return safetensors.Tensor{}, fmt.Errorf("missing tensor %q", key)
		}
		return t, nil
	}
}

// Model builds the velocity graph of an MMDiT of config cfg for latents of shape latent
// ([C, H, W]) with weights from w. With ext nil every weight is held in the model (the
// protobuf file is then limited to 2 GiB); otherwise each weight of 1 KiB or more is written
// to ext's file as soon as it is made and the model keeps only its location (WriteExternal).
func Model(cfg mmdit.Config, latent []int, w Weights, ext *onnx.ExternalWriter) (*onnx.Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("export transformer: %w", err)
	}
	pz := cfg.PatchSize
	if len(latent) != 3 || latent[0] != cfg.InChannels || latent[1]%pz != 0 || latent[2]%pz != 0 ||
		latent[1]/pz > cfg.PosEmbedMaxSize || latent[2]/pz > cfg.PosEmbedMaxSize {
		return nil, fmt.Errorf("export transformer: latent shape %v: want [%d, H, W] with H, W multiples of patch_size %d up to %d",
			latent, cfg.InChannels, pz, cfg.PosEmbedMaxSize*pz)
	}
	shapes := map[string][]int{}
	for _, p := range cfg.Params() {
		shapes[p.Key] = p.Shape
	}
	b := &builder{g: onnx.NewGraph("mmdit_velocity"), w: w, shapes: shapes, ext: ext, cfg: cfg, added: map[string]string{}}
	g := b.g
	c, h, wd := int64(latent[0]), int64(latent[1]), int64(latent[2])
	batch := onnx.Sym("batch")
	latents := g.Input(InputLatents, onnx.Float32, batch, onnx.Dim{Value: c}, onnx.Dim{Value: h}, onnx.Dim{Value: wd})
	timestep := g.Input(InputTimestep, onnx.Float32, batch)
	prompt := g.Input(InputPromptEmbeds, onnx.Float32, batch, onnx.Sym("tokens"), onnx.Dim{Value: int64(cfg.JointAttentionDim)})
	pooled := g.Input(InputPooled, onnx.Float32, batch, onnx.Dim{Value: int64(cfg.PooledProjectionDim)})

	x := b.patchEmbed(latents, latent)
	temb := b.timeTextEmbed(timestep, pooled)
	txt := b.linear("context_embedder", prompt)
	for i := range cfg.NumLayers {
		txt, x = b.jointBlock(i, x, txt, temb)
	}
	x = b.adaNormContinuous("norm_out", x, temb)
	x = b.linear("proj_out", x)
	b.unpatchify(x, latent, OutputVelocity)
	g.Output(OutputVelocity, onnx.Float32, batch, onnx.Dim{Value: c}, onnx.Dim{Value: h}, onnx.Dim{Value: wd})
	if b.err != nil {
		return nil, fmt.Errorf("export transformer: %w", b.err)
	}
	return &onnx.Model{
		Graph: g, ProducerName: "densegrpo exporters/transformer",
		DocString: "MMDiT velocity prediction (SD3 flow transformer) with the adapters folded into the weights",
	}, nil
}

// File names WriteExternal gives the model and its external data inside its folder.
const (
	ModelFile = "model.onnx"
	DataFile  = "model.onnx.data"
)

// WriteExternal writes the velocity graph (Model) into the folder dir as ModelFile with its
// weights in DataFile beside it, both written atomically, and returns the model's path. The
// weights are read from w and written one at a time, so besides the caller's own weights this
// holds one tensor, whatever the model's size.
func WriteExternal(dir string, cfg mmdit.Config, latent []int, w Weights) (string, error) {
	var model *onnx.Model
	err := files.Write(filepath.Join(dir, DataFile), func(out io.Writer) error {
		var err error
		model, err = Model(cfg, latent, w, onnx.NewExternalWriter(out, DataFile))
		return err
	})
	debug.FreeOSMemory() // the last weights' garbage, before the caller opens the model
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, ModelFile)
	if err := model.WriteFile(path); err != nil {
		return "", fmt.Errorf("export transformer: %w", err)
	}
	return path, nil
}

// files writes the external data; the zero Writer uses the real file system.
var files atomicfile.Writer

// builder carries the graph and the weights while the graph is built. A weight that cannot
// be read or stored sets err (the first one is kept) and the build goes on without it; Model
// returns the error.
type builder struct {
	g      *onnx.Graph
	w      Weights
	shapes map[string][]int
	ext    *onnx.ExternalWriter
	cfg    mmdit.Config
	err    error
	// collected is ext's size at the last garbage collection.
	collected int64
	// added maps a derived initializer's name to itself once it is in the graph.
	added map[string]string
}

// op is g.Op with the inputs as arguments.
func (b *builder) op(op string, inputs ...string) string { return b.g.Op(op, inputs) }

func (b *builder) scalar(v float32) string { return b.g.ConstF32("c", nil, []float32{v}) }

func (b *builder) ints(v ...int64) string { return b.g.ConstI64("shape", []int64{int64(len(v))}, v) }

// fail records the first error of the build.
func (b *builder) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// initializer adds a float32 weight once under name, computing it with data on first use
// (nil data: the weight could not be read, the error is recorded) and moving it to the
// external-data file when there is one.
func (b *builder) initializer(name string, shape []int64, data func() []float32) string {
	if n, ok := b.added[name]; ok {
		return n
	}
	b.added[name] = name
	var v []float32
	if b.err == nil {
		v = data()
	}
	if v == nil { // the build has failed: the name stands in, no data is read any more
		b.g.Initializer(onnx.Tensor{Name: name, DType: onnx.Float32, Shape: shape})
		return name
	}
	t := onnx.TensorF32(name, shape, v)
	if b.ext != nil {
		var err error
		if t, err = b.ext.Add(t); err != nil {
			b.fail(err)
		}
		// Each weight leaves garbage — its copy, transpose and bytes, three times what is
		// written — that Go would collect only once the heap has grown by its live size: the
		// weights themselves on the SimpleGo backend, gigabytes. Collecting every 64 MiB
		// written keeps the export to a few hundred MB whatever the model's size.
		if b.ext.Size()-b.collected > 64<<20 {
			runtime.GC()
			b.collected = b.ext.Size()
		}
	}
	b.g.Initializer(t)
	return name
}

// tensor reads the weight key, checking its shape against the config's.
func (b *builder) tensor(key string) []float32 {
	want := b.shapes[key]
	t, err := b.w(key)
	if err != nil {
		b.fail(err)
		return nil
	}
	if !slices.Equal(t.Shape, want) || len(t.Data) != t.NumElements() {
		b.fail(fmt.Errorf("tensor %q: shape %v with %d values, want %v", key, t.Shape, len(t.Data), want))
		return nil
	}
	return t.Data
}

func (b *builder) weight(key string) string {
	return b.initializer(key, i64s(b.shapes[key]), func() []float32 { return b.tensor(key) })
}

// linear is x·Wᵀ + b for the torch-layout weight module.weight [out,in] (stored transposed,
// [in,out], for MatMul) and bias module.bias.
func (b *builder) linear(module, x string) string {
	shape := b.shapes[module+".weight"]
	out, in := shape[0], shape[1]
	wt := b.initializer(module+".weight.T", []int64{int64(in), int64(out)}, func() []float32 {
		w := b.tensor(module + ".weight")
		if w == nil {
			return nil
		}
		return onnx.Transpose2D(w, out, in)
	})
	return b.op("Add", b.op("MatMul", x, wt), b.weight(module+".bias"))
}

func (b *builder) silu(x string) string { return b.op("Mul", x, b.op("Sigmoid", x)) }

// geluTanh is GELU with the tanh approximation: x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
func (b *builder) geluTanh(x string) string {
	cube := b.op("Mul", b.op("Mul", x, x), x)
	inner := b.op("Mul", b.op("Add", x, b.op("Mul", cube, b.scalar(0.044715))), b.scalar(float32(math.Sqrt(2/math.Pi))))
	return b.op("Mul", b.op("Mul", x, b.op("Add", b.scalar(1), b.op("Tanh", inner))), b.scalar(0.5))
}

// layerNorm normalises the last axis (width d) without affine parameters.
func (b *builder) layerNorm(x string) string {
	d := b.cfg.InnerDim()
	ones := b.initializer(fmt.Sprintf("ones_%d", d), []int64{int64(d)}, func() []float32 {
		v := make([]float32, d)
		for i := range v {
			v[i] = 1
		}
		return v
	})
	return b.g.Op("LayerNormalization", []string{x, ones}, onnx.AttrInt("axis", -1), onnx.AttrFloat("epsilon", mmdit.NormEpsilon))
}

// rmsNorm is x/√(mean(x²) + ε)·w over the last axis with the learned scale key.
func (b *builder) rmsNorm(key, x string) string {
	ms := b.g.Op("ReduceMean", []string{b.op("Mul", x, x)}, onnx.AttrInts("axes", -1), onnx.AttrInt("keepdims", 1))
	return b.op("Mul", b.op("Div", x, b.op("Sqrt", b.op("Add", ms, b.scalar(mmdit.NormEpsilon)))), b.weight(key))
}

func (b *builder) unsqueeze1(x string) string { return b.op("Unsqueeze", x, b.ints(1)) }

// modulate is x·(1 + scale) + shift with scale, shift [B, d] over x [B, N, d].
func (b *builder) modulate(x, shift, scale string) string {
	return b.op("Add", b.op("Mul", x, b.op("Add", b.unsqueeze1(scale), b.scalar(1))), b.unsqueeze1(shift))
}

// chunks splits the adaLN projection of SiLU(temb) [B, n·d] into n [B, d] pieces, as
// torch.chunk.
func (b *builder) chunks(module, temb string, n int) []string {
	y := b.linear(module, b.silu(temb))
	d := b.shapes[module+".weight"][0] / n
	y = b.op("Reshape", y, b.ints(0, int64(n), int64(d)))
	out := make([]string, n)
	for i := range out {
		idx := b.g.ConstI64("chunk", nil, []int64{int64(i)})
		out[i] = b.g.Op("Gather", []string{y, idx}, onnx.AttrInt("axis", 1))
	}
	return out
}

func (b *builder) adaNormContinuous(module, x, temb string) string {
	ch := b.chunks(module+".linear", temb, 2) // scale, shift
	return b.modulate(b.layerNorm(x), ch[1], ch[0])
}

func (b *builder) feedForward(module, x string) string {
	return b.linear(module+".net.2", b.geluTanh(b.linear(module+".net.0.proj", x)))
}

// heads reshapes [B, N, H·D] to [B, H, N, D].
func (b *builder) heads(x string) string {
	c := b.cfg
	x = b.op("Reshape", x, b.ints(0, -1, int64(c.NumAttentionHeads), int64(c.AttentionHeadDim)))
	return b.g.Op("Transpose", []string{x}, onnx.AttrInts("perm", 0, 2, 1, 3))
}

func (b *builder) qkv(module, x string) (q, k, v string) {
	q = b.heads(b.linear(module+".to_q", x))
	k = b.heads(b.linear(module+".to_k", x))
	v = b.heads(b.linear(module+".to_v", x))
	if b.cfg.QKNorm == "rms_norm" {
		q = b.rmsNorm(module+".norm_q.weight", q)
		k = b.rmsNorm(module+".norm_k.weight", k)
	}
	return q, k, v
}

// attention is softmax(q·kᵀ/√D)·v over [B, H, N, D], merged back to [B, N, H·D].
func (b *builder) attention(q, k, v string) string {
	c := b.cfg
	q = b.op("Mul", q, b.scalar(float32(1/math.Sqrt(float64(c.AttentionHeadDim)))))
	kt := b.g.Op("Transpose", []string{k}, onnx.AttrInts("perm", 0, 1, 3, 2))
	probs := b.g.Op("Softmax", []string{b.op("MatMul", q, kt)}, onnx.AttrInt("axis", -1))
	out := b.g.Op("Transpose", []string{b.op("MatMul", probs, v)}, onnx.AttrInts("perm", 0, 2, 1, 3))
	return b.op("Reshape", out, b.ints(0, -1, int64(c.InnerDim())))
}

// jointAttention: image and text queries attend over the concatenated keys and values (image
// first); the last block's text output is discarded, so its text queries are not computed.
func (b *builder) jointAttention(module, x, txt string, last bool) (xOut, txtOut string) {
	q, k, v := b.qkv(module, x)
	tk := b.heads(b.linear(module+".add_k_proj", txt))
	tv := b.heads(b.linear(module+".add_v_proj", txt))
	if b.cfg.QKNorm == "rms_norm" {
		tk = b.rmsNorm(module+".norm_added_k.weight", tk)
	}
	keys := b.g.Op("Concat", []string{k, tk}, onnx.AttrInt("axis", 2))
	values := b.g.Op("Concat", []string{v, tv}, onnx.AttrInt("axis", 2))
	xOut = b.linear(module+".to_out.0", b.attention(q, keys, values))
	if last {
		return xOut, ""
	}
	tq := b.heads(b.linear(module+".add_q_proj", txt))
	if b.cfg.QKNorm == "rms_norm" {
		tq = b.rmsNorm(module+".norm_added_q.weight", tq)
	}
	return xOut, b.linear(module+".to_add_out", b.attention(tq, keys, values))
}

// gated adds gate·y to x, gate [B, d] over y [B, N, d].
func (b *builder) gated(x, gate, y string) string {
	return b.op("Add", x, b.op("Mul", b.unsqueeze1(gate), y))
}

// jointBlock is JointTransformerBlock i (see mmdit's Forward): adaLN-Zero modulated joint
// attention and feed-forward for both streams; the last block is context_pre_only.
func (b *builder) jointBlock(i int, x, txt, temb string) (string, string) {
	blk := fmt.Sprintf("transformer_blocks.%d", i)
	last := i == b.cfg.NumLayers-1
	dual := b.cfg.IsDualAttention(i)
	n := 6
	if dual {
		n = 9
	}
	mod := b.chunks(blk+".norm1.linear", temb, n)
	xNormed := b.layerNorm(x)
	normX := b.modulate(xNormed, mod[0], mod[1])
	var normTxt string
	var cmod []string
	if last {
		normTxt = b.adaNormContinuous(blk+".norm1_context", txt, temb)
	} else {
		cmod = b.chunks(blk+".norm1_context.linear", temb, 6)
		normTxt = b.modulate(b.layerNorm(txt), cmod[0], cmod[1])
	}
	attnX, attnTxt := b.jointAttention(blk+".attn", normX, normTxt, last)
	x = b.gated(x, mod[2], attnX)
	if dual {
		q, k, v := b.qkv(blk+".attn2", b.modulate(xNormed, mod[6], mod[7]))
		x = b.gated(x, mod[8], b.linear(blk+".attn2.to_out.0", b.attention(q, k, v)))
	}
	x = b.gated(x, mod[5], b.feedForward(blk+".ff", b.modulate(b.layerNorm(x), mod[3], mod[4])))
	if last {
		return "", x
	}
	txt = b.gated(txt, cmod[2], attnTxt)
	txt = b.gated(txt, cmod[5], b.feedForward(blk+".ff_context", b.modulate(b.layerNorm(txt), cmod[3], cmod[4])))
	return txt, x
}

// patchEmbed turns latents [B, C, H, W] into tokens [B, (H/p)·(W/p), d]: the stride-p conv as
// a matmul over flattened patches, plus the cropped sin-cos position embedding.
func (b *builder) patchEmbed(latents string, latent []int) string {
	c := b.cfg
	p, d := int64(c.PatchSize), int64(c.InnerDim())
	ch, h, w := int64(latent[0]), int64(latent[1])/p, int64(latent[2])/p
	x := b.op("Reshape", latents, b.ints(-1, ch, h, p, w, p))
	x = b.g.Op("Transpose", []string{x}, onnx.AttrInts("perm", 0, 2, 4, 1, 3, 5))
	x = b.op("Reshape", x, b.ints(-1, h*w, ch*p*p))
	wt := b.initializer("pos_embed.proj.weight.T", []int64{ch * p * p, d}, func() []float32 {
		conv := b.tensor("pos_embed.proj.weight") // [d, C, p, p] = [d, C·p·p] row-major
		if conv == nil {
			return nil
		}
		return onnx.Transpose2D(conv, int(d), int(ch*p*p))
	})
	x = b.op("Add", b.op("MatMul", x, wt), b.weight("pos_embed.proj.bias"))
	pos := b.initializer("pos_embed", []int64{1, h * w, d}, func() []float32 {
		return slices.Concat(mmdit.PosEmbed2D(int(d), c.PosEmbedMaxSize, c.BaseSize(), int(h), int(w))...)
	})
	return b.op("Add", x, pos)
}

// timeTextEmbed is MLP(sinusoid(t)) + MLP(pooled); the sinusoid is [cos(t·f_i), sin(t·f_i)]
// with f_i = exp(−ln(10000)·i/n), n half the embedder's input width.
func (b *builder) timeTextEmbed(timestep, pooled string) string {
	half := b.shapes["time_text_embed.timestep_embedder.linear_1.weight"][1] / 2
	freqs := make([]float32, half)
	for i := range freqs {
		freqs[i] = float32(math.Exp(-math.Log(10000) * float64(i) / float64(half)))
	}
	args := b.op("Mul", b.unsqueeze1(timestep), b.g.ConstF32("freqs", []int64{1, int64(half)}, freqs))
	t := b.g.Op("Concat", []string{b.op("Cos", args), b.op("Sin", args)}, onnx.AttrInt("axis", 1))
	t = b.linear("time_text_embed.timestep_embedder.linear_1", t)
	t = b.linear("time_text_embed.timestep_embedder.linear_2", b.silu(t))
	y := b.linear("time_text_embed.text_embedder.linear_1", pooled)
	y = b.linear("time_text_embed.text_embedder.linear_2", b.silu(y))
	return b.op("Add", t, y)
}

// unpatchify maps tokens [B, h·w, p·p·C] to [B, C, H, W] under the name out.
func (b *builder) unpatchify(x string, latent []int, out string) {
	p := int64(b.cfg.PatchSize)
	ch, h, w := int64(latent[0]), int64(latent[1])/p, int64(latent[2])/p
	x = b.op("Reshape", x, b.ints(-1, h, w, p, p, ch))
	x = b.g.Op("Transpose", []string{x}, onnx.AttrInts("perm", 0, 5, 1, 3, 2, 4))
	b.g.Node("Reshape", []string{x, b.ints(-1, ch, h*p, w*p)}, []string{out})
}

func i64s(v []int) []int64 {
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}
