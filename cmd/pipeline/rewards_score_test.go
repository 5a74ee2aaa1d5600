package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gomono"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// TestRewardsScoreOCR renders "K4RT" into a PNG, declares the PP-OCRv4 recogniser in a
// training TOML and scores it with `pipeline rewards score --json`.
func TestRewardsScoreOCR(t *testing.T) {
	rec, err := onnxrt.FindCached("ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		t.Fatalf("%v (run scripts/setup.sh)", err)
	}
	keys, err := onnxrt.FindCached("ocr/ppocr_keys_v1.txt")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f, err := opentype.Parse(gomono.TTF)
	if err != nil {
		t.Fatal(err)
	}
	face, err := opentype.NewFace(f, &opentype.FaceOptions{Size: 36, DPI: 72})
	if err != nil {
		t.Fatal(err)
	}
	rgba := image.NewRGBA(image.Rect(0, 0, 130, 56))
	draw.Draw(rgba, rgba.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	(&font.Drawer{Dst: rgba, Src: image.NewUniform(color.Black), Face: face, Dot: fixed.P(12, 40)}).DrawString("K4RT")
	var buf bytes.Buffer
	if err := png.Encode(&buf, rgba); err != nil {
		t.Fatal(err)
	}
	pngPath := filepath.Join(dir, "k4rt.png")
	if err := os.WriteFile(pngPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// The layout of the repository: models beside configs, named relative to the config, and
	// the config itself named by a relative path (paths must be resolved exactly once).
	for _, sub := range []string{"models", "configs"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{"rec.onnx": rec, "keys.txt": keys} {
		if err := os.Symlink(target, filepath.Join(dir, "models", name)); err != nil {
			t.Fatal(err)
		}
	}
	lib, err := onnxrt.FindCached("onnxruntime/cpu/libonnxruntime.so.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	cfg := filepath.Join("configs", "train.toml")
	toml := "[run]\nname = \"x\"\n\n[[reward]]\nname = \"ocr\"\nkind = \"ocr\"\nmodel = \"../models/rec.onnx\"\nkeys = \"../models/keys.txt\"\nweight = 2.0\n"
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := runMain(context.Background(), []string{"rewards", "score", "--config", cfg, "--image", pngPath, "--prompt", `a sign that says "K4RT"`, "--json", "--onnx-library", lib}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var got struct {
		Rewards map[string]float64 `json:"rewards"`
		Total   float64            `json:"total"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("output %q: %v", stdout.String(), err)
	}
	if got.Rewards["ocr"] != 1 || got.Total != 2 {
		t.Errorf("got %s, want ocr 1 and total 2 (weight 2)", stdout.String())
	}
	// A missing flag is a usage error (exit 2).
	stderr.Reset()
	if code := runMain(context.Background(), []string{"rewards", "score", "--config", cfg}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "--image") {
		t.Errorf("without --image: exit %d, stderr %q", code, stderr.String())
	}
}
