package frozen

import (
	"context"
	"fmt"
	"slices"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/tokenizers"
)

// Tensor names of SD3's exported text encoders (exporters/sd3): CLIP graphs take input_ids
// int64 [B,77] and give hidden_states float32 [B,77,H] (the penultimate layer, which SD3
// reads) and text_embeds float32 [B,P] (the projected EOS state); the T5 graph takes
// input_ids int64 [B,S] and gives last_hidden_state float32 [B,S,D].
const (
	CLIPHiddenStates = "hidden_states"
	CLIPTextEmbeds   = "text_embeds"
	T5HiddenState    = "last_hidden_state"
)

// SD3Part is one text encoder of an SD3 pipeline: its ONNX graph and its tokenizer folder.
type SD3Part struct {
	Model     string
	Tokenizer string
	// MaxLength of the token rows; 0 takes the tokenizer's model_max_length (77 for CLIP).
	// SD3's T5 default is 256 (the pipeline's max_sequence_length).
	MaxLength int
}

// SD3TextEncoderOptions configures OpenSD3TextEncoder.
type SD3TextEncoderOptions struct {
	Runtime onnxrt.Config
	// CLIP are CLIP-L (text_encoder) and CLIP-G (text_encoder_2).
	CLIP [2]SD3Part
	// T5 is the T5 encoder (text_encoder_3); nil gives zeros in its place, as diffusers does
	// for a pipeline loaded without it.
	T5 *SD3Part
	// JointAttentionDim is the per-token width D of the result: T5's d_model, the
	// transformer's joint_attention_dim. Required; the graphs' widths are checked against it.
	JointAttentionDim int
	// T5Length is the token count of the T5 part without a T5 encoder (default 256).
	T5Length int
	// BatchSize caps the prompts per ONNX run (>= 1). Default 8.
	BatchSize int
	// CacheBytes bounds the per-prompt cache (>= 1 prompt's worth). Default 1 GiB — ~190
	// prompts of SD3.5-M (333 tokens × 4096 floats each).
	CacheBytes int64
}

// SD3TextEncoder is StableDiffusion3Pipeline.encode_prompt over ONNX Runtime: each CLIP's
// penultimate hidden states, concatenated on features (CLIP-L then CLIP-G) and zero-padded to
// T5's width, followed along the sequence by T5's states: prompt_embeds [B, 77 + S, D]; the
// two projected EOS states concatenated: pooled [B, P_L + P_G]. Safe for concurrent use.
type SD3TextEncoder struct {
	clip    [2]sd3Session
	t5      *sd3Session
	width   int // D
	t5Len   int
	pooled  int
	hidden  [2]int
	proj    [2]int
	batch   int
	cache   *promptCache
	closers []*onnxrt.Session
}

type sd3Session struct {
	path string
	sess *onnxrt.Session
	tok  *tokenizers.Tokenizer
	// inputs and outputs are what the graph declares, read from its file.
	inputs, outputs []onnxrt.TensorInfo
}

// OpenSD3TextEncoder opens the three graphs and tokenizers and checks every declared input
// and output against what SD3 needs.
func OpenSD3TextEncoder(opts SD3TextEncoderOptions) (*SD3TextEncoder, error) {
	if opts.JointAttentionDim <= 0 {
		return nil, fmt.Errorf("open SD3 text encoder: joint attention dim %d, want > 0", opts.JointAttentionDim)
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = 8
	}
	if opts.T5Length == 0 {
		opts.T5Length = 256
	}
	if opts.CacheBytes == 0 {
		opts.CacheBytes = 1 << 30
	}
	if opts.BatchSize < 1 {
		return nil, fmt.Errorf("open SD3 text encoder: batch size %d, want >= 1", opts.BatchSize)
	}
	e := &SD3TextEncoder{width: opts.JointAttentionDim, t5Len: opts.T5Length, batch: opts.BatchSize}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()
	// Every graph's declared tensors are checked from its file, alone and against the others,
	// before ONNX Runtime reads any of them.
	for i, part := range opts.CLIP {
		s, err := inspectPart(part, tokenizers.CLIP, opts.Runtime)
		if err != nil {
			return nil, err
		}
		e.clip[i] = s
		if e.hidden[i], e.proj[i], err = checkCLIP(s); err != nil {
			return nil, err
		}
	}
	if l0, l1 := e.clip[0].tok.MaxLength(), e.clip[1].tok.MaxLength(); l0 != l1 {
		return nil, fmt.Errorf("open SD3 text encoder: CLIP tokenizers %s and %s make %d and %d tokens, want the same", opts.CLIP[0].Tokenizer, opts.CLIP[1].Tokenizer, l0, l1)
	}
	if e.hidden[0]+e.hidden[1] > e.width {
		return nil, fmt.Errorf("open SD3 text encoder: CLIP widths %d + %d exceed the joint attention dim %d", e.hidden[0], e.hidden[1], e.width)
	}
	e.pooled = e.proj[0] + e.proj[1]
	parts := []*sd3Session{&e.clip[0], &e.clip[1]}
	if opts.T5 != nil {
		s, err := inspectPart(*opts.T5, tokenizers.T5, opts.Runtime)
		if err != nil {
			return nil, err
		}
		if err := checkT5(s, e.width); err != nil {
			return nil, err
		}
		e.t5 = &s
		e.t5Len = s.tok.MaxLength()
		parts = append(parts, e.t5)
	}
	for _, s := range parts {
		sess, err := onnxrt.Open(s.path, opts.Runtime)
		if err != nil {
			return nil, fmt.Errorf("open SD3 text encoder: %w", err)
		}
		s.sess = sess
		e.closers = append(e.closers, sess)
	}
	perPrompt := int64(4 * ((77+e.t5Len)*e.width + e.pooled))
	e.cache = newPromptCache(int(max(1, opts.CacheBytes/perPrompt)))
	ok = true
	return e, nil
}

