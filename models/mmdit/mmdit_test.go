package mmdit

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

func TestKeyScopeTable(t *testing.T) {
	cases := []struct{ key, scope, name string }{
		{"transformer_blocks.3.attn.to_q.weight", "/transformer_blocks/3/attn/to_q", "weight"},
		{"transformer_blocks.0.attn.to_out.0.bias", "/transformer_blocks/0/attn/to_out/0", "bias"},
		{"transformer_blocks.0.attn.to_q.lora_A.weight", "/transformer_blocks/0/attn/to_q/lora_A", "weight"},
		{"time_text_embed.timestep_embedder.linear_1.weight", "/time_text_embed/timestep_embedder/linear_1", "weight"},
		{"proj_out.bias", "/proj_out", "bias"},
		{"pos_embed.proj.weight", "/pos_embed/proj", "weight"},
	}
	for _, c := range cases {
		scope, name, err := KeyToScope(c.key)
		if err != nil || scope != c.scope || name != c.name {
			t.Errorf("KeyToScope(%q) = %q, %q, %v; want %q, %q", c.key, scope, name, err, c.scope, c.name)
		}
		key, err := ScopeToKey(c.scope, c.name)
		if err != nil || key != c.key {
			t.Errorf("ScopeToKey(%q, %q) = %q, %v; want %q", c.scope, c.name, key, err, c.key)
		}
	}
	for _, bad := range []string{"weight", "a..b", ".a.b", "a/b.c"} {
		if _, _, err := KeyToScope(bad); err == nil {
			t.Errorf("KeyToScope(%q) succeeded, want an error", bad)
		}
	}
	for _, bad := range [][2]string{{"/", "w"}, {"a/b", "w"}, {"/a.b", "w"}, {"/a//b", "w"}} {
		if _, err := ScopeToKey(bad[0], bad[1]); err == nil {
			t.Errorf("ScopeToKey(%q, %q) succeeded, want an error", bad[0], bad[1])
		}
	}
	// Under a non-root model scope the variable path is root + relative scope.
	if got := joinRoot("/transformer", "/proj_out"); got != "/transformer/proj_out" {
		t.Errorf("joinRoot = %q", got)
	}
	// Every declared param round-trips.
	cfg, err := LoadConfig("testdata/sd35m.json")
	if err != nil {
		t.Fatal(err)
	}
	lora := LoRAConfig{Rank: 4, Alpha: 8}
	for _, p := range append(cfg.Params(), lora.Params(cfg)...) {
		scope, name, err := KeyToScope(p.Key)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := ScopeToKey(scope, name); err != nil || back != p.Key {
			t.Fatalf("%q round-trips to %q, %v", p.Key, back, err)
		}
	}
}

