package tokenizers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"unicode"

	"golang.org/x/text/unicode/norm"

	"github.com/densegrpo/densegrpo/internal/limitfile"
)

// clipSplit is CLIP's pre-tokenizer pattern as tokenizer.json writes it.
const clipSplit = `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`

// whiteSpaceClass is Oniguruma's Unicode \s (the White_Space property), which the tokenizers
// library's regexes use; Go's \s is ASCII only.
var whiteSpaceClass = func() string {
	var b strings.Builder
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if unicode.Is(unicode.White_Space, r) {
			fmt.Fprintf(&b, `\x{%x}`, r)
		}
	}
	return b.String()
}()

var (
	clipPieces = regexp.MustCompile(strings.ReplaceAll(clipSplit, `\s`, whiteSpaceClass))
	whiteRuns  = regexp.MustCompile(`[` + whiteSpaceClass + `]+`)
)

// clipBPE is CLIP's tokenizer as transformers' CLIPTokenizer builds it: added tokens split out,
// NFC, whitespace runs → " ", lower case, CLIP's split, byte-level symbols with "</w>" on the
// last one, BPE merges by rank.
type clipBPE struct {
	vocab   map[string]int64
	ranks   map[[2]string]int
	unk     int64
	hasUnk  bool
	raw     []addedToken // matched on the raw text
	normed  []addedToken // matched on the normalized text
	byteEnc [256]string
	// strict makes a symbol missing from the vocabulary (with no unk token) an error instead
	// of dropping it, as the tokenizers library does.
	strict bool

	mu    sync.Mutex
	cache map[string][]int64
}

// CLIPFiles is a CLIP tokenizer given as vocab.json and merges.txt alone, as reward models'
// repositories ship it (PickScore's processor, open_clip's): without tokenizer_config.json,
// the row length, the pad id and any further special tokens are given. Rows are
// <|startoftext|> text… <|endoftext|> then padding, as transformers' CLIPTokenizer makes them.
type CLIPFiles struct {
	Vocab, Merges string
	// MaxLength is the row length (>= 2).
	MaxLength int
	// Pad is the id rows are padded with; < 0 pads with <|endoftext|> (transformers'
	// CLIPTokenizer); open_clip pads with 0.
	Pad int64
	// Special are further strings cut out of the raw text as one id each, never merged:
	// transformers' added special tokens. <|startoftext|> and <|endoftext|> always are; laion's
	// CLIP tokenizers (PickScore's) pad with "!", which transformers then treats as special, so
	// a "!" in a prompt is id("!") rather than "!</w>".
	Special []string
}

// LoadCLIPFiles opens the tokenizer f describes. Encoding a symbol missing from the
// vocabulary is an error (CLIP's vocabulary covers every byte, so it means a broken file).
func LoadCLIPFiles(f CLIPFiles) (*Tokenizer, error) {
	c := &clipBPE{ranks: map[[2]string]int{}, cache: map[string][]int64{}, strict: true}
	for b := range 256 {
		c.byteEnc[b] = byteToUnicode(b)
	}
	if err := c.readVocabMerges(f.Vocab, f.Merges); err != nil {
		return nil, err
	}
	specials := append([]string{"<|startoftext|>", "<|endoftext|>"}, f.Special...)
	for _, s := range specials {
		id, ok := c.vocab[s]
		if !ok || s == "" {
			return nil, fmt.Errorf("load CLIP tokenizer %s: special token %q is not in the vocabulary", f.Vocab, s)
		}
		if !slices.ContainsFunc(c.raw, func(a addedToken) bool { return a.Content == s }) {
			c.raw = append(c.raw, addedToken{ID: id, Content: s, Special: true})
		}
	}
	if f.MaxLength < 2 {
		return nil, fmt.Errorf("load CLIP tokenizer %s: max length %d, want >= 2", f.Vocab, f.MaxLength)
	}
	sot, eot := c.raw[0].ID, c.raw[1].ID
	pad := f.Pad
	if pad < 0 {
		pad = eot
	}
	return &Tokenizer{kind: CLIP, dir: f.Vocab, maxLen: f.MaxLength, pad: pad, prefix: []int64{sot}, suffix: []int64{eot}, enc: c}, nil
}

