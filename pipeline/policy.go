package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/frozen"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/sd3"
	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rewards/kserve"
	"github.com/densegrpo/densegrpo/rl"
)

// Checkpoint files holding LoRA weights (PEFT names, as mmdit.Model.SaveLoRA writes them):
// the EMA of the adapters, used for evaluation when present, and the raw adapters.
const (
	EMALoRAFile = "ema.safetensors"
	LoRAFile    = "lora.safetensors"
)

// PolicyOptions are the choices of NewPolicy that are not in the config.
type PolicyOptions struct {
	// Backend, if not nil, is used instead of nn.NewBackend(string(cfg.Run.Backend)) (tests share
	// one); the policy does not finalize it.
	Backend backends.Backend
	// LoRA is the adapters to load: a safetensors file or a folder (AdapterFile); ""
	// initialises them from cfg.Run.Seed (lora_B = 0, so the policy starts as the base model).
	LoRA string
}

// Policy is the trainable flow model: a GoMLX backend, the context holding the weights, and
// the MMDiT with its base weights loaded and LoRA adapters attached.
type Policy struct {
	Backend backends.Backend
	// BackendDesc says which backend was chosen, for logs.
	BackendDesc string
	// Ctx holds the base weights (not trainable) and the adapters (trainable), under the
	// checkpoint keys of package mmdit.
	Ctx   *mlctx.Context
	Model *mmdit.Model

	ownBackend bool
}

// NewPolicy builds the policy of cfg: the MMDiT of cfg.Model.Config with the base weights of
// cfg.Model.Weights and adapters of cfg.Model.LoRA, initialised, or loaded from opts.LoRA (a file
// or folder, AdapterFile) with the rank, alpha and targets it records.
func NewPolicy(cfg Config, opts PolicyOptions) (*Policy, error) {
	mcfg, export, err := modelConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("new policy: %w", err)
	}
	lora := &mmdit.LoRAConfig{Rank: cfg.Model.LoRA.Rank, Alpha: cfg.Model.LoRA.Alpha, Targets: cfg.Model.LoRA.Targets}
	if err := lora.Validate(mcfg); err != nil {
		return nil, fmt.Errorf("config %s: model.lora: %w", cfg.Path, err)
	}
	adapter := ""
	if opts.LoRA != "" {
		if adapter, err = AdapterFile(opts.LoRA); err != nil {
			return nil, fmt.Errorf("new policy: %w", err)
		}
		// An adapter that records its rank, alpha and targets (a PEFT folder, a diffusers
		// file, a file of this project's SaveLoRA) is loaded as it says, whatever
		// [model.lora] holds; one that does not (a checkpoint's tensors) takes [model.lora].
		recorded, ok, err := mmdit.ReadRecordedLoRAConfig(adapter, mcfg)
		if err != nil {
			return nil, fmt.Errorf("new policy: %w", err)
		}
		if ok {
			lora = &recorded
		}
	}
	model, err := mmdit.New(mcfg, lora)
	if err != nil {
		return nil, fmt.Errorf("new policy: %w", err)
	}
	p := &Policy{Backend: opts.Backend, Ctx: mlctx.New(), Model: model}
	if export != nil {
		err = model.LoadDiffusers(p.Ctx, export.TransformerDir())
	} else {
		err = model.Load(p.Ctx, cfg.Resolve(cfg.Model.Weights))
	}
	if err != nil {
		return nil, fmt.Errorf("new policy: %w", err)
	}
	if adapter != "" {
		err = p.LoadLoRA(adapter)
	} else {
		err = model.InitLoRA(p.Ctx, uint64(cfg.Run.Seed))
	}
	if err != nil {
		return nil, fmt.Errorf("new policy: %w", err)
	}
	if p.Backend == nil {
		p.Backend, p.BackendDesc, err = nn.NewBackend(string(cfg.Run.Backend))
		if err != nil {
			return nil, fmt.Errorf("new policy: %w", err)
		}
		p.ownBackend = true
	} else {
		p.BackendDesc = p.Backend.Description()
	}
	return p, nil
}

// modelConfig reads the transformer's config: model.config, or the SD3 export's (then also
// returned) for model.diffusers.
func modelConfig(cfg Config) (mmdit.Config, *sd3.Manifest, error) {
	if cfg.Model.Diffusers == "" {
		mcfg, err := mmdit.LoadConfig(cfg.Resolve(cfg.Model.Config))
		return mcfg, nil, err
	}
	export, err := sd3.ReadManifest(cfg.Resolve(cfg.Model.Diffusers))
	if err != nil {
		return mmdit.Config{}, nil, err
	}
	mcfg, err := export.TransformerConfig()
	return mcfg, export, err
}

