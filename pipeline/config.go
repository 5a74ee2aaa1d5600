package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/densegrpo/densegrpo/internal/choice"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rl"
)

// Config is the whole training configuration, one TOML file. Every field is documented where
// declared (unit, range, default); Default holds every default in one place; Validate checks
// every field. Unknown keys are errors.
type Config struct {
	Sections
	// Reward holds the raw `[[reward]]` tables; the rewards package decodes them so that it
	// alone owns their schema.
	Reward toml.Primitive `toml:"reward"`
	// Rewards are the decoded `[[reward]]` blocks, paths resolved. Not a TOML key.
	Rewards []rewards.Config `toml:"-"`

	// Path is the file the config was read from; relative paths inside resolve against its
	// directory. Not a TOML key.
	Path string `toml:"-"`
	// rawRewards and rawHeldout are the `[[reward]]` and `[[eval.reward]]` tables as written
	// (after --set), for the resolved copy.
	rawRewards, rawHeldout []map[string]any
}

// Sections are the config's tables other than `[[reward]]`.
type Sections struct {
	Run         RunConfig         `toml:"run"`
	Model       ModelConfig       `toml:"model"`
	ONNX        onnxrt.Config     `toml:"onnx"`
	TextEncoder TextEncoderConfig `toml:"text_encoder"`
	VAE         VAEConfig         `toml:"vae"`
	Prompts     PromptsConfig     `toml:"prompts"`
	Sampler     SamplerConfig     `toml:"sampler"`
	Dense       DenseConfig       `toml:"dense"`
	GRPO        GRPOConfig        `toml:"grpo"`
	Calibrate   CalibrateConfig   `toml:"calibrate"`
	Eval        EvalConfig        `toml:"eval"`
	Pipeline    PipelineConfig    `toml:"pipeline"`
}

// RunConfig names the run and bounds it.
type RunConfig struct {
	// Name of the run directory under OutDir. Default "tiny-ocr".
	Name string `toml:"name"`
	// OutDir holds run directories. Default "runs".
	OutDir string `toml:"out_dir"`
	// Seed of every random draw (noise, prompt order, LoRA init). Default 1.
	Seed int64 `toml:"seed"`
	// Epochs to train; 0 means until TimeBudget. Default 0.
	Epochs int `toml:"epochs"`
	// TimeBudget stops training after this wall time (Go duration, e.g. "10m"); "" or "0s" is
	// no limit. Default "10m".
	TimeBudget string `toml:"time_budget"`
	// CheckpointEvery writes a checkpoint every N epochs (>= 1). Default 5.
	CheckpointEvery int `toml:"checkpoint_every"`
	// KeepCheckpoints is how many recent checkpoints are kept (>= 1). Default 2.
	KeepCheckpoints int `toml:"keep_checkpoints"`
	// Backend for GoMLX: one of nn.BackendSpecs ("auto", "go", "xla:cpu", "xla:cuda").
	// Default "auto".
	Backend nn.Backend `toml:"backend"`
	// Devices of the backend that share each gradient computation, data-parallel (>= 1; more
	// than one needs an XLA backend and pipeline.train_workers = 1). Default 1.
	Devices int `toml:"devices"`
	// SampleEvery writes a sample grid every N epochs (0: only at the end). Default 5.
	SampleEvery int `toml:"sample_every"`
}

// ModelConfig is the flow transformer and its LoRA: the project's own (Config, Weights, with
// the [text_encoder] and [vae] graphs) or an exported diffusers SD3/SD3.5 model (Diffusers),
// which brings its transformer, text encoders and VAE decoder.
type ModelConfig struct {
	// Config is the MMDiT JSON config (diffusers SD3Transformer2DModel field names). Required
	// without Diffusers; must be empty with it.
	Config string `toml:"config"`
	// Weights is the base model safetensors file (diffusers names). Required without
	// Diffusers; must be empty with it.
	Weights string `toml:"weights"`
	// Diffusers is an exported SD3/SD3.5 folder (manifest.json, written by `just export-models
	// MODEL_DIR=… OUT=…` or by export-models from Snapshot): its manifest names the diffusers
	// transformer folder, the ONNX CLIP-L/G and T5 encoders with their tokenizers, and the VAE
	// decoder with its scaling/shift factors. Default "" (the project's own model).
	Diffusers string `toml:"diffusers"`
	// Snapshot is the diffusers snapshot export-models exports into Diffusers when the folder
	// has no manifest yet (with exporters/sd3 in the repository's .venv). Default "".
	Snapshot string `toml:"snapshot"`
	// Resolution is the image side in pixels with Diffusers (latents resolution/8 square);
	// 0 = the transformer's sample_size times the VAE's scale factor (1024 for SD3.5-M).
	// Default 0.
	Resolution int        `toml:"resolution"`
	LoRA       LoRAConfig `toml:"lora"`
	// ONNX (`[model.onnx]`) overrides [onnx] for the policy's ONNX export (the sessions of
	// pipeline.inference_engine = "onnx"). Default none.
	ONNX *onnxrt.Override `toml:"onnx"`
}

