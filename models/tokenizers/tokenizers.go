// Package tokenizers owns the project's prompt tokenizers, loaded from the model's own files
// and producing the ids the Python tokenizers produce:
//
//   - "clip": CLIP's byte-level BPE — CLIPTokenizer of SD3's tokenizer/ and tokenizer_2/, from
//     tokenizer.json or from vocab.json + merges.txt with tokenizer_config.json (Load), and the
//     reward models' CLIP tokenizers, from vocab.json + merges.txt alone (LoadCLIPFiles, which
//     rewards/tokenize's "clip-bpe" uses).
//   - "t5": T5's SentencePiece unigram from tokenizer.json (precompiled normalizer, Metaspace,
//     Viterbi over the pieces).
//
// Both are implemented here: github.com/sugarme/tokenizer v0.3.0 panics in RobertaProcessing on
// CLIP's tokenizer.json and, past that, drops BPE's end-of-word suffix "</w>" (17 of 21 strings
// of the parity table wrong); on T5 it adds a stray "▁" before a leading special token and
// panics on a combining accent in its precompiled normalizer.
//
// Rows are fixed-length as StableDiffusion3Pipeline makes them: the post-processor's special
// tokens around the text (CLIP: <|startoftext|> … <|endoftext|>; T5: … </s>), the text truncated
// on the right to fit, then the tokenizer's pad token up to the length.
package tokenizers

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/densegrpo/densegrpo/internal/limitfile"
)

// Kind names a tokenizer family.
type Kind string

const (
	// CLIP is CLIP's byte-level BPE with the "</w>" end-of-word suffix.
	CLIP Kind = "clip"
	// T5 is T5's SentencePiece unigram.
	T5 Kind = "t5"
)

// Tokenizer turns a prompt into a fixed-length row of ids. It is safe for concurrent use.
type Tokenizer struct {
	kind   Kind
	dir    string
	maxLen int
	pad    int64
	prefix []int64 // special ids before the text
	suffix []int64 // special ids after the text
	enc    encoder
}

// encoder maps text to the model's ids, without special tokens, truncation or padding.
type encoder interface {
	encode(text string) ([]int64, error)
	// id looks a token up (vocabulary or added token).
	id(token string) (int64, bool)
}

// Load opens the tokenizer of kind in dir (a snapshot's tokenizer folder or an export of it).
// maxLength 0 takes model_max_length from tokenizer_config.json.
func Load(dir string, kind Kind, maxLength int) (*Tokenizer, error) {
	t := &Tokenizer{kind: kind, dir: dir}
	cfg, err := readConfig(dir)
	if err != nil {
		return nil, err
	}
	var post *postProcessor
	switch kind {
	case CLIP:
		var c *clipBPE
		c, post, err = loadCLIP(dir, cfg)
		t.enc = c
	case T5:
		var u *unigram
		u, post, err = loadT5(dir)
		t.enc = u
	default:
		return nil, fmt.Errorf("load tokenizer %s: kind %q, want %q or %q", dir, kind, CLIP, T5)
	}
	if err != nil {
		return nil, err
	}
	if err := t.resolveSpecials(post, cfg); err != nil {
		return nil, err
	}
	t.maxLen = maxLength
	if t.maxLen == 0 {
		t.maxLen = cfg.ModelMaxLength
	}
	if t.maxLen < len(t.prefix)+len(t.suffix) || t.maxLen <= 0 {
		return nil, fmt.Errorf("load tokenizer %s: max length %d, want > %d (model_max_length in tokenizer_config.json, or given)",
			dir, t.maxLen, len(t.prefix)+len(t.suffix))
	}
	return t, nil
}

// Kind is the tokenizer's family.
func (t *Tokenizer) Kind() Kind { return t.kind }

// Dir is the folder the tokenizer was loaded from.
func (t *Tokenizer) Dir() string { return t.dir }

// MaxLength is the row length.
func (t *Tokenizer) MaxLength() int { return t.maxLen }

// PadID is the id rows are padded with.
func (t *Tokenizer) PadID() int64 { return t.pad }

// Encode returns exactly MaxLength ids: the special prefix, the text's ids (truncated on the
// right so that everything fits), the special suffix, then padding.
func (t *Tokenizer) Encode(text string) ([]int64, error) {
	row, _, err := t.EncodeMask(text)
	return row, err
}