// LoadLoRA replaces the adapters with those of a safetensors file (PEFT names).
func (p *Policy) LoadLoRA(path string) error {
	return p.Model.LoadLoRA(p.Ctx, path)
}

// AdapterFile returns the safetensors file of an adapter given as a file or as a folder: a PEFT
// folder (mmdit.PEFTAdapterModel, as `pipeline export-lora` and peft's save_pretrained write
// it), a diffusers LoRA folder (mmdit.DiffusersLoRAFile) or a run checkpoint (CheckpointLoRA).
func AdapterFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("adapter %w", err)
	}
	if !st.IsDir() {
		return path, nil
	}
	for _, name := range []string{mmdit.PEFTAdapterModel, mmdit.DiffusersLoRAFile} {
		if p := filepath.Join(path, name); fileExists(p) {
			return p, nil
		}
	}
	if p, err := CheckpointLoRA(path); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("adapter folder %s: no %s (PEFT), %s (diffusers), %s or %s (a run checkpoint)",
		path, mmdit.PEFTAdapterModel, mmdit.DiffusersLoRAFile, EMALoRAFile, LoRAFile)
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}

// CheckpointLoRA returns the adapter file of a run checkpoint directory: EMALoRAFile if
// present, else LoRAFile.
func CheckpointLoRA(dir string) (string, error) {
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return "", fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	for _, name := range []string{EMALoRAFile, LoRAFile} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("checkpoint %s: %w", dir, err)
		}
	}
	return "", fmt.Errorf("checkpoint %s: neither %s nor %s", dir, EMALoRAFile, LoRAFile)
}

// Velocity is the policy as rl sees it (an rl.Velocity): cond = [prompt_embeds [B,L,D],
// pooled_prompt_embeds [B,P]], x [B,C,h,w], timestep [B]; it returns v [B,C,h,w]. It panics,
// as graph building does, on another number of conditioning tensors or on shape errors.
func (p *Policy) Velocity(ctx *mlctx.Context, x, timestep *Node, cond []*Node, withLoRA bool) *Node {
	if len(cond) != 2 {
		panic(fmt.Errorf("policy velocity: got %d conditioning tensors, want 2 (prompt_embeds, pooled_prompt_embeds)", len(cond)))
	}
	return p.Model.Forward(ctx, x, timestep, cond[0], cond[1], withLoRA)
}

// Check verifies that the frozen parts fit the transformer: the text encoder's widths are the
// model's joint_attention_dim and pooled_projection_dim (where the graph declares them), and
// the VAE's latents have in_channels channels and a size the patch grid covers.
func (p *Policy) Check(te TextEncoder, vae *frozen.VAEDecoder) error {
	c := p.Model.Config
	if d, pd := te.Dims(); (d != 0 && d != c.JointAttentionDim) || (pd != 0 && pd != c.PooledProjectionDim) {
		return fmt.Errorf("text encoder %s gives widths D=%d, P=%d; the transformer wants joint_attention_dim %d, pooled_projection_dim %d",
			te.Path(), d, pd, c.JointAttentionDim, c.PooledProjectionDim)
	}
	ls := vae.LatentShape()
	maxSide := c.PosEmbedMaxSize * c.PatchSize
	if ls[0] != c.InChannels || ls[1]%c.PatchSize != 0 || ls[2]%c.PatchSize != 0 || ls[1] > maxSide || ls[2] > maxSide {
		return fmt.Errorf("VAE decoder %s takes latents %v; the transformer wants [%d,h,w] with h, w multiples of patch_size %d up to %d",
			vae.Path(), ls, c.InChannels, c.PatchSize, maxSide)
	}
	return nil
}

// Condition encodes prompts into the conditioning rl's sampler feeds the Velocity: one row per
// prompt; with guidance > 0, Uncond holds the empty prompt's embeddings (one shared row).
func (p *Policy) Condition(ctx context.Context, te TextEncoder, prompts []string, guidance float64) (rl.Conditioning, error) {
	emb, pooled, err := te.Encode(ctx, prompts)
	if err != nil {
		return rl.Conditioning{}, err
	}
	c := rl.Conditioning{Cond: []*tensors.Tensor{toTensor(emb), toTensor(pooled)}}
	if guidance > 0 {
		emb, pooled, err := te.Encode(ctx, []string{""})
		if err != nil {
			return rl.Conditioning{}, err
		}
		c.Uncond = []*tensors.Tensor{toTensor(emb), toTensor(pooled)}
	}
	return c, nil
}

