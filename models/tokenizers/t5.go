package tokenizers

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/rivo/uniseg"
	"golang.org/x/text/unicode/norm"
)

// unigram is a SentencePiece unigram tokenizer.json as the tokenizers library runs it: added
// tokens split out of the raw text, each remaining run normalized (T5: the SentencePiece
// precompiled charsmap), pre-tokenized (WhitespaceSplit, Metaspace), then segmented by the
// Viterbi best path over the vocabulary's log-probabilities.
type unigram struct {
	added     []addedToken
	normalize []func(string) string
	pretok    []func([]string) []string
	pieces    map[string]int64
	scores    []float64
	maxPiece  int // longest piece in bytes
	unk       int64
	unkScore  float64
	vocabByID []string
}

// loadT5 opens dir/tokenizer.json, which must hold a Unigram model.
func loadT5(dir string) (*unigram, *postProcessor, error) {
	path := filepath.Join(dir, "tokenizer.json")
	doc, modelType, err := readTokenizerJSON(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(dir, "spiece.model")); serr == nil {
			return nil, nil, fmt.Errorf("load T5 tokenizer %s: no tokenizer.json (spiece.model alone is not read; the exporter writes tokenizer.json)", dir)
		}
		if _, verr := os.Stat(filepath.Join(dir, "vocab.json")); verr == nil {
			return nil, nil, fmt.Errorf("load T5 tokenizer %s: found vocab.json (a BPE/CLIP tokenizer), want T5's tokenizer.json with a Unigram model", dir)
		}
		return nil, nil, fmt.Errorf("load T5 tokenizer %s: no tokenizer.json", dir)
	}
	if err != nil {
		return nil, nil, err
	}
	if modelType != "Unigram" {
		return nil, nil, fmt.Errorf("load T5 tokenizer %s: model is %s, want T5's SentencePiece Unigram (is this a CLIP tokenizer?)", path, modelType)
	}
	u := &unigram{pieces: map[string]int64{}}
	if err := u.readModel(path, doc.Model); err != nil {
		return nil, nil, err
	}
	if u.normalize, err = parseNormalizer(path, "normalizer", doc.Normalizer); err != nil {
		return nil, nil, err
	}
	if u.pretok, err = parsePreTokenizer(path, "pre_tokenizer", doc.PreTokenizer); err != nil {
		return nil, nil, err
	}
	post, err := parsePostProcessor(path, doc.PostProcessor)
	if err != nil {
		return nil, nil, err
	}
	for _, t := range doc.AddedTokens {
		if t.Normalized || t.SingleWord {
			return nil, nil, fmt.Errorf("load T5 tokenizer %s: added token %q is normalized or single_word, which T5's tokenizers never set (not supported)", path, t.Content)
		}
		u.added = append(u.added, t)
	}
	return u, post, nil
}