// LoRAConfig is the low-rank adapter trained by RL.
type LoRAConfig struct {
	// Rank r (>= 1). Default 8.
	Rank int `toml:"rank"`
	// Alpha; the update is scaled by alpha/rank (> 0). Default 16.
	Alpha float64 `toml:"alpha"`
	// Targets are module names inside each attention block. Default mmdit.DefaultLoRATargets:
	// to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj, to_add_out.
	Targets []string `toml:"targets"`
}

// TextEncoderConfig is the frozen ONNX text encoder.
type TextEncoderConfig struct {
	// Model is the ONNX file: input `input_ids` int64 [B,L]; outputs `prompt_embeds` [B,L,D]
	// and `pooled_prompt_embeds` [B,P].
	Model string `toml:"model"`
	// Tokenizer: "chars" (the tiny model's character vocabulary). Default "chars".
	Tokenizer string `toml:"tokenizer"`
	// MaxLength L of the token sequence (>= 1). Default 48.
	MaxLength int `toml:"max_length"`
	// ONNX (`[text_encoder.onnx]`) overrides [onnx] for the text encoder's sessions (with
	// model.diffusers: CLIP-L, CLIP-G and T5). Default none.
	ONNX *onnxrt.Override `toml:"onnx"`
}

// VAEConfig is the frozen ONNX VAE decoder.
type VAEConfig struct {
	// Decoder is the ONNX file: input `latent` float32 [B,C,h,w] (model space); output
	// `image` float32 [B,3,H,W] in [0,1].
	Decoder string `toml:"decoder"`
	// ONNX (`[vae.onnx]`) overrides [onnx] for the VAE decoder's sessions. Default none.
	ONNX *onnxrt.Override `toml:"onnx"`
}

// PromptsConfig is where prompts come from.
type PromptsConfig struct {
	// Train is a text file, one prompt a line.
	Train string `toml:"train"`
	// Test is the held-out prompt file used by eval.
	Test string `toml:"test"`
	// PerEpoch prompts are drawn per epoch (>= 1). Default 8.
	PerEpoch int `toml:"per_epoch"`
}

// SamplerConfig is the rollout sampler.
type SamplerConfig struct {
	// Kind: "sde" (Flow-GRPO's Flow-SDE) or "cps" (rl.Kinds). Default "sde".
	Kind rl.Kind `toml:"kind"`
	// Steps T of the training schedule (>= 2). Default 10.
	Steps int `toml:"steps"`
	// NoiseLevel a (> 0): s_k = a·sqrt(σ_k/(1−σ_k)) for "sde"; for "cps" the angle fraction
	// of s = σ_{k+1}·sin(a·π/2). Default 0.7 (Flow-GRPO's SDE); CPS's paper uses 0.8.
	NoiseLevel float64 `toml:"noise_level"`
	// Shift of the SD3 schedule (> 0). Default 3.
	Shift float64 `toml:"shift"`
	// GroupSize G images per prompt (>= 2). Default 8.
	GroupSize int `toml:"group_size"`
	// SameNoise gives every image of a group the same initial noise. Default false.
	SameNoise bool `toml:"same_noise"`
	// Guidance is the classifier-free guidance scale; <= 1 disables guidance. Default 1.
	Guidance float64 `toml:"guidance"`
	// Psi is a calibrated ψ file (psi.json from `pipeline calibrate`); "" uses a·sqrt(σ/(1−σ)).
	Psi string `toml:"psi"`
}

