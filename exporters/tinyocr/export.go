// Package tinyocr writes the frozen parts of the embedded default model "tiny-ocr" as ONNX
// graphs, from the weights trained by models/tinyocr:
//
//   - text_encoder.onnx: input input_ids int64 [batch,48] (tinyocr.TokenizeBatch); outputs
//     prompt_embeds float32 [batch,48,D] and pooled_prompt_embeds float32 [batch,P].
//   - vae_decoder.onnx: input latent float32 [batch,4,8,32] in the transformer's (scaled)
//     latent space — the graph itself applies z = latent/scaling_factor + shift_factor;
//     output image float32 [batch,3,32,128] RGB in [0,1].
//
// Each graph computes exactly what the GoMLX definitions in models/tinyocr compute (the
// parity tests hold them to 1e-4); the weights become initializers.
package tinyocr

import (
	"fmt"
	"strconv"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/models/safetensors"
	model "github.com/densegrpo/densegrpo/models/tinyocr"
)

// Graph input and output names.
const (
	InputIDs       = "input_ids"
	PromptEmbeds   = "prompt_embeds"
	PooledEmbeds   = "pooled_prompt_embeds"
	LatentInput    = "latent"
	ImageOutput    = "image"
	batchDim       = "batch"
	producerName   = "densegrpo exporters/tinyocr"
	textEncoderDoc = "tiny-ocr character text encoder (models/tinyocr.TextEncode)"
	vaeDecoderDoc  = "tiny-ocr VAE decoder (models/tinyocr.VAEDecode); input is the scaled latent"
)

func i64s(v []int) []int64 {
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}

// weight adds tensor key of ts as an initializer named key.
func weight(g *onnx.Graph, ts map[string]safetensors.Tensor, key string) string {
	t := ts[key]
	return g.InitializerF32(key, i64s(t.Shape), t.Data)
}

// banded adds the embedding table prefix.table.weight [n, dim] as an initializer with the
// channels outside its band (models/tinyocr.EmbeddingBand) zeroed, as the GoMLX graph masks them.
func banded(g *onnx.Graph, ts map[string]safetensors.Tensor, prefix, table string) string {
	key := prefix + "." + table + ".weight"
	t := ts[key]
	dim := t.Shape[1]
	lo, hi := model.EmbeddingBand(table, dim)
	data := make([]float32, len(t.Data))
	for r := range t.Shape[0] {
		copy(data[r*dim+lo:r*dim+hi], t.Data[r*dim+lo:r*dim+hi])
	}
	return g.InitializerF32(key, i64s(t.Shape), data)
}

// transposed2D adds the transpose of a [out,in] weight as an initializer [in,out] named
// key+".T", for MatMul(x, Wᵀ).
func transposed2D(g *onnx.Graph, ts map[string]safetensors.Tensor, key string) string {
	t := ts[key]
	out, in := t.Shape[0], t.Shape[1]
	return g.InitializerF32(key+".T", []int64{int64(in), int64(out)}, onnx.Transpose2D(t.Data, out, in))
}

func silu(g *onnx.Graph, x string) string {
	return g.Op("Mul", []string{x, g.Op("Sigmoid", []string{x})})
}

// linear is x·Wᵀ + b for the torch-layout weight prefix.weight [out,in] and bias prefix.bias.
func linear(g *onnx.Graph, ts map[string]safetensors.Tensor, x, prefix string) string {
	y := g.Op("MatMul", []string{x, transposed2D(g, ts, prefix+".weight")})
	return g.Op("Add", []string{y, weight(g, ts, prefix+".bias")})
}

func layerNorm(g *onnx.Graph, ts map[string]safetensors.Tensor, x, prefix string) string {
	return g.Op("LayerNormalization", []string{x, weight(g, ts, prefix+".weight"), weight(g, ts, prefix+".bias")},
		onnx.AttrInt("axis", -1), onnx.AttrFloat("epsilon", model.LayerNormEpsilon))
}

