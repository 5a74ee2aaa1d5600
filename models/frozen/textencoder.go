package frozen

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/tinyocr"
)

// Tensor names of the text encoder graph: input ids int64 [B,L]; per-token embeddings float32
// [B,L,D]; pooled embedding float32 [B,P].
const (
	InputIDs           = "input_ids"
	PromptEmbeds       = "prompt_embeds"
	PooledPromptEmbeds = "pooled_prompt_embeds"
)

// Tokenizer turns a prompt into exactly Length token ids.
type Tokenizer struct {
	Name   string
	Length int
	Encode func(prompt string) []int64
}

// Tokenizers are the tokenizers a text encoder may name. "chars" is the tiny-ocr character
// vocabulary the GoMLX text encoder of models/tinyocr was trained with (one id per character,
// no begin/end tokens, padded with 0 to tinyocr.MaxLength).
var Tokenizers = map[string]Tokenizer{
	"chars": {Name: "chars", Length: tinyocr.MaxLength, Encode: tinyocr.Tokenize},
}

// TokenizerNames lists the registered tokenizers, sorted.
func TokenizerNames() []string {
	var out []string
	for n := range Tokenizers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// TextEncoderOptions configures OpenTextEncoder.
type TextEncoderOptions struct {
	// Runtime selects the ONNX Runtime library, provider and threads.
	Runtime onnxrt.Config
	// Tokenizer names an entry of Tokenizers. Default "chars".
	Tokenizer string
	// MaxLength L of the token sequence; it must equal the tokenizer's length. Default: the
	// tokenizer's length.
	MaxLength int
	// BatchSize caps the prompts per ONNX run (>= 1). Default 64. A graph with a fixed batch
	// dim runs exactly that many rows (the last run padded).
	BatchSize int
	// CacheSize caps the cached prompts (>= 1); when full, the cache is emptied and refilled.
	// Default 8192 (the tiny-ocr encoder keeps 12.5 KiB per prompt: about 100 MiB).
	CacheSize int
}

// TextEncoder is an opened ONNX text encoder with a per-prompt cache: in GRPO every prompt is
// encoded G times per group and again every epoch it is drawn, but runs once.
type TextEncoder struct {
	path  string
	sess  *onnxrt.Session
	tok   Tokenizer
	batch int
	fixed bool // the graph's batch dim is fixed to batch

	runs  atomic.Int64 // ONNX runs so far (tests check the cache with it)
	cache *promptCache

	mu   sync.Mutex
	d, p int // embedding widths, from the graph or the first run (0 = not known yet)
}

// OpenTextEncoder opens the ONNX text encoder at path and checks that it declares input
// `input_ids` int64 [B,L] and outputs `prompt_embeds` float32 [B,L,D] and
// `pooled_prompt_embeds` float32 [B,P], with L the tokenizer's length where fixed.
func OpenTextEncoder(path string, opts TextEncoderOptions) (*TextEncoder, error) {
	if opts.Tokenizer == "" {
		opts.Tokenizer = "chars"
	}
	tok, ok := Tokenizers[opts.Tokenizer]
	if !ok {
		return nil, fmt.Errorf("open text encoder %s: unknown tokenizer %q (known: %s)", path, opts.Tokenizer, strings.Join(TokenizerNames(), ", "))
	}
	if opts.MaxLength == 0 {
		opts.MaxLength = tok.Length
	}
	if opts.MaxLength != tok.Length {
		return nil, fmt.Errorf("open text encoder %s: max_length: got %d, want %d (tokenizer %q makes %d ids per prompt)",
			path, opts.MaxLength, tok.Length, tok.Name, tok.Length)
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = 64
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 8192
	}
	if opts.BatchSize < 1 || opts.CacheSize < 1 {
		return nil, fmt.Errorf("open text encoder %s: batch size %d, cache size %d: want >= 1", path, opts.BatchSize, opts.CacheSize)
	}
	// The declared tensors are checked from the file before ONNX Runtime reads it.
	ins, outs, err := onnxrt.Inspect(path, opts.Runtime)
	if err != nil {
		return nil, fmt.Errorf("open text encoder: %w", err)
	}
	e := &TextEncoder{path: path, tok: tok, batch: opts.BatchSize, cache: newPromptCache(opts.CacheSize)}
	if err := e.check(ins, outs); err != nil {
		return nil, err
	}
	if e.sess, err = onnxrt.Open(path, opts.Runtime); err != nil {
		return nil, fmt.Errorf("open text encoder: %w", err)
	}
	return e, nil
}

func (e *TextEncoder) check(inputs, outputs []onnxrt.TensorInfo) error {
	const what = "text encoder"
	l := int64(e.tok.Length)
	in, err := checkDeclared(what, e.path, inputs, tensorWant{"input", InputIDs, "int64", []int64{-1, l}})
	if err != nil {
		return err
	}
	if err := checkOnlyInputs(what, e.path, inputs, InputIDs); err != nil {
		return err
	}
	emb, err := checkDeclared(what, e.path, outputs, tensorWant{"output", PromptEmbeds, "float32", []int64{in.Dims[0], l, -1}})
	if err != nil {
		return err
	}
	pooled, err := checkDeclared(what, e.path, outputs, tensorWant{"output", PooledPromptEmbeds, "float32", []int64{in.Dims[0], -1}})
	if err != nil {
		return err
	}
	if b := in.Dims[0]; b > 0 {
		e.batch, e.fixed = int(b), true
	}
	e.d, e.p = max(int(emb.Dims[2]), 0), max(int(pooled.Dims[1]), 0)
	return nil
}

// Path is the ONNX file.
func (e *TextEncoder) Path() string { return e.path }

// Length is L, the tokens per prompt.
func (e *TextEncoder) Length() int { return e.tok.Length }

// Dims returns the embedding widths D (per token) and P (pooled) as the graph declares them,
// or as the first run found them; 0 while unknown.
func (e *TextEncoder) Dims() (d, p int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.d, e.p
}

// Tokenize returns the ids of prompt, exactly Length of them.
func (e *TextEncoder) Tokenize(prompt string) []int64 { return e.tok.Encode(prompt) }

// Encode returns the per-token embeddings [N,L,D] and the pooled embeddings [N,P] of prompts
// (float32, row-major), N = len(prompts). Each distinct prompt not in the cache is encoded
// once, in batches of at most the batch size.
func (e *TextEncoder) Encode(ctx context.Context, prompts []string) (embeds, pooled onnxrt.Tensor, err error) {
	if len(prompts) == 0 {
		return onnxrt.Tensor{}, onnxrt.Tensor{}, fmt.Errorf("encode prompts with %s: no prompts", e.path)
	}
	found, err := e.cache.encode(ctx, prompts, e.batch, e.run)
	if err != nil {
		return onnxrt.Tensor{}, onnxrt.Tensor{}, err
	}
	embeds, pooled = assemble(prompts, found, e.tok.Length)
	return embeds, pooled, nil
}

// run encodes one batch of prompts (padded to the fixed batch size if the graph has one).
func (e *TextEncoder) run(ctx context.Context, prompts []string) ([]encoded, error) {
	l := e.tok.Length
	rows := len(prompts)
	if e.fixed {
		rows = e.batch
	}
	ids := make([]int64, 0, rows*l)
	for i := range rows {
		ids = append(ids, e.tok.Encode(prompts[min(i, len(prompts)-1)])...)
	}
	e.runs.Add(1)
	out, err := e.sess.Run(ctx, map[string]onnxrt.Tensor{InputIDs: {Shape: []int64{int64(rows), int64(l)}, Int64: ids}},
		PromptEmbeds, PooledPromptEmbeds)
	if err != nil {
		return nil, fmt.Errorf("encode prompts: %w", err)
	}
	emb, pooled := out[PromptEmbeds], out[PooledPromptEmbeds]
	if len(emb.Shape) != 3 || emb.Shape[0] != int64(rows) || emb.Shape[1] != int64(l) || len(pooled.Shape) != 2 || pooled.Shape[0] != int64(rows) {
		return nil, fmt.Errorf("encode prompts with %s: outputs %s %s and %s %s, want [%d,%d,D] and [%d,P]", e.path,
			PromptEmbeds, onnxrt.FormatDims(emb.Shape), PooledPromptEmbeds, onnxrt.FormatDims(pooled.Shape), rows, l, rows)
	}
	d, p := int(emb.Shape[2]), int(pooled.Shape[1])
	e.mu.Lock()
	if (e.d != 0 && e.d != d) || (e.p != 0 && e.p != p) {
		wd, wp := e.d, e.p
		e.mu.Unlock()
		return nil, fmt.Errorf("encode prompts with %s: embedding widths D=%d, P=%d, want %d and %d", e.path, d, p, wd, wp)
	}
	e.d, e.p = d, p
	e.mu.Unlock()
	encs := make([]encoded, len(prompts))
	for i := range encs {
		encs[i] = encoded{
			embeds: slices.Clone(emb.Float32[i*l*d : (i+1)*l*d]),
			pooled: slices.Clone(pooled.Float32[i*p : (i+1)*p]),
		}
	}
	return encs, nil
}

// CacheLen is the number of cached prompts.
func (e *TextEncoder) CacheLen() int { return e.cache.len() }

// Close releases the session.
func (e *TextEncoder) Close() error { return e.sess.Close() }