func toTensor(t onnxrt.Tensor) *tensors.Tensor {
	dims := make([]int, len(t.Shape))
	for i, d := range t.Shape {
		dims[i] = int(d)
	}
	return tensors.FromFlatDataAndDimensions(t.Float32, dims...)
}

// Close releases the backend if the policy created it.
func (p *Policy) Close() {
	if p.ownBackend && p.Backend != nil {
		p.Backend.Finalize()
		p.Backend = nil
	}
}

// Guidance maps sampler.guidance to rl's scale: values <= 1 disable guidance (0).
func Guidance(cfg Config) float64 {
	if cfg.Sampler.Guidance <= 1 {
		return 0
	}
	return cfg.Sampler.Guidance
}

// TextEncoder is what a run needs of its frozen text encoder: the tiny model's one graph
// (frozen.TextEncoder) or an SD3 export's CLIP-L, CLIP-G and T5 (frozen.SD3TextEncoder).
type TextEncoder interface {
	// Encode returns prompt_embeds [N,L,D] and pooled_prompt_embeds [N,P] of the prompts.
	Encode(ctx context.Context, prompts []string) (embeds, pooled onnxrt.Tensor, err error)
	// Dims are D and P (0 while unknown).
	Dims() (d, p int)
	// Path names the encoder in errors.
	Path() string
	Close() error
}

// Frozen is the frozen side of a run, opened once: the ONNX text encoder and VAE decoder and
// the reward models.
type Frozen struct {
	TextEncoder TextEncoder
	VAE         *frozen.VAEDecoder
	Rewards     *rewards.Set
	// Heldout are the held-out rewards ([[eval.reward]]), scoring evaluations only; nil
	// without them.
	Heldout *rewards.Set
}

