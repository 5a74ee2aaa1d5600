// Package tokenize owns the prompt tokenizers reward models declare in `[reward.text]`:
// "chars" (one id per character, from a vocabulary file or the Unicode code point), and
// "clip-bpe" (CLIP's byte-level BPE from vocab.json + merges.txt, models/tokenizers' CLIP BPE).
// Every tokenizer returns fixed-length rows of ids and an attention mask (1 for tokens, 0 for
// padding).
package tokenize

import (
	"bufio"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/densegrpo/densegrpo/internal/limitfile"
	"github.com/densegrpo/densegrpo/models/tokenizers"
)

// Tokenizer maps a prompt to exactly Len() ids and a mask of the same length.
type Tokenizer interface {
	Encode(text string) (ids, mask []int64, err error)
	Len() int
}

// Chars is a character tokenizer: each rune becomes one id, truncated or padded to MaxLen.
type Chars struct {
	// Vocab maps a character to its id; nil means the id is the rune's code point.
	Vocab map[rune]int64
	// MaxLen is the fixed row length.
	MaxLen int
	// Pad fills the row after the text; Unk replaces characters missing from Vocab.
	Pad, Unk int64
}

// LoadChars reads a vocabulary with one character per line (id = line index, from 0); an
// empty path means code points.
func LoadChars(path string, maxLen int, pad, unk int64) (*Chars, error) {
	t := &Chars{MaxLen: maxLen, Pad: pad, Unk: unk}
	if path == "" {
		return t, nil
	}
	f, err := limitfile.Open(path, limitfile.Vocab, "a tokenizer file")
	if err != nil {
		return nil, fmt.Errorf("load character vocabulary: %w", err)
	}
	defer f.Close()
	t.Vocab = map[rune]int64{}
	sc := bufio.NewScanner(f)
	for id := int64(0); sc.Scan(); id++ {
		line := strings.TrimRight(sc.Text(), "\r")
		r, size := utf8.DecodeRuneInString(line)
		if size == 0 || size != len(line) {
			return nil, fmt.Errorf("load character vocabulary %s: line %d is %q, want one character", path, id+1, line)
		}
		if _, dup := t.Vocab[r]; !dup {
			t.Vocab[r] = id
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load character vocabulary %s: %w", path, err)
	}
	return t, nil
}

// Len is the row length.
func (t *Chars) Len() int { return t.MaxLen }

// Encode maps each rune of text to its id.
func (t *Chars) Encode(text string) (ids, mask []int64, err error) {
	ids, mask = make([]int64, t.MaxLen), make([]int64, t.MaxLen)
	i := 0
	for _, r := range text {
		if i == t.MaxLen {
			break
		}
		id := int64(r)
		if t.Vocab != nil {
			var ok bool
			if id, ok = t.Vocab[r]; !ok {
				id = t.Unk
			}
		}
		ids[i], mask[i] = id, 1
		i++
	}
	for ; i < t.MaxLen; i++ {
		ids[i] = t.Pad
	}
	return ids, mask, nil
}

// CLIPBPE is CLIP's tokenizer (models/tokenizers.LoadCLIPFiles): NFC, whitespace runs
// collapsed, lower case, CLIP's split, byte-level symbols with "</w>" on the last, BPE merges
// by rank; rows are <|startoftext|> tokens… <|endoftext|> then padding.
type CLIPBPE struct {
	tok *tokenizers.Tokenizer
}

// LoadCLIPBPE reads vocab.json ({"token": id}) and merges.txt (a "#version" line, then one
// "a b" merge per line, highest priority first). pad < 0 pads with <|endoftext|> (as Hugging
// Face's CLIP tokenizer does); open_clip pads with 0. special are further strings cut out of
// the raw text as one id each (see tokenizers.CLIPFiles).
func LoadCLIPBPE(vocabPath, mergesPath string, maxLen int, pad int64, special ...string) (*CLIPBPE, error) {
	tok, err := tokenizers.LoadCLIPFiles(tokenizers.CLIPFiles{Vocab: vocabPath, Merges: mergesPath, MaxLength: maxLen, Pad: pad, Special: special})
	if err != nil {
		return nil, err
	}
	return &CLIPBPE{tok: tok}, nil
}

// Len is the row length.
func (t *CLIPBPE) Len() int { return t.tok.MaxLength() }

// Encode tokenizes text into a row of Len() ids. A symbol missing from the vocabulary is an
// error (CLIP's vocabulary covers every byte, so this means a broken vocabulary file).
func (t *CLIPBPE) Encode(text string) (ids, mask []int64, err error) { return t.tok.EncodeMask(text) }
