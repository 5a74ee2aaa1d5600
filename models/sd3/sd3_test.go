package sd3_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/frozen"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/onnxrt/onnxrttest"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/models/sd3"
)

// fixture is the tiny random SD3.5 snapshot, its export and diffusers' outputs on it
// (exporters/sd3; `just interop` regenerates and compares them).
const fixture = "../../testdata/sd3-tiny"

// Tolerances in float32, relative to the reference's largest magnitude: ONNX Runtime against
// PyTorch on the same graphs, plus the Go assembly around them.
const (
	embedTolerance = 1e-4
	imageTolerance = 1e-4
)

// CPU ONNX Runtime tests never skip: without the library they fail.
func TestMain(m *testing.M) { onnxrttest.Main(m, "models/sd3") }

var rt = onnxrt.Config{IntraOpThreads: 1}

func readReference(t *testing.T, name string) (map[string]safetensors.Tensor, map[string]string) {
	t.Helper()
	ts, meta, err := safetensors.Read(filepath.Join(fixture, "reference", name))
	if err != nil {
		t.Fatal(err)
	}
	return ts, meta
}

// openTextEncoder opens an export's text encoders, closed when the test ends.
func openTextEncoder(t *testing.T, dir string) *frozen.SD3TextEncoder {
	t.Helper()
	m, err := sd3.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := m.TransformerConfig()
	if err != nil {
		t.Fatal(err)
	}
	te, err := m.OpenTextEncoder(rt, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { te.Close() })
	return te
}

// compare returns max |got − want| and that over max |want|.
func compare(t *testing.T, what string, got, want []float32) (abs, rel float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	scale := 0.0
	for i := range want {
		abs = math.Max(abs, math.Abs(float64(got[i])-float64(want[i])))
		scale = math.Max(scale, math.Abs(float64(want[i])))
	}
	return abs, abs / math.Max(scale, 1e-30)
}

// TestEncodePromptMatchesDiffusers: tokenizers + ONNX CLIP-L/G + T5 + the Go assembly give
// StableDiffusion3Pipeline.encode_prompt's prompt_embeds [3, 77+256, 96] and pooled [3, 80]
// (the empty prompt is CFG's negative).
func TestEncodePromptMatchesDiffusers(t *testing.T) {
	te := openTextEncoder(t, filepath.Join(fixture, "export"))
	ref, meta := readReference(t, "encode_prompt.safetensors")
	var prompts []string
	if err := json.Unmarshal([]byte(meta["prompts"]), &prompts); err != nil {
		t.Fatal(err)
	}
	emb, pooled, err := te.Encode(context.Background(), prompts)
	if err != nil {
		t.Fatal(err)
	}
	if want := ref["prompt_embeds"].Shape; fmt.Sprint(emb.Shape) != fmt.Sprint(want) {
		t.Fatalf("prompt_embeds shape %v, want %v", emb.Shape, want)
	}
	for _, c := range []struct {
		name      string
		got, want []float32
	}{{"prompt_embeds", emb.Float32, ref["prompt_embeds"].Data}, {"pooled_prompt_embeds", pooled.Float32, ref["pooled_prompt_embeds"].Data}} {
		abs, rel := compare(t, c.name, c.got, c.want)
		t.Logf("parity encode_prompt %s: max abs %.3g, rel %.3g (tolerance %g)", c.name, abs, rel, embedTolerance)
		if rel > embedTolerance {
			t.Errorf("%s differs from diffusers by %.3g relative (abs %.3g)", c.name, rel, abs)
		}
	}
	// CLIP rows are zero beyond 32 + 48 features (SD3 pads them to T5's width).
	d := 96
	for tok := range 77 {
		for j := 80; j < d; j++ {
			if v := emb.Float32[tok*d+j]; v != 0 {
				t.Fatalf("CLIP token %d feature %d = %g, want the zero padding", tok, j, v)
			}
		}
	}
}

