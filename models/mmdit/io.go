package mmdit

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// Init creates (or overwrites) every base weight in ctx with a fresh
// DiT-style initialisation drawn from seed: linear and patch weights
// Xavier-uniform with zero bias; the timestep and pooled-text MLPs N(0, 0.02²);
// every adaLN modulation (norm1, norm1_context, norm_out) and proj_out zero,
// so each block starts as the identity and the output as zero; RMS norm
// scales one. Base weights are trainable unless the model has LoRA.
func (m *Model) Init(ctx *mlctx.Context, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 0x6d6d646974)) // "mmdit"
	for _, p := range m.Config.Params() {
		data := make([]float32, numElements(p.Shape))
		module, _ := splitKey(p.Key)
		switch {
		case strings.HasSuffix(p.Key, ".bias"):
			// zero
		case strings.Contains(module, ".norm_"): // RMS norm scales of attn / attn2
			for i := range data {
				data[i] = 1
			}
		case strings.HasSuffix(module, "norm1.linear"), strings.HasSuffix(module, "norm1_context.linear"),
			module == "norm_out.linear", module == "proj_out":
			// zero: adaLN-Zero and zero final layer
		case strings.HasPrefix(module, "time_text_embed."):
			for i := range data {
				data[i] = float32(rng.NormFloat64() * 0.02)
			}
		default:
			out := p.Shape[0]
			in := numElements(p.Shape) / out
			limit := math.Sqrt(6 / float64(in+out))
			for i := range data {
				data[i] = float32((2*rng.Float64() - 1) * limit)
			}
		}
		if err := setVariable(ctx, p.Key, p.Shape, data, m.LoRA == nil); err != nil {
			return fmt.Errorf("init mmdit: %w", err)
		}
	}
	return nil
}

// InitLoRA creates (or resets) the adapters: lora_A ~ N(0, 1/r²) (PEFT's
// "gaussian" init) and lora_B = 0, so the adapted model equals the base
// model. The adapters are trainable.
func (m *Model) InitLoRA(ctx *mlctx.Context, seed uint64) error {
	if m.LoRA == nil {
		return fmt.Errorf("init lora: model has no LoRA config")
	}
	rng := rand.New(rand.NewPCG(seed, 0x6c6f7261)) // "lora"
	std := 1 / float64(m.LoRA.Rank)
	for _, p := range m.LoRA.Params(m.Config) {
		data := make([]float32, numElements(p.Shape))
		if strings.HasSuffix(p.Key, ".lora_A.weight") {
			for i := range data {
				data[i] = float32(rng.NormFloat64() * std)
			}
		}
		if err := setVariable(ctx, p.Key, p.Shape, data, true); err != nil {
			return fmt.Errorf("init lora: %w", err)
		}
	}
	return nil
}

// splitKey returns the module path and the tensor name of a key.
func splitKey(key string) (module, name string) {
	i := strings.LastIndex(key, ".")
	return key[:i], key[i+1:]
}

// setVariable creates or overwrites the float32 variable of a checkpoint key
// under ctx's scope.
func setVariable(ctx *mlctx.Context, key string, shape []int, data []float32, trainable bool) error {
	scope, name, err := KeyToScope(key)
	if err != nil {
		return err
	}
	abs := joinRoot(ctx.Scope(), scope)
	t := tensors.FromFlatDataAndDimensions(data, shape...)
	v := ctx.GetVariableByScopeAndName(abs, name)
	if v == nil {
		v = ctx.InAbsPath(abs).Checked(false).VariableWithValue(name, t)
	} else {
		if !slices.Equal(v.Shape().Dimensions, shape) {
			return fmt.Errorf("tensor %q: existing variable has shape %s, want %v", key, v.Shape(), shape)
		}
		if err := v.SetValue(t); err != nil {
			return fmt.Errorf("tensor %q: %w", key, err)
		}
	}
	v.SetTrainable(trainable)
	return nil
}

// variableData copies the value of a checkpoint key's variable.
func variableData(ctx *mlctx.Context, key string, shape []int) ([]float32, error) {
	v, err := lookupVariable(ctx, key)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("missing tensor %q (want %v): the model was not initialised or loaded", key, shape)
	}
	if !slices.Equal(v.Shape().Dimensions, shape) {
		return nil, fmt.Errorf("tensor %q: variable has shape %s, want %v", key, v.Shape(), shape)
	}
	t, err := v.Value()
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", key, err)
	}
	wasLocal := t.IsLocal()
	data, err := tensors.CopyFlatData[float32](t)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", key, err)
	}
	// Reading a value held on an accelerator leaves a host copy cached in the tensor; drop
	// it, or reading every weight (an export, a checkpoint) would keep a second copy of the
	// model in host memory.
	if !wasLocal && t.IsOnAnyDevice() {
		t.FinalizeLocal()
	}
	return data, nil
}

