package mmdit

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// sd3Fixture is the tiny random SD3.5 snapshot and the outputs diffusers computed on it
// (exporters/sd3; `just interop` regenerates and compares them).
const sd3Fixture = "../../testdata/sd3-tiny"

// velocityTolerance is the parity bound for the velocity in float32: max |Go − diffusers|
// over max |diffusers|.
const velocityTolerance = 1e-4

// loadSD3Fixture opens the fixture's transformer folder as diffusers wrote it.
func loadSD3Fixture(t *testing.T, lora *LoRAConfig) (*Model, *mlctx.Context) {
	t.Helper()
	dir := filepath.Join(sd3Fixture, "snapshot", "transformer")
	cfg, err := LoadDiffusersConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg, lora)
	if err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	if err := m.LoadDiffusers(ctx, dir); err != nil {
		t.Fatal(err)
	}
	return m, ctx
}

// referenceCase reads one input case ("square", "wide") and its output from a reference file.
func referenceCase(t *testing.T, file, name, output string) (inputs, []float32) {
	t.Helper()
	ts, _, err := safetensors.Read(filepath.Join(sd3Fixture, "reference", file))
	if err != nil {
		t.Fatal(err)
	}
	get := func(key string) safetensors.Tensor {
		v, ok := ts[name+"."+key]
		if !ok {
			t.Fatalf("%s: no tensor %s.%s", file, name, key)
		}
		return v
	}
	tensor := func(key string) *tensors.Tensor {
		v := get(key)
		return tensors.FromFlatDataAndDimensions(v.Data, v.Shape...)
	}
	in := inputs{
		latents:  tensor("hidden_states"),
		timestep: tensor("timestep"),
		enc:      tensor("encoder_hidden_states"),
		pooled:   tensor("pooled_projections"),
	}
	return in, get(output).Data
}

// maxErr returns max |got − want| and that over max |want|.
func maxErr(t *testing.T, got, want []float32) (abs, rel float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d values, want %d", len(got), len(want))
	}
	scale := 0.0
	for i := range want {
		abs = math.Max(abs, math.Abs(float64(got[i])-float64(want[i])))
		scale = math.Max(scale, math.Abs(float64(want[i])))
	}
	return abs, abs / scale
}

// TestVelocityMatchesDiffusers: the Go MMDiT, loaded from the snapshot's
// diffusion_pytorch_model.safetensors and config.json, computes SD3Transformer2DModel's
// velocity (SD3.5 layout: dual attention in layers 0–1, RMS QK-norm, perturbed norm scales)
// on a square 8×8 and a wide 8×12 latent (position-embedding crop off-centre in one axis).
func TestVelocityMatchesDiffusers(t *testing.T) {
	m, ctx := loadSD3Fixture(t, nil)
	if !m.Config.IsDualAttention(0) || m.Config.QKNorm != "rms_norm" {
		t.Fatalf("fixture config %+v is not SD3.5's layout", m.Config)
	}
	for _, c := range []string{"square", "wide"} {
		in, want := referenceCase(t, "transformer.safetensors", c, "velocity")
		got := flat(t, forward(t, ctx, m, in, false))
		abs, rel := maxErr(t, got, want)
		t.Logf("parity transformer velocity %s %v: max abs %.3g, rel %.3g (tolerance %g)", c, in.latents.Shape().Dimensions, abs, rel, velocityTolerance)
		if rel > velocityTolerance {
			t.Errorf("%s: velocity differs from diffusers by %.3g relative (abs %.3g), tolerance %g", c, rel, abs, velocityTolerance)
		}
	}
}

// TestLoadDiffusersShards: the same weights split into two shards with an index (as large
// snapshots ship them) load to the same model.
func TestLoadDiffusersShards(t *testing.T) {
	dir := writeShards(t, nil)
	m, ctxSingle := loadSD3Fixture(t, nil)
	ctxShards := mlctx.New()
	if err := m.LoadDiffusers(ctxShards, dir); err != nil {
		t.Fatal(err)
	}
	in, _ := referenceCase(t, "transformer.safetensors", "square", "velocity")
	a := flat(t, forward(t, ctxSingle, m, in, false))
	b := flat(t, forward(t, ctxShards, m, in, false))
	if i := bitEqual(a, b); i >= 0 {
		t.Fatalf("sharded load differs at %d: %g vs %g", i, b[i], a[i])
	}
}