// inspectPart loads part's tokenizer and reads the tensors its graph declares from the file.
func inspectPart(part SD3Part, kind tokenizers.Kind, rt onnxrt.Config) (sd3Session, error) {
	tok, err := tokenizers.Load(part.Tokenizer, kind, part.MaxLength)
	if err != nil {
		return sd3Session{}, fmt.Errorf("open SD3 text encoder: %w", err)
	}
	s := sd3Session{path: part.Model, tok: tok}
	if s.inputs, s.outputs, err = onnxrt.Inspect(part.Model, rt); err != nil {
		return sd3Session{}, fmt.Errorf("open SD3 text encoder: %w", err)
	}
	return s, nil
}

// checkCLIP checks a CLIP graph and returns its hidden and projection widths (0 where dynamic).
func checkCLIP(s sd3Session) (hidden, proj int, err error) {
	const what = "CLIP text encoder"
	l := int64(s.tok.MaxLength())
	in, err := checkDeclared(what, s.path, s.inputs, tensorWant{"input", InputIDs, "int64", []int64{-1, l}})
	if err != nil {
		return 0, 0, err
	}
	if err := checkOnlyInputs(what, s.path, s.inputs, InputIDs); err != nil {
		return 0, 0, err
	}
	h, err := checkDeclared(what, s.path, s.outputs, tensorWant{"output", CLIPHiddenStates, "float32", []int64{in.Dims[0], l, -1}})
	if err != nil {
		return 0, 0, err
	}
	p, err := checkDeclared(what, s.path, s.outputs, tensorWant{"output", CLIPTextEmbeds, "float32", []int64{in.Dims[0], -1}})
	if err != nil {
		return 0, 0, err
	}
	if h.Dims[2] <= 0 || p.Dims[1] <= 0 {
		return 0, 0, fmt.Errorf("%s %s: widths of %s %s and %s %s must be fixed", what, s.path,
			CLIPHiddenStates, onnxrt.FormatDims(h.Dims), CLIPTextEmbeds, onnxrt.FormatDims(p.Dims))
	}
	return int(h.Dims[2]), int(p.Dims[1]), nil
}

func checkT5(s sd3Session, width int) error {
	const what = "T5 text encoder"
	in, err := checkDeclared(what, s.path, s.inputs, tensorWant{"input", InputIDs, "int64", []int64{-1, int64(s.tok.MaxLength())}})
	if err != nil {
		return err
	}
	if err := checkOnlyInputs(what, s.path, s.inputs, InputIDs); err != nil {
		return err
	}
	_, err = checkDeclared(what, s.path, s.outputs, tensorWant{"output", T5HiddenState, "float32",
		[]int64{in.Dims[0], int64(s.tok.MaxLength()), int64(width)}})
	return err
}

// Length is the token count of prompt_embeds: 77 + T5's length.
func (e *SD3TextEncoder) Length() int { return e.clip[0].tok.MaxLength() + e.t5Len }

// Dims returns the widths D (per token, the joint attention dim) and P (pooled).
func (e *SD3TextEncoder) Dims() (d, p int) { return e.width, e.pooled }

// Path names the encoder in errors: its first graph.
func (e *SD3TextEncoder) Path() string { return e.clip[0].path }