// loadCLIP reads tokenizer.json if present, else vocab.json + merges.txt.
func loadCLIP(dir string, cfg tokenizerConfig) (*clipBPE, *postProcessor, error) {
	c := &clipBPE{ranks: map[[2]string]int{}, cache: map[string][]int64{}}
	for b := range 256 {
		c.byteEnc[b] = byteToUnicode(b)
	}
	var added []addedToken
	var post *postProcessor
	jsonPath := filepath.Join(dir, "tokenizer.json")
	doc, modelType, err := readTokenizerJSON(jsonPath)
	switch {
	case err == nil:
		if modelType != "BPE" {
			return nil, nil, fmt.Errorf("load CLIP tokenizer %s: model is %s, want CLIP's byte-level BPE (is this a T5 tokenizer?)", jsonPath, modelType)
		}
		if err := c.readJSONModel(jsonPath, doc); err != nil {
			return nil, nil, err
		}
		if post, err = parsePostProcessor(jsonPath, doc.PostProcessor); err != nil {
			return nil, nil, err
		}
		added = doc.AddedTokens
	case errors.Is(err, os.ErrNotExist):
		vocabPath, mergesPath := filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt")
		if _, verr := os.Stat(vocabPath); verr != nil {
			if _, serr := os.Stat(filepath.Join(dir, "spiece.model")); serr == nil {
				return nil, nil, fmt.Errorf("load CLIP tokenizer %s: found spiece.model (a SentencePiece/T5 tokenizer), want CLIP's tokenizer.json or vocab.json + merges.txt", dir)
			}
			return nil, nil, fmt.Errorf("load CLIP tokenizer %s: no tokenizer.json and no vocab.json + merges.txt", dir)
		}
		if err := c.readVocabMerges(vocabPath, mergesPath); err != nil {
			return nil, nil, err
		}
		if cfg.BOS == "" || cfg.EOS == "" {
			return nil, nil, fmt.Errorf("load CLIP tokenizer %s: tokenizer_config.json names no bos_token/eos_token", dir)
		}
		post = &postProcessor{prefix: []string{cfg.BOS}, suffix: []string{cfg.EOS}}
		added = specialsAsAdded(cfg, c.vocab)
	default:
		return nil, nil, err
	}
	if cfg.Unk != "" {
		c.unk, c.hasUnk = c.vocab[cfg.Unk]
	}
	for _, tok := range added {
		if tok.SingleWord {
			return nil, nil, fmt.Errorf("load CLIP tokenizer %s: added token %q is single_word, which CLIP's tokenizers never set (not supported)", dir, tok.Content)
		}
		c.vocab[tok.Content] = tok.ID
		if tok.Normalized {
			c.normed = append(c.normed, tok)
		} else {
			c.raw = append(c.raw, tok)
		}
	}
	return c, post, nil
}