// DenseConfig switches DenseGRPO's dense rewards. Disabled, training is exactly Flow-GRPO.
type DenseConfig struct {
	// Enabled turns on per-step rewards by ODE look-ahead. Default true.
	Enabled bool `toml:"enabled"`
	// Lookahead caps the ODE steps n of each look-ahead; 0 = all remaining steps. Default 0.
	Lookahead int `toml:"lookahead"`
	// Queries K: per trajectory only K of the states with a reward are decoded and scored —
	// the first, the last and K−2 chosen by latent similarity, as SDPO does — and the others'
	// rewards are predicted from them (rl.SelectQueries). 0 scores every state; otherwise
	// 2 … rl.MaxQueries. Ignored without dense rewards. Default 0.
	Queries int `toml:"queries"`
	// AuditEvery N: with queries > 0, every N-th epoch (the first, then every N) also scores
	// the states not queried, to measure the predictions (metrics query_*); training still uses
	// the predictions. 0 = never. Default 10.
	AuditEvery int `toml:"audit_every"`
}

// GRPOConfig is the policy update.
type GRPOConfig struct {
	// Std normalises advantages: "group" or "global" (rl.StdModes). Default "global".
	Std rl.StdMode `toml:"std"`
	// AdvClip clips advantages to ±AdvClip (> 0). Default 5.
	AdvClip float64 `toml:"adv_clip"`
	// ClipRange ε of the ratio clip (> 0). Default 1e-4.
	ClipRange float64 `toml:"clip_range"`
	// Beta weights the KL to the LoRA-off reference (>= 0). Default 0.004.
	Beta float64 `toml:"beta"`
	// LearningRate of AdamW (> 0). Default 3e-4.
	LearningRate float64 `toml:"learning_rate"`
	// WeightDecay of AdamW (>= 0). Default 1e-4.
	WeightDecay float64 `toml:"weight_decay"`
	// GradClip is the global grad-norm clip (> 0). Default 1.
	GradClip float64 `toml:"grad_clip"`
	// TimestepFraction: the first ⌊T·f⌋ steps are trained (0 < f <= 1). Default 0.99.
	TimestepFraction float64 `toml:"timestep_fraction"`
	// Minibatch is the number of trajectories per AdamW update (>= 1). Default 16.
	Minibatch int `toml:"minibatch"`
	// MicroBatch caps the trajectories of one gradient computation (>= 0); their gradients
	// accumulate into the same update, so it bounds the training graph's memory without
	// changing the update. 0 = no cap (a computation is the part of an update that lies in
	// one rollout minibatch). Default 0.
	MicroBatch int `toml:"micro_batch"`
	// EMADecayMax caps the EMA decay min((1+n)/(10+n), max) of the LoRA weights (0..1).
	// Default 0.9.
	EMADecayMax float64 `toml:"ema_decay_max"`
}

// CalibrateConfig is DenseGRPO's exploration-space calibration (Algorithm 1).
type CalibrateConfig struct {
	// Iterations of the calibration loop (>= 1). Default 10.
	Iterations int `toml:"iterations"`
	// Trajectories N per iteration, one per prompt (>= 2). Default 32.
	Trajectories int `toml:"trajectories"`
	// Epsilon1 is the balance threshold on |#pos − #neg| (> 0). Default 2.
	Epsilon1 float64 `toml:"epsilon1"`
	// Epsilon2 is the ψ step (> 0). Default 0.01.
	Epsilon2 float64 `toml:"epsilon2"`
}

// EvalConfig is the held-out evaluation (ODE sampling).
type EvalConfig struct {
	// Every N epochs (0: only before and after training). Default 0.
	Every int `toml:"every"`
	// Steps of the Euler ODE (>= 1). Default 40.
	Steps int `toml:"steps"`
	// Prompts: how many test prompts (0 = all). Default 0.
	Prompts int `toml:"prompts"`
	// BatchSize of eval sampling (>= 1). Default 16.
	BatchSize int `toml:"batch_size"`
	// Rewards are the held-out rewards, `[[eval.reward]]` blocks (the `[[reward]]` schema):
	// they score every evaluation beside the training rewards but never enter training, so a
	// policy that games its training judge shows as the two parting. Paths resolved. Decoded
	// by Parse, not by the TOML decoder.
	Rewards []rewards.Config `toml:"-"`
}