func (u *unigram) readModel(path string, raw json.RawMessage) error {
	var m struct {
		Vocab        [][2]json.RawMessage `json:"vocab"`
		UnkID        *int64               `json:"unk_id"`
		ByteFallback bool                 `json:"byte_fallback"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("load T5 tokenizer %s: field model: %w", path, err)
	}
	if m.ByteFallback {
		return fmt.Errorf("load T5 tokenizer %s: field model.byte_fallback: true is not supported (T5 has none)", path)
	}
	if m.UnkID == nil || *m.UnkID < 0 || int(*m.UnkID) >= len(m.Vocab) {
		return fmt.Errorf("load T5 tokenizer %s: field model.unk_id: want an id below the vocabulary size %d", path, len(m.Vocab))
	}
	u.unk = *m.UnkID
	minScore := math.Inf(1)
	for i, e := range m.Vocab {
		var piece string
		var score float64
		if json.Unmarshal(e[0], &piece) != nil || json.Unmarshal(e[1], &score) != nil {
			return fmt.Errorf("load T5 tokenizer %s: field model.vocab[%d]: want [piece, score]", path, i)
		}
		if _, dup := u.pieces[piece]; !dup {
			u.pieces[piece] = int64(i)
		}
		u.scores = append(u.scores, score)
		u.vocabByID = append(u.vocabByID, piece)
		u.maxPiece = max(u.maxPiece, len(piece))
		minScore = min(minScore, score)
	}
	// The tokenizers library scores an unknown character 10 below the lowest piece.
	u.unkScore = minScore - 10
	return nil
}

func (u *unigram) id(token string) (int64, bool) {
	for _, t := range u.added {
		if t.Content == token {
			return t.ID, true
		}
	}
	id, ok := u.pieces[token]
	return id, ok
}

func (u *unigram) encode(text string) ([]int64, error) {
	var ids []int64
	for _, seg := range splitAdded(text, u.added) {
		if seg.token != nil {
			ids = append(ids, seg.token.ID)
			continue
		}
		s := seg.text
		for _, n := range u.normalize {
			s = n(s)
		}
		words := []string{s}
		for _, p := range u.pretok {
			words = p(words)
		}
		for _, w := range words {
			if w != "" {
				ids = append(ids, u.viterbi(w)...)
			}
		}
	}
	return ids, nil
}

// viterbi is the tokenizers library's Unigram::encode_optimized: the best-scoring
// segmentation into vocabulary pieces (ties keep the first, shortest candidate), a character
// no piece covers scored unkScore; consecutive unknown characters fuse into one <unk>.
func (u *unigram) viterbi(s string) []int64 {
	type node struct {
		id    int64
		score float64
		start int // -1: not reached
	}
	best := make([]node, len(s)+1)
	for i := range best {
		best[i].start = -1
	}
	for at := 0; at < len(s); {
		_, mblen := utf8.DecodeRuneInString(s[at:])
		here := best[at].score
		single := false
		for n := 1; n <= u.maxPiece && at+n <= len(s); n++ {
			id, ok := u.pieces[s[at:at+n]]
			if !ok {
				continue
			}
			cand := u.scores[id] + here
			if t := &best[at+n]; t.start < 0 || cand > t.score {
				*t = node{id: id, score: cand, start: at}
			}
			single = single || n == mblen
		}
		if !single {
			cand := u.unkScore + here
			if t := &best[at+mblen]; t.start < 0 || cand > t.score {
				*t = node{id: u.unk, score: cand, start: at}
			}
		}
		at += mblen
	}
	var rev []int64
	unkRun := false
	for end := len(s); end > 0; end = best[end].start {
		n := best[end]
		if n.id == u.unk {
			if !unkRun {
				rev = append(rev, u.unk)
			}
			unkRun = true
			continue
		}
		unkRun = false
		rev = append(rev, n.id)
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}

// parseNormalizer builds the normalizers T5 tokenizer.json files use.
func parseNormalizer(path, field string, raw json.RawMessage) ([]func(string) string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var n struct {
		Type                string            `json:"type"`
		Normalizers         []json.RawMessage `json:"normalizers"`
		PrecompiledCharsmap *string           `json:"precompiled_charsmap"`
		Pattern             map[string]string `json:"pattern"`
		Content             string            `json:"content"`
		StripLeft           bool              `json:"strip_left"`
		StripRight          bool              `json:"strip_right"`
	}
	if err := json.Unmarshal(raw, &n); err != nil {
		return nil, fmt.Errorf("load tokenizer %s: field %s: %w", path, field, err)
	}
	switch n.Type {
	case "Sequence":
		var out []func(string) string
		for i, sub := range n.Normalizers {
			fs, err := parseNormalizer(path, fmt.Sprintf("%s.normalizers[%d]", field, i), sub)
			if err != nil {
				return nil, err
			}
			out = append(out, fs...)
		}
		return out, nil
	case "Precompiled":
		if n.PrecompiledCharsmap == nil {
			return nil, fmt.Errorf("load tokenizer %s: field %s: Precompiled without precompiled_charsmap", path, field)
		}
		pc, err := newPrecompiled(*n.PrecompiledCharsmap)
		if err != nil {
			return nil, fmt.Errorf("load tokenizer %s: field %s.precompiled_charsmap: %w", path, field, err)
		}
		return []func(string) string{pc.normalize}, nil
	case "Replace":
		re, err := replacePattern(n.Pattern)
		if err != nil {
			return nil, fmt.Errorf("load tokenizer %s: field %s.pattern: %w", path, field, err)
		}
		content := n.Content
		return []func(string) string{func(s string) string { return re.ReplaceAllLiteralString(s, content) }}, nil
	case "NFC":
		return []func(string) string{norm.NFC.String}, nil
	case "NFKC":
		return []func(string) string{norm.NFKC.String}, nil
	case "NFD":
		return []func(string) string{norm.NFD.String}, nil
	case "NFKD":
		return []func(string) string{norm.NFKD.String}, nil
	case "Lowercase":
		return []func(string) string{lowerRust}, nil
	case "Strip":
		left, right := n.StripLeft, n.StripRight
		return []func(string) string{func(s string) string {
			if left {
				s = strings.TrimLeftFunc(s, unicode.IsSpace)
			}
			if right {
				s = strings.TrimRightFunc(s, unicode.IsSpace)
			}
			return s
		}}, nil
	default:
		return nil, fmt.Errorf("load tokenizer %s: field %s: type %q is not supported (known: Sequence, Precompiled, Replace, NFC, NFKC, NFD, NFKD, Lowercase, Strip)", path, field, n.Type)
	}
}

// replacePattern compiles a tokenizers Replace pattern ({"String": s} or {"Regex": r}); the
// library's regexes are Oniguruma's, whose \s is Unicode white space.
func replacePattern(p map[string]string) (*regexp.Regexp, error) {
	if s, ok := p["String"]; ok {
		return regexp.Compile(regexp.QuoteMeta(s))
	}
	if r, ok := p["Regex"]; ok {
		return regexp.Compile(strings.ReplaceAll(r, `\s`, "["+whiteSpaceClass+"]"))
	}
	return nil, fmt.Errorf("want {\"String\": …} or {\"Regex\": …}")
}

// parsePreTokenizer builds the pre-tokenizers T5 tokenizer.json files use.
func parsePreTokenizer(path, field string, raw json.RawMessage) ([]func([]string) []string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var p struct {
		Type           string            `json:"type"`
		Pretokenizers  []json.RawMessage `json:"pretokenizers"`
		Replacement    string            `json:"replacement"`
		AddPrefixSpace *bool             `json:"add_prefix_space"`
		PrependScheme  string            `json:"prepend_scheme"`
		Split          *bool             `json:"split"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("load tokenizer %s: field %s: %w", path, field, err)
	}
	switch p.Type {
	case "Sequence":
		var out []func([]string) []string
		for i, sub := range p.Pretokenizers {
			fs, err := parsePreTokenizer(path, fmt.Sprintf("%s.pretokenizers[%d]", field, i), sub)
			if err != nil {
				return nil, err
			}
			out = append(out, fs...)
		}
		return out, nil
	case "WhitespaceSplit":
		return []func([]string) []string{func(words []string) []string {
			var out []string
			for _, w := range words {
				out = append(out, strings.FieldsFunc(w, func(r rune) bool { return unicode.Is(unicode.White_Space, r) })...)
			}
			return out
		}}, nil
	case "Metaspace":
		rep := p.Replacement
		if utf8.RuneCountInString(rep) != 1 {
			return nil, fmt.Errorf("load tokenizer %s: field %s.replacement: %q, want one character", path, field, rep)
		}
		// Older files write add_prefix_space (true ≡ prepend_scheme "always").
		scheme := p.PrependScheme
		if scheme == "" {
			scheme = "never"
			if p.AddPrefixSpace == nil || *p.AddPrefixSpace {
				scheme = "always"
			}
		}
		if scheme != "always" && scheme != "never" && scheme != "first" {
			return nil, fmt.Errorf("load tokenizer %s: field %s.prepend_scheme: %q, want always, first or never", path, field, scheme)
		}
		split := p.Split == nil || *p.Split
		return []func([]string) []string{func(words []string) []string { return metaspace(words, rep, scheme, split) }}, nil
	default:
		return nil, fmt.Errorf("load tokenizer %s: field %s: type %q is not supported (known: Sequence, WhitespaceSplit, Metaspace)", path, field, p.Type)
	}
}

