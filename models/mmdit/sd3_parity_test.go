package mmdit

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
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
	src := filepath.Join(sd3Fixture, "snapshot", "transformer")
	all, meta, err := safetensors.Read(filepath.Join(src, DiffusersWeights))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	shards := []map[string]safetensors.Tensor{{}, {}}
	weightMap := map[string]string{}
	i := 0
	for _, k := range sortedNames(all) {
		shards[i%2][k] = all[k]
		weightMap[k] = fmt.Sprintf("diffusion_pytorch_model-%05d-of-00002.safetensors", i%2+1)
		i++
	}
	for s, group := range shards {
		if err := safetensors.Write(filepath.Join(dir, fmt.Sprintf("diffusion_pytorch_model-%05d-of-00002.safetensors", s+1)), group, meta); err != nil {
			t.Fatal(err)
		}
	}
	writeJSON(t, filepath.Join(dir, DiffusersWeightsIndex), map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	copyFile(t, filepath.Join(src, DiffusersConfig), filepath.Join(dir, DiffusersConfig))

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
	t.Run("no weights", func(t *testing.T) {
		dir := edit("noweights", func(map[string]any) {})
		cfg, err := LoadDiffusersConfig(dir)
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkOneLine(t, m.LoadDiffusers(mlctx.New(), dir), "noweights", DiffusersWeights, DiffusersWeightsIndex)
	})
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