// PipelineConfig shapes the staged execution.
type PipelineConfig struct {
	// Overlap runs rollout, look-ahead, decoding and scoring as concurrent stages; false runs
	// the same stages one after another. Default true.
	Overlap bool `toml:"overlap"`
	// RolloutBatch trajectories are sampled per rollout minibatch (>= 1). Default 16.
	RolloutBatch int `toml:"rollout_batch"`
	// Buffer is the capacity of each inter-stage channel (>= 1). Default 2.
	Buffer int `toml:"buffer"`
	// LookaheadWorkers run look-aheads of different minibatches concurrently (>= 1). Default 2.
	LookaheadWorkers int `toml:"lookahead_workers"`
	// ScoreWorkers score concurrently (>= 1). Default 1.
	ScoreWorkers int `toml:"score_workers"`
	// TrainWorkers compute the gradients of different trained steps concurrently (>= 1). Default 2.
	TrainWorkers int `toml:"train_workers"`
	// InferenceEngine runs the transformer's gradient-free passes — rollouts, look-aheads,
	// evaluation: "onnx" (the policy's velocity exported to ONNX Runtime each epoch, adapters
	// folded in) or "gomlx" (the training graph); see Engines. Default "onnx".
	InferenceEngine Engine `toml:"inference_engine"`
}

// Engine names what runs the transformer's gradient-free passes (pipeline.inference_engine).
type Engine string

// The engines.
const (
	// EngineONNX exports the policy's velocity to ONNX Runtime each epoch, adapters folded in.
	EngineONNX Engine = "onnx"
	// EngineGoMLX runs the velocity in the training graph's GoMLX context.
	EngineGoMLX Engine = "gomlx"
)

// Engines lists the engines (the values of pipeline.inference_engine).
var Engines = []Engine{EngineONNX, EngineGoMLX}

// Valid reports whether e names a known engine.
func (e Engine) Valid() bool { return slices.Contains(Engines, e) }

// Default returns the configuration with every default set.
func Default() Config {
	return Config{Sections: Sections{
		Run: RunConfig{Name: "tiny-ocr", OutDir: "runs", Seed: 1, TimeBudget: "10m", CheckpointEvery: 5,
			KeepCheckpoints: 2, Backend: "auto", Devices: 1, SampleEvery: 5},
		Model:       ModelConfig{LoRA: LoRAConfig{Rank: 8, Alpha: 16, Targets: slices.Clone(mmdit.DefaultLoRATargets)}},
		ONNX:        onnxrt.Config{Provider: "cpu"},
		TextEncoder: TextEncoderConfig{Tokenizer: "chars", MaxLength: 48},
		Prompts:     PromptsConfig{PerEpoch: 8},
		Sampler:     SamplerConfig{Kind: rl.KindSDE, Steps: 10, NoiseLevel: 0.7, Shift: 3, GroupSize: 8, Guidance: 1},
		Dense:       DenseConfig{Enabled: true, AuditEvery: 10},
		GRPO: GRPOConfig{Std: rl.StdGlobal, AdvClip: 5, ClipRange: 1e-4, Beta: 0.004, LearningRate: 3e-4,
			WeightDecay: 1e-4, GradClip: 1, TimestepFraction: 0.99, Minibatch: 16, EMADecayMax: 0.9},
		Calibrate: CalibrateConfig{Iterations: 10, Trajectories: 32, Epsilon1: 2, Epsilon2: 0.01},
		Eval:      EvalConfig{Steps: 40, BatchSize: 16},
		Pipeline:  PipelineConfig{Overlap: true, RolloutBatch: 16, Buffer: 2, LookaheadWorkers: 2, ScoreWorkers: 1, TrainWorkers: 2, InferenceEngine: EngineONNX},
	}}
}

