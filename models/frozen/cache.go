package frozen

import (
	"context"
	"sync"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// encoded is one prompt's embeddings: L·D per-token values and P pooled values.
type encoded struct {
	embeds, pooled []float32
}

// promptCache keeps prompts' embeddings: in GRPO every prompt is encoded G times per group
// and again every epoch it is drawn, but runs once. When full it is emptied and refilled.
type promptCache struct {
	mu       sync.Mutex
	m        map[string]encoded
	maxItems int
}

func newPromptCache(maxItems int) *promptCache {
	return &promptCache{m: map[string]encoded{}, maxItems: max(maxItems, 1)}
}

// encode returns every distinct prompt's embeddings, running the prompts not cached through
// run in batches of at most batch, and caches them.
func (c *promptCache) encode(ctx context.Context, prompts []string, batch int,
	run func(context.Context, []string) ([]encoded, error)) (map[string]encoded, error) {
	c.mu.Lock()
	found := make(map[string]encoded, len(prompts))
	var missing []string
	for _, p := range prompts {
		if _, done := found[p]; done {
			continue
		}
		if enc, ok := c.m[p]; ok {
			found[p] = enc
			continue
		}
		found[p] = encoded{}
		missing = append(missing, p)
	}
	c.mu.Unlock()

	for _, ch := range chunks(len(missing), batch) {
		encs, err := run(ctx, missing[ch[0]:ch[1]])
		if err != nil {
			return nil, err
		}
		for i, enc := range encs {
			found[missing[ch[0]+i]] = enc
		}
	}
	if len(missing) > 0 {
		c.mu.Lock()
		if len(c.m)+len(missing) > c.maxItems {
			clear(c.m)
		}
		for _, p := range missing[:min(len(missing), c.maxItems)] {
			c.m[p] = found[p]
		}
		c.mu.Unlock()
	}
	return found, nil
}

func (c *promptCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// assemble lays the prompts' embeddings out as [N,L,D] and [N,P] tensors.
func assemble(prompts []string, found map[string]encoded, l int) (embeds, pooled onnxrt.Tensor) {
	first := found[prompts[0]]
	n, ld, pd := len(prompts), len(first.embeds), len(first.pooled)
	embeds = onnxrt.Tensor{Shape: []int64{int64(n), int64(l), int64(ld / l)}, Float32: make([]float32, 0, n*ld)}
	pooled = onnxrt.Tensor{Shape: []int64{int64(n), int64(pd)}, Float32: make([]float32, 0, n*pd)}
	for _, p := range prompts {
		enc := found[p]
		embeds.Float32 = append(embeds.Float32, enc.embeds...)
		pooled.Float32 = append(pooled.Float32, enc.pooled...)
	}
	return embeds, pooled
}