// tensorsOf copies the variables of params, keyed by checkpoint key.
func tensorsOf(ctx *mlctx.Context, params []Param) (map[string]safetensors.Tensor, error) {
	out := make(map[string]safetensors.Tensor, len(params))
	for _, p := range params {
		data, err := variableData(ctx, p.Key, p.Shape)
		if err != nil {
			return nil, err
		}
		out[p.Key] = safetensors.Tensor{Shape: p.Shape, Data: data}
	}
	return out, nil
}

// save writes the variables of params to path.
func save(ctx *mlctx.Context, path string, params []Param, meta map[string]string) error {
	out, err := tensorsOf(ctx, params)
	if err != nil {
		return err
	}
	return safetensors.Write(path, out, meta)
}

// LoRATensors copies the adapters' current values, keyed by PEFT name (what SaveLoRA writes).
func (m *Model) LoRATensors(ctx *mlctx.Context) (map[string]safetensors.Tensor, error) {
	if m.LoRA == nil {
		return nil, fmt.Errorf("lora tensors: model has no LoRA config")
	}
	out, err := tensorsOf(ctx, m.LoRA.Params(m.Config))
	if err != nil {
		return nil, fmt.Errorf("lora tensors: %w", err)
	}
	return out, nil
}

// SetLoRATensors overwrites the adapters with values keyed by PEFT name; every adapter must
// be present with its shape.
func (m *Model) SetLoRATensors(ctx *mlctx.Context, values map[string]safetensors.Tensor) error {
	if m.LoRA == nil {
		return fmt.Errorf("set lora tensors: model has no LoRA config")
	}
	params := m.LoRA.Params(m.Config)
	for _, p := range params {
		t, ok := values[p.Key]
		if !ok {
			return fmt.Errorf("set lora tensors: missing tensor %q (want %v)", p.Key, p.Shape)
		}
		if !slices.Equal(t.Shape, p.Shape) || len(t.Data) != numElements(p.Shape) {
			return fmt.Errorf("set lora tensors: tensor %q: got shape %v, want %v", p.Key, t.Shape, p.Shape)
		}
	}
	if len(values) != len(params) {
		return fmt.Errorf("set lora tensors: got %d tensors, want the %d adapters", len(values), len(params))
	}
	for _, p := range params {
		if err := setVariable(ctx, p.Key, p.Shape, values[p.Key].Data, true); err != nil {
			return fmt.Errorf("set lora tensors: %w", err)
		}
	}
	return nil
}

// SaveBase writes the base weights as F32 safetensors with diffusers keys
// (loadable by SD3Transformer2DModel); the config JSON is in the metadata
// under "mmdit_config".
func (m *Model) SaveBase(ctx *mlctx.Context, path string) error {
	cfg, err := json.Marshal(m.Config)
	if err != nil {
		return fmt.Errorf("save mmdit %s: %w", path, err)
	}
	if err := save(ctx, path, m.Config.Params(), map[string]string{"format": "pt", "mmdit_config": string(cfg)}); err != nil {
		return fmt.Errorf("save mmdit %s: %w", path, err)
	}
	return nil
}

// SaveLoRA writes the adapters as F32 safetensors with PEFT keys; rank, alpha
// and targets are recorded in the metadata.
func (m *Model) SaveLoRA(ctx *mlctx.Context, path string) error {
	if m.LoRA == nil {
		return fmt.Errorf("save lora %s: model has no LoRA config", path)
	}
	targets, err := json.Marshal(m.LoRA.targets())
	if err != nil {
		return fmt.Errorf("save lora %s: %w", path, err)
	}
	meta := map[string]string{
		"format":         "pt",
		"lora_rank":      strconv.Itoa(m.LoRA.Rank),
		"lora_alpha":     strconv.FormatFloat(m.LoRA.Alpha, 'g', -1, 64),
		"target_modules": string(targets),
	}
	if err := save(ctx, path, m.LoRA.Params(m.Config), meta); err != nil {
		return fmt.Errorf("save lora %s: %w", path, err)
	}
	return nil
}

