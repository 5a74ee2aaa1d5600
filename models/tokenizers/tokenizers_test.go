package tokenizers

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fixture is the tiny SD3.5 snapshot, its export and the Python references
// (exporters/sd3; `just interop` regenerates them).
const fixture = "../../testdata/sd3-tiny"

// TestMatchesPython compares every tokenizer of the fixture, loaded from the snapshot's files
// (CLIP: vocab.json + merges.txt; T5: tokenizer.json) and from the export (tokenizer.json for
// all three), with the ids transformers' tokenizers gave StableDiffusion3Pipeline on a table
// of tricky strings: case, accents and combining marks, Unicode spaces, contractions,
// emoji/CJK (bytes for CLIP, <unk> for T5), special tokens inside the text, and prompts
// truncated at 77 and 256.
func TestMatchesPython(t *testing.T) {
	strs, _ := referenceTokens(t, "tokenizer")
	cases := []struct {
		name string
		kind Kind
		len  int
	}{{"tokenizer", CLIP, 77}, {"tokenizer_2", CLIP, 77}, {"tokenizer_3", T5, 256}}
	for _, c := range cases {
		_, want := referenceTokens(t, c.name)
		for _, root := range []string{"snapshot", "export"} {
			dir := filepath.Join(fixture, root, c.name)
			t.Run(root+"/"+c.name, func(t *testing.T) {
				maxLen := c.len
				if c.kind == CLIP {
					maxLen = 0 // from tokenizer_config.json's model_max_length
				}
				tok, err := Load(dir, c.kind, maxLen)
				if err != nil {
					t.Fatal(err)
				}
				if tok.MaxLength() != c.len {
					t.Fatalf("max length %d, want %d", tok.MaxLength(), c.len)
				}
				for i, s := range strs {
					got, err := tok.Encode(s)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, want[i]) {
						t.Errorf("string %d %q:\n got  %v\n want %v", i, s, got, want[i])
					}
				}
			})
		}
	}
}

// TestPadTokens: SD3's two CLIP tokenizers pad differently (<|endoftext|> and "!"), read from
// their files.
func TestPadTokens(t *testing.T) {
	for name, want := range map[string]string{"tokenizer": "<|endoftext|>", "tokenizer_2": "!"} {
		tok, err := Load(filepath.Join(fixture, "snapshot", name), CLIP, 0)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := tok.enc.id(want)
		if tok.PadID() != id {
			t.Errorf("%s: pad id %d, want %d (%q)", name, tok.PadID(), id, want)
		}
	}
}