// specialsAsAdded lists the added tokens transformers registers for a vocab.json tokenizer:
// added_tokens_decoder, then bos/eos/unk/pad not listed there (special, not normalized).
func specialsAsAdded(cfg tokenizerConfig, vocab map[string]int64) []addedToken {
	out := append([]addedToken(nil), cfg.AddedTokens...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	for _, s := range []string{cfg.BOS, cfg.EOS, cfg.Unk, cfg.Pad} {
		if s == "" {
			continue
		}
		listed := false
		for _, t := range out {
			listed = listed || t.Content == s
		}
		if id, ok := vocab[s]; ok && !listed {
			out = append(out, addedToken{ID: id, Content: s, Special: true})
		}
	}
	return out
}

// readJSONModel reads the BPE model of tokenizer.json and checks that normalizer and
// pre-tokenizer are CLIP's.
func (c *clipBPE) readJSONModel(path string, doc *tokenizerJSON) error {
	var model struct {
		Vocab             map[string]int64  `json:"vocab"`
		Merges            []json.RawMessage `json:"merges"`
		UnkToken          *string           `json:"unk_token"`
		EndOfWordSuffix   *string           `json:"end_of_word_suffix"`
		ContinuingSubword *string           `json:"continuing_subword_prefix"`
		ByteFallback      bool              `json:"byte_fallback"`
		Dropout           *float64          `json:"dropout"`
	}
	if err := json.Unmarshal(doc.Model, &model); err != nil {
		return fmt.Errorf("load CLIP tokenizer %s: field model: %w", path, err)
	}
	if model.EndOfWordSuffix == nil || *model.EndOfWordSuffix != "</w>" {
		return fmt.Errorf("load CLIP tokenizer %s: field model.end_of_word_suffix: want \"</w>\" (CLIP's BPE)", path)
	}
	if (model.ContinuingSubword != nil && *model.ContinuingSubword != "") || model.ByteFallback || model.Dropout != nil {
		return fmt.Errorf("load CLIP tokenizer %s: field model: continuing_subword_prefix, byte_fallback or dropout set; CLIP's BPE has none", path)
	}
	if err := checkCLIPPipeline(path, doc); err != nil {
		return err
	}
	c.vocab = model.Vocab
	for i, m := range model.Merges {
		var pair [2]string
		var s string
		switch {
		case json.Unmarshal(m, &s) == nil:
			parts := strings.Split(s, " ")
			if len(parts) != 2 {
				return fmt.Errorf("load CLIP tokenizer %s: field model.merges[%d]: %q, want two symbols", path, i, s)
			}
			pair = [2]string{parts[0], parts[1]}
		case json.Unmarshal(m, &pair) == nil:
		default:
			return fmt.Errorf("load CLIP tokenizer %s: field model.merges[%d]: %s, want \"a b\" or [\"a\", \"b\"]", path, i, m)
		}
		if _, dup := c.ranks[pair]; !dup {
			c.ranks[pair] = i
		}
	}
	return nil
}

// checkCLIPPipeline accepts exactly the normalizer and pre-tokenizer CLIPTokenizer builds.
func checkCLIPPipeline(path string, doc *tokenizerJSON) error {
	var n struct {
		Type        string `json:"type"`
		Normalizers []struct {
			Type    string            `json:"type"`
			Pattern map[string]string `json:"pattern"`
			Content string            `json:"content"`
		} `json:"normalizers"`
	}
	if err := json.Unmarshal(doc.Normalizer, &n); err != nil {
		return fmt.Errorf("load CLIP tokenizer %s: field normalizer: %w", path, err)
	}
	var types []string
	for _, s := range n.Normalizers {
		types = append(types, s.Type)
	}
	if n.Type != "Sequence" || strings.Join(types, ",") != "NFC,Replace,Lowercase" ||
		n.Normalizers[1].Pattern["Regex"] != `\s+` || n.Normalizers[1].Content != " " {
		return fmt.Errorf("load CLIP tokenizer %s: field normalizer: want CLIP's Sequence[NFC, Replace(\\s+, \" \"), Lowercase] (got %s)", path, compact(doc.Normalizer))
	}
	var p struct {
		Type          string `json:"type"`
		Pretokenizers []struct {
			Type           string            `json:"type"`
			Pattern        map[string]string `json:"pattern"`
			Behavior       string            `json:"behavior"`
			Invert         bool              `json:"invert"`
			AddPrefixSpace bool              `json:"add_prefix_space"`
		} `json:"pretokenizers"`
	}
	if err := json.Unmarshal(doc.PreTokenizer, &p); err != nil {
		return fmt.Errorf("load CLIP tokenizer %s: field pre_tokenizer: %w", path, err)
	}
	ok := p.Type == "Sequence" && len(p.Pretokenizers) == 2
	if ok {
		s, b := p.Pretokenizers[0], p.Pretokenizers[1]
		ok = s.Type == "Split" && s.Pattern["Regex"] == clipSplit && s.Behavior == "Removed" && s.Invert &&
			b.Type == "ByteLevel" && !b.AddPrefixSpace
	}
	if !ok {
		return fmt.Errorf("load CLIP tokenizer %s: field pre_tokenizer: want CLIP's Sequence[Split(CLIP pattern, removed, inverted), ByteLevel] (got %s)", path, compact(doc.PreTokenizer))
	}
	return nil
}

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	s := b.String()
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// readVocabMerges reads vocab.json ({"token": id}) and merges.txt ("#version" line, then one
// "a b" merge per line, highest priority first).
func (c *clipBPE) readVocabMerges(vocabPath, mergesPath string) error {
	raw, err := limitfile.Read(vocabPath, limitfile.Vocab, "a tokenizer file")
	if err != nil {
		return fmt.Errorf("load CLIP tokenizer: %w", err)
	}
	if err := json.Unmarshal(raw, &c.vocab); err != nil {
		return fmt.Errorf("load CLIP tokenizer %s: want {\"token\": id, ...}: %w", vocabPath, err)
	}
	f, err := limitfile.Open(mergesPath, limitfile.Vocab, "a tokenizer file")
	if err != nil {
		return fmt.Errorf("load CLIP tokenizer: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimRight(sc.Text(), "\r")
		if s == "" || (line == 1 && strings.HasPrefix(s, "#version")) {
			continue
		}
		parts := strings.Split(s, " ")
		if len(parts) != 2 {
			return fmt.Errorf("load CLIP tokenizer %s: line %d is %q, want two symbols", mergesPath, line, s)
		}
		pair := [2]string{parts[0], parts[1]}
		if _, dup := c.ranks[pair]; !dup {
			c.ranks[pair] = len(c.ranks)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("load CLIP tokenizer %s: %w", mergesPath, err)
	}
	return nil
}

// byteToUnicode is GPT-2/CLIP's byte → printable rune table: printable Latin-1 bytes stand
// for themselves, the rest are shifted to code points from 256 upwards in byte order.
func byteToUnicode(b int) string {
	printable := func(b int) bool {
		return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
	}
	if printable(b) {
		return string(rune(b))
	}
	n := 0
	for x := 0; x < b; x++ {
		if !printable(x) {
			n++
		}
	}
	return string(rune(256 + n))
}

func (c *clipBPE) id(token string) (int64, bool) {
	id, ok := c.vocab[token]
	return id, ok
}

// encode splits out added tokens (raw ones on the text, normalized ones on the normalized
// text) and BPE-encodes the rest.
func (c *clipBPE) encode(text string) ([]int64, error) {
	var ids []int64
	for _, seg := range splitAdded(text, c.raw) {
		if seg.token != nil {
			ids = append(ids, seg.token.ID)
			continue
		}
		for _, sub := range splitAdded(normalizeCLIP(seg.text), c.normed) {
			if sub.token != nil {
				ids = append(ids, sub.token.ID)
				continue
			}
			for _, piece := range clipPieces.FindAllString(sub.text, -1) {
				p, err := c.bpe(piece)
				if err != nil {
					return nil, err
				}
				ids = append(ids, p...)
			}
		}
	}
	return ids, nil
}

// normalizeCLIP is NFC, whitespace runs → one space, lower case.
func normalizeCLIP(s string) string {
	return lowerRust(whiteRuns.ReplaceAllString(norm.NFC.String(s), " "))
}

// lowerRust is Rust's str::to_lowercase: Unicode's full lower-case mapping, with Greek capital
// sigma lowered to final sigma at the end of a word.
func lowerRust(s string) string {
	if !strings.ContainsRune(s, 'Σ') && !strings.ContainsRune(s, 'İ') {
		return strings.ToLower(s)
	}
	rs := []rune(s)
	var b strings.Builder
	for i, r := range rs {
		switch r {
		case 'İ': // full mapping: i + combining dot above
			b.WriteString("i\u0307")
		case 'Σ':
			if finalSigma(rs, i) {
				b.WriteRune('ς')
			} else {
				b.WriteRune('σ')
			}
		default:
			b.WriteRune(unicode.ToLower(r))
		}
	}
	return b.String()
}

// finalSigma is Unicode's Final_Sigma condition: a cased letter before (skipping
// case-ignorable runes) and none after.
func finalSigma(rs []rune, i int) bool {
	cased := func(r rune) bool { return unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r) }
	ignorable := func(r rune) bool {
		return unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf, unicode.Lm, unicode.Sk) || r == '\''
	}
	before := false
	for j := i - 1; j >= 0; j-- {
		if ignorable(rs[j]) {
			continue
		}
		before = cased(rs[j])
		break
	}
	for j := i + 1; j < len(rs); j++ {
		if ignorable(rs[j]) {
			continue
		}
		return before && !cased(rs[j])
	}
	return before
}

// bpe encodes one pre-token: byte-level symbols, "</w>" on the last, merges by rank (every
// occurrence of the best pair, left to right), then vocabulary ids (unk for unknown symbols;
// without one, dropped, or an error when strict).
func (c *clipBPE) bpe(piece string) ([]int64, error) {
	c.mu.Lock()
	cached, ok := c.cache[piece]
	c.mu.Unlock()
	if ok {
		return cached, nil
	}
	word := make([]string, 0, len(piece))
	for _, b := range []byte(piece) {
		word = append(word, c.byteEnc[b])
	}
	word[len(word)-1] += "</w>"
	word = MergeBPE(word, c.ranks)
	ids := make([]int64, 0, len(word))
	for _, sym := range word {
		if id, ok := c.vocab[sym]; ok {
			ids = append(ids, id)
		} else if c.hasUnk {
			ids = append(ids, c.unk)
		} else if c.strict {
			return nil, fmt.Errorf("symbol %q is not in the vocabulary", sym)
		}
	}
	c.mu.Lock()
	if len(c.cache) < 1<<16 {
		c.cache[piece] = ids
	}
	c.mu.Unlock()
	return ids, nil
}

// MergeBPE applies BPE merges to the symbols of one word (CLIP: byte-level symbols, "</w>" on
// the last): while some adjacent pair has a rank, every occurrence of the lowest-ranked pair is
// merged, left to right.
func MergeBPE(word []string, ranks map[[2]string]int) []string {
	for len(word) > 1 {
		best, bestRank := -1, int(^uint(0)>>1)
		for i := 0; i+1 < len(word); i++ {
			if r, ok := ranks[[2]string{word[i], word[i+1]}]; ok && r < bestRank {
				best, bestRank = i, r
			}
		}
		if best < 0 {
			break
		}
		a, b := word[best], word[best+1]
		merged := word[:0:0]
		for i := 0; i < len(word); i++ {
			if i+1 < len(word) && word[i] == a && word[i+1] == b {
				merged = append(merged, a+b)
				i++
			} else {
				merged = append(merged, word[i])
			}
		}
		word = merged
	}
	return word
}
