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

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/internal/limitfile"
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
	// PEFTAdapterModel holds the tensors of a PEFT save_pretrained folder.
	PEFTAdapterModel = "adapter_model.safetensors"
	// peftPrefix is the key prefix of PeftModel.save_pretrained's tensors.
	peftPrefix = "base_model.model."
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

// WritePEFTLoRA writes adapters (PEFT keys, as LoRATensors returns them) as a LoRA adapter
// folder the way peft's PeftModel.save_pretrained lays it out: dir/adapter_model.safetensors
// (keys "base_model.model.<module>.lora_A.weight", metadata format pt) and
// dir/adapter_config.json (peft_type LORA, r, lora_alpha, target_modules, and the plain-LoRA
// values of the options this package does not implement), so that
// PeftModel.from_pretrained(SD3Transformer2DModel, dir) loads it, as does ReadLoRAConfig and
// LoadLoRA here. The adapters must be exactly lora's tensors of model. Each file is written
// atomically; dir is created.
func WritePEFTLoRA(dir string, model Config, lora LoRAConfig, adapters map[string]safetensors.Tensor) error {
	fail := func(err error) error { return fmt.Errorf("write PEFT lora %s: %w", dir, err) }
	if err := lora.Validate(model); err != nil {
		return fail(err)
	}
	params := lora.Params(model)
	if len(adapters) != len(params) {
		return fail(fmt.Errorf("%d adapter tensors, want %d (rank %d on %v)", len(adapters), len(params), lora.Rank, lora.targets()))
	}
	out := make(map[string]safetensors.Tensor, len(adapters))
	for _, p := range params {
		t, ok := adapters[p.Key]
		if !ok {
			return fail(fmt.Errorf("missing adapter tensor %q (want %v)", p.Key, p.Shape))
		}
		if !slices.Equal(t.Shape, p.Shape) {
			return fail(fmt.Errorf("adapter tensor %q: shape %v, want %v", p.Key, t.Shape, p.Shape))
		}
		out[peftPrefix+p.Key] = t
	}
	cfg, err := json.MarshalIndent(map[string]any{
		"peft_type": "LORA", "r": lora.Rank, "lora_alpha": lora.Alpha, "target_modules": lora.targets(),
		"bias": "none", "lora_dropout": 0.0, "fan_in_fan_out": false, "use_dora": false, "use_rslora": false,
		"lora_bias": false, "init_lora_weights": true, "inference_mode": true, "rank_pattern": map[string]any{},
		"alpha_pattern": map[string]any{}, "layers_to_transform": nil, "layers_pattern": nil,
		"exclude_modules": nil, "modules_to_save": nil, "task_type": nil, "base_model_name_or_path": nil,
		"revision": nil,
		"auto_mapping": map[string]string{"base_model_class": "SD3Transformer2DModel",
			"parent_library": "diffusers.models.transformers.transformer_sd3"},
	}, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	if err := safetensors.Write(filepath.Join(dir, PEFTAdapterModel), out, map[string]string{"format": "pt"}); err != nil {
		return fail(err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, PEFTAdapterConfig), append(cfg, '\n')); err != nil {
		return fail(err)
	}
	return nil
}

// ReadRecordedLoRAConfig is ReadLoRAConfig for files that record their config (diffusers'
// metadata, a PEFT adapter_config.json beside them, this package's metadata); ok is false for
// a file that does not, whose alpha could only be guessed.
func ReadRecordedLoRAConfig(path string, model Config) (lc LoRAConfig, ok bool, err error) {
	lc, src, err := readLoRAConfig(path, model)
	if err != nil || src == srcShapes {
		return LoRAConfig{}, false, err
	}
	return lc, true, nil
}

// srcShapes is readLoRAConfig's source when the file records no config.
const srcShapes = "tensor shapes"

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
	lc, _, err := readLoRAConfig(path, model)
	return lc, err
}

// readLoRAConfig is ReadLoRAConfig that also says where the config came from.
func readLoRAConfig(path string, model Config) (LoRAConfig, string, error) {
	infos, meta, err := safetensors.ReadHeader(path)
	if err != nil {
		return LoRAConfig{}, "", fmt.Errorf("read lora config: %w", err)
	}
	fail := func(format string, args ...any) (LoRAConfig, string, error) {
		return LoRAConfig{}, "", fmt.Errorf("read lora config %s: %s", path, fmt.Sprintf(format, args...))
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
		doc, err := limitfile.Read(src, limitfile.Config, "a JSON config")
		if err != nil {
			return fail("%v", err)
		}
		if lc, err = parsePEFTConfig(doc); err != nil {
			return LoRAConfig{}, "", fmt.Errorf("read lora config %s: %w", src, err)
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
		src = srcShapes
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
	return lc, src, nil
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