func TestConfig(t *testing.T) {
	tiny, err := LoadConfig("testdata/tiny.json")
	if err != nil {
		t.Fatal(err)
	}
	if tiny.InnerDim() != 128 || tiny.BaseSize() != 16 || !tiny.IsDualAttention(1) || tiny.IsDualAttention(2) {
		t.Errorf("tiny config %+v", tiny)
	}
	// diffusers writes null for out_channels / qk_norm in SD3 configs.
	c, err := ParseConfig([]byte(`{"sample_size":8,"patch_size":2,"in_channels":4,"num_layers":1,"attention_head_dim":8,
		"num_attention_heads":2,"joint_attention_dim":4,"caption_projection_dim":16,"pooled_projection_dim":4,
		"out_channels":null,"pos_embed_max_size":4,"qk_norm":null,"dual_attention_layers":[],"_class_name":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.OutChannels != 4 || c.QKNorm != "" {
		t.Errorf("defaults: out_channels %d qk_norm %q", c.OutChannels, c.QKNorm)
	}
	if _, err := ParseConfig([]byte(`{"sample_size":8,"num_layer":3}`)); err == nil || !strings.Contains(err.Error(), `"num_layer"`) {
		t.Errorf("unknown key error = %v", err)
	}
	base := smallConfig()
	bad := []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.CaptionProjectionDim = 30 }, "field caption_projection_dim: got 30, want num_attention_heads·attention_head_dim = 32"},
		{func(c *Config) { c.QKNorm = "layer_norm" }, `field qk_norm: got "layer_norm"`},
		{func(c *Config) { c.DualAttentionLayers = []int{2} }, "field dual_attention_layers: got layer 2"},
		{func(c *Config) { c.DualAttentionLayers = []int{0, 0} }, "listed twice"},
		{func(c *Config) { c.PatchSize = 3 }, "field sample_size: got 8, want a multiple of patch_size 3"},
		{func(c *Config) { c.PosEmbedMaxSize = 3 }, "field pos_embed_max_size: got 3, want >= sample_size/patch_size = 4"},
		{func(c *Config) { c.NumLayers = 0 }, "field num_layers: got 0, want > 0"},
	}
	for _, b := range bad {
		c := base
		b.mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("Validate() = %v, want %q", err, b.want)
		}
	}
	if _, err := New(base, &LoRAConfig{Rank: 2, Alpha: 2, Targets: []string{"to_qq"}}); err == nil || !strings.Contains(err.Error(), `"to_qq"`) {
		t.Errorf("bad LoRA target error = %v", err)
	}
	if _, err := New(base, &LoRAConfig{Rank: 0, Alpha: 2}); err == nil || !strings.Contains(err.Error(), "lora rank: got 0") {
		t.Errorf("bad LoRA rank error = %v", err)
	}
}

// TestParamsSD35M checks the declared tensors of SD3.5-Medium against the
// diffusers module layout.
func TestParamsSD35M(t *testing.T) {
	cfg, err := LoadConfig("testdata/sd35m.json")
	if err != nil {
		t.Fatal(err)
	}
	shapes := map[string][]int{}
	for _, p := range cfg.Params() {
		if _, dup := shapes[p.Key]; dup {
			t.Fatalf("duplicate key %q", p.Key)
		}
		shapes[p.Key] = p.Shape
	}
	want := map[string][]int{
		"pos_embed.proj.weight":                             {1536, 16, 2, 2},
		"time_text_embed.timestep_embedder.linear_1.weight": {1536, 256},
		"time_text_embed.text_embedder.linear_1.weight":     {1536, 2048},
		"context_embedder.weight":                           {1536, 4096},
		"transformer_blocks.0.norm1.linear.weight":          {9 * 1536, 1536}, // SD35AdaLayerNormZeroX
		"transformer_blocks.13.norm1.linear.weight":         {6 * 1536, 1536}, // AdaLayerNormZero
		"transformer_blocks.0.norm1_context.linear.weight":  {6 * 1536, 1536},
		"transformer_blocks.23.norm1_context.linear.weight": {2 * 1536, 1536}, // AdaLayerNormContinuous
		"transformer_blocks.12.attn2.to_out.0.weight":       {1536, 1536},
		"transformer_blocks.12.attn2.norm_k.weight":         {64},
		"transformer_blocks.5.attn.norm_added_q.weight":     {64},
		"transformer_blocks.23.attn.add_q_proj.weight":      {1536, 1536},
		"transformer_blocks.3.ff.net.0.proj.weight":         {6144, 1536},
		"transformer_blocks.3.ff_context.net.2.weight":      {1536, 6144},
		"norm_out.linear.weight":                            {3072, 1536},
		"proj_out.weight":                                   {64, 1536},
	}
	for k, s := range want {
		if !slices.Equal(shapes[k], s) {
			t.Errorf("%s: shape %v, want %v", k, shapes[k], s)
		}
	}
	for _, absent := range []string{"transformer_blocks.23.attn.to_add_out.weight", "transformer_blocks.23.ff_context.net.2.weight",
		"transformer_blocks.13.attn2.to_q.weight", "pos_embed.pos_embed"} {
		if _, ok := shapes[absent]; ok {
			t.Errorf("%s declared, diffusers has no such tensor", absent)
		}
	}
	t.Logf("SD3.5-M: %d base parameters, %d LoRA r=32 parameters", cfg.NumParams(), (&Model{Config: cfg, LoRA: &LoRAConfig{Rank: 32, Alpha: 64}}).NumLoRAParams())
}

// TestTimestepFeatures checks diffusers' Timesteps(256, flip_sin_to_cos=True)
// by hand: f_i = exp(−ln(10000)·i/128) = 10000^(−i/128); features are
// [cos(t·f_0..127), sin(t·f_0..127)]. f_0 = 1, f_64 = 10000^(−1/2) = 0.01.
func TestTimestepFeatures(t *testing.T) {
	out, err := ExecOnce(nntest.Backend(t), func(ts *Node) *Node { return TimestepFeatures(ts, 256) }, []float32{0, 1000})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.Shape().Dimensions, []int{2, 256}) {
		t.Fatalf("shape %s, want [2 256]", out.Shape())
	}
	got := flat(t, out)
	cases := []struct {
		row, col int
		want     float64
	}{
		{0, 0, 1}, {0, 127, 1}, {0, 128, 0}, {0, 255, 0}, // t = 0: cos 0 = 1, sin 0 = 0
		{1, 0, 0.5623790762907029},    // cos(1000·1)
		{1, 128, 0.8268795405320025},  // sin(1000·1)
		{1, 64, -0.8390715290764524},  // cos(1000·0.01) = cos 10
		{1, 192, -0.5440211108893698}, // sin 10
	}
	for _, c := range cases {
		if g := float64(got[c.row*256+c.col]); math.Abs(g-c.want) > 1e-4 {
			t.Errorf("features[%d][%d] = %g, want %g", c.row, c.col, g, c.want)
		}
	}
}

// TestPosEmbed2D checks the sin-cos table by hand. dim 8 → quarter 2,
// ω = [1, 10000^(−1/2) = 0.01]; max 4, base 2 → coordinate i·2/4 = i/2.
// Token (r, c) = [sin xω, cos xω, sin yω, cos yω] with x the column coordinate.
func TestPosEmbed2D(t *testing.T) {
	s5, c5 := math.Sin(0.5), math.Cos(0.5)
	s005, c005 := math.Sin(0.005), math.Cos(0.005)
	s1, c1 := math.Sin(1), math.Cos(1)
	s01, c01 := math.Sin(0.01), math.Cos(0.01)
	cases := []struct {
		h, w int
		want [][]float64
	}{
		// 2×2 crop: top = left = (4−2)/2 = 1, coordinates 0.5 and 1.
		{2, 2, [][]float64{
			{s5, s005, c5, c005, s5, s005, c5, c005}, // (r0,c0): x = .5, y = .5
			{s1, s01, c1, c01, s5, s005, c5, c005},   // (r0,c1): x = 1,  y = .5
			{s5, s005, c5, c005, s1, s01, c1, c01},   // (r1,c0): x = .5, y = 1
			{s1, s01, c1, c01, s1, s01, c1, c01},     // (r1,c1)
		}},
		// 1×3 crop: top = (4−1)/2 = 1 → y = .5; left = (4−3)/2 = 0 → x = 0, .5, 1.
		{1, 3, [][]float64{
			{0, 0, 1, 1, s5, s005, c5, c005},
			{s5, s005, c5, c005, s5, s005, c5, c005},
			{s1, s01, c1, c01, s5, s005, c5, c005},
		}},
	}
	for _, c := range cases {
		got := PosEmbed2D(8, 4, 2, c.h, c.w)
		if len(got) != len(c.want) {
			t.Fatalf("%dx%d: %d tokens, want %d", c.h, c.w, len(got), len(c.want))
		}
		for i := range c.want {
			for j := range c.want[i] {
				if math.Abs(float64(got[i][j])-c.want[i][j]) > 1e-7 {
					t.Errorf("%dx%d token %d dim %d = %g, want %g", c.h, c.w, i, j, got[i][j], c.want[i][j])
				}
			}
		}
	}
}

func TestForwardShapeAndDeterminism(t *testing.T) {
	cfg := smallConfig()
	m, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := makeInputs(cfg, 2, 4, 8, 5, 1)
	run := func() []float32 {
		ctx := mlctx.New()
		if err := m.Init(ctx, 7); err != nil {
			t.Fatal(err)
		}
		out := forward(t, ctx, m, in, false)
		if want := []int{2, 4, 4, 8}; !slices.Equal(out.Shape().Dimensions, want) {
			t.Fatalf("output shape %s, want %v", out.Shape(), want)
		}
		// DiT init: proj_out is zero, so the untrained model predicts 0.
		for i, v := range flat(t, out) {
			if v != 0 {
				t.Fatalf("fresh model output[%d] = %g, want 0 (zero-initialised proj_out)", i, v)
			}
		}
		randomizeBase(t, ctx, m, 11)
		return flat(t, forward(t, ctx, m, in, false))
	}
	a, b := run(), run()
	if i := bitEqual(a, b); i >= 0 {
		t.Fatalf("two runs with the same seed differ at %d: %g vs %g", i, a[i], b[i])
	}
	nonZero := 0
	for _, v := range a {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("non-finite output %g", v)
		}
		if v != 0 {
			nonZero++
		}
	}
	if nonZero < len(a)/2 {
		t.Errorf("only %d of %d outputs non-zero", nonZero, len(a))
	}

	// An SD3-style config (no q/k norm, no dual attention) builds and runs too.
	sd3 := cfg
	sd3.QKNorm, sd3.DualAttentionLayers = "", nil
	m3, err := New(sd3, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	randomizeBase(t, ctx, m3, 5)
	if out := forward(t, ctx, m3, in, false); !slices.Equal(out.Shape().Dimensions, []int{2, 4, 4, 8}) {
		t.Errorf("SD3-style output shape %s", out.Shape())
	}
}

// TestVariablesAreParams checks that the graph uses exactly the declared
// tensors, each in the variable named by its key.
func TestVariablesAreParams(t *testing.T) {
	cfg := smallConfig()
	m, err := New(cfg, &LoRAConfig{Rank: 2, Alpha: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New().In("transformer") // a non-root model scope
	if err := m.Init(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.InitLoRA(ctx, 2); err != nil {
		t.Fatal(err)
	}
	in := makeInputs(cfg, 1, 4, 8, 3, 1)
	exec, err := mlctx.NewExec(nntest.Backend(t), ctx, func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
		return m.Forward(ctx, lat, ts, enc, pooled, true)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	_, g, err := exec.ExecWithGraph(in.latents, in.timestep, in.enc, in.pooled)
	if err != nil {
		t.Fatal(err)
	}
	var used []string
	for v := range ctx.IterVariables() {
		if !v.InUseByGraph(g) {
			continue
		}
		rel, ok := strings.CutPrefix(v.Scope(), "/transformer")
		if !ok {
			t.Fatalf("variable %s outside the model scope", v.Scope())
		}
		key, err := ScopeToKey(rel, v.Name())
		if err != nil {
			t.Fatal(err)
		}
		used = append(used, key)
	}
	// The last block's text queries only feed its discarded text output, so
	// Forward does not compute them.
	var declared []string
	for _, p := range append(cfg.Params(), m.LoRA.Params(cfg)...) {
		if !strings.HasPrefix(p.Key, "transformer_blocks.1.attn.add_q_proj.") && !strings.HasPrefix(p.Key, "transformer_blocks.1.attn.norm_added_q.") {
			declared = append(declared, p.Key)
		}
	}
	slices.Sort(used)
	slices.Sort(declared)
	if !slices.Equal(used, declared) {
		t.Errorf("graph variables differ from declared params:\nused     %v\ndeclared %v", used, declared)
	}
	// Default targets on a dual-attention block adapt attn2 too (PEFT suffix match).
	if !m.LoRA.Matches("transformer_blocks.0.attn2.to_q") || m.LoRA.Matches("transformer_blocks.0.ff.net.2") {
		t.Error("LoRA target matching")
	}
	// Block 0: attn 8 + attn2 4 = 12 adapted modules; block 1 (last): attn 7 (no
	// to_add_out). All are 32→32: 19 × (A 2·32 + B 32·2) = 19 × 128.
	if got := m.NumLoRAParams(); got != 19*128 {
		t.Errorf("NumLoRAParams = %d, want %d", got, 19*128)
	}
}
