package mmdit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/densegrpo/densegrpo/models/safetensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// LoRA files of the diffusers / PEFT world.
const (
	// DiffusersLoRAFile is what StableDiffusion3Pipeline.save_lora_weights writes and
	// load_lora_weights reads: keys "transformer.<module>.lora_A.weight", the LoRA config in the
	// metadata under "lora_adapter_metadata".
	DiffusersLoRAFile = "pytorch_lora_weights.safetensors"
	// PEFTAdapterConfig sits beside adapter_model.safetensors in a PEFT save_pretrained folder.
	PEFTAdapterConfig = "adapter_config.json"
	// loraMetadataKey is diffusers' LORA_ADAPTER_METADATA_KEY.
	loraMetadataKey = "lora_adapter_metadata"
	// diffusersPrefix is the component prefix of the transformer's keys in pipeline LoRA files.
	diffusersPrefix = "transformer."
)

// DiffusersLoRA lays adapters (PEFT keys, as LoRATensors returns them) out the way
// StableDiffusion3Pipeline.save_lora_weights writes them: keys prefixed "transformer.", the
// LoRA config in the metadata, so that diffusers' load_lora_weights (and every
// diffusers-based tool) loads them with their rank, alpha and target modules.
func DiffusersLoRA(lora LoRAConfig, adapters map[string]safetensors.Tensor) (map[string]safetensors.Tensor, map[string]string, error) {
	meta, err := json.Marshal(map[string]any{
		diffusersPrefix + "r":              lora.Rank,
		diffusersPrefix + "lora_alpha":     lora.Alpha,
		diffusersPrefix + "target_modules": lora.targets(),
		diffusersPrefix + "peft_type":      "LORA",
		diffusersPrefix + "bias":           "none",
		diffusersPrefix + "use_dora":       false,
		diffusersPrefix + "use_rslora":     false,
	})
	if err != nil {
		return nil, nil, err
	}
	out := make(map[string]safetensors.Tensor, len(adapters))
	for k, t := range adapters {
		out[diffusersPrefix+k] = t
	}
	return out, map[string]string{"format": "pt", loraMetadataKey: string(meta)}, nil
}

// WriteDiffusersLoRA writes DiffusersLoRA's layout to path.
func WriteDiffusersLoRA(path string, lora LoRAConfig, adapters map[string]safetensors.Tensor) error {
	ts, meta, err := DiffusersLoRA(lora, adapters)
	if err != nil {
		return fmt.Errorf("write diffusers lora %s: %w", path, err)
	}
	if err := safetensors.Write(path, ts, meta); err != nil {
		return fmt.Errorf("write diffusers lora: %w", err)
	}
	return nil
}

// SaveDiffusersLoRA writes the model's current adapters with WriteDiffusersLoRA.
func (m *Model) SaveDiffusersLoRA(ctx *mlctx.Context, path string) error {
	if m.LoRA == nil {
		return fmt.Errorf("save diffusers lora %s: model has no LoRA config", path)
	}
	adapters, err := m.LoRATensors(ctx)
	if err != nil {
		return fmt.Errorf("save diffusers lora %s: %w", path, err)
	}
	return WriteDiffusersLoRA(path, *m.LoRA, adapters)
}

// peftConfig is the part of PEFT's LoraConfig this package can honour.
type peftConfig struct {
	R             *int            `json:"r"`
	LoRAAlpha     *float64        `json:"lora_alpha"`
	TargetModules json.RawMessage `json:"target_modules"`
	RankPattern   map[string]any  `json:"rank_pattern"`
	AlphaPattern  map[string]any  `json:"alpha_pattern"`
	UseDoRA       bool            `json:"use_dora"`
	UseRSLoRA     bool            `json:"use_rslora"`
	LoRABias      bool            `json:"lora_bias"`
	Bias          string          `json:"bias"`
	Layers        json.RawMessage `json:"layers_to_transform"`
	Exclude       json.RawMessage `json:"exclude_modules"`
}