// TestBadInput: a tokenizer of the wrong kind, a folder without tokenizer files and a
// tokenizer.json of another pipeline are one-line errors naming the file.
func TestBadInput(t *testing.T) {
	tmp := t.TempDir()
	writeDir := func(name string, files map[string]string) string {
		dir := filepath.Join(tmp, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f, data := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	clipJSON, err := os.ReadFile(filepath.Join(fixture, "export", "tokenizer", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := `{"model_max_length": 77, "pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}`
	otherNorm := strings.Replace(string(clipJSON), `"Lowercase"`, `"NFKC"`, 1)
	cases := []struct {
		name    string
		dir     string
		kind    Kind
		wantErr []string
	}{
		{"t5 as clip", filepath.Join(fixture, "snapshot", "tokenizer_3"), CLIP, []string{"tokenizer_3/tokenizer.json", "model is Unigram", "want CLIP"}},
		{"clip as t5", filepath.Join(fixture, "export", "tokenizer"), T5, []string{"tokenizer/tokenizer.json", "model is BPE", "want T5"}},
		{"clip files as t5", filepath.Join(fixture, "snapshot", "tokenizer"), T5, []string{"snapshot/tokenizer", "vocab.json", "want T5"}},
		{"spiece only", writeDir("spiece", map[string]string{"spiece.model": "x", "tokenizer_config.json": cfg}), T5, []string{"spiece", "no tokenizer.json"}},
		{"spiece as clip", writeDir("spiece2", map[string]string{"spiece.model": "x", "tokenizer_config.json": cfg}), CLIP, []string{"spiece2", "SentencePiece"}},
		{"empty", writeDir("empty", map[string]string{"tokenizer_config.json": cfg}), CLIP, []string{"empty", "no tokenizer.json and no vocab.json"}},
		{"no config", writeDir("noconfig", nil), CLIP, []string{"noconfig/tokenizer_config.json"}},
		{"missing dir", filepath.Join(tmp, "nope"), CLIP, []string{"nope"}},
		{"other normalizer", writeDir("othernorm", map[string]string{"tokenizer.json": otherNorm, "tokenizer_config.json": cfg}), CLIP, []string{"othernorm/tokenizer.json", "field normalizer"}},
		{"no pad", writeDir("nopad", map[string]string{"tokenizer.json": string(clipJSON), "tokenizer_config.json": `{"model_max_length": 77}`}), CLIP, []string{"nopad", "pad_token"}},
		{"bad kind", filepath.Join(fixture, "snapshot", "tokenizer"), Kind("wordpiece"), []string{"kind \"wordpiece\""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(c.dir, c.kind, 0)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			for _, w := range c.wantErr {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

// TestTruncationKeepsSpecials: a prompt far past the length keeps its start and end tokens.
func TestTruncationKeepsSpecials(t *testing.T) {
	tok, err := Load(filepath.Join(fixture, "snapshot", "tokenizer_3"), T5, 16)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := tok.Encode(strings.Repeat("red cat ", 40))
	if err != nil {
		t.Fatal(err)
	}
	eos, _ := tok.enc.id("</s>")
	if len(ids) != 16 || ids[15] != eos {
		t.Fatalf("ids %v: want 16 ids ending in </s> (%d)", ids, eos)
	}
}

// TestConcurrentUse encodes from several goroutines (the pipeline's stages share one).
func TestConcurrentUse(t *testing.T) {
	for _, c := range []struct {
		name string
		kind Kind
	}{{"tokenizer", CLIP}, {"tokenizer_3", T5}} {
		tok, err := Load(filepath.Join(fixture, "export", c.name), c.kind, 77)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := tok.Encode("a photo of a cat, déjà vu")
		done := make(chan []int64)
		for range 8 {
			go func() {
				got, _ := tok.Encode("a photo of a cat, déjà vu")
				done <- got
			}()
		}
		for range 8 {
			if got := <-done; !slices.Equal(got, want) {
				t.Errorf("%s: concurrent encode %v, want %v", c.name, got, want)
			}
		}
	}
}

// TestT5LegacyLayout: the same T5 vocabulary in the layout older converters wrote (the real
// SD3 snapshots' tokenizer_3/tokenizer.json is one): Sequence[Precompiled, Replace(" {2,}",
// " ")] and Metaspace with add_prefix_space instead of prepend_scheme. The Python tokenizers
// library gives these the same ids as the fixture's layout on the whole table (checked when
// this test was written), so the same references apply.
func TestT5LegacyLayout(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(fixture, "snapshot", "tokenizer_3", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	doc["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{
		doc["normalizer"],
		map[string]any{"type": "Replace", "pattern": map[string]any{"Regex": " {2,}"}, "content": " "},
	}}
	doc["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
		map[string]any{"type": "WhitespaceSplit"},
		map[string]any{"type": "Metaspace", "replacement": "▁", "add_prefix_space": true},
	}}
	dir := t.TempDir()
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(fixture, "snapshot", "tokenizer_3", "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir, T5, 256)
	if err != nil {
		t.Fatal(err)
	}
	strs, want := referenceTokens(t, "tokenizer_3")
	for i, s := range strs {
		got, err := tok.Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want[i]) {
			t.Errorf("string %d %q:\n got  %v\n want %v", i, s, got, want[i])
		}
	}
}

// referenceTokens reads the table of strings and one tokenizer's reference ids.
func referenceTokens(t *testing.T, name string) ([]string, [][]int64) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(fixture, "reference", "tokens.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref map[string]json.RawMessage
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	var strs []string
	var ids [][]int64
	if err := json.Unmarshal(ref["strings"], &strs); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ref[name], &ids); err != nil {
		t.Fatal(err)
	}
	if len(ids) != len(strs) {
		t.Fatalf("tokens.json: %d rows of %s ids for %d strings", len(ids), name, len(strs))
	}
	return strs, ids
}

// TestCLIPFilesMatchPython: the snapshot's CLIP-L and CLIP-G vocab.json + merges.txt loaded
// as a reward's tokenizer is (LoadCLIPFiles: row length, pad id and added specials given, no
// tokenizer_config.json read) give transformers' ids on the same table: CLIP-L pads with
// <|endoftext|>, CLIP-G (laion's) with "!", which it also treats as special.
func TestCLIPFilesMatchPython(t *testing.T) {
	for _, c := range []struct {
		name    string
		pad     string
		special []string
	}{{"tokenizer", "", nil}, {"tokenizer_2", "!", []string{"!"}}} {
		t.Run(c.name, func(t *testing.T) {
			strs, want := referenceTokens(t, c.name)
			dir := filepath.Join(fixture, "snapshot", c.name)
			f := CLIPFiles{Vocab: filepath.Join(dir, "vocab.json"), Merges: filepath.Join(dir, "merges.txt"), MaxLength: 77, Pad: -1, Special: c.special}
			if c.pad != "" {
				var vocab map[string]int64
				raw, err := os.ReadFile(f.Vocab)
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(raw, &vocab); err != nil {
					t.Fatal(err)
				}
				f.Pad = vocab[c.pad]
			}
			tok, err := LoadCLIPFiles(f)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range strs {
				ids, mask, err := tok.EncodeMask(s)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(ids, want[i]) {
					t.Errorf("string %d %q:\n got  %v\n want %v", i, s, ids, want[i])
				}
				// The mask is ones over <|startoftext|> … <|endoftext|>, zeros over the padding.
				n := slices.Index(mask, 0)
				if n < 0 {
					n = len(mask)
				}
				if n < 2 || slices.Contains(mask[n:], 1) || ids[n-1] != tok.suffix[0] {
					t.Errorf("string %d %q: mask %v, want ones up to <|endoftext|> (%d), then zeros", i, s, mask, tok.suffix[0])
				}
			}
		})
	}
	dir := filepath.Join(fixture, "snapshot", "tokenizer")
	for _, tc := range []struct {
		f    CLIPFiles
		want string
	}{
		{CLIPFiles{Vocab: filepath.Join(dir, "vocab.json"), Merges: filepath.Join(dir, "merges.txt"), MaxLength: 77, Special: []string{"<zz>"}}, `special token "<zz>" is not in the vocabulary`},
		{CLIPFiles{Vocab: filepath.Join(dir, "vocab.json"), Merges: filepath.Join(dir, "merges.txt"), MaxLength: 1}, "max length 1, want >= 2"},
		{CLIPFiles{Vocab: filepath.Join(dir, "nope.json"), Merges: filepath.Join(dir, "merges.txt"), MaxLength: 77}, "nope.json"},
	} {
		if _, err := LoadCLIPFiles(tc.f); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
}
