package tinyocr

import (
	"fmt"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn"
)

// Tokenizer vocabulary: one id per character.
//
//	0            pad
//	1..26        A..Z
//	27..36       0..9
//	37..62       a..z
//	63           space
//	64..95       the 32 printable ASCII punctuation characters, in ASCII order (!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~)
//	96           unknown (any other rune)
const (
	PadID     = 0
	SpaceID   = 63
	UnknownID = 96
	VocabSize = 97
	// MaxLength is the number of token ids per prompt (L).
	MaxLength = 48
)

const punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

// QuoteID is the id of the double quote, which marks the target string.
var QuoteID = TokenID('"')

// TokenID returns the id of one rune.
func TokenID(r rune) int64 {
	switch {
	case r >= 'A' && r <= 'Z':
		return int64(1 + r - 'A')
	case r >= '0' && r <= '9':
		return int64(27 + r - '0')
	case r >= 'a' && r <= 'z':
		return int64(37 + r - 'a')
	case r == ' ':
		return SpaceID
	}
	if i := strings.IndexRune(punctuation, r); i >= 0 {
		return int64(64 + i)
	}
	return UnknownID
}

// Tokenize maps a prompt to exactly MaxLength ids: one per rune, truncated after MaxLength
// runes (the committed prompts are at most 48 characters, so nothing is lost there), then
// padded with PadID. There are no begin/end tokens.
func Tokenize(prompt string) []int64 {
	ids := make([]int64, MaxLength)
	i := 0
	for _, r := range prompt {
		if i == MaxLength {
			break
		}
		ids[i] = TokenID(r)
		i++
	}
	return ids
}

// TokenizeBatch tokenizes prompts into one [len(prompts), MaxLength] row-major buffer.
func TokenizeBatch(prompts []string) []int64 {
	out := make([]int64, 0, len(prompts)*MaxLength)
	for _, p := range prompts {
		out = append(out, Tokenize(p)...)
	}
	return out
}

// TextEncoderConfig sizes the text encoder.
type TextEncoderConfig struct {
	// Dim is the width of the per-token output (the transformer's joint_attention_dim). Default 64.
	Dim int
	// PooledDim is the width of the pooled output (pooled_projection_dim). Default 64.
	PooledDim int
	// Hidden is the width of the MLP block. Default 128.
	Hidden int
}

// DefaultTextEncoderConfig is the size of the tiny-ocr text encoder.
func DefaultTextEncoderConfig() TextEncoderConfig {
	return TextEncoderConfig{Dim: 64, PooledDim: 64, Hidden: 128}
}

// Validate checks every field.
func (c TextEncoderConfig) Validate() error {
	if c.Dim < 1 || c.PooledDim < 1 || c.Hidden < 1 {
		return fmt.Errorf("text encoder config: fields dim/pooled_dim/hidden: got %d/%d/%d, want >= 1", c.Dim, c.PooledDim, c.Hidden)
	}
	if c.Dim%8 != 0 {
		return fmt.Errorf("text encoder config: field dim: got %d, want a multiple of 8 (the embeddings own bands of dim/8 channels)", c.Dim)
	}
	return nil
}

// EmbeddingBand is the channel range [lo, hi) that the embedding table of the given name
// (token_embedding, slot_embedding, rev_slot_embedding, position_embedding) may use; its other
// channels are zero. Disjoint bands keep "which character" and "which place in the quoted
// string" apart in the summed input: the transformer's keys can then read the place without
// the character, which is what lets an image token attend to the character it has to draw. With
// the four tables summed in the same channels it learned a bag of characters instead (reversing
// the quoted string barely changed its loss).
func EmbeddingBand(name string, dim int) (lo, hi int) {
	e := dim / 8
	switch name {
	case "token_embedding":
		return 0, 4 * e
	case "slot_embedding":
		return 4 * e, 6 * e
	case "rev_slot_embedding":
		return 6 * e, 7 * e
	case "position_embedding":
		return 7 * e, 8 * e
	}
	panic(fmt.Errorf("EmbeddingBand: unknown table %q", name))
}

