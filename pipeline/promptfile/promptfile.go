// Package promptfile reads the prompt files of `prompts.train` and `prompts.test`: plain text, one
// prompt a line, or JSON Lines (a `.jsonl` name), one object a line with a "prompt" string and
// any per-prompt metadata — GenEval's evaluation_metadata.jsonl format:
//
//	{"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}], "prompt": "a photo of three cups"}
//
// The whole object becomes the prompt's rewards.Prompt.Metadata, which the rewards that read it
// (geneval) interpret. Errors name the file and the line.
package promptfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/densegrpo/densegrpo/rewards"
)

// MaxLine bounds one line of a prompt file (bytes).
const MaxLine = 1 << 20

// File is a loaded prompt file.
type File struct {
	Path    string
	Prompts []rewards.Prompt
	// Lines holds the 1-based line of each prompt, for errors.
	Lines []int
}

// Where names prompt i as "PATH:LINE".
func (f File) Where(i int) string { return fmt.Sprintf("%s:%d", f.Path, f.Lines[i]) }

// Texts lists the prompts' texts.
func (f File) Texts() []string {
	out := make([]string, len(f.Prompts))
	for i, p := range f.Prompts {
		out[i] = p.Text
	}
	return out
}

// IsJSONL reports whether path is read as JSON Lines (its name ends in ".jsonl").
func IsJSONL(path string) bool { return strings.HasSuffix(strings.ToLower(path), ".jsonl") }

// Load reads the prompt file at path. A file without prompts is an error.
func Load(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, fmt.Errorf("read prompts: %w", err)
	}
	defer f.Close()
	return Parse(f, path, IsJSONL(path))
}

// Parse reads a prompt file from r; path names it in errors. Blank lines are skipped; in text
// files each line, trimmed, is a prompt; in JSON Lines each line is one object with a non-empty
// "prompt" string. Every line must be UTF-8 and at most MaxLine bytes.
func Parse(r io.Reader, path string, jsonl bool) (File, error) {
	out := File{Path: path}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), MaxLine)
	line := 0
	for sc.Scan() {
		line++
		raw := sc.Bytes()
		if line == 1 {
			raw = bytes.TrimPrefix(raw, []byte("\xef\xbb\xbf")) // a UTF-8 byte-order mark
		}
		if !utf8.Valid(raw) {
			return File{}, fmt.Errorf("read prompts %s:%d: not valid UTF-8", path, line)
		}
		text := strings.TrimSpace(string(raw))
		if text == "" {
			continue
		}
		p := rewards.Prompt{Text: text}
		if jsonl {
			var err error
			if p, err = parseObject(text); err != nil {
				return File{}, fmt.Errorf("read prompts %s:%d: %w", path, line, err)
			}
		}
		out.Prompts = append(out.Prompts, p)
		out.Lines = append(out.Lines, line)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return File{}, fmt.Errorf("read prompts %s:%d: line longer than %d bytes", path, line+1, MaxLine)
		}
		return File{}, fmt.Errorf("read prompts %s: %w", path, err)
	}
	if len(out.Prompts) == 0 {
		return File{}, fmt.Errorf("read prompts %s: no prompts", path)
	}
	return out, nil
}

// parseObject reads one JSON Lines record.
func parseObject(text string) (rewards.Prompt, error) {
	if text[0] != '{' {
		return rewards.Prompt{}, fmt.Errorf("got %q, want one JSON object per line (a .jsonl file)", clip(text))
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		return rewards.Prompt{}, fmt.Errorf("invalid JSON: %v", err)
	}
	prompt, ok := m["prompt"].(string)
	if !ok || strings.TrimSpace(prompt) == "" {
		got := "nothing"
		if v, present := m["prompt"]; present {
			got = jsonKind(v)
		}
		return rewards.Prompt{}, fmt.Errorf("field prompt: got %s, want a non-empty string", got)
	}
	p := rewards.Prompt{Text: strings.TrimSpace(prompt)}
	// A text file cannot hold a line break or other control character inside a prompt; a JSON
	// string can, and it would break every one-prompt-a-line view (logs, grids, reports).
	if i := strings.IndexFunc(p.Text, unicode.IsControl); i >= 0 {
		return rewards.Prompt{}, fmt.Errorf("field prompt: got %q with control character %U, want one line of text", clip(p.Text), []rune(p.Text[i:])[0])
	}
	if len(m) > 1 {
		p.Metadata = m
	}
	return p, nil
}

func jsonKind(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return "an empty string"
	case float64:
		return fmt.Sprintf("the number %v", v)
	case bool:
		return fmt.Sprintf("%v", v)
	case []any:
		return "an array"
	}
	return "an object"
}

// clip shortens s for an error message, on a rune boundary.
func clip(s string) string {
	n := 0
	for i := range s {
		if n == 60 {
			return s[:i] + "…"
		}
		n++
	}
	return s
}