// Load reads base weights with diffusers keys from a safetensors file (F32,
// F16 or BF16) into ctx. Every tensor of the config must be present with its
// shape; keys the config does not declare are an error, except diffusers'
// position-embedding buffer "pos_embed.pos_embed", which is checked against
// the computed table and otherwise ignored. Nothing is written to ctx unless
// the whole header checks out. Base weights are trainable unless the model has
// LoRA.
func (m *Model) Load(ctx *mlctx.Context, path string) error {
	f, err := safetensors.Open(path)
	if err != nil {
		return fmt.Errorf("load mmdit: %w", err)
	}
	defer f.Close()
	params := m.Config.Params()
	rename := func(name string) string { return name }
	if err := f.Check(wants(params, rename), posEmbedKey); err != nil {
		return fmt.Errorf("load mmdit %s: %w", path, err)
	}
	if _, ok := f.Info(posEmbedKey); ok {
		if err := m.checkPosEmbed(f); err != nil {
			return fmt.Errorf("load mmdit %s: %w", path, err)
		}
	}
	for _, p := range params {
		t, err := f.Tensor(p.Key)
		if err != nil {
			return fmt.Errorf("load mmdit: %w", err)
		}
		if err := setVariable(ctx, p.Key, p.Shape, t.Data, m.LoRA == nil); err != nil {
			return fmt.Errorf("load mmdit %s: %w", path, err)
		}
	}
	return nil
}

// loraPrefixes are key prefixes other tools put before PEFT names: PEFT's
// save_pretrained ("base_model.model.") and diffusers' pipeline LoRA files
// ("transformer."). LoadLoRA strips them.
var loraPrefixes = []string{"base_model.model.", "transformer."}

// LoadLoRA reads adapters with PEFT keys (optionally prefixed by
// "base_model.model." or "transformer.") into ctx. Every adapter of the LoRA
// config must be present with its shape (rank included) and no other tensor
// may be; if the file records lora_alpha it must equal the config's.
func (m *Model) LoadLoRA(ctx *mlctx.Context, path string) error {
	if m.LoRA == nil {
		return fmt.Errorf("load lora %s: model has no LoRA config", path)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return fmt.Errorf("load lora: %w", err)
	}
	defer f.Close()
	prefix := ""
	for _, pre := range loraPrefixes {
		names := f.Names()
		if len(names) > 0 && !slices.ContainsFunc(names, func(n string) bool { return !strings.HasPrefix(n, pre) }) {
			prefix = pre
			break
		}
	}
	rename := func(name string) string { return prefix + name }
	params := m.LoRA.Params(m.Config)
	if err := f.Check(wants(params, rename)); err != nil {
		return fmt.Errorf("load lora %s: %w", path, err)
	}
	if a, ok := f.Metadata()["lora_alpha"]; ok {
		alpha, err := strconv.ParseFloat(a, 64)
		if err != nil || alpha != m.LoRA.Alpha {
			return fmt.Errorf("load lora %s: file has lora_alpha %q, config has %g", path, a, m.LoRA.Alpha)
		}
	}
	for _, p := range params {
		t, err := f.Tensor(rename(p.Key))
		if err != nil {
			return fmt.Errorf("load lora: %w", err)
		}
		if err := setVariable(ctx, p.Key, p.Shape, t.Data, true); err != nil {
			return fmt.Errorf("load lora %s: %w", path, err)
		}
	}
	return nil
}

// wants lists params as the tensors a file must hold (file name = rename(key)).
func wants(params []Param, rename func(string) string) []safetensors.Want {
	out := make([]safetensors.Want, len(params))
	for i, p := range params {
		out[i] = safetensors.Want{Name: rename(p.Key), Shape: p.Shape}
	}
	return out
}