// bandMask is a [1, dim] mask with ones in the band of table name.
func bandMask(g *Graph, name string, dim int) *Node {
	lo, hi := EmbeddingBand(name, dim)
	m := make([]float32, dim)
	for i := lo; i < hi; i++ {
		m[i] = 1
	}
	return Const(g, tensors.FromFlatDataAndDimensions(m, 1, dim))
}

// bandTable is the embedding table name [n, dim] of ctx's scope restricted to its band: it is
// initialised N(0, std²) inside the band and zero outside, and masked in the graph so the
// channels outside get no gradient and stay exactly zero (AdamW's decay of zero is zero), so
// the stored weights are the ones the graph uses and the ONNX export needs no mask.
func bandTable(ctx *mlctx.Context, g *Graph, name string, n, dim int, std float64) *Node {
	init := func(ig *Graph, shape shapes.Shape) *Node {
		return Mul(MulScalar(ctx.RandomNormal(ig, shape), std), bandMask(ig, name, dim))
	}
	w := ctx.In(name).WithInitializer(init).VariableWithShape("weight", shapes.Make(dtypes.Float32, n, dim))
	return Mul(w.ValueGraph(g), bandMask(g, name, dim))
}

// NumSlots is the number of quoted-character slot embeddings (one per image cell); slot
// index 0 is "not inside quotes", 1..NumSlots the first NumSlots quoted characters (later
// ones share the last slot).
const NumSlots = 8

// TextEncoderParamShapes lists the tensors of the text encoder, keyed under prefix (e.g.
// "text_encoder"), with their shapes.
func TextEncoderParamShapes(cfg TextEncoderConfig, prefix string) ParamShapes {
	d := cfg.Dim
	p := func(s string) string { return prefix + "." + s }
	return ParamShapes{
		p("token_embedding.weight"):    {VocabSize, d},
		p("position_embedding.weight"): {MaxLength, d},
		p("slot_embedding.weight"):     {NumSlots + 1, d},
		p("rev_slot_embedding.weight"): {NumSlots + 1, d},
		p("block.norm.weight"):         {d},
		p("block.norm.bias"):           {d},
		p("block.fc1.weight"):          {cfg.Hidden, d},
		p("block.fc1.bias"):            {cfg.Hidden},
		p("block.fc2.weight"):          {d, cfg.Hidden},
		p("block.fc2.bias"):            {d},
		p("final_norm.weight"):         {d},
		p("final_norm.bias"):           {d},
		p("pooled_proj.weight"):        {cfg.PooledDim, d},
		p("pooled_proj.bias"):          {cfg.PooledDim},
	}
}

// QuoteSlots computes, from ids [B,L] (int64), the slot ids [B,L] (int32) of the quoted
// characters counted from the start (slot) and from the end (rev) of the quoted span:
// 0 outside quotes and for the quotes themselves, k+1 for the k-th character inside quotes
// (capped at NumSlots); pads are never inside. A running count of quotes q (an inclusive prefix sum, computed as a
// product with an upper-triangular matrix of ones) is odd inside a quoted span; with several
// quoted spans the counts continue across spans.
func QuoteSlots(ids *Node) (slot, rev *Node) {
	g := ids.Graph()
	l := ids.Shape().Dim(1)
	isQuote := ConvertDType(Equal(ids, Scalar(g, ids.DType(), QuoteID)), dtypes.Float32) // [B,L]
	upper := make([]float32, l*l)                                                        // upper[j,i] = 1 if j <= i
	for j := range l {
		for i := j; i < l; i++ {
			upper[j*l+i] = 1
		}
	}
	tri := Const(g, tensors.FromFlatDataAndDimensions(upper, l, l))
	quotes := MatMul(isQuote, tri)                                  // inclusive count of quotes
	odd := Sub(quotes, MulScalar(Floor(MulScalar(quotes, 0.5)), 2)) // count mod 2
	notPad := ConvertDType(NotEqual(ids, Scalar(g, ids.DType(), PadID)), dtypes.Float32)
	inside := Mul(Mul(odd, OneMinus(isQuote)), notPad)                      // [B,L] 1 inside quotes
	pos := MatMul(inside, tri)                                              // 1-based index inside
	total := ReduceAndKeep(inside, ReduceSum, 1)                            // [B,1]
	slotF := Mul(inside, MinScalar(pos, NumSlots))                          // 1..NumSlots inside, 0 outside
	revF := Mul(inside, MinScalar(AddScalar(Sub(total, pos), 1), NumSlots)) // 1 for the last character
	return ConvertDType(slotF, dtypes.Int32), ConvertDType(revF, dtypes.Int32)
}