// TextEncoderModel builds text_encoder.onnx from the text encoder tensors under prefix of ts
// (see models/tinyocr.TextEncoderTensors).
func TextEncoderModel(ts map[string]safetensors.Tensor, prefix string) (*onnx.Model, error) {
	sub, cfg, err := model.TextEncoderTensors(ts, prefix)
	if err != nil {
		return nil, fmt.Errorf("export text encoder: %w", err)
	}
	p := func(s string) string { return prefix + "." + s }
	l := int64(model.MaxLength)
	g := onnx.NewGraph("tinyocr_text_encoder")
	ids := g.Input(InputIDs, onnx.Int64, onnx.Sym(batchDim), onnx.Dim{Value: l})

	// Quote slots, as models/tinyocr.QuoteSlots: inclusive prefix sums as products with an
	// upper-triangular matrix of ones.
	tri := make([]float32, l*l)
	for j := range l {
		for i := j; i < l; i++ {
			tri[j*l+i] = 1
		}
	}
	triName := g.ConstF32("upper_triangular_ones", []int64{l, l}, tri)
	toF := func(x string) string { return g.Op("Cast", []string{x}, onnx.AttrInt("to", int64(onnx.Float32))) }
	scalarF := func(name string, v float32) string { return g.ConstF32(name, nil, []float32{v}) }
	isQuote := toF(g.Op("Equal", []string{ids, g.ConstI64("quote_id", nil, []int64{model.QuoteID})}))
	notPad := toF(g.Op("Not", []string{g.Op("Equal", []string{ids, g.ConstI64("pad_id", nil, []int64{model.PadID})})}))
	quotes := g.Op("MatMul", []string{isQuote, triName})
	half := g.Op("Floor", []string{g.Op("Mul", []string{quotes, scalarF("half", 0.5)})})
	odd := g.Op("Sub", []string{quotes, g.Op("Mul", []string{half, scalarF("two", 2)})})
	one := scalarF("one", 1)
	inside := g.Op("Mul", []string{g.Op("Mul", []string{odd, g.Op("Sub", []string{one, isQuote})}), notPad})
	pos := g.Op("MatMul", []string{inside, triName})
	axis1 := g.ConstI64("axis_1", []int64{1}, []int64{1})
	total := g.Op("ReduceSum", []string{inside, axis1}, onnx.AttrInt("keepdims", 1))
	slots := scalarF("num_slots", model.NumSlots)
	slotF := g.Op("Mul", []string{inside, g.Op("Min", []string{pos, slots})})
	revF := g.Op("Mul", []string{inside, g.Op("Min", []string{g.Op("Add", []string{g.Op("Sub", []string{total, pos}), one}), slots})})
	toI := func(x string) string { return g.Op("Cast", []string{x}, onnx.AttrInt("to", int64(onnx.Int64))) }
	gather := func(table, idx string) string {
		return g.Op("Gather", []string{banded(g, sub, prefix, table), idx}, onnx.AttrInt("axis", 0))
	}

	x := gather("token_embedding", ids)
	x = g.Op("Add", []string{x, banded(g, sub, prefix, "position_embedding")})
	x = g.Op("Add", []string{x, gather("slot_embedding", toI(slotF))})
	x = g.Op("Add", []string{x, gather("rev_slot_embedding", toI(revF))})

	h := layerNorm(g, sub, x, p("block.norm"))
	h = silu(g, linear(g, sub, h, p("block.fc1")))
	h = linear(g, sub, h, p("block.fc2"))
	x = g.Op("Add", []string{x, h})
	g.Node("LayerNormalization", []string{x, weight(g, sub, p("final_norm.weight")), weight(g, sub, p("final_norm.bias"))},
		[]string{PromptEmbeds}, onnx.AttrInt("axis", -1), onnx.AttrFloat("epsilon", model.LayerNormEpsilon))

	// Masked mean over the non-pad tokens outside the quoted string (count at least 1), then
	// the pooled projection.
	template := g.Op("Mul", []string{notPad, g.Op("Sub", []string{one, inside})})
	mask3 := g.Op("Unsqueeze", []string{template, g.ConstI64("axis_2", []int64{1}, []int64{2})})
	sum := g.Op("ReduceSum", []string{g.Op("Mul", []string{PromptEmbeds, mask3}), axis1}, onnx.AttrInt("keepdims", 0))
	count := g.Op("Max", []string{g.Op("ReduceSum", []string{template, axis1}, onnx.AttrInt("keepdims", 1)), one})
	mean := g.Op("Div", []string{sum, count})
	pooled := linear(g, sub, mean, p("pooled_proj"))
	g.Node("Identity", []string{pooled}, []string{PooledEmbeds})

	g.Output(PromptEmbeds, onnx.Float32, onnx.Sym(batchDim), onnx.Dim{Value: l}, onnx.Dim{Value: int64(cfg.Dim)})
	g.Output(PooledEmbeds, onnx.Float32, onnx.Sym(batchDim), onnx.Dim{Value: int64(cfg.PooledDim)})
	return &onnx.Model{
		Graph: g, ProducerName: producerName, DocString: textEncoderDoc,
		Metadata: map[string]string{
			"max_length":            strconv.Itoa(model.MaxLength),
			"vocab_size":            strconv.Itoa(model.VocabSize),
			"joint_attention_dim":   strconv.Itoa(cfg.Dim),
			"pooled_projection_dim": strconv.Itoa(cfg.PooledDim),
		},
	}, nil
}

