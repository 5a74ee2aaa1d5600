package mmdit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/densegrpo/densegrpo/internal/limitfile"
	"github.com/densegrpo/densegrpo/models/safetensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// Weight files of a diffusers model folder (transformer/ of a snapshot): one
// safetensors file, or shards listed by an index.
const (
	DiffusersWeights      = "diffusion_pytorch_model.safetensors"
	DiffusersWeightsIndex = "diffusion_pytorch_model.safetensors.index.json"
	DiffusersConfig       = "config.json"
)

// LoadDiffusersConfig reads dir/config.json of a diffusers SD3Transformer2DModel folder and
// checks its class.
func LoadDiffusersConfig(dir string) (Config, error) {
	path := filepath.Join(dir, DiffusersConfig)
	raw, err := limitfile.Read(path, limitfile.Config, "a JSON config")
	if err != nil {
		return Config{}, fmt.Errorf("read mmdit config: %w", err)
	}
	var head struct {
		Class string `json:"_class_name"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return Config{}, fmt.Errorf("decode mmdit config %s: %w", path, err)
	}
	if head.Class != "" && head.Class != "SD3Transformer2DModel" {
		return Config{}, fmt.Errorf("decode mmdit config %s: _class_name %q, want SD3Transformer2DModel", path, head.Class)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return Config{}, fmt.Errorf("decode mmdit config %s: %w", path, err)
	}
	return cfg, nil
}

// LoadDiffusers reads the base weights of a diffusers folder: dir/diffusion_pytorch_model.safetensors,
// or the shards its index lists. Checks are those of Load, shard by shard (each must hold
// exactly the tensors the index places in it), all before a tensor is read.
func (m *Model) LoadDiffusers(ctx *mlctx.Context, dir string) error {
	single := filepath.Join(dir, DiffusersWeights)
	if _, err := os.Stat(single); err == nil {
		return m.Load(ctx, single)
	}
	indexPath := filepath.Join(dir, DiffusersWeightsIndex)
	raw, err := limitfile.Read(indexPath, limitfile.Index, "a safetensors index")
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load mmdit %s: no %s and no %s", dir, DiffusersWeights, DiffusersWeightsIndex)
	}
	if err != nil {
		return fmt.Errorf("load mmdit: %w", err)
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &index); err != nil || len(index.WeightMap) == 0 {
		return fmt.Errorf("load mmdit %s: want {\"weight_map\": {tensor: shard file}}", indexPath)
	}
	shards := map[string]*safetensors.File{}
	defer func() {
		for _, f := range shards {
			f.Close()
		}
	}()
	var files []string
	for _, file := range index.WeightMap {
		if !slices.Contains(files, file) {
			files = append(files, file)
		}
	}
	sort.Strings(files)
	for _, file := range files {
		f, err := safetensors.Open(filepath.Join(dir, file))
		if err != nil {
			return fmt.Errorf("load mmdit: %w", err)
		}
		shards[file] = f
	}
	// Every shard's header is checked — the tensors the index places in it, with their shapes
	// and a dtype Tensor decodes, and nothing else — before any tensor is read.
	params := m.Config.Params()
	declared := map[string]bool{}
	wanted := map[string][]safetensors.Want{}
	for _, p := range params {
		declared[p.Key] = true
		file, ok := index.WeightMap[p.Key]
		if !ok {
			return fmt.Errorf("load mmdit %s: missing tensor %q (want %v)", indexPath, p.Key, p.Shape)
		}
		wanted[file] = append(wanted[file], safetensors.Want{Name: p.Key, Shape: p.Shape})
	}
	for key := range index.WeightMap {
		if !declared[key] && key != posEmbedKey {
			return fmt.Errorf("load mmdit %s: tensor %q is not declared by the model config", indexPath, key)
		}
	}
	for _, file := range files {
		if err := shards[file].Check(wanted[file], posEmbedKey); err != nil {
			return fmt.Errorf("load mmdit %s: %w", filepath.Join(dir, file), err)
		}
	}
	for _, p := range params {
		t, err := shards[index.WeightMap[p.Key]].Tensor(p.Key)
		if err != nil {
			return fmt.Errorf("load mmdit: %w", err)
		}
		if err := setVariable(ctx, p.Key, p.Shape, t.Data, m.LoRA == nil); err != nil {
			return fmt.Errorf("load mmdit %s: %w", dir, err)
		}
	}
	return nil
}
