package mmdit

import (
	"fmt"
	"strings"
)

// KeyToScope maps a checkpoint key to the GoMLX variable that holds it: the
// module path becomes the scope (dots → scope separators, under the model's
// root scope "/") and the last element is the variable name.
//
//	"transformer_blocks.3.attn.to_q.weight" → ("/transformer_blocks/3/attn/to_q", "weight")
//	"transformer_blocks.0.attn.to_out.0.lora_A.weight" → ("/transformer_blocks/0/attn/to_out/0/lora_A", "weight")
//
// It is the inverse of ScopeToKey.
func KeyToScope(key string) (scope, name string, err error) {
	parts := strings.Split(key, ".")
	if len(parts) < 2 {
		return "", "", fmt.Errorf("checkpoint key %q: want module.path.name", key)
	}
	for _, p := range parts {
		if p == "" || strings.Contains(p, "/") {
			return "", "", fmt.Errorf("checkpoint key %q: empty element or %q in element", key, "/")
		}
	}
	return "/" + strings.Join(parts[:len(parts)-1], "/"), parts[len(parts)-1], nil
}

// ScopeToKey maps a variable (scope relative to the model root, as returned by
// KeyToScope, and name) back to its checkpoint key. It is the inverse of
// KeyToScope.
func ScopeToKey(scope, name string) (string, error) {
	if !strings.HasPrefix(scope, "/") || len(scope) < 2 {
		return "", fmt.Errorf("variable scope %q: want an absolute, non-root scope", scope)
	}
	parts := strings.Split(scope[1:], "/")
	parts = append(parts, name)
	for _, p := range parts {
		if p == "" || strings.Contains(p, ".") {
			return "", fmt.Errorf("variable %q in scope %q: empty element or %q in element", name, scope, ".")
		}
	}
	return strings.Join(parts, "."), nil
}

// joinRoot places a model-relative scope ("/a/b") under the model's root
// scope (the scope of the context the model is used with).
func joinRoot(root, scope string) string {
	if root == "" || root == "/" {
		return scope
	}
	return strings.TrimSuffix(root, "/") + scope
}

// Param is one tensor of the model: its checkpoint key and shape.
type Param struct {
	Key   string
	Shape []int
}

// paramList collects params in declaration order.
type paramList []Param

func (p *paramList) linear(module string, in, out int) {
	*p = append(*p, Param{module + ".weight", []int{out, in}}, Param{module + ".bias", []int{out}})
}

func (p *paramList) add(key string, shape ...int) { *p = append(*p, Param{key, shape}) }

// Params lists every base-model tensor with the diffusers checkpoint key and
// shape, in module order. It is the single declaration of the model's weights:
// Forward looks shapes up here, Init/Load/SaveBase iterate it. The last
// block's attn.add_q_proj and attn.norm_added_q are declared (checkpoints have
// them) but Forward does not read them: they only feed that block's discarded
// text output.
func (c Config) Params() []Param {
	d := c.InnerDim()
	p := c.PatchSize
	var ps paramList
	ps.add("pos_embed.proj.weight", d, c.InChannels, p, p)
	ps.add("pos_embed.proj.bias", d)
	ps.linear("time_text_embed.timestep_embedder.linear_1", timestepChannels, d)
	ps.linear("time_text_embed.timestep_embedder.linear_2", d, d)
	ps.linear("time_text_embed.text_embedder.linear_1", c.PooledProjectionDim, d)
	ps.linear("time_text_embed.text_embedder.linear_2", d, d)
	ps.linear("context_embedder", c.JointAttentionDim, c.CaptionProjectionDim)
	for i := 0; i < c.NumLayers; i++ {
		b := fmt.Sprintf("transformer_blocks.%d", i)
		last := i == c.NumLayers-1
		dual := c.IsDualAttention(i)
		if dual {
			ps.linear(b+".norm1.linear", d, 9*d)
		} else {
			ps.linear(b+".norm1.linear", d, 6*d)
		}
		if last {
			ps.linear(b+".norm1_context.linear", d, 2*d)
		} else {
			ps.linear(b+".norm1_context.linear", d, 6*d)
		}
		for _, m := range []string{"to_q", "to_k", "to_v"} {
			ps.linear(b+".attn."+m, d, d)
		}
		for _, m := range []string{"add_k_proj", "add_v_proj", "add_q_proj"} {
			ps.linear(b+".attn."+m, d, d)
		}
		ps.linear(b+".attn.to_out.0", d, d)
		if !last {
			ps.linear(b+".attn.to_add_out", d, d)
		}
		if c.QKNorm == "rms_norm" {
			for _, m := range []string{"norm_q", "norm_k", "norm_added_q", "norm_added_k"} {
				ps.add(b+".attn."+m+".weight", c.AttentionHeadDim)
			}
		}
		if dual {
			for _, m := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
				ps.linear(b+".attn2."+m, d, d)
			}
			if c.QKNorm == "rms_norm" {
				ps.add(b+".attn2.norm_q.weight", c.AttentionHeadDim)
				ps.add(b+".attn2.norm_k.weight", c.AttentionHeadDim)
			}
		}
		ps.linear(b+".ff.net.0.proj", d, ffMult*d)
		ps.linear(b+".ff.net.2", ffMult*d, d)
		if !last {
			ps.linear(b+".ff_context.net.0.proj", d, ffMult*d)
			ps.linear(b+".ff_context.net.2", ffMult*d, d)
		}
	}
	ps.linear("norm_out.linear", d, 2*d)
	ps.linear("proj_out", d, p*p*c.OutChannels)
	return ps
}

// posEmbedKey is the buffer diffusers stores with the weights; this package
// computes it, so Load checks it and otherwise ignores it.
const posEmbedKey = "pos_embed.pos_embed"

// NumParams is the number of base-model parameters (LoRA excluded).
func (c Config) NumParams() int {
	n := 0
	for _, p := range c.Params() {
		n += numElements(p.Shape)
	}
	return n
}

func numElements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}
