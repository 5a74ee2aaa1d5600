package pretrain

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// TestSlotAttentionInit checks, from the initialised weights, that head 0 of every block makes
// an image token (position features only) score highest the quoted character of its own cell.
func TestSlotAttentionInit(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, 1)
	cfg.Model.Transformer = filepath.Join("..", "..", "configs", "tiny-mmdit.json")
	cfg.Model.TextEncoder = DefaultTextEncoderConfig()
	cfg.Model.SlotAttentionInit = true
	tr, err := newTrainer(cfg, Options{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	mc := tr.model.Config
	inner, te := mc.InnerDim(), tr.te
	get := func(scope, name string, shape ...int) []float32 {
		u, err := variableValues(tr.mctx, scope, name, shape)
		if err != nil {
			t.Fatal(err)
		}
		return u.data
	}
	slotW := get("/text_encoder/slot_embedding", "weight", tinyocr.NumSlots+1, te.Dim)
	ctxW := get("/transformer/context_embedder", "weight", inner, te.Dim)
	ctxB := get("/transformer/context_embedder", "bias", inner)
	matVec := func(w, b, x []float32, rows, cols int) []float32 {
		out := make([]float32, rows)
		for r := range rows {
			out[r] = b[r]
			for c := range cols {
				out[r] += w[r*cols+c] * x[c]
			}
		}
		return out
	}
	cols := latentWidth / mc.PatchSize
	pe := mmdit.PosEmbed2D(inner, mc.PosEmbedMaxSize, mc.BaseSize(), latentHeight/mc.PatchSize, cols)
	first := ocrtiny.LeftMargin / ocrtiny.PatchPixels
	for block := range mc.NumLayers {
		scope := func(p string) string {
			return fmt.Sprintf("/transformer/transformer_blocks/%d/attn/%s", block, p)
		}
		qW, qB := get(scope("to_q"), "weight", inner, inner), get(scope("to_q"), "bias", inner)
		kW, kB := get(scope("add_k_proj"), "weight", inner, inner), get(scope("add_k_proj"), "bias", inner)
		for c := first; c < first+2*ocrtiny.NumCells; c++ {
			q := matVec(qW, qB, pe[c], inner, inner)
			best, bestScore := -1, float32(-1e30)
			for s := 1; s <= ocrtiny.NumCells; s++ {
				text := matVec(ctxW, ctxB, slotW[s*te.Dim:(s+1)*te.Dim], inner, te.Dim)
				k := matVec(kW, kB, text, inner, inner)
				var score float32
				for d := range mc.AttentionHeadDim { // head 0
					score += q[d] * k[d]
				}
				if score > bestScore {
					best, bestScore = s, score
				}
			}
			if want := (c-first)/2 + 1; best != want {
				t.Errorf("block %d: image column %d scores slot %d highest, want %d (its cell)", block, c, best, want)
			}
		}
	}
}

func TestSlotAttentionInitNeedsWideHeads(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), 1) // heads of 8 channels: too narrow for 16 column features
	cfg.Model.SlotAttentionInit = true
	_, err := newTrainer(cfg, Options{Backend: nntest.Backend(t)})
	if err == nil || !strings.Contains(err.Error(), "model.slot_attention_init") || !strings.Contains(err.Error(), "attention_head_dim 8") {
		t.Fatalf("got %v, want an error naming model.slot_attention_init and attention_head_dim 8", err)
	}
}