// embed looks ids [B,L] up in the band-restricted table name [n, d] of ctx: [B,L,d].
func embed(ctx *mlctx.Context, name string, ids *Node, n, d int) *Node {
	return Gather(bandTable(ctx, ids.Graph(), name, n, d, 0.5), ExpandAxes(ids, -1))
}

// TextEncode encodes token ids [B,L] (int64 or int32, L = MaxLength) into per-token
// embeddings [B,L,Dim] and a pooled embedding [B,PooledDim] (float32). Variables live under
// ctx's scope with the keys of TextEncoderParamShapes (call it with ctx.In("text_encoder")).
//
// The model: token + position + quote-slot + reverse-quote-slot embeddings (see QuoteSlots),
// each in its own band of channels (EmbeddingBand), one
// pre-norm residual MLP block (x + fc2(silu(fc1(norm(x))))), a final layer norm; pooled is a
// linear projection of the mean of the outputs over the tokens outside the quoted string (the
// template words; pads excluded, zero if none). It has no attention: the transformer's joint
// attention mixes the tokens.
//
// The quoted characters are left out of the pooled vector on purpose. The pooled vector
// conditions every image token through adaLN, so with them in it the transformer learned the
// easy half of the task from it, "draw these characters somewhere", and never bound each
// character to its cell (samples showed the prompt's characters at the wrong places). Without
// them, the only way to the characters is attention, where their place is known.
func TextEncode(ctx *mlctx.Context, cfg TextEncoderConfig, ids *Node) (tokens, pooled *Node) {
	if ids.Rank() != 2 || ids.Shape().Dim(1) != MaxLength {
		panic(fmt.Errorf("TextEncode: want ids [B,%d], got %s", MaxLength, ids.Shape()))
	}
	g := ids.Graph()
	l, d := MaxLength, cfg.Dim
	ids32 := ConvertDType(ids, dtypes.Int32)
	slot, rev := QuoteSlots(ids32)
	x := embed(ctx, "token_embedding", ids32, VocabSize, d)
	x = Add(x, ExpandLeftToRank(bandTable(ctx, g, "position_embedding", l, d, 0.1), 3))
	x = Add(x, embed(ctx, "slot_embedding", slot, NumSlots+1, d))
	x = Add(x, embed(ctx, "rev_slot_embedding", rev, NumSlots+1, d))

	blk := ctx.In("block")
	h := layerNorm(blk.In("norm"), x)
	h = silu(nn.Dense(blk.In("fc1"), h, cfg.Hidden, true))
	h = nn.Dense(blk.In("fc2"), h, d, true)
	x = Add(x, h)
	tokens = layerNorm(ctx.In("final_norm"), x)

	notPad := NotEqual(ids32, Scalar(g, dtypes.Int32, PadID))
	outsideQuotes := Equal(slot, ZerosLike(slot))
	mask := ConvertDType(LogicalAnd(notPad, outsideQuotes), dtypes.Float32) // [B,L]
	count := MaxScalar(ReduceAndKeep(mask, ReduceSum, 1), 1)                // [B,1]
	mean := Div(ReduceSum(Mul(tokens, ExpandAxes(mask, -1)), 1), count)     // [B,D]
	pooled = nn.Dense(ctx.In("pooled_proj"), mean, cfg.PooledDim, true)
	return tokens, pooled
}