// Load reads path strictly (unknown keys are errors), applies `key=value` overrides (each
// value parsed as TOML, else taken as a string), fills defaults and validates.
func Load(path string, sets []string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if len(sets) > 0 {
		if data, err = applySets(path, data, sets); err != nil {
			return Config{}, err
		}
	}
	cfg, err := Parse(path, data)
	if err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Parse decodes TOML text read from path (used for error messages and relative paths).
func Parse(path string, data []byte) (Config, error) {
	cfg := Default()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cfg)
	if err != nil {
		return Config{}, fmt.Errorf("decode config %s: %w", path, err)
	}
	cfg.Path = path
	// The library path is a file path like the others: relative to the config file.
	cfg.ONNX.Library = cfg.Resolve(cfg.ONNX.Library)
	var raw struct {
		Reward []map[string]any `toml:"reward"`
		Eval   struct {
			Reward []map[string]any `toml:"reward"`
		} `toml:"eval"`
	}
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return Config{}, fmt.Errorf("decode config %s: %w", path, err)
	}
	cfg.rawRewards, cfg.rawHeldout = raw.Reward, raw.Eval.Reward
	// [[eval.reward]] has no field in EvalConfig (a toml.Primitive there would not encode into
	// the resolved config): a second decode reads it, and its keys are left out of the first
	// decode's unknown ones.
	var heldout struct {
		Eval struct {
			Reward toml.Primitive `toml:"reward"`
		} `toml:"eval"`
	}
	hmd, err := toml.Decode(string(data), &heldout)
	if err != nil {
		return Config{}, fmt.Errorf("decode config %s: %w", path, err)
	}
	if hmd.IsDefined("eval", "reward") {
		if cfg.Eval.Rewards, err = rewards.DecodePrimitiveAt(hmd, heldout.Eval.Reward, rewards.HeldoutTable); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
		for i := range cfg.Eval.Rewards {
			cfg.Eval.Rewards[i].ResolvePaths(filepath.Dir(path))
		}
	}
	if md.IsDefined("reward") {
		if cfg.Rewards, err = rewards.DecodePrimitive(md, cfg.Reward); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
		for i := range cfg.Rewards {
			cfg.Rewards[i].ResolvePaths(filepath.Dir(path))
		}
	}
	if err := checkUndecoded(path, md); err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func checkUndecoded(path string, md toml.MetaData) error {
	var msgs []string
	for _, k := range md.Undecoded() {
		if len(k) >= 2 && k[0] == "eval" && k[1] == "reward" {
			continue // [[eval.reward]], decoded (and checked) on its own
		}
		msgs = append(msgs, fmt.Sprintf("unknown key %q", k.String()))
	}
	if len(msgs) == 0 {
		return nil
	}
	sort.Strings(msgs)
	return fmt.Errorf("decode config %s: %s", path, strings.Join(msgs, "; "))
}

