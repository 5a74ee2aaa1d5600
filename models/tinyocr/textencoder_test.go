package tinyocr

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

func TestTokenID(t *testing.T) {
	tests := []struct {
		r    rune
		want int64
	}{
		{'A', 1}, {'Z', 26}, {'0', 27}, {'9', 36}, {'a', 37}, {'z', 62}, {' ', 63},
		{'!', 64}, {'"', 65}, {'-', 64 + 12}, {'~', 95}, // '-' is the 13th punctuation character
		{'é', UnknownID}, {'\n', UnknownID},
	}
	for _, tt := range tests {
		if got := TokenID(tt.r); got != tt.want {
			t.Errorf("TokenID(%q) = %d, want %d", tt.r, got, tt.want)
		}
	}
	seen := map[int64]rune{}
	for r := rune(32); r < 127; r++ {
		id := TokenID(r)
		if id <= PadID || id >= UnknownID {
			t.Errorf("printable %q got id %d", r, id)
		}
		if prev, ok := seen[id]; ok {
			t.Errorf("%q and %q share id %d", prev, r, id)
		}
		seen[id] = r
	}
}

func TestTokenize(t *testing.T) {
	ids := Tokenize(`a "K4"`)
	want := []int64{37, 63, 65, 11, 31, 65} // a, space, ", K, 4, "
	if !slices.Equal(ids[:6], want) || len(ids) != MaxLength {
		t.Errorf("Tokenize = %v..., len %d; want %v then pads, len %d", ids[:8], len(ids), want, MaxLength)
	}
	for _, id := range ids[6:] {
		if id != PadID {
			t.Fatalf("padding holds %d", id)
		}
	}
	long := Tokenize(string(make([]byte, 60)) + "X")
	if len(long) != MaxLength {
		t.Errorf("long prompt gave %d ids", len(long))
	}
	if b := TokenizeBatch([]string{"A", "B"}); len(b) != 2*MaxLength || b[0] != 1 || b[MaxLength] != 2 {
		t.Errorf("TokenizeBatch = %v", b)
	}
}

func TestQuoteSlots(t *testing.T) {
	backend := nntest.Backend(t)
	// `a "K4R" x`: positions 0 a, 1 space, 2 ", 3 K, 4 4, 5 R, 6 ", 7 space, 8 x.
	// Inside quotes: 3, 4, 5 → slots 1, 2, 3 and reverse slots 3, 2, 1.
	// Second row: an unclosed quote counts to the end: `"AB` → A slot 1, B slot 2 (rev 2, 1).
	ids := append(Tokenize(`a "K4R" x`), Tokenize(`"AB`)...)
	out, err := mlctx.ExecOnceN(backend, nil, func(ctx *mlctx.Context, ids *graph.Node) []*graph.Node {
		s, r := QuoteSlots(ids)
		return []*graph.Node{s, r}
	}, tensors.FromFlatDataAndDimensions(ids, 2, MaxLength))
	if err != nil {
		t.Fatal(err)
	}
	slot := tensors.MustCopyFlatData[int32](out[0])
	rev := tensors.MustCopyFlatData[int32](out[1])
	wantSlot := make([]int32, 2*MaxLength)
	wantRev := make([]int32, 2*MaxLength)
	copy(wantSlot[3:], []int32{1, 2, 3})
	copy(wantRev[3:], []int32{3, 2, 1})
	copy(wantSlot[MaxLength+1:], []int32{1, 2})
	copy(wantRev[MaxLength+1:], []int32{2, 1})
	if !slices.Equal(slot, wantSlot) || !slices.Equal(rev, wantRev) {
		t.Errorf("slot %v\nwant %v\nrev %v\nwant %v", slot[:10], wantSlot[:10], rev[:10], wantRev[:10])
	}
	if !slices.Equal(slot[MaxLength:MaxLength+4], wantSlot[MaxLength:MaxLength+4]) || !slices.Equal(rev[MaxLength:MaxLength+4], wantRev[MaxLength:MaxLength+4]) {
		t.Errorf("row 2 slot %v rev %v", slot[MaxLength:MaxLength+4], rev[MaxLength:MaxLength+4])
	}
}

func TestTextEncodeShapesAndNames(t *testing.T) {
	backend := nntest.Backend(t)
	cfg := DefaultTextEncoderConfig()
	mctx := mlctx.New()
	ids := TokenizeBatch([]string{`a sign that says "K4RT"`, ""})
	out, err := mlctx.ExecOnceN(backend, mctx, func(ctx *mlctx.Context, ids *graph.Node) []*graph.Node {
		tok, pooled := TextEncode(ctx.In("text_encoder"), cfg, ids)
		return []*graph.Node{tok, pooled}
	}, tensors.FromFlatDataAndDimensions(ids, 2, MaxLength))
	if err != nil {
		t.Fatal(err)
	}
	if got := out[0].Shape().Dimensions; !slices.Equal(got, []int{2, MaxLength, cfg.Dim}) {
		t.Errorf("tokens shape %v", got)
	}
	if got := out[1].Shape().Dimensions; !slices.Equal(got, []int{2, cfg.PooledDim}) {
		t.Errorf("pooled shape %v", got)
	}
	// The all-pad prompt pools to the mean of nothing = 0, so pooled = the (zero) bias.
	pooled := tensors.MustCopyFlatData[float32](out[1])
	for _, v := range pooled[cfg.PooledDim:] {
		if v != 0 {
			t.Fatalf("pooled of an empty prompt = %v, want zeros", pooled[cfg.PooledDim:])
		}
	}
	// Every token output is layer-normalised with unit weight and zero bias: mean 0, variance 1.
	tok := tensors.MustCopyFlatData[float32](out[0])
	row := tok[5*cfg.Dim : 6*cfg.Dim]
	var mean, sq float64
	for _, v := range row {
		mean += float64(v) / float64(cfg.Dim)
	}
	for _, v := range row {
		sq += (float64(v) - mean) * (float64(v) - mean) / float64(cfg.Dim)
	}
	if math.Abs(mean) > 1e-5 || math.Abs(sq-1) > 1e-3 {
		t.Errorf("token 5: mean %g variance %g, want 0 and 1", mean, sq)
	}
	want := TextEncoderParamShapes(cfg, "text_encoder")
	got := ParamShapes{}
	for v := range mctx.IterVariables() {
		if key := VariableKey(v.Scope(), v.Name()); strings.HasPrefix(key, "text_encoder.") {
			got[key] = v.Shape().Dimensions
		}
	}
	if len(got) != len(want) {
		t.Errorf("variables %v, want %v", got, want)
	}
	for k, s := range want {
		if !slices.Equal(got[k], s) {
			t.Errorf("variable %q: shape %v, want %v", k, got[k], s)
		}
	}
}