// EncodeMask is Encode with the attention mask: 1 for the special tokens and the text's ids,
// 0 for the padding.
func (t *Tokenizer) EncodeMask(text string) (ids, mask []int64, err error) {
	enc, err := t.enc.encode(text)
	if err != nil {
		return nil, nil, fmt.Errorf("tokenize %q with %s: %w", text, t.dir, err)
	}
	room := t.maxLen - len(t.prefix) - len(t.suffix)
	if len(enc) > room {
		enc = enc[:room]
	}
	ids = make([]int64, 0, t.maxLen)
	ids = append(ids, t.prefix...)
	ids = append(ids, enc...)
	ids = append(ids, t.suffix...)
	mask = make([]int64, t.maxLen)
	for i := range ids {
		mask[i] = 1
	}
	for len(ids) < t.maxLen {
		ids = append(ids, t.pad)
	}
	return ids, mask, nil
}

// tokenizerConfig is what the package reads from tokenizer_config.json.
type tokenizerConfig struct {
	ModelMaxLength int
	BOS, EOS, Pad  string
	Unk            string
	AddedTokens    []addedToken // added_tokens_decoder, by id
}

// readConfig reads tokenizer_config.json (and special_tokens_map.json where the config leaves
// a token out). A missing tokenizer_config.json is an error: it names the pad token.
func readConfig(dir string) (tokenizerConfig, error) {
	path := filepath.Join(dir, "tokenizer_config.json")
	raw, err := limitfile.Read(path, limitfile.Config, "a JSON config")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(dir); serr != nil {
				return tokenizerConfig{}, fmt.Errorf("load tokenizer %s: %w", dir, serr)
			}
		}
		return tokenizerConfig{}, fmt.Errorf("load tokenizer: %w", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return tokenizerConfig{}, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	var cfg tokenizerConfig
	if v, ok := doc["model_max_length"]; ok {
		var f float64 // HF writes huge floats (1e30) for "no limit"
		if err := json.Unmarshal(v, &f); err != nil {
			return cfg, fmt.Errorf("load tokenizer %s: field model_max_length: %w", path, err)
		}
		if f > 0 && f < 1<<20 {
			cfg.ModelMaxLength = int(f)
		}
	}
	specials := map[string]*string{"bos_token": &cfg.BOS, "eos_token": &cfg.EOS, "pad_token": &cfg.Pad, "unk_token": &cfg.Unk}
	for key, dst := range specials {
		if v, ok := doc[key]; ok {
			s, err := tokenContent(v)
			if err != nil {
				return cfg, fmt.Errorf("load tokenizer %s: field %s: %w", path, key, err)
			}
			*dst = s
		}
	}
	raw, err = limitfile.Read(filepath.Join(dir, "special_tokens_map.json"), limitfile.Config, "a JSON config")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return cfg, fmt.Errorf("load tokenizer: %w", err)
	}
	if err == nil {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return cfg, fmt.Errorf("load tokenizer %s: %w", filepath.Join(dir, "special_tokens_map.json"), err)
		}
		for key, dst := range specials {
			if v, ok := m[key]; ok && *dst == "" {
				if s, err := tokenContent(v); err == nil {
					*dst = s
				}
			}
		}
	}
	if v, ok := doc["added_tokens_decoder"]; ok {
		var dec map[string]addedToken
		if err := json.Unmarshal(v, &dec); err != nil {
			return cfg, fmt.Errorf("load tokenizer %s: field added_tokens_decoder: %w", path, err)
		}
		for id, tok := range dec {
			if _, err := fmt.Sscan(id, &tok.ID); err != nil {
				return cfg, fmt.Errorf("load tokenizer %s: field added_tokens_decoder: key %q, want an id", path, id)
			}
			cfg.AddedTokens = append(cfg.AddedTokens, tok)
		}
	}
	return cfg, nil
}

// tokenContent reads a special token written as "text" or {"content": "text", ...}.
func tokenContent(v json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s, nil
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(v, &obj); err != nil || obj.Content == nil {
		return "", fmt.Errorf("got %s, want a string or {\"content\": ...}", v)
	}
	return *obj.Content, nil
}