// metaspace replaces spaces with rep, prepends rep (scheme "always"; "first" only to the
// first word of the text), and with split cuts each word before every rep.
func metaspace(words []string, rep, scheme string, split bool) []string {
	var out []string
	for i, w := range words {
		if w == "" {
			continue
		}
		w = strings.ReplaceAll(w, " ", rep)
		if (scheme == "always" || (scheme == "first" && i == 0)) && !strings.HasPrefix(w, rep) {
			w = rep + w
		}
		if !split {
			out = append(out, w)
			continue
		}
		start := 0
		for i := 1; i < len(w); i++ {
			if strings.HasPrefix(w[i:], rep) {
				out = append(out, w[start:i])
				start = i
			}
		}
		out = append(out, w[start:])
	}
	return out
}

// precompiled is SentencePiece's precompiled normalization map: a darts-clone double-array
// trie over UTF-8 keys whose values index NUL-terminated replacements.
type precompiled struct {
	units      []uint32
	normalized []byte
}

func newPrecompiled(b64 string) (*precompiled, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, err
	}
	if len(raw) < 4 {
		return nil, fmt.Errorf("%d bytes, want a trie size and a trie", len(raw))
	}
	size := int(binary.LittleEndian.Uint32(raw))
	if size%4 != 0 || 4+size > len(raw) || size == 0 {
		return nil, fmt.Errorf("trie of %d bytes in a %d-byte map", size, len(raw))
	}
	p := &precompiled{units: make([]uint32, size/4), normalized: raw[4+size:]}
	for i := range p.units {
		p.units[i] = binary.LittleEndian.Uint32(raw[4+4*i:])
	}
	return p, nil
}

