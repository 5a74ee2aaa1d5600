package promptfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/densegrpo/densegrpo/rewards/geneval"
)

// FuzzParse feeds arbitrary bytes to both prompt-file formats and, for JSON Lines that parse,
// each record's metadata to GenEval's metadata reader (what a geneval reward does with it).
// Nothing may panic; every prompt that loads is trimmed, non-empty, one-line UTF-8 with a line
// number inside the file; metadata either parses or is an error.
func FuzzParse(f *testing.F) {
	data, err := os.ReadFile(filepath.Join("..", "..", "datasets", "ocr-tiny", "test.txt"))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		string(data[:min(len(data), 2000)]),
		"  a prompt \r\n\n\tanother\n",
		"\n\n",
		strings.Repeat("x", 70000),
		"a sign that says \"K4RT\"\na street sign reading \"IT3\"\n",
		`{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}`,
		`{"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}], "prompt": "a photo of three cups"}`,
		`{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}], "prompt": "a photo of a blue car"}`,
		`{"tag": "position", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], "prompt": "a photo of a dog right of a cup"}`,
		`{"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "red"}, {"class": "sheep", "count": 1, "color": "white"}], "prompt": "a photo of a red bus and a white sheep"}`,
		`{"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "clock", "count": 1e300}], "prompt": "x"}`,
		`{"prompt": "a", "include": [{"class": "dog", "count": -1, "position": ["left of", 5]}]}`,
		"{\"prompt\": \"\xff\"}\n\n{\"prompt\": \"b\"}",
		`{"prompt": {"nested": [1, 2, {"a": null}]}}`,
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, text string, jsonl bool) {
		file, err := Parse(strings.NewReader(text), "fuzz", jsonl)
		if err != nil {
			return
		}
		lines := strings.Count(text, "\n") + 1
		for i, p := range file.Prompts {
			if p.Text == "" || p.Text != strings.TrimSpace(p.Text) || strings.Contains(p.Text, "\n") || !utf8.ValidString(p.Text) {
				t.Fatalf("prompt %d: %q", i, p.Text)
			}
			if file.Lines[i] < 1 || file.Lines[i] > lines || (i > 0 && file.Lines[i] <= file.Lines[i-1]) {
				t.Fatalf("prompt %d: line %d of %d", i, file.Lines[i], lines)
			}
			if p.Metadata != nil {
				if _, err := geneval.ParseMetadata(p.Metadata); err == nil && p.Metadata["tag"] == nil {
					t.Fatalf("metadata without a tag parsed: %v", p.Metadata)
				}
			}
		}
	})
}