// conv is a 3×3 (or k×k) stride-1 "same" Conv of NCHW x with prefix.weight/prefix.bias.
func conv(g *onnx.Graph, ts map[string]safetensors.Tensor, x, prefix string) string {
	w := ts[prefix+".weight"]
	k := int64(w.Shape[2])
	p := k / 2
	return g.Op("Conv", []string{x, weight(g, ts, prefix+".weight"), weight(g, ts, prefix+".bias")},
		onnx.AttrInts("kernel_shape", k, k), onnx.AttrInts("pads", p, p, p, p), onnx.AttrInts("strides", 1, 1))
}

// VAEDecoderModel builds vae_decoder.onnx from VAE weights (see models/tinyocr.ReadVAE).
func VAEDecoderModel(w *model.VAEWeights) (*onnx.Model, error) {
	if err := model.CheckTensors(w.Tensors, model.VAEParamShapes(w.Config)); err != nil {
		return nil, fmt.Errorf("export VAE decoder: %w", err)
	}
	ts := w.Tensors
	g := onnx.NewGraph("tinyocr_vae_decoder")
	latent := g.Input(LatentInput, onnx.Float32, onnx.Sym(batchDim),
		onnx.Dim{Value: model.LatentChannels}, onnx.Dim{Value: model.LatentHeight}, onnx.Dim{Value: model.LatentWidth})
	// z = latent·(1/scaling_factor) + shift_factor, with the same float32 constants as
	// VAEScaling.Unscale.
	inv := float32(1 / float64(w.Scaling.ScalingFactor))
	z := g.Op("Mul", []string{latent, g.ConstF32("inv_scaling_factor", nil, []float32{inv})})
	z = g.Op("Add", []string{z, g.ConstF32("shift_factor", nil, []float32{w.Scaling.ShiftFactor})})
	h := conv(g, ts, z, "decoder.conv_in")
	for i := range w.Config.DecoderBlocks {
		pre := fmt.Sprintf("decoder.mid_block.resnets.%d", i)
		r := conv(g, ts, silu(g, h), pre+".conv1")
		r = conv(g, ts, silu(g, r), pre+".conv2")
		h = g.Op("Add", []string{h, r})
	}
	h = conv(g, ts, silu(g, h), "decoder.conv_out")
	h = g.Op("DepthToSpace", []string{h}, onnx.AttrInt("blocksize", model.Downsample), onnx.AttrString("mode", "CRD"))
	g.Node("Sigmoid", []string{h}, []string{ImageOutput})
	g.Output(ImageOutput, onnx.Float32, onnx.Sym(batchDim),
		onnx.Dim{Value: model.ImageChannels}, onnx.Dim{Value: model.ImageHeight}, onnx.Dim{Value: model.ImageWidth})
	f := func(v float32) string { return strconv.FormatFloat(float64(v), 'g', -1, 32) }
	return &onnx.Model{
		Graph: g, ProducerName: producerName, DocString: vaeDecoderDoc,
		Metadata: map[string]string{
			"scaling_factor":  f(w.Scaling.ScalingFactor),
			"shift_factor":    f(w.Scaling.ShiftFactor),
			"latent_channels": strconv.Itoa(model.LatentChannels),
			"input_space":     "scaled",
		},
	}, nil
}

// WriteTextEncoder writes text_encoder.onnx to path from the text encoder tensors (prefix
// models/tinyocr.TextEncoderPrefix) of the safetensors file weights.
func WriteTextEncoder(path, weights string) error {
	ts, _, err := model.ReadTextEncoder(weights, model.TextEncoderPrefix)
	if err != nil {
		return fmt.Errorf("export text encoder: %w", err)
	}
	m, err := TextEncoderModel(ts, model.TextEncoderPrefix)
	if err != nil {
		return fmt.Errorf("export text encoder from %s: %w", weights, err)
	}
	if err := m.WriteFile(path); err != nil {
		return fmt.Errorf("export text encoder: %w", err)
	}
	return nil
}

// WriteVAEDecoder writes vae_decoder.onnx to path from a VAE weight file.
func WriteVAEDecoder(path, weights string) error {
	w, err := model.ReadVAE(weights)
	if err != nil {
		return fmt.Errorf("export VAE decoder: %w", err)
	}
	m, err := VAEDecoderModel(w)
	if err != nil {
		return fmt.Errorf("export VAE decoder from %s: %w", weights, err)
	}
	if err := m.WriteFile(path); err != nil {
		return fmt.Errorf("export VAE decoder: %w", err)
	}
	return nil
}
