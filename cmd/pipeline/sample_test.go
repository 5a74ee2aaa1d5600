package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Two prompts, two images each, of the fixture's 8×4 images: scale ⌈192/8⌉ = 24, cells 192×96,
// one-line labels of 17 px, 2 columns (n): 4 + 2·196 = 396 wide, 4 + 2·(96+17+4) = 238 high.
func TestSampleCommandGrid(t *testing.T) {
	files := writeFixture(t, false)
	grid := filepath.Join(t.TempDir(), "grid.png")
	out, errOut, code := runBinary(t, ".", nil, "sample", "--config", files.Config, "--prompt", `a sign that says "AB"`,
		"--prompt", "ZZ", "-n", "2", "--steps", "3", "--out", grid)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "wrote "+grid+" (4 images)") {
		t.Errorf("output %q", out)
	}
	f, err := os.Open(grid)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 396 || b.Dy() != 238 {
		t.Errorf("grid %dx%d, want 396x238", b.Dx(), b.Dy())
	}
}

func TestSampleCommandDir(t *testing.T) {
	files := writeFixture(t, false)
	dir := filepath.Join(t.TempDir(), "imgs") + "/"
	out, errOut, code := runBinary(t, ".", nil, "sample", "--config", files.Config, "--prompt", "K4RT", "-n", "3",
		"--steps", "2", "--seed", "5", "--score", "--out", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for i, name := range []string{"000-K4RT.png", "001-K4RT.png", "002-K4RT.png"} {
		p := filepath.Join(dir, name)
		if !strings.Contains(out, p+"  reward 0.") {
			t.Errorf("image %d: output %q lacks %s with its reward", i, out, p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}

func TestSampleCommandErrors(t *testing.T) {
	files := writeFixture(t, false)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", files.Config, "--out", "x.png"}, "--prompt is required"},
		{[]string{"--config", files.Config, "--prompt", "a", "--out", "x.jpg"}, `--out "x.jpg": want a .png file`},
		{[]string{"--config", files.Config, "--prompt", "a", "--out", "x.png", "-n", "0"}, "want n >= 1"},
		{[]string{"--prompt", "a", "--out", "x.png"}, "--config is required"},
	} {
		_, errOut, code := runBinary(t, t.TempDir(), nil, append([]string{"sample"}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}