// firstMatch is darts' commonPrefixSearch returning its first (shortest) result, as the
// tokenizers library's Precompiled::transform uses it.
func (p *precompiled) firstMatch(key string) (string, bool) {
	at := func(i uint32) (uint32, bool) {
		if int(i) >= len(p.units) {
			return 0, false
		}
		return p.units[i], true
	}
	offset := func(u uint32) uint32 { return (u >> 10) << ((u & (1 << 9)) >> 6) }
	unit, ok := at(0)
	if !ok {
		return "", false
	}
	pos := offset(unit)
	for i := 0; i < len(key); i++ {
		c := uint32(key[i])
		if c == 0 {
			break
		}
		pos ^= c
		if unit, ok = at(pos); !ok || unit&((1<<31)|0xFF) != c {
			return "", false
		}
		pos ^= offset(unit)
		if (unit>>8)&1 == 1 {
			leaf, ok := at(pos)
			if !ok {
				return "", false
			}
			start := int(leaf & ((1 << 31) - 1))
			if start >= len(p.normalized) {
				return "", false
			}
			end := start
			for end < len(p.normalized) && p.normalized[end] != 0 {
				end++
			}
			return string(p.normalized[start:end]), true
		}
	}
	return "", false
}

// normalize is the tokenizers library's Precompiled normalizer: per extended grapheme
// cluster, a cluster shorter than 6 bytes with a match (of a prefix of it) is replaced whole;
// otherwise each character is replaced by its match or kept.
func (p *precompiled) normalize(s string) string {
	var b strings.Builder
	g := uniseg.NewGraphemes(s)
	for g.Next() {
		cluster := g.Str()
		if len(cluster) < 6 {
			if rep, ok := p.firstMatch(cluster); ok {
				b.WriteString(rep)
				continue
			}
		}
		for _, r := range cluster {
			ch := string(r)
			if rep, ok := p.firstMatch(ch); ok {
				b.WriteString(rep)
			} else {
				b.WriteString(ch)
			}
		}
	}
	return b.String()
}