// checkPosEmbed compares diffusers' stored position-embedding buffer
// [1, max², d] with the table this package computes. The tolerance 1e-2
// covers BF16 storage (values in [−1, 1], 8-bit mantissa); a layout error
// (swapped halves, wrong grid scale) is off by O(1).
func (m *Model) checkPosEmbed(f *safetensors.File) error {
	c := m.Config
	mx, d := c.PosEmbedMaxSize, c.InnerDim()
	info, _ := f.Info(posEmbedKey)
	if want := []int{1, mx * mx, d}; !slices.Equal(info.Shape, want) {
		return fmt.Errorf("tensor %q: file has shape %v, model wants %v", posEmbedKey, info.Shape, want)
	}
	t, err := f.Tensor(posEmbedKey)
	if err != nil {
		return err
	}
	table := PosEmbed2D(d, mx, c.BaseSize(), mx, mx)
	for i, row := range table {
		for j, v := range row {
			if got := t.Data[i*d+j]; math.Abs(float64(got-v)) > 1e-2 {
				return fmt.Errorf("tensor %q: value [0 %d %d] = %g, computed sin-cos table has %g (position layout differs)", posEmbedKey, i, j, got, v)
			}
		}
	}
	return nil
}

// BaseTensors copies the base weights (the model without adapters), keyed by checkpoint key.
func (m *Model) BaseTensors(ctx *mlctx.Context) (map[string]safetensors.Tensor, error) {
	return tensorsOf(ctx, m.Config.Params())
}

// MergedTensors copies the base weights with the adapters folded in (MergedTensor of every
// key). Without a LoRA config it copies the base weights.
func (m *Model) MergedTensors(ctx *mlctx.Context) (map[string]safetensors.Tensor, error) {
	params := m.Config.Params()
	out := make(map[string]safetensors.Tensor, len(params))
	for _, p := range params {
		t, err := m.merged(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("merged tensors: %w", err)
		}
		out[p.Key] = t
	}
	return out, nil
}

// MergedTensor copies the base weight key (a checkpoint key of Config.Params()) with its
// adapter folded in when the model adapts that layer: W + (α/r)·B·A, so a forward pass
// without adapters on such weights computes Forward with them (up to float32 rounding). An
// export reads the weights through it one at a time and never holds a copy of the whole model.
func (m *Model) MergedTensor(ctx *mlctx.Context, key string) (safetensors.Tensor, error) {
	p, err := m.param(key)
	if err != nil {
		return safetensors.Tensor{}, fmt.Errorf("merged tensor: %w", err)
	}
	t, err := m.merged(ctx, p)
	if err != nil {
		return safetensors.Tensor{}, fmt.Errorf("merged tensor: %w", err)
	}
	return t, nil
}

// BaseTensor copies the base weight key (a checkpoint key of Config.Params()), without its
// adapter: BaseTensors one tensor at a time.
func (m *Model) BaseTensor(ctx *mlctx.Context, key string) (safetensors.Tensor, error) {
	p, err := m.param(key)
	if err != nil {
		return safetensors.Tensor{}, fmt.Errorf("base tensor: %w", err)
	}
	data, err := variableData(ctx, p.Key, p.Shape)
	if err != nil {
		return safetensors.Tensor{}, fmt.Errorf("base tensor: %w", err)
	}
	return safetensors.Tensor{Shape: p.Shape, Data: data}, nil
}

// param finds the base weight key.
func (m *Model) param(key string) (Param, error) {
	for _, p := range m.Config.Params() {
		if p.Key == key {
			return p, nil
		}
	}
	return Param{}, fmt.Errorf("%q is not a weight of the model", key)
}

// merged is MergedTensor of the parameter p.
func (m *Model) merged(ctx *mlctx.Context, p Param) (safetensors.Tensor, error) {
	w, err := variableData(ctx, p.Key, p.Shape)
	if err != nil {
		return safetensors.Tensor{}, err
	}
	t := safetensors.Tensor{Shape: p.Shape, Data: w}
	module, isWeight := strings.CutSuffix(p.Key, ".weight")
	if m.LoRA == nil || len(p.Shape) != 2 || !isWeight || !m.LoRA.Matches(module) {
		return t, nil
	}
	r, scale := m.LoRA.Rank, float32(m.LoRA.Scale())
	out, in := p.Shape[0], p.Shape[1]
	a, err := variableData(ctx, module+".lora_A.weight", []int{r, in})
	if err != nil {
		return safetensors.Tensor{}, err
	}
	b, err := variableData(ctx, module+".lora_B.weight", []int{out, r})
	if err != nil {
		return safetensors.Tensor{}, err
	}
	for o := range out {
		row := w[o*in : (o+1)*in]
		for k := range r {
			c := scale * b[o*r+k]
			if c == 0 {
				continue
			}
			for i, av := range a[k*in : (k+1)*in] {
				row[i] += c * av
			}
		}
	}
	return t, nil
}
