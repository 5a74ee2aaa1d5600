package pipeline

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseConfig feeds arbitrary text to the training config decoder. Nothing may panic; a
// config it accepts renders as the resolved config.toml of a run (ResolvedTOML), which must
// parse again and render to the same bytes — what `--resume` relies on.
func FuzzParseConfig(f *testing.F) {
	for _, name := range []string{"tiny-ocr.toml", "smoke.toml", "sd35m-ocr.toml"} {
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
