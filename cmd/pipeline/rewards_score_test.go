package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gomono"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"

	"github.com/densegrpo/densegrpo/internal/imagefile"
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
	var got cellScore
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("output %q: %v", stdout.String(), err)
	}
	// --json carries the extra metrics the text output shows (ocr.exact: the target read exactly).
	if got.Rewards["ocr"] != 1 || got.Total != 2 || got.Extra["ocr.exact"] != 1 {
		t.Errorf("got %s, want ocr 1, ocr.exact 1 and total 2 (weight 2)", stdout.String())
	}
	// The same image as JPEG reads the same text.
	buf.Reset()
	if err := jpeg.Encode(&buf, rgba, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	jpegPath := filepath.Join(dir, "k4rt.jpg")
	if err := os.WriteFile(jpegPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if code := runMain(context.Background(), []string{"rewards", "score", "--config", cfg, "--image", jpegPath, "--prompt", `a sign that says "K4RT"`, "--json", "--onnx-library", lib}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), `"ocr":1`) {
		t.Errorf("JPEG: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	// An image declaring more pixels than allowed is refused from its header.
	stderr.Reset()
	code = runMain(context.Background(), []string{"rewards", "score", "--config", cfg, "--image", pngPath, "--max-pixels", "7279", "--onnx-library", lib}, &stdout, &stderr)
	if want := "png declares 130×56 = 7280 pixels, want at most 7279"; code != 1 || !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), pngPath) {
		t.Errorf("over --max-pixels: exit %d, stderr %q, want %q naming the file", code, stderr.String(), want)
	}
	// A missing flag is a usage error (exit 2).
	stderr.Reset()
	if code := runMain(context.Background(), []string{"rewards", "score", "--config", cfg}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "--image") {
		t.Errorf("without --image: exit %d, stderr %q", code, stderr.String())
	}
}

// TestRewardsScorePromptFile scores a fixture image of rewards/testdata/geneval-detector against
// lines of a JSON Lines prompt file with `--prompts FILE --index I`: each line's metadata reaches
// the geneval reward, which gives the Python reference's score for that image and line.
func TestRewardsScorePromptFile(t *testing.T) {
	fixture, err := filepath.Abs(filepath.Join("..", "..", "rewards", "testdata"))
	if err != nil {
		t.Fatal(err)
	}
	block, err := os.ReadFile(filepath.Join(fixture, "geneval-detector", "reward.toml"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer(`"detector.onnx"`, `"`+filepath.Join(fixture, "geneval-detector", "detector.onnx")+`"`,
		`"classes.txt"`, `"`+filepath.Join(fixture, "geneval-detector", "classes.txt")+`"`,
		`"../clip-tiny/`, `"`+filepath.Join(fixture, "clip-tiny")+"/").Replace(string(block))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "train.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	// Lines of the reference for scene0.png, with the reference's scores.
	lines := []struct {
		json  string
		score float64
	}{
		{`{"tag": "two_object", "include": [{"class": "hair drier", "count": 1}, {"class": "person", "count": 1}], "prompt": "a photo of 1 hair drier and 1 person"}`, 0.5},
		{`{"tag": "colors", "include": [{"class": "hair drier", "count": 1, "color": "orange"}], "prompt": "a photo of 1 orange hair drier"}`, 1},
		{`{"tag": "colors", "include": [{"class": "hair drier", "count": 1, "color": "blue"}], "prompt": "a photo of 1 blue hair drier"}`, 0.5},
		{`{"tag": "position", "include": [{"class": "hair drier", "count": 1}, {"class": "bird", "count": 1, "position": ["below", 0]}], "prompt": "a photo of 1 hair drier and 1 bird"}`, 0.75},
	}
	var file strings.Builder
	for _, l := range lines {
		file.WriteString(l.json + "\n\n")
	}
	prompts := filepath.Join(dir, "prompts.jsonl")
	if err := os.WriteFile(prompts, []byte(file.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	lib, err := onnxrt.FindCached("onnxruntime/cpu/libonnxruntime.so.1")
	if err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(fixture, "geneval-detector", "scene0.png")
	for i, l := range lines {
		var stdout, stderr bytes.Buffer
		code := runMain(context.Background(), []string{"rewards", "score", "--config", cfg, "--image", image, "--prompts", prompts,
			"--index", fmt.Sprint(i), "--json", "--onnx-library", lib}, &stdout, &stderr)
		if code != 0 {
			t.Fatalf("index %d: exit %d: %s", i, code, stderr.String())
		}
		var got struct {
			Rewards map[string]float64 `json:"rewards"`
		}
		if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
			t.Fatalf("output %q: %v", stdout.String(), err)
		}
		if math.Abs(got.Rewards["geneval"]-l.score) > 1e-12 {
			t.Errorf("index %d: geneval %v, reference %v", i, got.Rewards["geneval"], l.score)
		}
	}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--prompts", prompts, "--index", "4"}, 2, "--index: got 4, want 0..3 (the prompts of " + prompts + ")"},
		{[]string{"--prompts", prompts, "--prompt", "x"}, 2, "--prompts replaces --prompt and --metadata"},
		{[]string{"--prompt", "a photo"}, 1, `reward "geneval", images 0..0: prompt 0: prompt "a photo" has no GenEval metadata`},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"rewards", "score", "--config", cfg, "--image", image, "--onnx-library", lib}, tt.args...)
		if code := runMain(context.Background(), args, &stdout, &stderr); code != tt.code || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and %q", tt.args, code, stderr.String(), tt.code, tt.want)
		}
	}
}