// TestVAEMatchesDiffusers: latents in the transformer's space, shifted and unscaled by the VAE
// config's factors in Go, decoded by the ONNX decoder and clamped, give the pipeline's
// decode + post-processing image.
func TestVAEMatchesDiffusers(t *testing.T) {
	m, err := sd3.ReadManifest(filepath.Join(fixture, "export"))
	if err != nil {
		t.Fatal(err)
	}
	vae, err := m.OpenVAEDecoder(rt, 64, 64, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer vae.Close()
	ref, _ := readReference(t, "vae.safetensors")
	lat := ref["latents"]
	per := lat.Shape[1] * lat.Shape[2] * lat.Shape[3]
	latents := [][]float32{lat.Data[:per], lat.Data[per:]}
	imgs, err := vae.Decode(context.Background(), latents)
	if err != nil {
		t.Fatal(err)
	}
	want := ref["image"] // [2,3,64,64]
	got := make([]float32, 0, len(want.Data))
	for _, im := range imgs {
		for c := range 3 {
			for i := range im.W * im.H {
				got = append(got, im.Pix[3*i+c])
			}
		}
	}
	abs, rel := compare(t, "image", got, want.Data)
	t.Logf("parity VAE decode image [2 3 64 64]: max abs %.3g, rel %.3g (tolerance %g)", abs, rel, imageTolerance)
	if rel > imageTolerance {
		t.Errorf("image differs from diffusers by %.3g relative (abs %.3g)", rel, abs)
	}
}

// copyExport copies the export folder to a temp dir, pointing its transformer at the fixture.
func copyExport(t *testing.T, edit func(m map[string]any)) string {
	t.Helper()
	src := filepath.Join(fixture, "export")
	dst := filepath.Join(t.TempDir(), "export")
	err := filepath.Walk(src, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dst, sd3.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(filepath.Join(fixture, "snapshot", "transformer"))
	if err != nil {
		t.Fatal(err)
	}
	m["transformer"].(map[string]any)["dir"] = abs
	if edit != nil {
		edit(m)
	}
	out, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dst, sd3.ManifestFile), out, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

func encoder(m map[string]any, i int) map[string]any {
	return m["text_encoders"].([]any)[i].(map[string]any)
}

// TestWithoutT5: an export without T5 gives zero T5 rows, as diffusers does for a pipeline
// loaded with text_encoder_3=None; the CLIP part is unchanged.
func TestWithoutT5(t *testing.T) {
	dir := copyExport(t, func(m map[string]any) {
		m["text_encoders"] = m["text_encoders"].([]any)[:2]
	})
	te := openTextEncoder(t, dir)
	emb, _, err := te.Encode(context.Background(), []string{"a photo of a cat"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(emb.Shape) != "[1 333 96]" {
		t.Fatalf("shape %v, want [1 333 96]", emb.Shape)
	}
	for i, v := range emb.Float32[77*96:] {
		if v != 0 {
			t.Fatalf("T5 value %d = %g, want 0", i, v)
		}
	}
}

// TestBadExport: a missing component, a snapshot given for an export, encoders out of SD3's
// order and a tokenizer of the wrong kind are one-line errors naming the file.
func TestBadExport(t *testing.T) {
	missing := copyExport(t, nil)
	if err := os.Remove(filepath.Join(missing, "text_encoder_2.onnx")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		dir  string
		open bool // the error comes when opening the encoders, not reading the manifest
		want []string
	}{
		{"missing component", missing, false, []string{"manifest.json", "text_encoders[1].model", "text_encoder_2.onnx: not found"}},
		{"snapshot", filepath.Join(fixture, "snapshot"), false, []string{"snapshot", "diffusers snapshot, not an export", "export-models"}},
		{"order", copyExport(t, func(m map[string]any) { encoder(m, 0)["kind"] = "t5" }), false, []string{"text_encoders[0].kind", `want "clip"`}},
		{"no manifest", t.TempDir(), false, []string{"manifest.json"}},
		{"tokenizer kind", copyExport(t, func(m map[string]any) { encoder(m, 0)["tokenizer"] = "tokenizer_3" }), true, []string{"tokenizer_3/tokenizer.json", "model is Unigram", "want CLIP"}},
		{"version", copyExport(t, func(m map[string]any) { m["version"] = 7 }), false, []string{"field version: got 7, want 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := sd3.ReadManifest(c.dir)
			if c.open {
				if err != nil {
					t.Fatal(err)
				}
				cfg, cerr := m.TransformerConfig()
				if cerr != nil {
					t.Fatal(cerr)
				}
				var te interface{ Close() error }
				te, err = m.OpenTextEncoder(rt, cfg)
				if err == nil {
					te.Close()
				}
			}
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}