// Encode returns prompt_embeds [N, 77+S, D] and pooled_prompt_embeds [N, P] of prompts (the
// empty prompt gives CFG's negative embedding, as encode_prompt's default negative prompt).
func (e *SD3TextEncoder) Encode(ctx context.Context, prompts []string) (embeds, pooled onnxrt.Tensor, err error) {
	if len(prompts) == 0 {
		return onnxrt.Tensor{}, onnxrt.Tensor{}, fmt.Errorf("encode prompts with %s: no prompts", e.Path())
	}
	found, err := e.cache.encode(ctx, prompts, e.batch, e.run)
	if err != nil {
		return onnxrt.Tensor{}, onnxrt.Tensor{}, err
	}
	embeds, pooled = assemble(prompts, found, e.Length())
	return embeds, pooled, nil
}

// CacheLen is the number of cached prompts.
func (e *SD3TextEncoder) CacheLen() int { return e.cache.len() }

// tokenize runs one tokenizer over prompts into an [N, L] batch.
func tokenize(s sd3Session, prompts []string) (onnxrt.Tensor, error) {
	l := s.tok.MaxLength()
	ids := make([]int64, 0, len(prompts)*l)
	for _, p := range prompts {
		row, err := s.tok.Encode(p)
		if err != nil {
			return onnxrt.Tensor{}, err
		}
		ids = append(ids, row...)
	}
	return onnxrt.Tensor{Shape: []int64{int64(len(prompts)), int64(l)}, Int64: ids}, nil
}

// runPart tokenizes and runs one graph, checking the outputs' shapes.
func runPart(ctx context.Context, s sd3Session, prompts []string, outputs map[string][]int64) (map[string]onnxrt.Tensor, error) {
	ids, err := tokenize(s, prompts)
	if err != nil {
		return nil, fmt.Errorf("encode prompts: %w", err)
	}
	names := make([]string, 0, len(outputs))
	for name := range outputs {
		names = append(names, name)
	}
	slices.Sort(names)
	out, err := s.sess.Run(ctx, map[string]onnxrt.Tensor{InputIDs: ids}, names...)
	if err != nil {
		return nil, fmt.Errorf("encode prompts: %w", err)
	}
	for _, name := range names {
		if got := out[name].Shape; !slices.Equal(got, outputs[name]) {
			return nil, fmt.Errorf("encode prompts with %s: output %q has shape %s, want %s", s.path, name, onnxrt.FormatDims(got), onnxrt.FormatDims(outputs[name]))
		}
	}
	return out, nil
}

// run encodes one batch of distinct prompts.
func (e *SD3TextEncoder) run(ctx context.Context, prompts []string) ([]encoded, error) {
	n := int64(len(prompts))
	clipLen := e.clip[0].tok.MaxLength()
	var hidden, proj [2]onnxrt.Tensor
	for i, s := range e.clip {
		out, err := runPart(ctx, s, prompts, map[string][]int64{
			CLIPHiddenStates: {n, int64(clipLen), int64(e.hidden[i])},
			CLIPTextEmbeds:   {n, int64(e.proj[i])},
		})
		if err != nil {
			return nil, err
		}
		hidden[i], proj[i] = out[CLIPHiddenStates], out[CLIPTextEmbeds]
	}
	var t5 onnxrt.Tensor
	if e.t5 != nil {
		out, err := runPart(ctx, *e.t5, prompts, map[string][]int64{T5HiddenState: {n, int64(e.t5Len), int64(e.width)}})
		if err != nil {
			return nil, err
		}
		t5 = out[T5HiddenState]
	}
	d, hl, hg := e.width, e.hidden[0], e.hidden[1]
	encs := make([]encoded, len(prompts))
	for b := range encs {
		emb := make([]float32, (clipLen+e.t5Len)*d) // zero padding and zero T5 rows
		for tok := range clipLen {
			row := emb[tok*d : (tok+1)*d]
			copy(row, hidden[0].Float32[(b*clipLen+tok)*hl:(b*clipLen+tok+1)*hl])
			copy(row[hl:], hidden[1].Float32[(b*clipLen+tok)*hg:(b*clipLen+tok+1)*hg])
		}
		if e.t5 != nil {
			copy(emb[clipLen*d:], t5.Float32[b*e.t5Len*d:(b+1)*e.t5Len*d])
		}
		pooled := make([]float32, 0, e.pooled)
		pooled = append(pooled, proj[0].Float32[b*e.proj[0]:(b+1)*e.proj[0]]...)
		pooled = append(pooled, proj[1].Float32[b*e.proj[1]:(b+1)*e.proj[1]]...)
		encs[b] = encoded{embeds: emb, pooled: pooled}
	}
	return encs, nil
}

// Close releases every session; safe on a partly opened encoder and more than once.
func (e *SD3TextEncoder) Close() error {
	var first error
	for _, s := range e.closers {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
	}
	e.closers = nil
	return first
}
