package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/frozen"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/models/tinyocr"
	"github.com/densegrpo/densegrpo/pipeline"
)

const exportConfig = `[run]
epochs = 1
[model]
config = "weights/mmdit.json"
weights = "weights/transformer.safetensors"
[text_encoder]
model = "onnx/text_encoder.onnx"
[vae]
decoder = "onnx/vae_decoder.onnx"
[prompts]
train = "train.txt"
test = "test.txt"
[[reward]]
name = "ocr"
kind = "ocr"
model = "onnx/ch_PP-OCRv4_rec_infer.onnx"
keys = "onnx/ppocr_keys_v1.txt"
`

// writeTinyOCRWeights writes randomly initialised tiny-ocr text encoder and VAE weights into
// dir/weights, as pretraining would.
func writeTinyOCRWeights(t *testing.T, dir string) {
	t.Helper()
	wdir := filepath.Join(dir, "weights")
	if err := os.MkdirAll(wdir, 0o755); err != nil {
		t.Fatal(err)
	}
	backend := nntest.Backend(t)
	ts, err := tinyocr.InitTextEncoder(backend, tinyocr.DefaultTextEncoderConfig(), tinyocr.TextEncoderPrefix, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := safetensors.Write(filepath.Join(wdir, pipeline.TextEncoderWeightsFile), ts, nil); err != nil {
		t.Fatal(err)
	}
	w, err := tinyocr.InitVAE(backend, tinyocr.DefaultVAEConfig(), tinyocr.VAEScaling{ScalingFactor: 2, ShiftFactor: 0.1}, 1)
	if err != nil {
		t.Fatal(err)
	}
	mctx := mlctx.New()
	if err := tinyocr.ImportVariables(mctx, w.Tensors, tinyocr.VAEParamShapes(w.Config)); err != nil {
		t.Fatal(err)
	}
	if err := tinyocr.SaveVAE(filepath.Join(wdir, pipeline.VAEWeightsFile), mctx, w.Config, w.Scaling); err != nil {
		t.Fatal(err)
	}
}

func TestExportModels(t *testing.T) {
	dir := t.TempDir()
	writeTinyOCRWeights(t, dir)
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(exportConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	onnxDir := filepath.Join(dir, "onnx")
	names := []string{"text_encoder.onnx", "vae_decoder.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ppocr_keys_v1.txt"}

	out, errOut, code := runBinary(t, ".", nil, "export-models", "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, n := range names {
		if !strings.Contains(out, "wrote "+filepath.Join(onnxDir, n)) {
			t.Errorf("first run: output %q lacks wrote %s", out, n)
		}
	}
	if !strings.Contains(out, "checked: text encoder, VAE decoder and 1 reward(s)") {
		t.Errorf("output %q lacks the final check", out)
	}
	// The PP-OCRv4 files are byte copies of the setup cache.
	for _, n := range names[2:] {
		src, err := onnxrt.FindCached(filepath.Join("ocr", n))
		if err != nil {
			t.Fatal(err)
		}
		a, _ := os.ReadFile(src)
		b, _ := os.ReadFile(filepath.Join(onnxDir, n))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s: %d bytes, cache has %d (or differs)", n, len(b), len(a))
		}
	}
	// The exported graphs are what package frozen expects of a tiny-ocr model.
	te, err := frozen.OpenTextEncoder(filepath.Join(onnxDir, "text_encoder.onnx"), frozen.TextEncoderOptions{Runtime: onnxrt.Config{IntraOpThreads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if d, p := te.Dims(); d != 64 || p != 64 {
		t.Errorf("text encoder widths %d, %d; want 64, 64", d, p)
	}
	te.Close()
	vae, err := frozen.OpenVAEDecoder(filepath.Join(onnxDir, "vae_decoder.onnx"), frozen.VAEOptions{Runtime: onnxrt.Config{IntraOpThreads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if h, w := vae.ImageSize(); h != 32 || w != 128 || len(vae.LatentShape()) != 3 || vae.LatentShape()[0] != 4 {
		t.Errorf("VAE latent %v image %dx%d; want [4 8 32], 32x128", vae.LatentShape(), h, w)
	}
	vae.Close()

	// Idempotent: a second run rewrites nothing.
	stamps := map[string]time.Time{}
	for _, n := range names {
		st, err := os.Stat(filepath.Join(onnxDir, n))
		if err != nil {
			t.Fatal(err)
		}
		stamps[n] = st.ModTime()
	}
	time.Sleep(10 * time.Millisecond)
	out, errOut, code = runBinary(t, ".", nil, "export-models", "--config", cfg)
	if code != 0 {
		t.Fatalf("second run: exit %d: %s", code, errOut)
	}
	for _, n := range names {
		if !strings.Contains(out, "up to date "+filepath.Join(onnxDir, n)) {
			t.Errorf("second run: output %q lacks up to date %s", out, n)
		}
		if st, _ := os.Stat(filepath.Join(onnxDir, n)); !st.ModTime().Equal(stamps[n]) {
			t.Errorf("second run rewrote %s", n)
		}
	}
	// A damaged file is replaced.
	if err := os.WriteFile(filepath.Join(onnxDir, "vae_decoder.onnx"), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = runBinary(t, ".", nil, "export-models", "--config", cfg)
	if code != 0 || !strings.Contains(out, "wrote "+filepath.Join(onnxDir, "vae_decoder.onnx")) {
		t.Errorf("damaged VAE: exit %d, output %q", code, out)
	}
	if entries, _ := os.ReadDir(onnxDir); len(entries) != len(names) {
		t.Errorf("onnx dir holds %d entries, want %d (no temp files left)", len(entries), len(names))
	}
}

func TestExportModelsErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(exportConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	// No weights and no ONNX file: the error names both.
	_, errOut, code := runBinary(t, ".", nil, "export-models", "--config", cfg)
	want := "export text encoder " + filepath.Join(dir, "onnx", "text_encoder.onnx") + ": weights " + filepath.Join(dir, "weights", "text_encoder.safetensors")
	if code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("no weights: exit %d, stderr %q; want %q", code, errOut, want)
	}
	// A reward file export-models has no source for.
	writeTinyOCRWeights(t, dir)
	other := strings.Replace(exportConfig, `keys = "onnx/ppocr_keys_v1.txt"`, `keys = "onnx/my_keys.txt"`, 1)
	if err := os.WriteFile(cfg, []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runBinary(t, ".", nil, "export-models", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, `export reward "ocr": `+filepath.Join(dir, "onnx", "my_keys.txt")) || !strings.Contains(errOut, "provide this one") {
		t.Errorf("unknown reward file: exit %d, stderr %q", code, errOut)
	}
	if _, _, code := runBinary(t, ".", nil, "export-models"); code != 2 {
		t.Errorf("no --config: exit %d, want 2", code)
	}
}
