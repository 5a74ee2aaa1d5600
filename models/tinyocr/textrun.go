package tinyocr

import (
	"fmt"
	"strings"
	"sync"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

// TextEncoderPrefix is the checkpoint prefix of the text encoder's tensors.
const TextEncoderPrefix = "text_encoder"

// TextEncoderTensors returns the tensors of ts under prefix+"." (the text encoder's part of a
// checkpoint that also holds other models) and the configuration their shapes imply.
func TextEncoderTensors(ts map[string]safetensors.Tensor, prefix string) (map[string]safetensors.Tensor, TextEncoderConfig, error) {
	sub := map[string]safetensors.Tensor{}
	for k, t := range ts {
		if strings.HasPrefix(k, prefix+".") {
			sub[k] = t
		}
	}
	cfg, err := textEncoderConfig(prefix, func(key string) ([]int, bool) {
		t, ok := sub[key]
		return t.Shape, ok
	})
	if err != nil {
		return nil, cfg, err
	}
	if err := CheckTensors(sub, TextEncoderParamShapes(cfg, prefix)); err != nil {
		return nil, cfg, err
	}
	return sub, cfg, nil
}

// ReadTextEncoder reads the text encoder under prefix+"." from a safetensors file: the
// configuration comes from the header's shapes, every tensor under the prefix is checked
// against it, and only then are those tensors read (others in the file are left unread).
func ReadTextEncoder(path, prefix string) (map[string]safetensors.Tensor, TextEncoderConfig, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, TextEncoderConfig{}, fmt.Errorf("read text encoder: %w", err)
	}
	defer f.Close()
	cfg, err := textEncoderConfig(prefix, func(key string) ([]int, bool) {
		info, ok := f.Info(key)
		return info.Shape, ok
	})
	if err != nil {
		return nil, cfg, fmt.Errorf("read text encoder %s: %w", path, err)
	}
	var others []string
	for _, name := range f.Names() {
		if !strings.HasPrefix(name, prefix+".") {
			others = append(others, name)
		}
	}
	ts, err := ReadTensors(f, TextEncoderParamShapes(cfg, prefix), others...)
	if err != nil {
		return nil, cfg, fmt.Errorf("read text encoder %s: %w", path, err)
	}
	return ts, cfg, nil
}

// textEncoderConfig derives the text encoder's configuration from the shapes of three of its
// tensors, looked up by shapeOf.
func textEncoderConfig(prefix string, shapeOf func(key string) ([]int, bool)) (TextEncoderConfig, error) {
	shape := func(key string, rank int) ([]int, error) {
		s, ok := shapeOf(prefix + "." + key)
		if !ok {
			return nil, fmt.Errorf("missing tensor %q", prefix+"."+key)
		}
		if len(s) != rank {
			return nil, fmt.Errorf("tensor %q: shape %v, want rank %d", prefix+"."+key, s, rank)
		}
		return s, nil
	}
	var cfg TextEncoderConfig
	emb, err := shape("token_embedding.weight", 2)
	if err != nil {
		return cfg, err
	}
	fc1, err := shape("block.fc1.weight", 2)
	if err != nil {
		return cfg, err
	}
	pp, err := shape("pooled_proj.weight", 2)
	if err != nil {
		return cfg, err
	}
	cfg = TextEncoderConfig{Dim: emb[1], Hidden: fc1[0], PooledDim: pp[0]}
	return cfg, cfg.Validate()
}

// TextEncoder runs frozen text encoder weights on a GoMLX backend (the reference the ONNX
// export is checked against). Safe for concurrent use (calls are serialised).
type TextEncoder struct {
	Config TextEncoderConfig
	mu     sync.Mutex
	exec   *mlctx.Exec
}

// NewTextEncoder prepares the tensors under prefix of ts (see TextEncoderTensors) on backend.
func NewTextEncoder(backend backends.Backend, ts map[string]safetensors.Tensor, prefix string) (*TextEncoder, error) {
	sub, cfg, err := TextEncoderTensors(ts, prefix)
	if err != nil {
		return nil, fmt.Errorf("load text encoder: %w", err)
	}
	mctx := mlctx.New()
	if err := ImportVariables(mctx, sub, TextEncoderParamShapes(cfg, prefix)); err != nil {
		return nil, fmt.Errorf("load text encoder: %w", err)
	}
	frozen := mctx.Reuse()
	exec, err := mlctx.NewExec(backend, frozen, func(c *mlctx.Context, ids *Node) (*Node, *Node) {
		return TextEncode(c.In(prefix), cfg, ids)
	})
	if err != nil {
		return nil, fmt.Errorf("load text encoder: %w", err)
	}
	return &TextEncoder{Config: cfg, exec: exec}, nil
}

// Encode runs ids [n, MaxLength] (see TokenizeBatch) and returns the per-token embeddings
// [n, MaxLength, Dim] and the pooled embeddings [n, PooledDim].
func (e *TextEncoder) Encode(ids []int64, n int) (tokens, pooled []float32, err error) {
	if n < 1 || len(ids) != n*MaxLength {
		return nil, nil, fmt.Errorf("text encoder: got %d ids for %d prompts, want %d", len(ids), n, n*MaxLength)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var outs []*tensors.Tensor
	if perr := tryPanic(func() { outs, err = e.exec.Exec(tensors.FromFlatDataAndDimensions(ids, n, MaxLength)) }); perr != nil {
		return nil, nil, fmt.Errorf("text encoder: %w", perr)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("text encoder: %w", err)
	}
	defer func() {
		for _, t := range outs {
			t.FinalizeAll()
		}
	}()
	if tokens, err = tensors.CopyFlatData[float32](outs[0]); err != nil {
		return nil, nil, fmt.Errorf("text encoder: %w", err)
	}
	if pooled, err = tensors.CopyFlatData[float32](outs[1]); err != nil {
		return nil, nil, fmt.Errorf("text encoder: %w", err)
	}
	return tokens, pooled, nil
}

// Close releases the compiled graph.
func (e *TextEncoder) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.exec.Finalize()
}

// InitTextEncoder creates fresh (randomly initialised) text encoder variables under prefix
// and returns them as tensors, e.g. to start pretraining or for export tests. seed seeds
// GoMLX's initialisers.
func InitTextEncoder(backend backends.Backend, cfg TextEncoderConfig, prefix string, seed int64) (map[string]safetensors.Tensor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mctx := mlctx.New()
	mctx.SetParam(mlctx.ParamInitialSeed, seed)
	ids := make([]int64, MaxLength)
	if _, err := mlctx.ExecOnceN(backend, mctx, func(c *mlctx.Context, ids *Node) []*Node {
		tok, pooled := TextEncode(c.In(prefix), cfg, ids)
		return []*Node{tok, pooled}
	}, tensors.FromFlatDataAndDimensions(ids, 1, MaxLength)); err != nil {
		return nil, fmt.Errorf("init text encoder: %w", err)
	}
	ts, err := ExportVariables(mctx, TextEncoderParamShapes(cfg, prefix))
	if err != nil {
		return nil, fmt.Errorf("init text encoder: %w", err)
	}
	return ts, nil
}