// applySets rewrites the TOML document with each `a.b.c=value` override.
func applySets(path string, data []byte, sets []string) ([]byte, error) {
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return nil, fmt.Errorf("decode config %s: %w", path, err)
	}
	for _, s := range sets {
		key, raw, ok := strings.Cut(s, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("--set %q: want key=value, e.g. dense.enabled=false", s)
		}
		var value any = raw
		var probe map[string]any
		if _, err := toml.Decode("v = "+raw, &probe); err == nil {
			value = probe["v"]
		}
		parts := strings.Split(key, ".")
		table := doc
		for i := 0; i < len(parts)-1; i++ {
			p := parts[i]
			if blocks, ok := table[p].([]map[string]any); ok {
				// An array of tables ([[reward]]) is addressed by its blocks' names.
				i++
				if i == len(parts)-1 {
					return nil, fmt.Errorf("--set %s: want %s.NAME.KEY=value, NAME the block's name", key, p)
				}
				if table = blockNamed(blocks, parts[i]); table == nil {
					return nil, fmt.Errorf("--set %s: no [[%s]] block named %q (have %s)", key, p, parts[i], blockNames(blocks))
				}
				continue
			}
			next, ok := table[p].(map[string]any)
			if !ok {
				if _, exists := table[p]; exists {
					return nil, fmt.Errorf("--set %s: %q is not a table", key, p)
				}
				next = map[string]any{}
				table[p] = next
			}
			table = next
		}
		table[parts[len(parts)-1]] = value
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		return nil, fmt.Errorf("apply --set to %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

// blockNamed returns the block of an array of tables whose name is name, or nil.
func blockNamed(blocks []map[string]any, name string) map[string]any {
	for _, b := range blocks {
		if b["name"] == name {
			return b
		}
	}
	return nil
}

func blockNames(blocks []map[string]any) string {
	names := make([]string, len(blocks))
	for i, b := range blocks {
		names[i] = fmt.Sprintf("%q", b["name"])
	}
	return strings.Join(names, ", ")
}

// Resolve returns p relative to the config file's directory (absolute paths unchanged).
func (c Config) Resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.Path == "" {
		return p
	}
	return filepath.Join(filepath.Dir(c.Path), p)
}

// TimeBudgetDuration parses Run.TimeBudget; 0 means no limit.
func (c Config) TimeBudgetDuration() time.Duration {
	d, _ := time.ParseDuration(c.Run.TimeBudget) // checked by Validate
	return d
}

// TrainedSteps is ⌊T·timestep_fraction⌋, the steps the loss is computed on.
func (c Config) TrainedSteps() int {
	return int(math.Floor(float64(c.Sampler.Steps) * c.GRPO.TimestepFraction))
}

// Method is the dense/sparse choice of this config (dense.enabled), made here once: rl.Method
// owns everything it changes — the look-ahead targets, R_k and ΔR_k, the advantages.
func (c Config) Method() rl.Method {
	return rl.Method{Dense: c.Dense.Enabled, Lookahead: c.Dense.Lookahead, Trained: c.TrainedSteps(),
		Queries: c.Dense.Queries, Advantage: rl.AdvantageConfig{Std: c.GRPO.Std, Clip: c.GRPO.AdvClip}}
}

// Validate checks every field: `field: got X, want Y`.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, field string, got any, want string) {
		if !ok {
			errs = append(errs, fmt.Errorf("%s: got %v, want %s", field, got, want))
		}
	}
	check(c.Run.Name != "" && !strings.ContainsAny(c.Run.Name, `/\`), "run.name", fmt.Sprintf("%q", c.Run.Name), "a non-empty name without slashes")
	check(c.Run.OutDir != "", "run.out_dir", `""`, "a directory")
	check(c.Run.Epochs >= 0, "run.epochs", c.Run.Epochs, ">= 0")
	if c.Run.TimeBudget != "" {
		d, err := time.ParseDuration(c.Run.TimeBudget)
		check(err == nil && d >= 0, "run.time_budget", fmt.Sprintf("%q", c.Run.TimeBudget), `a duration such as "10m"`)
	}
	check(c.Run.Epochs > 0 || c.TimeBudgetDuration() > 0, "run.epochs/run.time_budget", "0/0", "a bound on training (epochs > 0 or a time budget)")
	check(c.Run.CheckpointEvery >= 1, "run.checkpoint_every", c.Run.CheckpointEvery, ">= 1")
	check(c.Run.KeepCheckpoints >= 1, "run.keep_checkpoints", c.Run.KeepCheckpoints, ">= 1")
	check(c.Run.Backend.Valid(), "run.backend", fmt.Sprintf("%q", c.Run.Backend), choice.Want(nn.BackendSpecs))
	check(c.Run.SampleEvery >= 0, "run.sample_every", c.Run.SampleEvery, ">= 0")
	check(c.Run.Devices >= 1, "run.devices", c.Run.Devices, ">= 1")
	check(c.Run.Devices == 1 || c.Run.Backend != "go", "run.devices", c.Run.Devices, `1 with run.backend "go" (SimpleGo has one device)`)
	check(c.Run.Devices == 1 || c.Pipeline.TrainWorkers == 1, "run.devices", c.Run.Devices, "1 unless pipeline.train_workers = 1 (the devices already share each computation)")
	if c.Model.Diffusers == "" {
		check(c.Model.Config != "", "model.config", `""`, "an MMDiT JSON config file (or model.diffusers)")
		check(c.Model.Weights != "", "model.weights", `""`, "a safetensors file (or model.diffusers)")
		check(c.Model.Snapshot == "", "model.snapshot", fmt.Sprintf("%q", c.Model.Snapshot), `"" without model.diffusers (the folder it is exported to)`)
		check(c.Model.Resolution == 0, "model.resolution", c.Model.Resolution, "0 without model.diffusers (the VAE graph fixes the size)")
		check(c.TextEncoder.Model != "", "text_encoder.model", `""`, "an ONNX file")
		check(c.VAE.Decoder != "", "vae.decoder", `""`, "an ONNX file")
	} else {
		// An export brings its transformer, text encoders and VAE: naming others is a mistake.
		for _, f := range []struct{ field, v string }{{"model.config", c.Model.Config}, {"model.weights", c.Model.Weights},
			{"text_encoder.model", c.TextEncoder.Model}, {"vae.decoder", c.VAE.Decoder}} {
			check(f.v == "", f.field, fmt.Sprintf("%q", f.v), `"" with model.diffusers (the export provides it)`)
		}
		check(c.Model.Resolution >= 0, "model.resolution", c.Model.Resolution, ">= 0 (0 = the model's own size)")
	}
	check(c.Model.LoRA.Rank >= 1, "model.lora.rank", c.Model.LoRA.Rank, ">= 1")
	check(c.Model.LoRA.Alpha > 0, "model.lora.alpha", c.Model.LoRA.Alpha, "> 0")
	check(len(c.Model.LoRA.Targets) > 0, "model.lora.targets", "[]", "at least one module name")
	if err := c.ONNX.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, m := range c.onnxTables() {
		if err := m.override.Validate(m.table); err != nil {
			errs = append(errs, err)
		}
	}
	check(c.Model.ONNX == nil || c.Pipeline.InferenceEngine == EngineONNX, "model.onnx", "a table",
		fmt.Sprintf("none with pipeline.inference_engine = %q (the policy opens no ONNX session)", c.Pipeline.InferenceEngine))
	check(c.TextEncoder.Tokenizer == "chars", "text_encoder.tokenizer", fmt.Sprintf("%q", c.TextEncoder.Tokenizer), `"chars"`)
	check(c.TextEncoder.MaxLength >= 1, "text_encoder.max_length", c.TextEncoder.MaxLength, ">= 1")
	check(c.Prompts.Train != "", "prompts.train", `""`, "a prompt file")
	check(c.Prompts.Test != "", "prompts.test", `""`, "a prompt file")
	check(c.Prompts.PerEpoch >= 1, "prompts.per_epoch", c.Prompts.PerEpoch, ">= 1")
	check(c.Sampler.Kind.Valid(), "sampler.kind", fmt.Sprintf("%q", c.Sampler.Kind), choice.Want(rl.Kinds))
	check(c.Sampler.Psi == "" || c.Sampler.Kind != rl.KindCPS, "sampler.psi", fmt.Sprintf("%q", c.Sampler.Psi), `"" with sampler.kind = "cps" (ψ sets the Flow-SDE's noise; CPS does not read it)`)
	check(c.Sampler.Steps >= 2, "sampler.steps", c.Sampler.Steps, ">= 2")
	check(c.Sampler.NoiseLevel > 0 && !math.IsInf(c.Sampler.NoiseLevel, 0), "sampler.noise_level", c.Sampler.NoiseLevel, "> 0")
	check(c.Sampler.Shift > 0, "sampler.shift", c.Sampler.Shift, "> 0")
	check(c.Sampler.GroupSize >= 2, "sampler.group_size", c.Sampler.GroupSize, ">= 2")
	check(c.Sampler.Guidance >= 0, "sampler.guidance", c.Sampler.Guidance, ">= 0")
	check(c.Dense.Lookahead >= 0, "dense.lookahead", c.Dense.Lookahead, ">= 0 (0 = all remaining steps)")
	if steps, trained := c.Sampler.Steps, c.TrainedSteps(); steps >= 2 && trained >= 1 {
		q := c.Dense.Queries
		check(q == 0 || (q >= 2 && q <= rl.MaxQueries(steps, trained)), "dense.queries", q,
			rl.QueriesWant(steps, trained)+fmt.Sprintf(" at sampler.steps = %d with %d trained steps", steps, trained))
	}
	check(c.Dense.AuditEvery >= 0, "dense.audit_every", c.Dense.AuditEvery, ">= 0 (0 = never)")
	check(c.GRPO.Std.Valid(), "grpo.std", fmt.Sprintf("%q", c.GRPO.Std), choice.Want(rl.StdModes))
	check(c.GRPO.AdvClip > 0, "grpo.adv_clip", c.GRPO.AdvClip, "> 0")
	check(c.GRPO.ClipRange > 0, "grpo.clip_range", c.GRPO.ClipRange, "> 0")
	check(c.GRPO.Beta >= 0, "grpo.beta", c.GRPO.Beta, ">= 0")
	check(c.GRPO.LearningRate > 0, "grpo.learning_rate", c.GRPO.LearningRate, "> 0")
	check(c.GRPO.WeightDecay >= 0, "grpo.weight_decay", c.GRPO.WeightDecay, ">= 0")
	check(c.GRPO.GradClip > 0, "grpo.grad_clip", c.GRPO.GradClip, "> 0")
	check(c.GRPO.TimestepFraction > 0 && c.GRPO.TimestepFraction <= 1, "grpo.timestep_fraction", c.GRPO.TimestepFraction, "in (0, 1]")
	check(c.TrainedSteps() >= 1, "grpo.timestep_fraction", c.GRPO.TimestepFraction, fmt.Sprintf("at least one trained step of sampler.steps = %d", c.Sampler.Steps))
	check(c.GRPO.Minibatch >= 1, "grpo.minibatch", c.GRPO.Minibatch, ">= 1")
	check(c.GRPO.MicroBatch >= 0, "grpo.micro_batch", c.GRPO.MicroBatch, ">= 0 (0 = no cap)")
	check(c.GRPO.EMADecayMax >= 0 && c.GRPO.EMADecayMax < 1, "grpo.ema_decay_max", c.GRPO.EMADecayMax, "in [0, 1)")
	check(c.Calibrate.Iterations >= 1, "calibrate.iterations", c.Calibrate.Iterations, ">= 1")
	check(c.Calibrate.Trajectories >= 2, "calibrate.trajectories", c.Calibrate.Trajectories, ">= 2")
	check(c.Calibrate.Epsilon1 > 0, "calibrate.epsilon1", c.Calibrate.Epsilon1, "> 0")
	check(c.Calibrate.Epsilon2 > 0, "calibrate.epsilon2", c.Calibrate.Epsilon2, "> 0")
	check(c.Eval.Every >= 0, "eval.every", c.Eval.Every, ">= 0")
	check(c.Eval.Steps >= 1, "eval.steps", c.Eval.Steps, ">= 1")
	check(c.Eval.Prompts >= 0, "eval.prompts", c.Eval.Prompts, ">= 0 (0 = all)")
	check(c.Eval.BatchSize >= 1, "eval.batch_size", c.Eval.BatchSize, ">= 1")
	check(c.Pipeline.RolloutBatch >= 1, "pipeline.rollout_batch", c.Pipeline.RolloutBatch, ">= 1")
	check(c.Pipeline.Buffer >= 1, "pipeline.buffer", c.Pipeline.Buffer, ">= 1")
	check(c.Pipeline.LookaheadWorkers >= 1, "pipeline.lookahead_workers", c.Pipeline.LookaheadWorkers, ">= 1")
	check(c.Pipeline.ScoreWorkers >= 1, "pipeline.score_workers", c.Pipeline.ScoreWorkers, ">= 1")
	check(c.Pipeline.TrainWorkers >= 1, "pipeline.train_workers", c.Pipeline.TrainWorkers, ">= 1")
	check(c.Pipeline.InferenceEngine.Valid(), "pipeline.inference_engine", fmt.Sprintf("%q", c.Pipeline.InferenceEngine), choice.Want(Engines))
	check(len(c.Rewards) > 0, "reward", "no [[reward]] tables", "at least one")
	for _, h := range c.Eval.Rewards {
		for _, r := range c.Rewards {
			check(h.Name != r.Name, "eval.reward", fmt.Sprintf("a block named %q", h.Name), "held-out names distinct from the [[reward]] names (the two are logged side by side)")
		}
	}
	return errors.Join(errs...)
}

// onnxTable is a model's own ONNX table ([vae.onnx]) and its override of [onnx].
type onnxTable struct {
	table    string
	override *onnxrt.Override
}

// onnxTables lists the pipeline's per-model ONNX tables (the rewards carry theirs in their
// blocks, rewards.Config.ONNX).
func (c Config) onnxTables() []onnxTable {
	return []onnxTable{{"text_encoder.onnx", c.TextEncoder.ONNX}, {"vae.onnx", c.VAE.ONNX}, {"model.onnx", c.Model.ONNX}}
}
