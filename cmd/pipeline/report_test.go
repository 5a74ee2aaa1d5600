package main

import (
	"bytes"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFakeRun writes a run directory as the trainer would: config, metrics and a sample grid.
func writeFakeRun(t *testing.T, dir string, dense bool, metrics string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "samples"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := "[dense]\nenabled = false\n"
	if dense {
		cfg = "[dense]\nenabled = true\n"
	}
	files := map[string]string{"config.toml": cfg, "metrics.jsonl": metrics}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var grid bytes.Buffer
	if err := png.Encode(&grid, image.NewGray(image.Rect(0, 0, 2, 2))); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "samples", "epoch-0002.png"), grid.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	dense, sparse := filepath.Join(dir, "dense"), filepath.Join(dir, "sparse")
	writeFakeRun(t, dense, true, `{"epoch":0,"eval_reward_mean":0.3}
{"epoch":1,"samples":64,"reward_mean":0.3,"reward_std":0.1,"dense_pos_frac":[0.5,0.6],"dense_delta_mean":[0.01,-0.02],"stage_seconds":{"rollout":1,"train":2}}
{"epoch":2,"samples":128,"reward_mean":0.5,"reward_std":0.1,"eval_reward_mean":0.55}
`)
	writeFakeRun(t, sparse, false, `{"epoch":1,"samples":64,"reward_mean":0.2}
{"epoch":2,"samples":128,"reward_mean":0.25}
`)
	out, curves, evalCurves := filepath.Join(dir, "report.html"), filepath.Join(dir, "curves.png"), filepath.Join(dir, "eval.png")
	stdout, stderr, code := runBinary(t, dir, nil, "report", dense, sparse, "--out", out,
		"--curves", curves, "--curves", "eval_reward_mean="+evalCurves)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if stdout != "wrote "+out+"\nwrote "+curves+"\nwrote "+evalCurves+"\n" {
		t.Errorf("stdout %q", stdout)
	}
	html, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"dense (dense on)", "sparse (dense off)", "<svg", "data:image/png;base64,", `id="psi"`} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, path := range []string{curves, evalCurves} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg, err := png.DecodeConfig(bytes.NewReader(data)); err != nil || cfg.Width != 960 || cfg.Height != 540 {
			t.Errorf("curves PNG %s: %+v, %v: want a 960×540 PNG", path, cfg, err)
		}
	}

	// One run and no --out: the report goes into the run directory.
	if _, stderr, code := runBinary(t, dir, nil, "report", sparse); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(sparse, "report.html")); err != nil {
		t.Errorf("default output: %v", err)
	}
}

func TestReportErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	writeFakeRun(t, bad, true, "{\"epoch\":1}\n{\"epoch\":2,\n")
	good := filepath.Join(dir, "good")
	writeFakeRun(t, good, true, "{\"epoch\":1,\"reward_mean\":0.2}\n")
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"malformed metrics line", []string{"report", bad, "--out", filepath.Join(dir, "r.html")}, 1,
			[]string{filepath.Join(bad, "metrics.jsonl") + ":2:"}},
		{"no run directories", []string{"report", "--out", filepath.Join(dir, "r.html")}, 2, []string{"want at least one run directory"}},
		{"two runs without --out", []string{"report", good, good}, 2, []string{"--out is required"}},
		{"unknown curve metric", []string{"report", good, "--out", filepath.Join(dir, "r.html"), "--curves", filepath.Join(dir, "c.png"), "--metric", "nope"}, 1,
			[]string{`metric "nope" not found`, "reward_mean"}},
		{"unknown METRIC= curve metric", []string{"report", good, "--out", filepath.Join(dir, "r.html"), "--curves", "nope=" + filepath.Join(dir, "c.png")}, 1,
			[]string{`metric "nope" not found`}},
		{"empty curve metric", []string{"report", good, "--out", filepath.Join(dir, "r.html"), "--curves", "=c.png"}, 2,
			[]string{"METRIC=PATH"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runBinary(t, dir, nil, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (%s)", code, tc.code, stderr)
			}
			msg := strings.TrimSpace(stderr)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr %q lacks %q", msg, w)
				}
			}
		})
	}
}
