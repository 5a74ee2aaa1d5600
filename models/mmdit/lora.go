package mmdit

import (
	"fmt"
	"strings"
)

// DefaultLoRATargets are the attention projections of both streams, the
// Flow-GRPO choice: q, k, v, out of the image stream and of the text stream.
var DefaultLoRATargets = []string{"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}

// LoRAConfig configures low-rank adapters: every targeted linear layer
// computes W·x + b + (Alpha/Rank)·B·A·x with A [Rank, in] and B [out, Rank].
type LoRAConfig struct {
	// Rank r of the update, > 0. SD3.5-M in Flow-GRPO: 32.
	Rank int
	// Alpha scales the update by Alpha/Rank, > 0. Flow-GRPO: 64.
	Alpha float64
	// Targets are module names matched as PEFT does: a module is adapted if
	// its key equals a target or ends with "." + target ("to_q" matches
	// "transformer_blocks.3.attn.to_q"; "attn.to_q" excludes "attn2.to_q").
	// Empty means DefaultLoRATargets.
	Targets []string
}

// Scale is Alpha/Rank, the factor of B·A·x.
func (l LoRAConfig) Scale() float64 { return l.Alpha / float64(l.Rank) }

func (l LoRAConfig) targets() []string {
	if len(l.Targets) == 0 {
		return DefaultLoRATargets
	}
	return l.Targets
}

// Matches reports whether the module (a checkpoint key without ".weight") is
// adapted.
func (l LoRAConfig) Matches(module string) bool {
	for _, t := range l.targets() {
		if module == t || strings.HasSuffix(module, "."+t) {
			return true
		}
	}
	return false
}

// Validate checks rank and alpha, and that every target adapts at least one
// linear layer of a model with the given config.
func (l LoRAConfig) Validate(c Config) error {
	if l.Rank <= 0 {
		return fmt.Errorf("lora rank: got %d, want > 0", l.Rank)
	}
	if !(l.Alpha > 0) {
		return fmt.Errorf("lora alpha: got %g, want > 0", l.Alpha)
	}
	linears := linearModules(c)
	for _, t := range l.targets() {
		found := false
		for _, m := range linears {
			if m.name == t || strings.HasSuffix(m.name, "."+t) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("lora target %q: matches no linear layer of the model", t)
		}
	}
	return nil
}

type linearModule struct {
	name    string
	in, out int
}

// linearModules lists the model's linear layers (2-D weights) in order.
func linearModules(c Config) []linearModule {
	var out []linearModule
	for _, p := range c.Params() {
		if len(p.Shape) == 2 && strings.HasSuffix(p.Key, ".weight") {
			out = append(out, linearModule{strings.TrimSuffix(p.Key, ".weight"), p.Shape[1], p.Shape[0]})
		}
	}
	return out
}

// LoRAParams lists the adapter tensors with PEFT keys
// ("transformer_blocks.0.attn.to_q.lora_A.weight" [r, in], "….lora_B.weight"
// [out, r]), in module order.
func (l LoRAConfig) Params(c Config) []Param {
	var ps []Param
	for _, m := range linearModules(c) {
		if l.Matches(m.name) {
			ps = append(ps,
				Param{m.name + ".lora_A.weight", []int{l.Rank, m.in}},
				Param{m.name + ".lora_B.weight", []int{m.out, l.Rank}})
		}
	}
	return ps
}