func TestEmbeddingBands(t *testing.T) {
	for _, tc := range []struct {
		table  string
		lo, hi int
	}{
		{"token_embedding", 0, 32},
		{"slot_embedding", 32, 48},
		{"rev_slot_embedding", 48, 56},
		{"position_embedding", 56, 64},
	} {
		if lo, hi := EmbeddingBand(tc.table, 64); lo != tc.lo || hi != tc.hi {
			t.Errorf("EmbeddingBand(%q, 64) = [%d, %d), want [%d, %d)", tc.table, lo, hi, tc.lo, tc.hi)
		}
	}
	if err := (TextEncoderConfig{Dim: 12, PooledDim: 8, Hidden: 8}).Validate(); err == nil {
		t.Error("dim 12 validated, want an error (not a multiple of 8)")
	}

	// Freshly initialised tables are zero outside their band, and their gradient is zero there,
	// so AdamW never moves those channels.
	backend := nntest.Backend(t)
	cfg := DefaultTextEncoderConfig()
	mctx := mlctx.New()
	ids := TokenizeBatch([]string{`a sign that says "K4RT"`, `"7QZ" on a mug`})
	var tables []string
	outs, err := mlctx.ExecOnceN(backend, mctx, func(ctx *mlctx.Context, ids *graph.Node) []*graph.Node {
		tok, _ := TextEncode(ctx.In("text_encoder"), cfg, ids)
		loss := graph.ReduceAllSum(graph.Square(graph.AddScalar(tok, 1)))
		var vars []*graph.Node
		for v := range ctx.IterVariables() {
			if table := strings.TrimSuffix(strings.TrimPrefix(VariableKey(v.Scope(), v.Name()), "text_encoder."), ".weight"); strings.HasSuffix(table, "embedding") {
				vars = append(vars, v.ValueGraph(ids.Graph()))
				tables = append(tables, table)
			}
		}
		return append(graph.Gradient(loss, vars...), vars...)
	}, tensors.FromFlatDataAndDimensions(ids, 2, MaxLength))
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 4 {
		t.Fatalf("embedding tables %v, want 4", tables)
	}
	for j, table := range tables {
		lo, hi := EmbeddingBand(table, cfg.Dim)
		for k, what := range []string{"gradient", "value"} {
			vals := tensors.MustCopyFlatData[float32](outs[k*len(tables)+j])
			var inside float64
			for i, x := range vals {
				if c := i % cfg.Dim; c < lo || c >= hi {
					if x != 0 {
						t.Fatalf("%s %s: channel %d = %g outside its band [%d, %d)", table, what, c, x, lo, hi)
					}
				} else {
					inside += math.Abs(float64(x))
				}
			}
			if inside == 0 {
				t.Errorf("%s %s: all zero inside its band", table, what)
			}
		}
	}
}

// TestPooledLeavesOutQuotedString: the pooled vector depends on the template words only, so
// two prompts that differ only inside the quotes (same length, so the closing quote keeps its
// position) pool alike and a different template does not.
func TestPooledLeavesOutQuotedString(t *testing.T) {
	backend := nntest.Backend(t)
	prompts := []string{`a sign that says "K4RT"`, `a sign that says "7QZ9"`, `a mug that says "K4RT"`}
	ids := TokenizeBatch(prompts)
	out, err := mlctx.ExecOnce(backend, mlctx.New(), func(ctx *mlctx.Context, ids *graph.Node) *graph.Node {
		_, pooled := TextEncode(ctx.In("text_encoder"), DefaultTextEncoderConfig(), ids)
		return pooled
	}, tensors.FromFlatDataAndDimensions(ids, len(prompts), MaxLength))
	if err != nil {
		t.Fatal(err)
	}
	pooled := tensors.MustCopyFlatData[float32](out)
	p := DefaultTextEncoderConfig().PooledDim
	maxDiff := func(a, b int) float64 {
		var m float64
		for i := range p {
			m = max(m, math.Abs(float64(pooled[a*p+i]-pooled[b*p+i])))
		}
		return m
	}
	if d := maxDiff(0, 1); d > 1e-6 {
		t.Errorf("pooled of %q and %q differ by %g, want equal (quoted string left out)", prompts[0], prompts[1], d)
	}
	if d := maxDiff(0, 2); d < 1e-3 {
		t.Errorf("pooled of %q and %q differ by only %g, want the template to matter", prompts[0], prompts[2], d)
	}
}