// A grid PNG written by `pipeline sample` is scored cell by cell, each against the prompt it was
// drawn from: the same scores as the images written one by one (same seed, so the same pixels).
// Another image of a size other than the VAE's output is refused with the reason, unless
// --any-size.
func TestRewardsScoreGrid(t *testing.T) {
	files := writeFixture(t, false)
	dir := t.TempDir()
	grid := filepath.Join(dir, "grid.png")
	prompts := []string{"--prompt", `a sign that says "AB"`, "--prompt", "ZZ"}
	common := append([]string{"sample", "--config", files.Config, "--steps", "3", "--seed", "4"}, prompts...)
	if _, errOut, code := runBinary(t, ".", nil, append(common, "--score", "--out", grid)...); code != 0 {
		t.Fatalf("sample grid: exit %d: %s", code, errOut)
	}
	single := filepath.Join(dir, "single") + "/"
	if _, errOut, code := runBinary(t, ".", nil, append(common, "--out", single)...); code != 0 {
		t.Fatalf("sample dir: exit %d: %s", code, errOut)
	}
	out, errOut, code := runBinary(t, ".", nil, "rewards", "score", "--config", files.Config, "--image", grid, "--json")
	if code != 0 {
		t.Fatalf("rewards score grid: exit %d: %s", code, errOut)
	}
	var got struct {
		Cells     []cellScore `json:"cells"`
		MeanTotal float64     `json:"mean_total"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if len(got.Cells) != 2 || got.Cells[0].Prompt != `a sign that says "AB"` || got.Cells[1].Prompt != "ZZ" {
		t.Fatalf("cells %+v, want the two prompts in order", got.Cells)
	}
	for i, name := range []string{"000-a-sign-that-says-AB.png", "001-ZZ.png"} {
		one, errOut, code := runBinary(t, ".", nil, "rewards", "score", "--config", files.Config, "--image", filepath.Join(single, name), "--json")
		if code != 0 {
			t.Fatalf("rewards score %s: exit %d: %s", name, code, errOut)
		}
		var want cellScore
		if err := json.Unmarshal([]byte(one), &want); err != nil {
			t.Fatal(err)
		}
		if want.Total <= 0 || got.Cells[i].Total != want.Total {
			t.Errorf("cell %d total %v, want %v (the image alone)", i, got.Cells[i].Total, want.Total)
		}
	}
	// The same sheet without its layout is an image of the wrong size.
	img, err := imagefile.Read(grid, imagefile.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(dir, "bare.png")
	if err := os.WriteFile(bare, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	_, errOut, code = runBinary(t, ".", nil, "rewards", "score", "--config", files.Config, "--image", bare, "--prompt", "ZZ")
	want := fmt.Sprintf("the image is %d×%d, not one 8×4 sample of %s's VAE", b.Dx(), b.Dy(), files.Config)
	if code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "--any-size") {
		t.Errorf("bare sheet: exit %d, stderr %q; want exit 1 and %q", code, errOut, want)
	}
	if _, errOut, code := runBinary(t, ".", nil, "rewards", "score", "--config", files.Config, "--image", bare, "--prompt", "ZZ", "--any-size"); code != 0 {
		t.Errorf("--any-size: exit %d: %s", code, errOut)
	}
}
