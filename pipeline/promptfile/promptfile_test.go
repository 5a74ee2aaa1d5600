package promptfile

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseText(t *testing.T) {
	f, err := Parse(strings.NewReader("\xef\xbb\xbfa sign that says \"K4RT\"\n\n  two  \n"), "p.txt", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Texts(); !reflect.DeepEqual(got, []string{`a sign that says "K4RT"`, "two"}) {
		t.Errorf("texts %q", got)
	}
	if f.Prompts[0].Metadata != nil || f.Where(1) != "p.txt:3" {
		t.Errorf("metadata %v, where %s", f.Prompts[0].Metadata, f.Where(1))
	}
}

func TestParseJSONL(t *testing.T) {
	text := `{"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}], "prompt": "a photo of three cups"}

{"prompt": " plain "}
`
	f, err := Parse(strings.NewReader(text), "g.jsonl", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Prompts) != 2 || f.Prompts[0].Text != "a photo of three cups" || f.Prompts[1].Text != "plain" {
		t.Fatalf("prompts %+v", f.Prompts)
	}
	md := f.Prompts[0].Metadata
	if md["tag"] != "counting" || md["prompt"] != "a photo of three cups" || len(md["include"].([]any)) != 1 {
		t.Errorf("metadata %v", md)
	}
	if f.Prompts[1].Metadata != nil {
		t.Errorf("a record with only a prompt has metadata %v", f.Prompts[1].Metadata)
	}
	if f.Where(1) != "g.jsonl:3" {
		t.Errorf("where %s", f.Where(1))
	}
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		jsonl      bool
		want       string
	}{
		{"empty", "\n \n", false, "read prompts f: no prompts"},
		{"not an object", `{"prompt": "a"}` + "\n" + `["a"]`, true, `read prompts f:2: got "[\"a\"]", want one JSON object per line (a .jsonl file)`},
		{"bad JSON", `{"prompt": "a",}`, true, "read prompts f:1: invalid JSON: invalid character '}'"},
		{"trailing data", `{"prompt": "a"} {"prompt": "b"}`, true, "read prompts f:1: invalid JSON: invalid character '{' after top-level value"},
		{"no prompt", `{"tag": "single_object"}`, true, "read prompts f:1: field prompt: got nothing, want a non-empty string"},
		{"number prompt", `{"prompt": 3}`, true, "read prompts f:1: field prompt: got the number 3, want a non-empty string"},
		{"blank prompt", `{"prompt": "  "}`, true, "read prompts f:1: field prompt: got an empty string, want a non-empty string"},
		{"line break", `{"prompt": "two\nlines"}`, true, `read prompts f:1: field prompt: got "two\nlines" with control character U+000A, want one line of text`},
		{"not UTF-8", "ok\n\xff\xfe\n", false, "read prompts f:2: not valid UTF-8"},
		{"long line", "ok\n" + strings.Repeat("x", MaxLine+1), false, "read prompts f:2: line longer than 1048576 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.text), "f", tt.jsonl)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v\nwant %q", err, tt.want)
			}
		})
	}
}

func TestLoadByExtension(t *testing.T) {
	dir := t.TempDir()
	line := `{"prompt": "a"}` + "\n"
	for name, want := range map[string]string{"p.jsonl": "a", "p.JSONL": "a", "p.txt": `{"prompt": "a"}`} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if f.Prompts[0].Text != want {
			t.Errorf("%s: prompt %q, want %q", name, f.Prompts[0].Text, want)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing.jsonl")); err == nil || !strings.Contains(err.Error(), "read prompts: open ") {
		t.Errorf("missing file: %v", err)
	}
}