// shardName is the file of shard s (0 or 1) of two.
func shardName(s int) string {
	return fmt.Sprintf("diffusion_pytorch_model-%05d-of-00002.safetensors", s+1)
}

// writeShards writes the fixture's transformer weights as two shards with an index (tensors
// alternate between them in name order) into a new folder, after change (if any) edited the
// shards' tensors and the index's weight map.
func writeShards(t *testing.T, change func(shards []map[string]safetensors.Tensor, weightMap map[string]string)) string {
	t.Helper()
	src := filepath.Join(sd3Fixture, "snapshot", "transformer")
	all, meta, err := safetensors.Read(filepath.Join(src, DiffusersWeights))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	shards := []map[string]safetensors.Tensor{{}, {}}
	weightMap := map[string]string{}
	for i, k := range sortedNames(all) {
		shards[i%2][k] = all[k]
		weightMap[k] = shardName(i % 2)
	}
	if change != nil {
		change(shards, weightMap)
	}
	for s, group := range shards {
		if err := safetensors.Write(filepath.Join(dir, shardName(s)), group, meta); err != nil {
			t.Fatal(err)
		}
	}
	writeJSON(t, filepath.Join(dir, DiffusersWeightsIndex), map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	copyFile(t, filepath.Join(src, DiffusersConfig), filepath.Join(dir, DiffusersConfig))
	return dir
}

// TestLoadDiffusersShardsChecked: every shard's header is checked before a tensor is read — a
// tensor in a dtype that is not a float (the last one of the last shard), a tensor no index
// entry places in its shard, a tensor missing from the shard the index names — and nothing is
// written to the context.
func TestLoadDiffusersShardsChecked(t *testing.T) {
	cfg, err := LoadDiffusersConfig(filepath.Join(sd3Fixture, "snapshot", "transformer"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	intDType := func(dir string) {
		path := filepath.Join(dir, shardName(1))
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// "F32" → "I32" keeps the header's length: the same bytes, declared as int32.
		at := bytes.Index(raw, []byte(strconv.Quote(last)+`:{"dtype":"F32"`))
		if at < 0 {
			t.Fatalf("no F32 entry of %q in %s", last, path)
		}
		copy(raw[at+len(strconv.Quote(last))+len(`:{"dtype":"`):], "I32")
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		change func(shards []map[string]safetensors.Tensor, weightMap map[string]string)
		after  func(dir string)
		want   string
	}{
		{"int32 tensor", func(shards []map[string]safetensors.Tensor, _ map[string]string) {
			last = sortedNames(shards[1])[len(shards[1])-1]
		}, intDType, `unsupported dtype "I32"`},
		{"unrelated tensor", func(shards []map[string]safetensors.Tensor, _ map[string]string) {
			shards[0]["unrelated"] = safetensors.Tensor{Shape: []int{4}, Data: make([]float32, 4)}
		}, nil, shardName(0) + `: 1 tensors not declared by the model config, e.g. ["unrelated"]`},
		{"index names the other shard", func(shards []map[string]safetensors.Tensor, weightMap map[string]string) {
			last = sortedNames(shards[1])[len(shards[1])-1]
			weightMap[last] = shardName(0)
		}, nil, shardName(0) + `: missing tensor "`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeShards(t, c.change)
			if c.after != nil {
				c.after(dir)
			}
			ctx := mlctx.New()
			checkOneLine(t, m.LoadDiffusers(ctx, dir), c.want)
			for v := range ctx.IterVariables() {
				t.Fatalf("a refused folder set variable %s/%s", v.Scope(), v.Name())
			}
		})
	}
}

// TestDiffusersBadInput: a transformer config the Go model does not support, a folder of
// another class, and missing weights are one-line errors naming the file.
func TestDiffusersBadInput(t *testing.T) {
	src := filepath.Join(sd3Fixture, "snapshot", "transformer")
	raw, err := os.ReadFile(filepath.Join(src, DiffusersConfig))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(name string, change func(map[string]any)) string {
		var cfg map[string]any
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		change(cfg)
		dir := filepath.Join(t.TempDir(), name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeJSON(t, filepath.Join(dir, DiffusersConfig), cfg)
		return dir
	}
	cases := []struct {
		name string
		dir  string
		want []string
	}{
		{"layer norm", edit("ln", func(c map[string]any) { c["qk_norm"] = "layer_norm" }), []string{"ln/config.json", "qk_norm", "rms_norm"}},
		{"unknown key", edit("flux", func(c map[string]any) { c["guidance_embeds"] = true }), []string{"flux/config.json", "guidance_embeds"}},
		{"other class", edit("cls", func(c map[string]any) { c["_class_name"] = "FluxTransformer2DModel" }), []string{"cls/config.json", "FluxTransformer2DModel", "want SD3Transformer2DModel"}},
		{"width", edit("width", func(c map[string]any) { c["caption_projection_dim"] = 48 }), []string{"width/config.json", "caption_projection_dim"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadDiffusersConfig(c.dir)
			checkOneLine(t, err, c.want...)
		})
	}
	// model is the transformer of dir's config.json (no weights loaded).
	model := func(t *testing.T, dir string) *Model {
		t.Helper()
		cfg, err := LoadDiffusersConfig(dir)
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	t.Run("no weights", func(t *testing.T) {
		dir := edit("noweights", func(map[string]any) {})
		m := model(t, dir)
		checkOneLine(t, m.LoadDiffusers(mlctx.New(), dir), "noweights", DiffusersWeights, DiffusersWeightsIndex)
	})
	// Files from strangers: an oversized index.json or config.json is refused from its size,
	// before it is read (sparse files: a few KB on disk).
	t.Run("oversized", func(t *testing.T) {
		dir := edit("big", func(map[string]any) {})
		m := model(t, dir)
		grow(t, filepath.Join(dir, DiffusersWeightsIndex), 65<<20)
		err := m.LoadDiffusers(mlctx.New(), dir)
		t.Logf("index: %v", err)
		checkOneLine(t, err, "big/"+DiffusersWeightsIndex+": 68157440 bytes, want at most 64 MiB for a safetensors index")
		grow(t, filepath.Join(dir, DiffusersConfig), 2<<20)
		_, err = LoadDiffusersConfig(dir)
		t.Logf("config: %v", err)
		checkOneLine(t, err, "big/config.json: 2097152 bytes, want at most 1 MiB for a JSON config")
	})
}

// grow makes path a sparse file of n bytes.
func grow(t *testing.T, path string, n int64) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, n); err != nil {
		t.Fatal(err)
	}
}

func checkOneLine(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error spans lines: %q", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sortedNames(m map[string]safetensors.Tensor) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// goLoRAOut, when set, makes TestGoLoRAMatchesDiffusers write the Go-made LoRA file there
// (`just interop` hands it to diffusers' load_lora_weights).
var goLoRAOut = flag.String("sd3.golora-out", "", "write the Go-made SD3 fixture LoRA to this path")

// goPEFTOut, when set, makes TestGoLoRAMatchesDiffusers also write the same adapter as a PEFT
// folder (WritePEFTLoRA) there; `just interop` loads it with PeftModel.from_pretrained and
// checks its velocity against load_lora_weights' of the diffusers file.
var goPEFTOut = flag.String("sd3.gopeft-out", "", "write the Go-made SD3 fixture LoRA as a PEFT folder to this directory")

// TestPythonLoRAMatchesDiffusers: an adapter made by PEFT in Python (Flow-GRPO's targets,
// r = 32, α = 64), saved by diffusers' save_lora_weights and by PEFT's save_pretrained, loads
// into the Go model with its config read from the file and gives diffusers' velocity.
func TestPythonLoRAMatchesDiffusers(t *testing.T) {
	base := filepath.Join(sd3Fixture, "snapshot", "transformer")
	cfg, err := LoadDiffusersConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"lora_diffusers/pytorch_lora_weights.safetensors", "lora_peft/adapter_model.safetensors"} {
		t.Run(filepath.Dir(file), func(t *testing.T) {
			path := filepath.Join(sd3Fixture, "reference", file)
			lc, err := ReadLoRAConfig(path, cfg)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"}
			if lc.Rank != 32 || lc.Alpha != 64 || !slices.Equal(lc.Targets, want) {
				t.Fatalf("config %+v, want r 32, alpha 64, targets %v", lc, want)
			}
			m, ctx := loadSD3Fixture(t, &lc)
			if err := m.LoadLoRA(ctx, path); err != nil {
				t.Fatal(err)
			}
			for _, c := range []string{"square", "wide"} {
				in, want := referenceCase(t, "lora.safetensors", c, "velocity")
				got := flat(t, forward(t, ctx, m, in, true))
				abs, rel := maxErr(t, got, want)
				t.Logf("parity LoRA python->go (%s) velocity %s: max abs %.3g, rel %.3g (tolerance %g)", filepath.Dir(file), c, abs, rel, velocityTolerance)
				if rel > velocityTolerance {
					t.Errorf("%s: velocity differs from diffusers by %.3g relative", c, rel)
				}
			}
		})
	}
}

// TestGoPEFTLayout: the Python-made adapter, written again by WritePEFTLoRA, is the folder
// PeftModel.save_pretrained wrote (testdata lora_peft): the same tensors under the same keys with
// the same metadata, and an adapter_config.json whose every entry equals PEFT's
// (init_lora_weights aside, which only matters when an adapter is created); read back, it gives
// diffusers' velocity.
func TestGoPEFTLayout(t *testing.T) {
	refDir := filepath.Join(sd3Fixture, "reference", "lora_peft")
	base := filepath.Join(sd3Fixture, "snapshot", "transformer")
	cfg, err := LoadDiffusersConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	refPath := filepath.Join(refDir, PEFTAdapterModel)
	lc, err := ReadLoRAConfig(refPath, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ref, refMeta, err := safetensors.Read(refPath)
	if err != nil {
		t.Fatal(err)
	}
	adapters := map[string]safetensors.Tensor{}
	for k, v := range ref {
		adapters[strings.TrimPrefix(k, "base_model.model.")] = v
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := WritePEFTLoRA(dir, cfg, lc, adapters); err != nil {
		t.Fatal(err)
	}
	got, gotMeta, err := safetensors.Read(filepath.Join(dir, PEFTAdapterModel))
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(gotMeta, refMeta) || len(got) != len(ref) {
		t.Fatalf("wrote %d tensors with metadata %v; PEFT wrote %d with %v", len(got), gotMeta, len(ref), refMeta)
	}
	for k, v := range ref {
		if !slices.Equal(got[k].Data, v.Data) || !slices.Equal(got[k].Shape, v.Shape) {
			t.Fatalf("tensor %s differs from PEFT's", k)
		}
	}
	var gotCfg, refCfg map[string]any
	for path, into := range map[string]*map[string]any{filepath.Join(dir, PEFTAdapterConfig): &gotCfg, filepath.Join(refDir, PEFTAdapterConfig): &refCfg} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, into); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range gotCfg {
		if k == "init_lora_weights" {
			continue
		}
		if w, ok := refCfg[k]; !ok || !reflect.DeepEqual(v, w) {
			t.Errorf("adapter_config.json %s: %v, PEFT wrote %v (present %v)", k, v, w, ok)
		}
	}
	for _, k := range []string{"peft_type", "r", "lora_alpha", "target_modules", "bias", "use_dora", "use_rslora", "fan_in_fan_out"} {
		if _, ok := gotCfg[k]; !ok {
			t.Errorf("adapter_config.json lacks %s", k)
		}
	}
	back, ok, err := ReadRecordedLoRAConfig(filepath.Join(dir, PEFTAdapterModel), cfg)
	if err != nil || !ok || back.Rank != lc.Rank || back.Alpha != lc.Alpha || !slices.Equal(back.Targets, lc.Targets) {
		t.Fatalf("ReadRecordedLoRAConfig = %+v, %v, %v; want %+v recorded", back, ok, err, lc)
	}
	m, ctx := loadSD3Fixture(t, &back)
	if err := m.LoadLoRA(ctx, filepath.Join(dir, PEFTAdapterModel)); err != nil {
		t.Fatal(err)
	}
	in, want := referenceCase(t, "lora.safetensors", "square", "velocity")
	if _, rel := maxErr(t, flat(t, forward(t, ctx, m, in, true)), want); rel > velocityTolerance {
		t.Errorf("velocity with the rewritten PEFT folder differs from diffusers' by %.3g relative", rel)
	}
	// Adapters that are not the config's tensors are refused, naming the tensor.
	delete(adapters, "transformer_blocks.0.attn.to_q.lora_A.weight")
	if err := WritePEFTLoRA(t.TempDir(), cfg, lc, adapters); err == nil || !strings.Contains(err.Error(), "adapter tensors, want") {
		t.Errorf("a missing tensor: error %v", err)
	}
	// A file without a recorded config says so (its alpha would be a guess).
	bare := filepath.Join(t.TempDir(), "bare.safetensors")
	if err := safetensors.Write(bare, ref, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := ReadRecordedLoRAConfig(bare, cfg); ok || err != nil {
		t.Errorf("bare file: recorded %v, error %v; want not recorded", ok, err)
	}
}

// goLoRA is the adapter the Go side hands to diffusers: the pipeline's default targets (both
// streams' attention projections, attn2 of the dual-attention blocks included), r 4, α 8,
// A and B from a fixed seed (B ≠ 0, so the adapter changes the velocity).
func goLoRA(t *testing.T) (*Model, *mlctx.Context) {
	t.Helper()
	m, ctx := loadSD3Fixture(t, &LoRAConfig{Rank: 4, Alpha: 8})
	randomizeLoRA(t, ctx, m, 11)
	return m, ctx
}

// TestGoLoRAMatchesDiffusers: the adapters the Go side writes (WriteDiffusersLoRA, the file
// `pipeline run` checkpoints carry) are the committed go_lora.safetensors, and the velocity
// diffusers computes after load_lora_weights of that file equals the Go velocity.
func TestGoLoRAMatchesDiffusers(t *testing.T) {
	m, ctx := goLoRA(t)
	if *goLoRAOut != "" {
		// `just interop`: write the file for diffusers; Python compares it with the committed one.
		if err := m.SaveDiffusersLoRA(ctx, *goLoRAOut); err != nil {
			t.Fatal(err)
		}
		if *goPEFTOut != "" {
			adapters, err := m.LoRATensors(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := WritePEFTLoRA(*goPEFTOut, m.Config, *m.LoRA, adapters); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	path := filepath.Join(t.TempDir(), DiffusersLoRAFile)
	if err := m.SaveDiffusersLoRA(ctx, path); err != nil {
		t.Fatal(err)
	}
	got, gotMeta, err := safetensors.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	committed := filepath.Join(sd3Fixture, "reference", "go_lora.safetensors")
	want, wantMeta, err := safetensors.Read(committed)
	if err != nil {
		t.Fatalf("%v (regenerate with `just interop --update`)", err)
	}
	if !maps.Equal(gotMeta, wantMeta) || len(got) != len(want) {
		t.Fatalf("Go writes %d tensors with metadata %v; %s has %d with %v", len(got), gotMeta, committed, len(want), wantMeta)
	}
	for k, v := range want {
		if !slices.Equal(got[k].Data, v.Data) || !slices.Equal(got[k].Shape, v.Shape) {
			t.Fatalf("tensor %s differs from %s", k, committed)
		}
	}
	// The file's own config reads back as the model's.
	lc, err := ReadLoRAConfig(path, m.Config)
	if err != nil || lc.Rank != 4 || lc.Alpha != 8 {
		t.Fatalf("ReadLoRAConfig = %+v, %v", lc, err)
	}
	for _, c := range []string{"square", "wide"} {
		in, want := referenceCase(t, "go_lora_velocity.safetensors", c, "velocity")
		got := flat(t, forward(t, ctx, m, in, true))
		abs, rel := maxErr(t, got, want)
		t.Logf("parity LoRA go->diffusers velocity %s: max abs %.3g, rel %.3g (tolerance %g)", c, abs, rel, velocityTolerance)
		if rel > velocityTolerance {
			t.Errorf("%s: diffusers' velocity with the Go LoRA differs by %.3g relative", c, rel)
		}
	}
}

// TestLoRABadInput: adapters of modules the model does not have, and PEFT options the Go
// LoRA does not implement, are one-line errors naming the file.
func TestLoRABadInput(t *testing.T) {
	cfg, err := LoadDiffusersConfig(filepath.Join(sd3Fixture, "snapshot", "transformer"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a := safetensors.Tensor{Shape: []int{2, 32}, Data: make([]float32, 64)}
	b := safetensors.Tensor{Shape: []int{32, 2}, Data: make([]float32, 64)}
	write := func(name string, meta map[string]string, keys ...string) string {
		ts := map[string]safetensors.Tensor{}
		for _, k := range keys {
			ts[k+".lora_A.weight"], ts[k+".lora_B.weight"] = a, b
		}
		path := filepath.Join(dir, name)
		if err := safetensors.Write(path, ts, meta); err != nil {
			t.Fatal(err)
		}
		return path
	}
	diffusersMeta := func(extra string) map[string]string {
		return map[string]string{loraMetadataKey: `{"transformer.r": 2, "transformer.lora_alpha": 2, "transformer.target_modules": ["attn.to_qq"]` + extra + `}`}
	}
	cases := []struct {
		name string
		path string
		want []string
	}{
		{"unknown target in metadata", write("meta.safetensors", diffusersMeta(""), "transformer.transformer_blocks.0.attn.to_qq"),
			[]string{"meta.safetensors", `lora target "attn.to_qq"`, "matches no linear layer"}},
		{"unknown module without config", write("bare.safetensors", nil, "transformer.transformer_blocks.0.attn.to_qq"),
			[]string{"bare.safetensors", "transformer_blocks.0.attn.to_qq", "matches no linear layer"}},
		{"dora", write("dora.safetensors", map[string]string{loraMetadataKey: `{"transformer.r": 2, "transformer.lora_alpha": 2, "transformer.target_modules": ["to_q"], "transformer.use_dora": true}`}, "transformer.transformer_blocks.0.attn.to_q"),
			[]string{"dora.safetensors", "use_dora"}},
		{"regex targets", write("regex.safetensors", map[string]string{loraMetadataKey: `{"transformer.r": 2, "transformer.lora_alpha": 2, "transformer.target_modules": ".*to_q"}`}, "transformer.transformer_blocks.0.attn.to_q"),
			[]string{"regex.safetensors", "regular expression"}},
		{"text encoder only", write("te.safetensors", map[string]string{loraMetadataKey: `{"text_encoder.r": 2, "text_encoder.lora_alpha": 2}`}, "text_encoder.q_proj"),
			[]string{"te.safetensors", "another component"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadLoRAConfig(c.path, cfg)
			checkOneLine(t, err, c.want...)
		})
	}
	// A config that matches, over a file with an extra adapter of an unknown module.
	t.Run("extra tensors", func(t *testing.T) {
		m, ctx := loadSD3Fixture(t, &LoRAConfig{Rank: 2, Alpha: 2, Targets: []string{"transformer_blocks.0.attn.to_q"}})
		path := write("extra.safetensors", nil, "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_qq")
		checkOneLine(t, m.LoadLoRA(ctx, path), "extra.safetensors", "transformer_blocks.0.attn.to_qq")
	})
}
