// Package tokenize owns the prompt tokenizers reward models declare in `[reward.text]`:
// "chars" (one id per character, from a vocabulary file or the Unicode code point), and
// "clip-bpe" (CLIP's byte-level BPE from vocab.json + merges.txt). Every tokenizer returns
// fixed-length rows of ids and an attention mask (1 for tokens, 0 for padding).
package tokenize

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

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
	f, err := os.Open(path)
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

// CLIPBPE is CLIP's tokenizer: lower-cased, whitespace-collapsed text split by CLIP's
// pattern, each piece mapped to byte-level unicode, word-final symbol marked "</w>", merged by
// BPE rank; rows are <|startoftext|> tokens… <|endoftext|> then padding.
type CLIPBPE struct {
	vocab   map[string]int64
	ranks   map[[2]string]int
	byteEnc [256]string
	sot     int64
	eot     int64
	pad     int64
	maxLen  int
	special []string   // literal strings that become one id each, longest first
	mu      sync.Mutex // guards cache
	cache   map[string][]string
}

var clipPattern = regexp.MustCompile(`(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`)

// LoadCLIPBPE reads vocab.json ({"token": id}) and merges.txt (a "#version" line, then one
// "a b" merge per line, highest priority first). pad < 0 pads with <|endoftext|> (as Hugging
// Face's CLIP tokenizer does); open_clip pads with 0.
func LoadCLIPBPE(vocabPath, mergesPath string, maxLen int, pad int64) (*CLIPBPE, error) {
	raw, err := os.ReadFile(vocabPath)
	if err != nil {
		return nil, fmt.Errorf("load CLIP vocabulary: %w", err)
	}
	t := &CLIPBPE{vocab: map[string]int64{}, ranks: map[[2]string]int{}, maxLen: maxLen, cache: map[string][]string{}}
	if err := json.Unmarshal(raw, &t.vocab); err != nil {
		return nil, fmt.Errorf("load CLIP vocabulary %s: %w", vocabPath, err)
	}
	var ok bool
	if t.sot, ok = t.vocab["<|startoftext|>"]; !ok {
		return nil, fmt.Errorf("load CLIP vocabulary %s: no <|startoftext|> token", vocabPath)
	}
	if t.eot, ok = t.vocab["<|endoftext|>"]; !ok {
		return nil, fmt.Errorf("load CLIP vocabulary %s: no <|endoftext|> token", vocabPath)
	}
	t.special = []string{"<|startoftext|>", "<|endoftext|>"}
	t.pad = pad
	if pad < 0 {
		t.pad = t.eot
	}
	f, err := os.Open(mergesPath)
	if err != nil {
		return nil, fmt.Errorf("load CLIP merges: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || (line == 1 && strings.HasPrefix(s, "#")) {
			continue
		}
		parts := strings.Fields(s)
		if len(parts) != 2 {
			return nil, fmt.Errorf("load CLIP merges %s: line %d is %q, want two symbols", mergesPath, line, s)
		}
		pair := [2]string{parts[0], parts[1]}
		if _, dup := t.ranks[pair]; !dup {
			t.ranks[pair] = len(t.ranks)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load CLIP merges %s: %w", mergesPath, err)
	}
	// GPT-2/CLIP byte→unicode table: printable Latin-1 bytes stand for themselves, the rest
	// are shifted to code points from 256 upwards.
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			t.byteEnc[b] = string(rune(b))
		} else {
			t.byteEnc[b] = string(rune(256 + n))
			n++
		}
	}
	return t, nil
}

// AddSpecial declares literal strings that are cut out of the text before normalisation and
// become their own id, never merged: transformers' added special tokens. <|startoftext|> and
// <|endoftext|> always are; laion's CLIP tokenizers (PickScore's) also pad with "!", which
// transformers then treats as special, so a "!" in a prompt is id("!") rather than "!</w>".
func (t *CLIPBPE) AddSpecial(tokens ...string) error {
	for _, s := range tokens {
		if _, ok := t.vocab[s]; !ok || s == "" {
			return fmt.Errorf("special token %q is not in the vocabulary", s)
		}
		if !slices.Contains(t.special, s) {
			t.special = append(t.special, s)
		}
	}
	// Longest first, so a special that contains another wins (as a trie would match).
	sort.SliceStable(t.special, func(i, j int) bool { return len(t.special[i]) > len(t.special[j]) })
	return nil
}

// Len is the row length.
func (t *CLIPBPE) Len() int { return t.maxLen }

// Tokens returns the BPE symbols of text (without start/end markers): special tokens are cut
// out first, the rest is NFC-normalised, whitespace-collapsed, lower-cased, split by CLIP's
// pattern and merged (transformers' CLIPTokenizer pipeline).
func (t *CLIPBPE) Tokens(text string) []string {
	var out []string
	for text != "" {
		at, which := len(text), ""
		for _, s := range t.special {
			if i := strings.Index(text, s); i >= 0 && i < at {
				at, which = i, s
			}
		}
		out = append(out, t.plain(text[:at])...)
		if which == "" {
			break
		}
		out = append(out, which)
		text = text[at+len(which):]
	}
	return out
}

func (t *CLIPBPE) plain(text string) []string {
	text = strings.ToLower(strings.Join(strings.Fields(norm.NFC.String(text)), " "))
	var out []string
	for _, piece := range clipPattern.FindAllString(text, -1) {
		var sym []string
		for _, b := range []byte(piece) {
			sym = append(sym, t.byteEnc[b])
		}
		out = append(out, t.bpe(sym)...)
	}
	return out
}

func (t *CLIPBPE) bpe(sym []string) []string {
	key := strings.Join(sym, "\x00")
	t.mu.Lock()
	cached, ok := t.cache[key]
	t.mu.Unlock()
	if ok {
		return cached
	}
	word := append([]string(nil), sym...)
	word[len(word)-1] += "</w>"
	word = tokenizers.MergeBPE(word, t.ranks)
	t.mu.Lock()
	if len(t.cache) < 1<<16 {
		t.cache[key] = word
	}
	t.mu.Unlock()
	return word
}

// Encode tokenizes text into a row of Len() ids. A symbol missing from the vocabulary is an
// error (CLIP's vocabulary covers every byte, so this means a broken vocabulary file).
func (t *CLIPBPE) Encode(text string) (ids, mask []int64, err error) {
	ids, mask = make([]int64, t.maxLen), make([]int64, t.maxLen)
	toks := t.Tokens(text)
	if len(toks) > t.maxLen-2 {
		toks = toks[:t.maxLen-2]
	}
	ids[0], mask[0] = t.sot, 1
	i := 1
	for _, tok := range toks {
		id, ok := t.vocab[tok]
		if !ok {
			return nil, nil, fmt.Errorf("tokenize %q: symbol %q is not in the vocabulary", text, tok)
		}
		ids[i], mask[i] = id, 1
		i++
	}
	ids[i], mask[i] = t.eot, 1
	for i++; i < t.maxLen; i++ {
		ids[i] = t.pad
	}
	return ids, mask, nil
}