// ReadLoRAConfig reads the rank, alpha and target modules of a LoRA file, from (in order)
// diffusers' lora_adapter_metadata, a PEFT adapter_config.json beside it, or this package's
// own metadata; a file with none of them gets rank from its tensors, alpha = rank (diffusers'
// convention for files without alphas) and its modules as targets. Options of PEFT this
// package does not implement (rank/alpha patterns, DoRA, rsLoRA, LoRA biases, regex targets,
// layer selections) are errors, as are targets no linear layer of model matches.
func ReadLoRAConfig(path string, model Config) (LoRAConfig, error) {
	infos, meta, err := safetensors.ReadHeader(path)
	if err != nil {
		return LoRAConfig{}, fmt.Errorf("read lora config: %w", err)
	}
	fail := func(format string, args ...any) (LoRAConfig, error) {
		return LoRAConfig{}, fmt.Errorf("read lora config %s: %s", path, fmt.Sprintf(format, args...))
	}
	var lc LoRAConfig
	var src string
	switch {
	case meta[loraMetadataKey] != "":
		src = "metadata " + loraMetadataKey
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(meta[loraMetadataKey]), &raw); err != nil {
			return fail("%s: %v", src, err)
		}
		stripped := map[string]json.RawMessage{}
		for k, v := range raw {
			if strings.HasPrefix(k, diffusersPrefix) {
				stripped[strings.TrimPrefix(k, diffusersPrefix)] = v
			}
		}
		if len(stripped) == 0 {
			return fail("%s has no %q entries (an adapter of another component?)", src, diffusersPrefix)
		}
		doc, _ := json.Marshal(stripped)
		if lc, err = parsePEFTConfig(doc); err != nil {
			return fail("%s: %v", src, err)
		}
	case fileExists(filepath.Join(filepath.Dir(path), PEFTAdapterConfig)):
		src = filepath.Join(filepath.Dir(path), PEFTAdapterConfig)
		doc, err := os.ReadFile(src)
		if err != nil {
			return fail("%v", err)
		}
		if lc, err = parsePEFTConfig(doc); err != nil {
			return LoRAConfig{}, fmt.Errorf("read lora config %s: %w", src, err)
		}
	case meta["lora_rank"] != "":
		src = "metadata lora_rank"
		if lc.Rank, err = strconv.Atoi(meta["lora_rank"]); err != nil {
			return fail("metadata lora_rank %q: want an integer", meta["lora_rank"])
		}
		if lc.Alpha, err = strconv.ParseFloat(meta["lora_alpha"], 64); err != nil {
			return fail("metadata lora_alpha %q: want a number", meta["lora_alpha"])
		}
		if t := meta["target_modules"]; t != "" {
			if err := json.Unmarshal([]byte(t), &lc.Targets); err != nil {
				return fail("metadata target_modules: %v", err)
			}
		}
	default:
		src = "tensor shapes"
		for name, info := range infos {
			name = trimLoRAPrefix(name)
			if !strings.HasSuffix(name, ".lora_A.weight") || len(info.Shape) != 2 {
				continue
			}
			if lc.Rank != 0 && lc.Rank != info.Shape[0] {
				return fail("adapters of ranks %d and %d without a config (rank_pattern is not supported)", lc.Rank, info.Shape[0])
			}
			lc.Rank = info.Shape[0]
			lc.Targets = append(lc.Targets, strings.TrimSuffix(name, ".lora_A.weight"))
		}
		if lc.Rank == 0 {
			return fail("no lora_A tensors")
		}
		slices.Sort(lc.Targets)
		lc.Alpha = float64(lc.Rank)
	}
	if err := lc.Validate(model); err != nil {
		return fail("%s: %v", src, err)
	}
	return lc, nil
}

// parsePEFTConfig reads a LoraConfig dict, refusing the options this package does not implement.
func parsePEFTConfig(doc []byte) (LoRAConfig, error) {
	var c peftConfig
	if err := json.Unmarshal(doc, &c); err != nil {
		return LoRAConfig{}, err
	}
	if c.R == nil || c.LoRAAlpha == nil {
		return LoRAConfig{}, errors.New("want r and lora_alpha")
	}
	unsupported := []struct {
		on   bool
		what string
	}{
		{len(c.RankPattern) > 0, "rank_pattern"}, {len(c.AlphaPattern) > 0, "alpha_pattern"},
		{c.UseDoRA, "use_dora"}, {c.UseRSLoRA, "use_rslora"}, {c.LoRABias, "lora_bias"},
		{c.Bias != "" && c.Bias != "none", "bias " + c.Bias},
		{len(c.Layers) > 0 && string(c.Layers) != "null", "layers_to_transform"},
		{len(c.Exclude) > 0 && string(c.Exclude) != "null", "exclude_modules"},
	}
	for _, u := range unsupported {
		if u.on {
			return LoRAConfig{}, fmt.Errorf("%s is set; only plain LoRA (one rank and alpha, W + (alpha/r)·B·A) is supported", u.what)
		}
	}
	lc := LoRAConfig{Rank: *c.R, Alpha: *c.LoRAAlpha}
	var regex string
	if json.Unmarshal(c.TargetModules, &regex) == nil {
		return LoRAConfig{}, fmt.Errorf("target_modules is the regular expression %q; want a list of module names", regex)
	}
	if err := json.Unmarshal(c.TargetModules, &lc.Targets); err != nil || len(lc.Targets) == 0 {
		return LoRAConfig{}, fmt.Errorf("target_modules: want a list of module names")
	}
	slices.Sort(lc.Targets)
	return lc, nil
}

// trimLoRAPrefix drops the prefixes other tools put before PEFT names.
func trimLoRAPrefix(name string) string {
	for _, pre := range loraPrefixes {
		if strings.HasPrefix(name, pre) {
			return strings.TrimPrefix(name, pre)
		}
	}
	return name
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}