// addedToken is an entry of tokenizer.json's added_tokens or of tokenizer_config.json's
// added_tokens_decoder.
type addedToken struct {
	ID         int64  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// postProcessor is the single-sequence template: special tokens before and after $A.
type postProcessor struct {
	prefix, suffix []string
}

// resolveSpecials turns the post-processor's tokens and the pad token into ids.
func (t *Tokenizer) resolveSpecials(post *postProcessor, cfg tokenizerConfig) error {
	look := func(tok, what string) (int64, error) {
		id, ok := t.enc.id(tok)
		if !ok {
			return 0, fmt.Errorf("load tokenizer %s: %s %q is not in the vocabulary", t.dir, what, tok)
		}
		return id, nil
	}
	for _, tok := range post.prefix {
		id, err := look(tok, "special token")
		if err != nil {
			return err
		}
		t.prefix = append(t.prefix, id)
	}
	for _, tok := range post.suffix {
		id, err := look(tok, "special token")
		if err != nil {
			return err
		}
		t.suffix = append(t.suffix, id)
	}
	if cfg.Pad == "" {
		return fmt.Errorf("load tokenizer %s: tokenizer_config.json names no pad_token", t.dir)
	}
	pad, err := look(cfg.Pad, "pad_token")
	if err != nil {
		return err
	}
	t.pad = pad
	return nil
}

// readTokenizerJSON reads the parts of tokenizer.json the package checks itself.
type tokenizerJSON struct {
	AddedTokens   []addedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Model         json.RawMessage `json:"model"`
}

func readTokenizerJSON(path string) (*tokenizerJSON, string, error) {
	raw, err := limitfile.Read(path, limitfile.Vocab, "a tokenizer file")
	if err != nil {
		return nil, "", err
	}
	var doc tokenizerJSON
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, "", fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	var model struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(doc.Model, &model); err != nil || model.Type == "" {
		return nil, "", fmt.Errorf("load tokenizer %s: field model.type missing", path)
	}
	return &doc, model.Type, nil
}

// parsePostProcessor reads RobertaProcessing / BertProcessing (cls $A sep) or a
// TemplateProcessing single template (special tokens around $A).
func parsePostProcessor(path string, raw json.RawMessage) (*postProcessor, error) {
	var head struct {
		Type   string            `json:"type"`
		Cls    []json.RawMessage `json:"cls"`
		Sep    []json.RawMessage `json:"sep"`
		Single []map[string]struct {
			ID string `json:"id"`
		} `json:"single"`
		Processors []json.RawMessage `json:"processors"`
	}
	if len(raw) == 0 || string(raw) == "null" {
		return &postProcessor{}, nil
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, fmt.Errorf("load tokenizer %s: field post_processor: %w", path, err)
	}
	switch head.Type {
	case "RobertaProcessing", "BertProcessing":
		if len(head.Cls) != 2 || len(head.Sep) != 2 {
			return nil, fmt.Errorf("load tokenizer %s: field post_processor: %s without cls/sep pairs", path, head.Type)
		}
		var cls, sep string
		if json.Unmarshal(head.Cls[0], &cls) != nil || json.Unmarshal(head.Sep[0], &sep) != nil {
			return nil, fmt.Errorf("load tokenizer %s: field post_processor: cls/sep tokens are not strings", path)
		}
		return &postProcessor{prefix: []string{cls}, suffix: []string{sep}}, nil
	case "TemplateProcessing":
		p := &postProcessor{}
		seen := false
		for _, piece := range head.Single {
			if s, ok := piece["Sequence"]; ok {
				if s.ID != "A" || seen {
					return nil, fmt.Errorf("load tokenizer %s: field post_processor.single: want one $A sequence", path)
				}
				seen = true
				continue
			}
			tok, ok := piece["SpecialToken"]
			if !ok {
				return nil, fmt.Errorf("load tokenizer %s: field post_processor.single: unknown piece %v", path, piece)
			}
			if seen {
				p.suffix = append(p.suffix, tok.ID)
			} else {
				p.prefix = append(p.prefix, tok.ID)
			}
		}
		if !seen {
			return nil, fmt.Errorf("load tokenizer %s: field post_processor.single: no $A sequence", path)
		}
		return p, nil
	default:
		return nil, fmt.Errorf("load tokenizer %s: field post_processor: type %q, want RobertaProcessing, BertProcessing or TemplateProcessing", path, head.Type)
	}
}

// joinQuoted lists names for an error message.
func joinQuoted(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// segment is a run of text, or an added token matched in it.
type segment struct {
	text  string
	token *addedToken
}

// splitAdded splits s around the added tokens, leftmost-longest first (as the tokenizers
// library's Aho-Corasick matcher does); a token with lstrip / rstrip also takes the white space
// on its left / right.
func splitAdded(s string, tokens []addedToken) []segment {
	if len(tokens) == 0 {
		return []segment{{text: s}}
	}
	var out []segment
	start := 0
	for i := 0; i < len(s); {
		var best *addedToken
		for k := range tokens {
			t := &tokens[k]
			if t.Content != "" && strings.HasPrefix(s[i:], t.Content) && (best == nil || len(t.Content) > len(best.Content)) {
				best = t
			}
		}
		if best == nil {
			_, size := utf8.DecodeRuneInString(s[i:])
			i += size
			continue
		}
		before := s[start:i]
		if best.LStrip {
			before = strings.TrimRightFunc(before, unicode.IsSpace)
		}
		if before != "" {
			out = append(out, segment{text: before})
		}
		out = append(out, segment{token: best})
		i += len(best.Content)
		if best.RStrip {
			i = len(s) - len(strings.TrimLeftFunc(s[i:], unicode.IsSpace))
		}
		start = i
	}
	if start < len(s) {
		out = append(out, segment{text: s[start:]})
	}
	return out
}
