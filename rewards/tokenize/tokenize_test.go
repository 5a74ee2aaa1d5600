package tokenize

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// clipFixture writes a tiny CLIP vocabulary: merges h+e, l+l, he+ll, hell+o</w> (in that
// priority), so "hello" → hello</w>, while "hi" has no merge and stays h, i</w>.
func clipFixture(t *testing.T) (vocab, merges string) {
	dir := t.TempDir()
	vocab, merges = filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt")
	v := `{"<|startoftext|>": 0, "<|endoftext|>": 1, "h": 2, "i</w>": 3, "hello</w>": 4, "!</w>": 5,
	       "he": 6, "ll": 7, "hell": 8, "o</w>": 9, "l": 10, "lll</w>": 11, "ll</w>": 12, "l</w>": 13}`
	m := "#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\n"
	if err := os.WriteFile(vocab, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(merges, []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	return vocab, merges
}

func TestCLIPBPE(t *testing.T) {
	vocab, merges := clipFixture(t)
	tok, err := LoadCLIPBPE(vocab, merges, 8, -1)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		text string
		ids  []int64
		mask []int64
	}{
		// Lower-cased, spaces collapsed; pieces hello / hi / ! → hello</w>, h i</w>, !</w>;
		// padded with <|endoftext|> (1).
		{"Hello   hi!", []int64{0, 4, 2, 3, 5, 1, 1, 1}, []int64{1, 1, 1, 1, 1, 1, 0, 0}},
		// "lll": l l l</w>; the only applicable merge is l+l at rank 1, applied left to right
		// once (the pair (l, l</w>) is a different pair) → ll, l</w>.
		{"lll", []int64{0, 7, 13, 1, 1, 1, 1, 1}, []int64{1, 1, 1, 1, 0, 0, 0, 0}},
		// Truncation keeps max_length − 2 = 6 of the 8 symbols of "hi hi hi hi":
		// h i</w> h i</w> h i</w>, then <|endoftext|>.
		{"hi hi hi hi", []int64{0, 2, 3, 2, 3, 2, 3, 1}, []int64{1, 1, 1, 1, 1, 1, 1, 1}},
	}
	for _, tt := range tests {
		ids, mask, err := tok.Encode(tt.text)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ids, tt.ids) || !reflect.DeepEqual(mask, tt.mask) {
			t.Errorf("Encode(%q) = %v %v, want %v %v", tt.text, ids, mask, tt.ids, tt.mask)
		}
	}
	// Byte-level symbols: é (C3 A9) is Ã ©, which no merge joins, so the first symbol, Ã, is
	// the missing one.
	if _, _, err := tok.Encode("é"); err == nil || !strings.Contains(err.Error(), `symbol "Ã"`) {
		t.Errorf("unknown symbol: err = %v, want it named", err)
	}
	// open_clip pads with 0.
	tok0, err := LoadCLIPBPE(vocab, merges, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ids, _, _ := tok0.Encode("hello"); !reflect.DeepEqual(ids, []int64{0, 4, 1, 0, 0}) {
		t.Errorf("pad 0: ids %v, want [0 4 1 0 0]", ids)
	}
}

func TestChars(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chars.txt")
	if err := os.WriteFile(path, []byte("<pad>\na\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// "<pad>" is not one character: a clear error naming the line.
	if _, err := LoadChars(path, 4, 0, 0); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("multi-character line: err = %v", err)
	}
	if err := os.WriteFile(path, []byte("_\na\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := LoadChars(path, 4, 0, 9)
	if err != nil {
		t.Fatal(err)
	}
	// a → 1, b → 2, z unknown → 9, then padding 0.
	ids, mask, _ := tok.Encode("abz")
	if !reflect.DeepEqual(ids, []int64{1, 2, 9, 0}) || !reflect.DeepEqual(mask, []int64{1, 1, 1, 0}) {
		t.Errorf("ids %v mask %v", ids, mask)
	}
	// Without a vocabulary: code points, truncated.
	cp, _ := LoadChars("", 2, 0, 0)
	if ids, _, _ := cp.Encode("Aé!"); !reflect.DeepEqual(ids, []int64{65, 233}) {
		t.Errorf("code points %v, want [65 233]", ids)
	}
}

// TestCLIPBPESpecial: a special token is cut out before BPE and keeps its own id. With "h"
// special, "hih" is h | "i" | h → h, i</w>, h (ids 2 3 2); without it "hih" is one word whose
// last symbol h</w> the vocabulary lacks.
func TestCLIPBPESpecial(t *testing.T) {
	vocab, merges := clipFixture(t)
	tok, err := LoadCLIPBPE(vocab, merges, 6, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tok.Encode("hih"); err == nil {
		t.Fatal(`"hih" without special tokens: no error, want h</w> missing from the vocabulary`)
	}
	if tok, err = LoadCLIPBPE(vocab, merges, 6, -1, "h"); err != nil {
		t.Fatal(err)
	}
	ids, _, err := tok.Encode("hih")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{0, 2, 3, 2, 1, 1}; !reflect.DeepEqual(ids, want) {
		t.Errorf("Encode(hih) = %v, want %v", ids, want)
	}
	if _, err := LoadCLIPBPE(vocab, merges, 6, -1, "zz"); err == nil || !strings.Contains(err.Error(), `"zz"`) {
		t.Errorf("special zz: %v, want an error naming the token", err)
	}
}
