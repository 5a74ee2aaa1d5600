package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/densegrpo/densegrpo/pipeline"
)

func init() {
	register(command{name: "eval", summary: "evaluate the policy on the test prompts (ODE sampling, mean rewards)", run: runEval})
}

// policyFlags are the flags that choose a config and the policy's adapters, shared by eval and
// sample.
type policyFlags struct {
	config     string
	sets       []string
	lora       string
	checkpoint string
}

func addPolicyFlags(fs *flag.FlagSet) *policyFlags {
	pf := &policyFlags{}
	fs.StringVar(&pf.config, "config", "", "training TOML (required)")
	fs.Var((*setFlag)(&pf.sets), "set", "override a config value, key=value (repeatable), e.g. eval.prompts=16")
	fs.StringVar(&pf.lora, "lora", "", "adapters to apply: a PEFT folder (export-lora, peft's save_pretrained), a diffusers LoRA file or folder, or a safetensors file of PEFT names; their recorded rank and alpha are used")
	fs.StringVar(&pf.checkpoint, "checkpoint", "", "run checkpoint directory: its ema.safetensors if present, else lora.safetensors")
	return pf
}

// load reads the config and builds the policy; desc says which adapters it carries.
func (pf *policyFlags) load() (cfg pipeline.Config, policy *pipeline.Policy, desc string, err error) {
	if pf.config == "" {
		return cfg, nil, "", usageError("--config is required")
	}
	if pf.lora != "" && pf.checkpoint != "" {
		return cfg, nil, "", usageError("--lora and --checkpoint exclude each other")
	}
	if cfg, err = pipeline.Load(pf.config, pf.sets); err != nil {
		return cfg, nil, "", err
	}
	lora := pf.lora
	if pf.checkpoint != "" {
		if lora, err = pipeline.CheckpointLoRA(pf.checkpoint); err != nil {
			return cfg, nil, "", err
		}
	}
	if policy, err = pipeline.NewPolicy(cfg, pipeline.PolicyOptions{LoRA: lora}); err != nil {
		return cfg, nil, "", err
	}
	desc = "base model (LoRA off: adapters initialised with lora_B = 0)"
	if lora != "" {
		l := policy.Model.LoRA
		desc = fmt.Sprintf("base model + LoRA %s (r %d, alpha %g)", lora, l.Rank, l.Alpha)
		if info, ok, err := pipeline.ReadAdapterInfo(lora); err == nil && ok {
			desc += fmt.Sprintf(": EMA of %s %s, %s + %s, seed %d, epoch %d", info.Run, info.Checkpoint, info.Method, info.Sampler, info.Seed, info.Epoch)
		}
	}
	return cfg, policy, desc, nil
}

func runEval(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("eval", "", out)
	pf := addPolicyFlags(fs)
	asJSON := fs.Bool("json", false, `print {"n":…,"eval_reward_mean":…,"rewards":{…},"prompts":[…],"totals":[…]} (totals: each prompt's weighted reward)`)
	grid := fs.String("grid", "", "also write a PNG grid of the evaluated images, labelled with prompt and reward")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("unexpected arguments %q", pos)
	}
	cfg, policy, desc, err := pf.load()
	if err != nil {
		return err
	}
	defer policy.Close()
	if !*asJSON {
		fmt.Fprintf(out, "policy: %s\nbackend: %s\n", desc, policy.BackendDesc)
	}
	res, err := pipeline.Evaluate(ctx, cfg, policy, pipeline.EvalOptions{KeepImages: *grid != "", Progress: os.Stderr, Log: os.Stderr})
	if err != nil {
		return err
	}
	if *grid != "" {
		labels := make([]string, res.N)
		for i := range labels {
			labels[i] = fmt.Sprintf("%s\nreward %.3f", res.Prompts[i], res.Totals[i])
		}
		if err := pipeline.WriteGrid(*grid, res.Images, labels, res.Prompts, gridCols(res.N)); err != nil {
			return err
		}
	}
	if *asJSON {
		return json.NewEncoder(out).Encode(res)
	}
	fmt.Fprintln(out, res.Summary())
	if *grid != "" {
		fmt.Fprintf(out, "wrote %s\n", *grid)
	}
	return nil
}

// gridCols is the number of columns of a grid of n images: 4 for up to 16, else 8.
func gridCols(n int) int {
	if n <= 16 {
		return min(n, 4)
	}
	return 8
}

// trimAll returns the non-empty trimmed strings of ss.
func trimAll(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
