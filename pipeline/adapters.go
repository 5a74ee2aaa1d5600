package pipeline

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/internal/limitfile"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/pipeline/checkpoint"
)

// AdapterInfoFile sits beside an exported adapter (ExportLoRA): where it came from.
const AdapterInfoFile = "densegrpo.json"

// AdapterInfo is what AdapterInfoFile records of an exported adapter: the run and checkpoint it
// is the EMA of, and the recipe that trained it.
type AdapterInfo struct {
	Run        string  `json:"run"`
	Checkpoint string  `json:"checkpoint"`
	Epoch      int     `json:"epoch"`
	Samples    int     `json:"samples"`
	Method     string  `json:"method"` // "DenseGRPO" or "Flow-GRPO" (dense.enabled)
	Sampler    string  `json:"sampler"`
	NoiseLevel float64 `json:"noise_level"`
	Psi        bool    `json:"calibrated_psi"`
	Seed       int64   `json:"seed"`
	Rank       int     `json:"lora_rank"`
	Alpha      float64 `json:"lora_alpha"`
}

// ExportLoRA writes the EMA adapters (what evaluation uses) of a run's checkpoint — src is the
// checkpoint directory or the run directory, whose newest checkpoint is taken — as a PEFT
// adapter folder at out (mmdit.WritePEFTLoRA: adapter_model.safetensors, adapter_config.json),
// with rank, alpha and targets from the run's config.toml, and AdapterInfoFile. `pipeline eval
// --lora out` and `sample --lora out` load it; so does peft's PeftModel.from_pretrained.
func ExportLoRA(src, out string) (AdapterInfo, error) {
	fail := func(err error) (AdapterInfo, error) {
		return AdapterInfo{}, fmt.Errorf("export lora from %s: %w", src, err)
	}
	ckDir, runDir := src, filepath.Dir(filepath.Dir(src))
	if fileExists(filepath.Join(src, "config.toml")) {
		runDir = src
		dir, ok, err := checkpoint.New(filepath.Join(src, "checkpoints"), 1).Latest()
		if err != nil {
			return fail(err)
		}
		if !ok {
			return fail(fmt.Errorf("no checkpoint in %s", filepath.Join(src, "checkpoints")))
		}
		ckDir = dir
	}
	if !fileExists(filepath.Join(ckDir, EMALoRAFile)) {
		return fail(fmt.Errorf("%s: no %s; want a run directory or one of its checkpoints", ckDir, EMALoRAFile))
	}
	cfg, err := LoadRunConfig(runDir, nil)
	if err != nil {
		return fail(err)
	}
	mcfg, _, err := modelConfig(cfg)
	if err != nil {
		return fail(err)
	}
	ck, err := checkpoint.Load(ckDir)
	if err != nil {
		return fail(err)
	}
	defer ck.Close()
	var st trainState
	if err := json.Unmarshal(ck.State, &st); err != nil {
		return fail(fmt.Errorf("%s: decode state: %w", ckDir, err))
	}
	lora := mmdit.LoRAConfig{Rank: cfg.Model.LoRA.Rank, Alpha: cfg.Model.LoRA.Alpha, Targets: cfg.Model.LoRA.Targets}
	ema, err := ck.Read(groupEMA, adapterWants(lora, mcfg))
	if err != nil {
		return fail(err)
	}
	if err := mmdit.WritePEFTLoRA(out, mcfg, lora, ema); err != nil {
		return fail(err)
	}
	info := AdapterInfo{Run: filepath.Base(runDir), Checkpoint: filepath.Base(ckDir), Epoch: ck.Epoch, Samples: st.Samples,
		Method: "DenseGRPO", Sampler: string(cfg.Sampler.Kind), NoiseLevel: cfg.Sampler.NoiseLevel, Psi: cfg.Sampler.Psi != "",
		Seed: cfg.Run.Seed, Rank: lora.Rank, Alpha: lora.Alpha}
	if !cfg.Dense.Enabled {
		info.Method = "Flow-GRPO"
	}
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(out, AdapterInfoFile), append(data, '\n')); err != nil {
		return fail(err)
	}
	return info, nil
}

// ReadAdapterInfo reads AdapterInfoFile of an exported adapter folder; ok is false without one.
func ReadAdapterInfo(dir string) (info AdapterInfo, ok bool, err error) {
	data, err := limitfile.Read(filepath.Join(dir, AdapterInfoFile), limitfile.Config, "a JSON config")
	if os.IsNotExist(err) {
		return info, false, nil
	}
	if err != nil {
		return info, false, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, false, fmt.Errorf("read %s: %w", filepath.Join(dir, AdapterInfoFile), err)
	}
	return info, true, nil
}

// adapterWants lists the LoRA tensors a checkpoint group holds for the model: names, shapes and
// float32, as the trainer writes them.
func adapterWants(lora mmdit.LoRAConfig, c mmdit.Config) []safetensors.Want {
	var want []safetensors.Want
	for _, p := range lora.Params(c) {
		want = append(want, safetensors.Want{Name: p.Key, Shape: p.Shape, DType: "F32"})
	}
	return want
}