// OpenFrozen opens the text encoder, VAE decoder and rewards of cfg, checking every declared
// input and output. On error nothing stays open.
func OpenFrozen(ctx context.Context, cfg Config) (*Frozen, error) {
	if err := initONNX(cfg); err != nil {
		return nil, err
	}
	f := &Frozen{}
	var err error
	if cfg.Model.Diffusers != "" {
		err = f.openSD3(cfg)
	} else {
		err = f.openTiny(cfg)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	// cfg.Rewards carry paths already resolved against the config's directory.
	f.Rewards, err = rewards.Open(ctx, cfg.Rewards, "", cfg.ONNX)
	if err != nil {
		f.Close()
		return nil, err
	}
	if len(cfg.Eval.Rewards) > 0 {
		if f.Heldout, err = rewards.Open(ctx, cfg.Eval.Rewards, "", cfg.ONNX); err != nil {
			f.Close()
			return nil, fmt.Errorf("[[eval.reward]]: %w", err)
		}
	}
	return f, nil
}

// initONNX loads ONNX Runtime's library (one per process) before any model opens: the build
// of the first model that runs on CUDA, which runs CPU sessions too, so that a model on the
// CPU opened first does not load the CPU-only build for all. Without CUDA the first model
// opened loads the library, as always.
func initONNX(cfg Config) error {
	where, rt, ok := firstCUDA(cfg)
	if !ok {
		return nil
	}
	if err := onnxrt.Init(rt); err != nil {
		return fmt.Errorf("%s.provider = \"cuda\": %w", where, err)
	}
	return nil
}

// firstCUDA finds the first model whose ONNX sessions run on CUDA: the table that set its
// provider ("onnx" when [onnx]'s applies) and its settings.
func firstCUDA(cfg Config) (where string, rt onnxrt.Config, ok bool) {
	tables := cfg.onnxTables() // model.onnx is unset unless the policy runs in ONNX Runtime
	for _, rs := range [][]rewards.Config{cfg.Rewards, cfg.Eval.Rewards} {
		for _, r := range rs {
			if r.Kind != "remote" {
				tables = append(tables, onnxTable{fmt.Sprintf("reward %q: onnx", r.Name), r.ONNX})
			}
		}
	}
	for _, t := range tables {
		if rt := cfg.ONNX.With(t.override); rt.UsesCUDA() {
			if t.override == nil || t.override.Provider == nil {
				return "onnx", rt, true
			}
			return t.table, rt, true
		}
	}
	return "", onnxrt.Config{}, false
}

// LogRetries makes log say when a remote reward waits for its server (each retry, with why)
// and when the server answered again, so a run that stalls on a restarting server says so.
func (f *Frozen) LogRetries(log io.Writer) {
	var mu sync.Mutex // scoring goroutines retry concurrently; one line at a time
	hook := func(name string, r kserve.Retry) {
		mu.Lock()
		defer mu.Unlock()
		if r.Err != nil {
			fmt.Fprintf(log, "reward %q: %v; retry %d of %d in %s\n", name, r.Err, r.Attempts, r.Retries, r.Wait)
			return
		}
		fmt.Fprintf(log, "reward %q: %s answered after %d attempts over %s\n", name, r.URL, r.Attempts, r.Since.Round(time.Millisecond))
	}
	f.Rewards.OnRetry(hook)
	if f.Heldout != nil {
		f.Heldout.OnRetry(hook)
	}
}

// openTiny opens the text encoder and VAE decoder graphs named by [text_encoder] and [vae].
func (f *Frozen) openTiny(cfg Config) error {
	te, err := frozen.OpenTextEncoder(cfg.Resolve(cfg.TextEncoder.Model), frozen.TextEncoderOptions{
		Runtime: cfg.ONNX.With(cfg.TextEncoder.ONNX), Tokenizer: cfg.TextEncoder.Tokenizer, MaxLength: cfg.TextEncoder.MaxLength})
	if err != nil {
		return err
	}
	f.TextEncoder = te
	f.VAE, err = frozen.OpenVAEDecoder(cfg.Resolve(cfg.VAE.Decoder), frozen.VAEOptions{Runtime: cfg.ONNX.With(cfg.VAE.ONNX), BatchSize: cfg.Eval.BatchSize})
	return err
}

// openSD3 opens an SD3 export's text encoders and VAE decoder (model.diffusers) at the
// configured resolution, after checking that the sampler's shift is the export's scheduler's.
func (f *Frozen) openSD3(cfg Config) error {
	m, err := sd3.ReadManifest(cfg.Resolve(cfg.Model.Diffusers))
	if err != nil {
		return err
	}
	if cfg.Sampler.Shift != m.Scheduler.Shift {
		return fmt.Errorf("sampler.shift: got %g, want %g, the shift of the export's scheduler (%s)", cfg.Sampler.Shift, m.Scheduler.Shift,
			filepath.Join(m.Dir, sd3.ManifestFile))
	}
	mcfg, err := m.TransformerConfig()
	if err != nil {
		return err
	}
	res := cfg.Model.Resolution
	if res == 0 {
		res = mcfg.SampleSize * m.VAE.ScaleFactor
	}
	te, err := m.OpenTextEncoder(cfg.ONNX.With(cfg.TextEncoder.ONNX), mcfg)
	if err != nil {
		return err
	}
	f.TextEncoder = te
	f.VAE, err = m.OpenVAEDecoder(cfg.ONNX.With(cfg.VAE.ONNX), res, res, cfg.Eval.BatchSize)
	if err != nil {
		return fmt.Errorf("model.resolution %d: %w", res, err)
	}
	return nil
}

// Decode decodes latents into images for the reward models.
func (f *Frozen) Decode(ctx context.Context, latents [][]float32) ([]rewards.Image, error) {
	imgs, err := f.VAE.Decode(ctx, latents)
	if err != nil {
		return nil, err
	}
	out := make([]rewards.Image, len(imgs))
	for i, im := range imgs {
		out[i] = rewards.Image(im)
	}
	return out, nil
}

// Close releases every session; it is safe on a partly opened Frozen and more than once.
func (f *Frozen) Close() error {
	var errs []error
	if f.TextEncoder != nil {
		errs = append(errs, f.TextEncoder.Close())
		f.TextEncoder = nil
	}
	if f.VAE != nil {
		errs = append(errs, f.VAE.Close())
		f.VAE = nil
	}
	if f.Rewards != nil {
		errs = append(errs, f.Rewards.Close())
		f.Rewards = nil
	}
	if f.Heldout != nil {
		errs = append(errs, f.Heldout.Close())
		f.Heldout = nil
	}
	return errors.Join(errs...)
}
