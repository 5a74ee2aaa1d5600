package pretrain

import (
	"fmt"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// slotAttentionFreqs is how many of the image position embedding's column frequencies the
// slot-attention initialisation uses (the lowest ones; 2·slotAttentionFreqs channels).
const slotAttentionFreqs = 8

// slotAttentionGain scales the query and key rows it writes: logits between an image token
// and the slot of its own cell then exceed those of the neighbouring slots by a few units.
const slotAttentionGain = 3.0

// initSlotAttention starts attention head 0 of every joint block as "an image token looks up
// the quoted character drawn in its cell" instead of at random.
//
// A freshly initialised model has no way to tell which quoted character belongs to which image
// column: the text encoder's slot embedding and the queries are random, and the attention only
// pays off once the glyphs are decoded, which only pays off once the attention is right. Trained
// from there, the model settled on a bag of characters. This writes, before the first step:
//   - the text encoder's slot embedding of character k (its band of channels): the column
//     features of the image position embedding (sin, cos of the lowest frequencies), averaged
//     over the two token columns of character cell k;
//   - context_embedder: those channels copied into the hidden channels that carry the same
//     column features on the image side (the 2-D sin-cos position embedding);
//   - to_q and add_k_proj, head 0 of every block: both read those hidden channels.
//
// Image token at column c and quoted character k then score Σ_j cos((c − centre_k)·ω_j), highest
// for the character of its own cell. Everything stays trainable; it is an initialisation.
func initSlotAttention(mctx *mlctx.Context, cfg mmdit.Config, te tinyocr.TextEncoderConfig) error {
	inner := cfg.InnerDim()
	quarter := inner / 4
	if cfg.AttentionHeadDim < 2*slotAttentionFreqs || quarter < slotAttentionFreqs {
		return fmt.Errorf("slot attention init: attention_head_dim %d and inner dim %d, want >= %d and >= %d",
			cfg.AttentionHeadDim, inner, 2*slotAttentionFreqs, 4*slotAttentionFreqs)
	}
	slotLo, slotHi := tinyocr.EmbeddingBand("slot_embedding", te.Dim)
	if slotHi-slotLo < 2*slotAttentionFreqs {
		return fmt.Errorf("slot attention init: slot band of %d channels, want >= %d", slotHi-slotLo, 2*slotAttentionFreqs)
	}
	// Image token columns: the latent is ImageWidth/latentWidth pixels per latent column.
	tokenPixels := ocrtiny.Width / latentWidth * cfg.PatchSize
	cols := latentWidth / cfg.PatchSize
	if ocrtiny.CellWidth%tokenPixels != 0 || ocrtiny.LeftMargin%tokenPixels != 0 {
		return fmt.Errorf("slot attention init: character cells (%d px from %d px) do not line up with %d-px tokens",
			ocrtiny.CellWidth, ocrtiny.LeftMargin, tokenPixels)
	}
	pe := mmdit.PosEmbed2D(inner, cfg.PosEmbedMaxSize, cfg.BaseSize(), latentHeight/cfg.PatchSize, cols)
	// hidden(j) is the hidden channel holding column feature j (sin for j < F, cos for
	// j >= F): the image tokens' position embedding pe[c] is added in those same channels, and
	// row 0's values serve every row (the column channels do not depend on the row).
	hidden := func(j int) int {
		if j < slotAttentionFreqs {
			return j
		}
		return quarter + j - slotAttentionFreqs
	}
	nf := 2 * slotAttentionFreqs

	// Slot embedding: row s (s = 1…NumSlots) is quoted character s−1.
	slotW, err := variableValues(mctx, "/"+textEncoderScope+"/slot_embedding", "weight", []int{tinyocr.NumSlots + 1, te.Dim})
	if err != nil {
		return err
	}
	first, span := ocrtiny.LeftMargin/tokenPixels, ocrtiny.CellWidth/tokenPixels
	for s := 1; s <= tinyocr.NumSlots; s++ {
		c0 := first + (s-1)*span
		if c0+span > cols {
			break // characters past the last cell keep their random slot embedding
		}
		for j := range nf {
			var v float32
			for c := c0; c < c0+span; c++ {
				v += pe[c][hidden(j)] / float32(span)
			}
			slotW.data[s*te.Dim+slotLo+j] = v
		}
	}
	// context_embedder [inner, te.Dim]: hidden(j) = slot channel j.
	ctxW, err := variableValues(mctx, "/"+transformerScope+"/context_embedder", "weight", []int{inner, te.Dim})
	if err != nil {
		return err
	}
	ctxB, err := variableValues(mctx, "/"+transformerScope+"/context_embedder", "bias", []int{inner})
	if err != nil {
		return err
	}
	for j := range nf {
		h := hidden(j)
		clear(ctxW.data[h*te.Dim : (h+1)*te.Dim])
		ctxW.data[h*te.Dim+slotLo+j] = 1
		ctxB.data[h] = 0
	}
	updates := []*variableUpdate{slotW, ctxW, ctxB}
	// Head 0 (output rows 0…AttentionHeadDim−1) of the image queries and the text keys.
	for i := range cfg.NumLayers {
		for _, proj := range []string{"to_q", "add_k_proj"} {
			scope := fmt.Sprintf("/%s/transformer_blocks/%d/attn/%s", transformerScope, i, proj)
			w, err := variableValues(mctx, scope, "weight", []int{inner, inner})
			if err != nil {
				return err
			}
			b, err := variableValues(mctx, scope, "bias", []int{inner})
			if err != nil {
				return err
			}
			for r := range cfg.AttentionHeadDim {
				clear(w.data[r*inner : (r+1)*inner])
				b.data[r] = 0
				if r < nf {
					w.data[r*inner+hidden(r)] = slotAttentionGain
				}
			}
			updates = append(updates, w, b)
		}
	}
	for _, u := range updates {
		if err := u.v.SetValue(tensors.FromFlatDataAndDimensions(u.data, u.shape...)); err != nil {
			return fmt.Errorf("slot attention init: %s/%s: %w", u.v.Scope(), u.v.Name(), err)
		}
	}
	return nil
}

// variableUpdate is a copy of a variable's values, to be written back.
type variableUpdate struct {
	v     *mlctx.Variable
	shape []int
	data  []float32
}

// variableValues copies the values of the variable scope/name, checking its shape.
func variableValues(mctx *mlctx.Context, scope, name string, shape []int) (*variableUpdate, error) {
	v := mctx.GetVariableByScopeAndName(scope, name)
	if v == nil {
		return nil, fmt.Errorf("slot attention init: no variable %s/%s", scope, name)
	}
	got := v.Shape().Dimensions
	if !slices.Equal(got, shape) {
		return nil, fmt.Errorf("slot attention init: %s/%s has shape %v, want %v", scope, name, got, shape)
	}
	data, err := tensors.CopyFlatData[float32](v.MustValue())
	if err != nil {
		return nil, fmt.Errorf("slot attention init: %s/%s: %w", scope, name, err)
	}
	return &variableUpdate{v: v, shape: shape, data: data}, nil
}
