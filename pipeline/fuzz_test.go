package pipeline

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseConfig feeds arbitrary text to the training config decoder. Nothing may panic; a
// config it accepts renders as the resolved config.toml of a run (ResolvedTOML), which must
// parse again and render to the same bytes — what `--resume` relies on.
func FuzzParseConfig(f *testing.F) {
	for _, name := range []string{"tiny-ocr.toml", "smoke.toml"} {
		data, err := os.ReadFile(filepath.Join("..", "configs", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(data))
	}
	f.Add("[run]\nname = \"x\"\n[sampler]\nsteps = 0\n")
	f.Add("[run]\nname = \"x\"\nunknown = 1\n[[reward]]\nname = \"a\"\nkind = \"ocr\"\nmodel = \"m.onnx\"\nkeys = \"k.txt\"\n")
	f.Add("[onnx]\nmax_model_mb = -1\n")
	const path = "/base/configs/train.toml"
	f.Fuzz(func(t *testing.T, text string) {
		cfg, err := Parse(path, []byte(text))
		if err != nil {
			return
		}
		first, err := ResolvedTOML(cfg)
		if err != nil {
			t.Fatalf("accepted config does not render: %v", err)
		}
		again, err := Parse(path, first)
		if err != nil {
			t.Fatalf("rendered config does not parse: %v\n%s", err, first)
		}
		second, err := ResolvedTOML(again)
		if err != nil || !bytes.Equal(first, second) {
			t.Fatalf("config changed on the way through config.toml (err %v):\n%s\n---\n%s", err, first, second)
		}
	})
}

// FuzzLoadPromptFile: any file gives either an error or non-empty, trimmed, one-line prompts.
func FuzzLoadPromptFile(f *testing.F) {
	data, err := os.ReadFile(filepath.Join("..", "datasets", "ocr-tiny", "test.txt"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data[:min(len(data), 2000)])
	f.Add([]byte("  a prompt \r\n\n\tanother\n"))
	f.Add([]byte("\n\n"))
	f.Add(bytes.Repeat([]byte("x"), 70000))
	path := filepath.Join(f.TempDir(), "prompts.txt")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		prompts, err := LoadPromptFile(path)
		if err != nil {
			return
		}
		if len(prompts) == 0 || len(prompts) > bytes.Count(data, []byte("\n"))+1 {
			t.Fatalf("%d prompts from %d lines", len(prompts), bytes.Count(data, []byte("\n"))+1)
		}
		for _, p := range prompts {
			if p == "" || p != strings.TrimSpace(p) || strings.ContainsAny(p, "\n") {
				t.Fatalf("prompt %q", p)
			}
		}
	})
}
