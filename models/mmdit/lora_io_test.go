package mmdit

import (
	"math"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/safetensors"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

func loraModel(t *testing.T) *Model {
	t.Helper()
	m, err := New(smallConfig(), &LoRAConfig{Rank: 2, Alpha: 4})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestLoRAInitIsBase: with B = 0 the adapted model is the base model, bit for bit.
func TestLoRAInitIsBase(t *testing.T) {
	m := loraModel(t)
	ctx := mlctx.New()
	randomizeBase(t, ctx, m, 3)
	if err := m.InitLoRA(ctx, 4); err != nil {
		t.Fatal(err)
	}
	in := makeInputs(m.Config, 2, 4, 8, 5, 2)
	base := flat(t, forward(t, ctx, m, in, false))
	adapted := flat(t, forward(t, ctx, m, in, true))
	if i := bitEqual(base, adapted); i >= 0 {
		t.Fatalf("LoRA at init changes output[%d]: %g vs %g", i, base[i], adapted[i])
	}
	// lora_A is Gaussian with std 1/r (non-zero), lora_B is zero.
	a, err := variableData(ctx, "transformer_blocks.0.attn.to_q.lora_A.weight", []int{2, 32})
	if err != nil {
		t.Fatal(err)
	}
	b, err := variableData(ctx, "transformer_blocks.0.attn.to_q.lora_B.weight", []int{32, 2})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Max(a) == 0 && slices.Min(a) == 0 {
		t.Error("lora_A is all zero")
	}
	if slices.Max(b) != 0 || slices.Min(b) != 0 {
		t.Error("lora_B is not zero")
	}
	// Non-zero B changes the output; the reference path stays the base model.
	randomizeLoRA(t, ctx, m, 5)
	if bitEqual(base, flat(t, forward(t, ctx, m, in, true))) < 0 {
		t.Error("non-zero LoRA does not change the output")
	}
	if i := bitEqual(base, flat(t, forward(t, ctx, m, in, false))); i >= 0 {
		t.Errorf("LoRA-off output changed at %d after setting adapters", i)
	}
}

// TestOneStepOnlyLoRAChanges takes one SGD step on an MSE loss through the
// adapted model: base weights are not trainable and stay bit-identical;
// lora_B (gradient (∂L/∂y)·(A·x)ᵀ ≠ 0) moves; lora_A stays (its gradient is
// Bᵀ·… = 0 while B = 0).
func TestOneStepOnlyLoRAChanges(t *testing.T) {
	m := loraModel(t)
	ctx := mlctx.New()
	randomizeBase(t, ctx, m, 3)
	if err := m.InitLoRA(ctx, 4); err != nil {
		t.Fatal(err)
	}
	in := makeInputs(m.Config, 2, 4, 8, 5, 2)
	target := makeInputs(m.Config, 2, 4, 8, 5, 9).latents

	snapshot := func() map[string][]float32 {
		out := map[string][]float32{}
		for _, p := range append(m.Config.Params(), m.LoRA.Params(m.Config)...) {
			d, err := variableData(ctx, p.Key, p.Shape)
			if err != nil {
				t.Fatal(err)
			}
			out[p.Key] = d
		}
		return out
	}
	before := snapshot()
	var trainable []string
	for v := range ctx.IterVariables() {
		if v.Trainable {
			key, _ := ScopeToKey(v.Scope(), v.Name())
			trainable = append(trainable, key)
		}
	}
	var loraKeys []string
	for _, p := range m.LoRA.Params(m.Config) {
		loraKeys = append(loraKeys, p.Key)
	}
	slices.Sort(trainable)
	slices.Sort(loraKeys)
	if !slices.Equal(trainable, loraKeys) {
		t.Fatalf("trainable variables %v, want exactly the LoRA tensors", trainable)
	}

	exec, err := mlctx.NewExec(nntest.Backend(t), ctx, func(ctx *mlctx.Context, inputs []*Node) *Node {
		g := inputs[0].Graph()
		pred := m.Forward(ctx, inputs[0], inputs[1], inputs[2], inputs[3], true)
		loss := ReduceAllMean(Square(Sub(pred, inputs[4])))
		grads := ctx.BuildTrainableVariablesGradientsGraph(loss)
		i := 0
		for v := range ctx.IterVariables() {
			if v.Trainable && v.InUseByGraph(g) {
				v.SetValueGraph(Sub(v.ValueGraph(g), MulScalar(grads[i], 0.5)))
				i++
			}
		}
		return loss
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	if err := execErr(func() error { _, err := exec.Exec1(in.latents, in.timestep, in.enc, in.pooled, target); return err }); err != nil {
		t.Fatal(err)
	}
	after := snapshot()
	movedB := 0
	for _, p := range m.Config.Params() {
		if i := bitEqual(before[p.Key], after[p.Key]); i >= 0 {
			t.Errorf("base tensor %s changed at %d", p.Key, i)
		}
	}
	for _, p := range m.LoRA.Params(m.Config) {
		changed := bitEqual(before[p.Key], after[p.Key]) >= 0
		switch {
		case strings.HasSuffix(p.Key, "lora_A.weight") && changed:
			t.Errorf("%s changed although B = 0 gives it zero gradient", p.Key)
		case strings.HasSuffix(p.Key, "lora_B.weight") && changed:
			movedB++
		}
	}
	// Every lora_B on the output's path receives gradient: 19 adapted modules
	// in the small config, less the last block's add_q_proj (its text queries
	// only feed the discarded text stream, as in diffusers).
	if movedB != 18 {
		t.Errorf("%d lora_B tensors changed, want 18", movedB)
	}
}

// TestSaveLoadBitExact: base and adapters saved as safetensors and loaded into
// a fresh context reproduce the outputs bit for bit.
func TestSaveLoadBitExact(t *testing.T) {
	m := loraModel(t)
	ctx := mlctx.New()
	randomizeBase(t, ctx, m, 3)
	randomizeLoRA(t, ctx, m, 4)
	in := makeInputs(m.Config, 2, 4, 8, 5, 2)
	wantBase := flat(t, forward(t, ctx, m, in, false))
	wantLoRA := flat(t, forward(t, ctx, m, in, true))

	dir := t.TempDir()
	basePath, loraPath := filepath.Join(dir, "base.safetensors"), filepath.Join(dir, "lora.safetensors")
	if err := m.SaveBase(ctx, basePath); err != nil {
		t.Fatal(err)
	}
	if err := m.SaveLoRA(ctx, loraPath); err != nil {
		t.Fatal(err)
	}
	infos, meta, err := safetensors.ReadHeader(loraPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := infos["transformer_blocks.0.attn.to_q.lora_A.weight"]; !ok || len(infos) != 2*19 {
		t.Errorf("LoRA file holds %d tensors (want 38 with PEFT names)", len(infos))
	}
	if meta["lora_rank"] != "2" || meta["lora_alpha"] != "4" {
		t.Errorf("LoRA metadata %v", meta)
	}

	ctx2 := mlctx.New()
	if err := m.Load(ctx2, basePath); err != nil {
		t.Fatal(err)
	}
	if err := m.LoadLoRA(ctx2, loraPath); err != nil {
		t.Fatal(err)
	}
	if i := bitEqual(wantBase, flat(t, forward(t, ctx2, m, in, false))); i >= 0 {
		t.Errorf("loaded base output differs at %d", i)
	}
	if i := bitEqual(wantLoRA, flat(t, forward(t, ctx2, m, in, true))); i >= 0 {
		t.Errorf("loaded LoRA output differs at %d", i)
	}
	for v := range ctx2.IterVariables() {
		isLoRA := strings.Contains(v.Scope(), "/lora_")
		if v.Trainable != isLoRA {
			t.Errorf("%s/%s trainable=%v after load", v.Scope(), v.Name(), v.Trainable)
		}
	}

	// PEFT's save_pretrained prefixes keys with "base_model.model."; accept it.
	tensors, _, err := safetensors.Read(loraPath)
	if err != nil {
		t.Fatal(err)
	}
	prefixed := map[string]safetensors.Tensor{}
	for k, v := range tensors {
		prefixed["base_model.model."+k] = v
	}
	peftPath := filepath.Join(dir, "adapter_model.safetensors")
	if err := safetensors.Write(peftPath, prefixed, nil); err != nil {
		t.Fatal(err)
	}
	ctx3 := mlctx.New()
	if err := m.Load(ctx3, basePath); err != nil {
		t.Fatal(err)
	}
	if err := m.LoadLoRA(ctx3, peftPath); err != nil {
		t.Fatal(err)
	}
	if i := bitEqual(wantLoRA, flat(t, forward(t, ctx3, m, in, true))); i >= 0 {
		t.Errorf("output with PEFT-prefixed adapters differs at %d", i)
	}
}

// TestLoadErrors: a missing tensor, a wrong shape, an undeclared tensor and a
// wrong position buffer are errors naming the tensor (and both shapes); the
// diffusers position buffer is accepted when it matches.
func TestLoadErrors(t *testing.T) {
	m := loraModel(t)
	ctx := mlctx.New()
	randomizeBase(t, ctx, m, 3)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := m.SaveBase(ctx, good); err != nil {
		t.Fatal(err)
	}
	base, _, err := safetensors.Read(good)
	if err != nil {
		t.Fatal(err)
	}
	c := m.Config
	table := PosEmbed2D(c.InnerDim(), c.PosEmbedMaxSize, c.BaseSize(), c.PosEmbedMaxSize, c.PosEmbedMaxSize)
	var posData []float32
	for _, row := range table {
		posData = append(posData, row...)
	}
	posShape := []int{1, c.PosEmbedMaxSize * c.PosEmbedMaxSize, c.InnerDim()}
	variant := func(name string, edit func(map[string]safetensors.Tensor)) string {
		ts := map[string]safetensors.Tensor{}
		for k, v := range base {
			ts[k] = v
		}
		edit(ts)
		path := filepath.Join(dir, name+".safetensors")
		if err := safetensors.Write(path, ts, nil); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cases := []struct {
		name string
		path string
		want string // "" = loads
	}{
		{"missing", variant("missing", func(ts map[string]safetensors.Tensor) {
			delete(ts, "transformer_blocks.1.attn.to_q.weight")
		}), `missing tensor "transformer_blocks.1.attn.to_q.weight" (want [32 32])`},
		{"shape", variant("shape", func(ts map[string]safetensors.Tensor) {
			ts["proj_out.weight"] = safetensors.Tensor{Shape: []int{16, 16}, Data: make([]float32, 256)}
		}), `tensor "proj_out.weight": file has shape [16 16], model wants [16 32]`},
		{"undeclared", variant("undeclared", func(ts map[string]safetensors.Tensor) {
			ts["transformer_blocks.1.attn2.to_q.weight"] = safetensors.Tensor{Shape: []int{1}, Data: []float32{0}}
		}), `tensors not declared by the model config, e.g. ["transformer_blocks.1.attn2.to_q.weight"]`},
		{"pos buffer ok", variant("posok", func(ts map[string]safetensors.Tensor) {
			ts[posEmbedKey] = safetensors.Tensor{Shape: posShape, Data: posData}
		}), ""},
		{"pos buffer wrong", variant("posbad", func(ts map[string]safetensors.Tensor) {
			off := slices.Clone(posData)
			off[5*c.InnerDim()+1] += 0.5
			ts[posEmbedKey] = safetensors.Tensor{Shape: posShape, Data: off}
		}), `tensor "pos_embed.pos_embed": value [0 5 1]`},
		{"no file", filepath.Join(dir, "nope.safetensors"), "nope.safetensors"},
	}
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			ctx := mlctx.New()
			err := m.Load(ctx, cs.path)
			if cs.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), cs.want) {
				t.Fatalf("Load error = %v, want it to contain %q", err, cs.want)
			}
			if ctx.NumVariables() != 0 {
				t.Errorf("failed load created %d variables", ctx.NumVariables())
			}
		})
	}

	// Adapters of another rank are a shape error naming both shapes.
	r4, err := New(m.Config, &LoRAConfig{Rank: 4, Alpha: 4})
	if err != nil {
		t.Fatal(err)
	}
	r4Ctx := mlctx.New()
	randomizeLoRA(t, r4Ctx, r4, 1)
	r4Path := filepath.Join(dir, "r4.safetensors")
	if err := r4.SaveLoRA(r4Ctx, r4Path); err != nil {
		t.Fatal(err)
	}
	err = m.LoadLoRA(mlctx.New(), r4Path)
	if err == nil || !strings.Contains(err.Error(), `file has shape [4 32], model wants [2 32]`) {
		t.Errorf("rank mismatch error = %v", err)
	}
	// A differing recorded alpha is an error.
	a8, _ := New(m.Config, &LoRAConfig{Rank: 2, Alpha: 8})
	a8Ctx := mlctx.New()
	randomizeLoRA(t, a8Ctx, a8, 1)
	a8Path := filepath.Join(dir, "a8.safetensors")
	if err := a8.SaveLoRA(a8Ctx, a8Path); err != nil {
		t.Fatal(err)
	}
	if err := m.LoadLoRA(mlctx.New(), a8Path); err == nil || !strings.Contains(err.Error(), `lora_alpha "8", config has 4`) {
		t.Errorf("alpha mismatch error = %v", err)
	}

	// Forward without weights is a graph-building panic naming the tensor;
	// Exec returns it as an error.
	exec, err := mlctx.NewExec(nntest.Backend(t), mlctx.New(), func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
		return m.Forward(ctx, lat, ts, enc, pooled, false)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	in := makeInputs(m.Config, 1, 4, 8, 2, 1)
	err = execErr(func() error { _, err := exec.Exec1(in.latents, in.timestep, in.enc, in.pooled); return err })
	if err == nil || !strings.Contains(err.Error(), `missing tensor "pos_embed.proj.weight" (want [32 4 2 2])`) {
		t.Errorf("forward without weights: %v", err)
	}
	// Wrong input shapes name the input.
	bad := makeInputs(m.Config, 1, 4, 7, 2, 1)
	err = execErr(func() error { _, err := exec.Exec1(bad.latents, bad.timestep, bad.enc, bad.pooled); return err })
	if err == nil || !strings.Contains(err.Error(), "latents 4x7") {
		t.Errorf("forward with odd width: %v", err)
	}
}

// LoRATensors / SetLoRATensors move adapters in memory (EMA swaps, checkpoints): a copy taken,
// overwritten and set back restores the model's output exactly.
func TestLoRATensorsRoundTrip(t *testing.T) {
	c := smallConfig()
	m, ctx := randomLoRAModel(t, c, LoRAConfig{Rank: 2, Alpha: 4})
	in := makeInputs(c, 2, 4, 8, 3, 4)
	want := forward(t, ctx, m, in, true).Value().([][][][]float32)
	saved, err := m.LoRATensors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved) != len(m.LoRA.Params(c)) {
		t.Fatalf("got %d adapters, want %d", len(saved), len(m.LoRA.Params(c)))
	}
	randomizeLoRA(t, ctx, m, 9)
	if got := forward(t, ctx, m, in, true).Value().([][][][]float32); got[0][0][0][0] == want[0][0][0][0] {
		t.Fatal("randomizing the adapters did not change the output: test is vacuous")
	}
	if err := m.SetLoRATensors(ctx, saved); err != nil {
		t.Fatal(err)
	}
	got := forward(t, ctx, m, in, true).Value().([][][][]float32)
	if !reflect.DeepEqual(got, want) {
		t.Error("output after SetLoRATensors differs from the output with the saved adapters")
	}
	for key := range saved {
		delete(saved, key)
		break
	}
	if err := m.SetLoRATensors(ctx, saved); err == nil || !strings.Contains(err.Error(), "missing tensor") {
		t.Errorf("missing adapter: error %v, want a missing tensor error", err)
	}
}

// TestMergedTensor: one weight at a time is what MergedTensors holds — W + (α/r)·B·A, checked
// by hand for one adapted layer — and BaseTensor is W; an adapted layer's merged weight
// differs from its base one, a layer without adapters is the base weight; an unknown key is an
// error naming it.
func TestMergedTensor(t *testing.T) {
	c := smallConfig()
	m, ctx := randomLoRAModel(t, c, LoRAConfig{Rank: 2, Alpha: 6, Targets: []string{"attn.to_q"}})
	all, err := m.MergedTensors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.Params() {
		one, err := m.MergedTensor(ctx, p.Key)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(one, all[p.Key]) {
			t.Fatalf("%s: MergedTensor differs from MergedTensors", p.Key)
		}
	}
	lora, err := m.LoRATensors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const key = "transformer_blocks.0.attn.to_q"
	base, err := m.BaseTensor(ctx, key+".weight")
	if err != nil {
		t.Fatal(err)
	}
	a, b := lora[key+".lora_A.weight"], lora[key+".lora_B.weight"] // [2, in], [out, 2]
	out, in := base.Shape[0], base.Shape[1]
	for o := range out {
		for i := range in {
			want := base.Data[o*in+i] + 3*(b.Data[o*2]*a.Data[i]+b.Data[o*2+1]*a.Data[in+i]) // α/r = 3
			if got := all[key+".weight"].Data[o*in+i]; math.Abs(float64(got-want)) > 1e-5 {
				t.Fatalf("%s.weight[%d,%d] = %v, want W + 3·B·A = %v", key, o, i, got, want)
			}
		}
	}
	plain := "transformer_blocks.0.attn.to_k.weight"
	if b, _ := m.BaseTensor(ctx, plain); !reflect.DeepEqual(b, all[plain]) {
		t.Errorf("%s has no adapter: merged differs from base", plain)
	}
	for _, f := range []func() error{
		func() error { _, err := m.MergedTensor(ctx, "nope.weight"); return err },
		func() error { _, err := m.BaseTensor(ctx, "nope.weight"); return err },
	} {
		if err := f(); err == nil || !strings.Contains(err.Error(), `"nope.weight" is not a weight of the model`) {
			t.Errorf("unknown key: %v", err)
		}
	}
}

// randomLoRAModel is a model of c with adapters lora, random base weights and adapters.
func randomLoRAModel(t *testing.T, c Config, lora LoRAConfig) (*Model, *mlctx.Context) {
	t.Helper()
	m, err := New(c, &lora)
	if err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	if err := m.Init(ctx, 1); err != nil {
		t.Fatal(err)
	}
	randomizeBase(t, ctx, m, 2)
	randomizeLoRA(t, ctx, m, 3)
	return m, ctx
}
