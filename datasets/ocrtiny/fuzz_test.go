package ocrtiny

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzReadPrompts: any prompt file gives an error or prompts whose OCR target is the quoted
// string of their text, as Target reads it.
func FuzzReadPrompts(f *testing.F) {
	data, err := os.ReadFile(filepath.Join("..", "ocr-tiny", "train.txt"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data[:min(len(data), 2000)])
	f.Add([]byte("a sign that says \"K4RT\"\n\n  a sign that says \"AB\"  \r\n"))
	f.Add([]byte("no quotes here\n"))
	f.Add([]byte("\"\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		prompts, err := ReadPrompts(bytes.NewReader(data), "fuzz")
		if err != nil {
			return
		}
		for _, p := range prompts {
			if p.Text == "" || p.Text != strings.TrimSpace(p.Text) {
				t.Fatalf("prompt %q", p.Text)
			}
			if target, err := Target(p.Text); err != nil || target != p.Target {
				t.Fatalf("prompt %q: target %q, Target gives %q, %v", p.Text, p.Target, target, err)
			}
		}
	})
}
