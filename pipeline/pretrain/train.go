package pretrain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/train/optimizers"
	"golang.org/x/sync/errgroup"

	"github.com/densegrpo/densegrpo/datasets/ocrtiny"
	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/models/tinyocr"
	"github.com/densegrpo/densegrpo/pipeline/checkpoint"
	"github.com/densegrpo/densegrpo/pipeline/progress"
)

// Output file names inside Config.Output.Dir.
const (
	TransformerFile = "transformer.safetensors"
	TextEncoderFile = "text_encoder.safetensors"
	LossFile        = "loss.jsonl"
	ConfigFile      = "config.toml"
	CheckpointDir   = "checkpoints"
)

// Scopes of the two trained models in the training context.
const (
	transformerScope = "transformer"
	textEncoderScope = tinyocr.TextEncoderPrefix
)

// Stop reasons of a Result.
const (
	StoppedSteps       = "steps"
	StoppedTimeBudget  = "time budget"
	StoppedInterrupted = "interrupted"
)

// Options are the choices of one invocation that are not part of the config.
type Options struct {
	// Resume continues from the newest checkpoint in Output.Dir/checkpoints; without it an
	// output directory that already holds checkpoints is an error (nothing is overwritten).
	Resume bool
	// Progress receives a progress bar (nil: none).
	Progress io.Writer
	// Log receives one plain line per log window (nil: none), for logs that are not a terminal.
	Log io.Writer
	// Backend, if not nil, is used instead of creating Train.Backend (tests share one).
	Backend backends.Backend
	// OnStep, if not nil, is called after every step with the number of completed steps and
	// the step's loss.
	OnStep func(step int, loss float32)
}

// Result reports a finished (or interrupted) invocation.
type Result struct {
	// Steps is the number of completed steps, over all invocations.
	Steps int
	// Stopped is why the loop ended: StoppedSteps, StoppedTimeBudget or StoppedInterrupted.
	Stopped string
	// LastLoss is the mean loss of the last logged window (NaN if nothing was logged).
	LastLoss float32
	// Checkpoint is the directory of the last checkpoint written ("" if none).
	Checkpoint string
	// Transformer and TextEncoder are the final weight files ("" when interrupted).
	Transformer, TextEncoder string
	// StepsPerSecond is the training speed of this invocation.
	StepsPerSecond float64
}

// lossRecord is one line of loss.jsonl: the means over the steps since the previous line.
type lossRecord struct {
	Step          int     `json:"step"`
	Loss          float64 `json:"loss"`
	GradNorm      float64 `json:"grad_norm"`
	LR            float64 `json:"lr"`
	Seconds       float64 `json:"seconds"`
	SamplesPerSec float64 `json:"samples_per_s"`
}

// gradientUpdater is the part of GoMLX's Adam that applies given gradients (so that they can
// be clipped first).
type gradientUpdater interface {
	UpdateGraphWithGradients(ctx *mlctx.Context, grads []*Node, lossDType dtypes.DType)
}

// trainer holds one invocation's models, data and compiled step.
type trainer struct {
	cfg     Config
	opts    Options
	backend backends.Backend
	model   *mmdit.Model
	te      tinyocr.TextEncoderConfig
	mctx    *mlctx.Context
	// grads computes one shard's loss and gradients; apply averages the shards' gradients
	// and takes the optimizer step. trainable lists the variables of the gradients, in order.
	grads, apply *mlctx.Exec
	trainable    []*mlctx.Variable
	lrVar        *mlctx.Variable
	vae          *tinyocr.VAE
	data         *dataSource
	ckpt         *checkpoint.Checkpointer
	// ema averages the model weights when train.ema_decay > 0, else nil.
	ema *nn.EMA
}

// Run pretrains the transformer and the text encoder as cfg says, until Train.Steps steps are
// done, the time budget is spent or ctx is cancelled. It checkpoints every
// Output.CheckpointEvery steps and when it stops; on cancellation it writes the checkpoint and
// returns an error wrapping ctx's error that names it. Otherwise it writes the final
// TransformerFile and TextEncoderFile.
func Run(ctx context.Context, cfg Config, opts Options) (res Result, err error) {
	res.LastLoss = float32(math.NaN())
	t, err := newTrainer(cfg, opts)
	if err != nil {
		return res, err
	}
	defer t.close()
	state, err := t.start()
	if err != nil {
		return res, err
	}
	return t.loop(ctx, state)
}

// newTrainer loads the configs, the prompts, the VAE and creates or initialises the models.
func newTrainer(cfg Config, opts Options) (*trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("pretrain config: %w", err)
	}
	mcfg, err := mmdit.LoadConfig(cfg.Model.Transformer)
	if err != nil {
		return nil, fmt.Errorf("pretrain: %w", err)
	}
	te := cfg.Model.TextEncoder.tinyocr()
	if err := checkCompatible(mcfg, te); err != nil {
		return nil, fmt.Errorf("pretrain: transformer config %s: %w", cfg.Model.Transformer, err)
	}
	model, err := mmdit.New(mcfg, nil)
	if err != nil {
		return nil, fmt.Errorf("pretrain: %w", err)
	}
	prompts, err := ocrtiny.LoadPrompts(cfg.Data.Prompts)
	if err != nil {
		return nil, fmt.Errorf("pretrain: %w", err)
	}
	if len(prompts) == 0 {
		return nil, fmt.Errorf("pretrain: prompt file %s has no prompts", cfg.Data.Prompts)
	}
	backend := opts.Backend
	if backend == nil {
		backend, _, err = nn.NewBackend(string(cfg.Train.Backend))
		if err != nil {
			return nil, fmt.Errorf("pretrain: %w", err)
		}
	}
	vae, err := tinyocr.LoadVAE(backend, cfg.Model.VAE)
	if err != nil {
		return nil, fmt.Errorf("pretrain: %w", err)
	}
	t := &trainer{
		cfg: cfg, opts: opts, backend: backend, model: model, te: te, vae: vae, mctx: mlctx.New(),
		ckpt: checkpoint.New(filepath.Join(cfg.Output.Dir, CheckpointDir), cfg.Output.KeepCheckpoints),
		data: &dataSource{
			prompts: prompts, seed: cfg.Train.Seed, size: cfg.Train.BatchSize,
			dropout: cfg.Data.CaptionDropout, sigma: cfg.Sigma, encode: vae.Encode,
		},
	}
	if err := t.initModels(); err != nil {
		t.close()
		return nil, err
	}
	if err := t.buildStep(); err != nil {
		t.close()
		return nil, err
	}
	if cfg.Train.EMADecay > 0 {
		init, _, err := nn.SnapshotVariables(t.mctx, isModelWeight)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("pretrain: start weight average: %w", err)
		}
		t.ema = nn.NewEMA(cfg.Train.EMADecay, init)
	}
	return t, nil
}

// isModelWeight selects the trained weights of the transformer and the text encoder (not the
// optimizer's moments, nor fixed tables such as the position embedding).
func isModelWeight(v *mlctx.Variable) bool {
	if !v.Trainable {
		return false
	}
	for _, scope := range []string{transformerScope, textEncoderScope} {
		root := mlctx.ScopeSeparator + scope
		if v.Scope() == root || strings.HasPrefix(v.Scope(), root+mlctx.ScopeSeparator) {
			return true
		}
	}
	return false
}

// checkCompatible checks that the transformer fits the VAE's latents and the text encoder.
func checkCompatible(m mmdit.Config, te tinyocr.TextEncoderConfig) error {
	out := m.OutChannels
	if out == 0 {
		out = m.InChannels
	}
	p := m.PatchSize
	switch {
	case m.InChannels != latentChannels:
		return fmt.Errorf("field in_channels: got %d, want %d (the VAE's latent channels)", m.InChannels, latentChannels)
	case out != latentChannels:
		return fmt.Errorf("field out_channels: got %d, want %d (the VAE's latent channels)", out, latentChannels)
	case latentHeight%p != 0 || latentWidth%p != 0:
		return fmt.Errorf("field patch_size: got %d, want a divisor of the %dx%d latent", p, latentHeight, latentWidth)
	case m.PosEmbedMaxSize < latentWidth/p:
		return fmt.Errorf("field pos_embed_max_size: got %d, want >= %d (latent width / patch_size)", m.PosEmbedMaxSize, latentWidth/p)
	case m.JointAttentionDim != te.Dim:
		return fmt.Errorf("field joint_attention_dim: got %d, want %d (model.text_encoder.dim)", m.JointAttentionDim, te.Dim)
	case m.PooledProjectionDim != te.PooledDim:
		return fmt.Errorf("field pooled_projection_dim: got %d, want %d (model.text_encoder.pooled_dim)", m.PooledProjectionDim, te.PooledDim)
	}
	return nil
}

// initModels initialises the transformer (mmdit.Init) and the text encoder (its
// initialisers, from the context's RNG seeded by the config seed).
func (t *trainer) initModels() error {
	seed := t.cfg.Train.Seed
	if err := t.model.Init(t.mctx.In(transformerScope), seed); err != nil {
		return fmt.Errorf("pretrain: %w", err)
	}
	if err := t.mctx.SetRNGStateFromSeed(int64(seed)); err != nil {
		return fmt.Errorf("pretrain: seed text encoder init: %w", err)
	}
	te := t.te
	exec, err := mlctx.NewExec(t.backend, t.mctx, func(c *mlctx.Context, ids *Node) *Node {
		_, pooled := tinyocr.TextEncode(c.In(textEncoderScope), te, ids)
		return pooled
	})
	if err != nil {
		return fmt.Errorf("pretrain: init text encoder: %w", err)
	}
	defer exec.Finalize()
	// Running the graph once creates the variables and runs their initialisers.
	var outs []*tensors.Tensor
	if perr := nn.Try(func() {
		outs, err = exec.Exec(tensors.FromFlatDataAndDimensions(make([]int64, tinyocr.MaxLength), 1, tinyocr.MaxLength))
	}); perr != nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("pretrain: init text encoder: %w", err)
	}
	for _, o := range outs {
		o.FinalizeAll()
	}
	if t.cfg.Model.SlotAttentionInit {
		if err := initSlotAttention(t.mctx, t.model.Config, te); err != nil {
			return fmt.Errorf("pretrain: model.slot_attention_init: %w", err)
		}
	}
	return nil
}

// buildStep compiles the training step: inputs x0 [B,4,8,32], noise [B,4,8,32], σ [B] and
// token ids [B,L] int64; outputs the loss and the gradient's global norm before clipping; it
// updates the weights and the optimizer state.
func (t *trainer) buildStep() error {
	opt := optimizers.Adam().LearningRate(t.cfg.Train.LR).WeightDecay(t.cfg.Train.WeightDecay).Done()
	updater, ok := opt.(gradientUpdater)
	if !ok {
		return fmt.Errorf("pretrain: GoMLX's Adam does not take given gradients")
	}
	model, te, clip := t.model, t.te, t.cfg.Train.GradClip
	// Reuse: a model variable missing here is an error, never a silent fresh init. The graphs
	// are built at their first Exec (runStep turns their panics into errors). The gradient
	// graph of every shard is the same (equal shard shapes), so it is built once.
	grads, err := mlctx.NewExec(t.backend, t.mctx.Reuse(), func(c *mlctx.Context, in []*Node) []*Node {
		loss := flowMatchingLoss(c, model, te, in[0], in[1], in[2], in[3])
		g := loss.Graph()
		var vars []*mlctx.Variable
		c.EnumerateVariables(func(v *mlctx.Variable) {
			if v.Trainable && v.InUseByGraph(g) {
				vars = append(vars, v)
			}
		})
		t.trainable = vars
		return append([]*Node{loss}, c.BuildTrainableVariablesGradientsGraph(loss)...)
	})
	if err != nil {
		return fmt.Errorf("pretrain: build gradient graph: %w", err)
	}
	// apply takes the shards' gradients (shard-major, in t.trainable order), averages them,
	// clips the global norm and takes the AdamW step.
	apply, err := mlctx.NewExec(t.backend, t.mctx.Reuse(), func(c *mlctx.Context, in []*Node) *Node {
		g, nv := in[0].Graph(), len(t.trainable)
		shards := len(in) / nv
		avg := make([]*Node, nv)
		for i, v := range t.trainable {
			_ = v.ValueGraph(g) // the optimizer updates the variables the graph uses
			sum := in[i]
			for w := 1; w < shards; w++ {
				sum = Add(sum, in[w*nv+i])
			}
			avg[i] = MulScalar(sum, 1/float64(shards))
		}
		norm := globalNorm(avg)
		if clip > 0 {
			// clip/max(norm, clip) is 1 below the threshold and clip/norm above it.
			scale := Div(Scalar(g, dtypes.Float32, clip), MaxScalar(norm, clip))
			for i := range avg {
				avg[i] = Mul(avg[i], scale)
			}
		}
		updater.UpdateGraphWithGradients(c, avg, dtypes.Float32)
		return norm
	})
	if err != nil {
		return fmt.Errorf("pretrain: build update graph: %w", err)
	}
	t.grads, t.apply = grads, apply
	t.lrVar = optimizers.LearningRateVar(t.mctx, dtypes.Float32, t.cfg.Train.LR)
	return nil
}

// flowMatchingLoss is the rectified-flow objective: with x_σ = (1−σ)·x0 + σ·x1 and target
// v = x1 − x0, the mean over batch and elements of (v_θ(x_σ, 1000σ, text) − v)², the text
// embeddings coming from the text encoder. Shapes: x0, noise [B,4,8,32], sigma [B], ids [B,L].
func flowMatchingLoss(c *mlctx.Context, model *mmdit.Model, te tinyocr.TextEncoderConfig, x0, noise, sigma, ids *Node) *Node {
	s := Reshape(sigma, sigma.Shape().Dim(0), 1, 1, 1)
	xSigma := Add(Mul(OneMinus(s), x0), Mul(s, noise))
	target := Sub(noise, x0)
	tokens, pooled := tinyocr.TextEncode(c.In(textEncoderScope), te, ids)
	v := model.Forward(c.In(transformerScope), xSigma, MulScalar(sigma, 1000), tokens, pooled, false)
	return ReduceAllMean(Square(Sub(v, target)))
}

// globalNorm is the L2 norm of all gradients together.
func globalNorm(grads []*Node) *Node {
	var sum *Node
	for _, g := range grads {
		sq := ReduceAllSum(Square(g))
		if sum == nil {
			sum = sq
		} else {
			sum = Add(sum, sq)
		}
	}
	return Sqrt(sum)
}

func (t *trainer) close() {
	if t.grads != nil {
		t.grads.Finalize()
	}
	if t.apply != nil {
		t.apply.Finalize()
	}
	if t.vae != nil {
		t.vae.Close()
	}
}

// start prepares the output directory and, with Resume, restores the newest checkpoint.
func (t *trainer) start() (trainState, error) {
	dir := t.cfg.Output.Dir
	state := trainState{Seed: t.cfg.Train.Seed, BatchSize: t.cfg.Train.BatchSize}
	ckDir, ok, err := t.ckpt.Latest()
	if err != nil {
		return state, fmt.Errorf("pretrain: %w", err)
	}
	switch {
	case t.opts.Resume && !ok:
		return state, fmt.Errorf("pretrain: resume: no checkpoint in %s", t.ckpt.Dir)
	case !t.opts.Resume && ok:
		return state, fmt.Errorf("pretrain: output dir %s already holds checkpoint %s: pass --resume to continue it, or choose another output.dir", dir, ckDir)
	}
	if ok {
		if state, err = t.restoreDir(ckDir); err != nil {
			return state, err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return state, fmt.Errorf("pretrain: create output dir: %w", err)
	}
	doc, err := t.cfg.Encode()
	if err != nil {
		return state, fmt.Errorf("pretrain: %w", err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, ConfigFile), doc); err != nil {
		return state, fmt.Errorf("pretrain: write resolved config: %w", err)
	}
	if err := trimLossLog(filepath.Join(dir, LossFile), state.Step); err != nil {
		return state, fmt.Errorf("pretrain: %w", err)
	}
	return state, nil
}

// restoreDir loads the checkpoint in ckDir into the trainer (restore).
func (t *trainer) restoreDir(ckDir string) (trainState, error) {
	ck, err := checkpoint.Load(ckDir)
	if err != nil {
		return trainState{}, fmt.Errorf("pretrain: %w", err)
	}
	defer ck.Close()
	return t.restore(ck)
}

// restore loads the checkpoint ck into the trainer's variables and weight average and returns
// its training state. Each group's header is checked against what the trainer expects — the
// variables of its context and Adam's moments of the trainable ones, the average of the model
// weights — before any tensor is read.
func (t *trainer) restore(ck *checkpoint.Stored) (trainState, error) {
	var state trainState
	if err := json.Unmarshal(ck.State, &state); err != nil {
		return state, fmt.Errorf("pretrain: checkpoint %s: decode state: %w", ck.Dir, err)
	}
	if state.Seed != t.cfg.Train.Seed || state.BatchSize != t.cfg.Train.BatchSize {
		return state, fmt.Errorf("pretrain: checkpoint %s has seed %d and batch size %d, config has %d and %d",
			ck.Dir, state.Seed, state.BatchSize, t.cfg.Train.Seed, t.cfg.Train.BatchSize)
	}
	if t.ema != nil && !ck.Has(emaGroup) {
		return state, fmt.Errorf("pretrain: checkpoint %s: train.ema_decay is %g but the checkpoint has no weight average (it was written with ema_decay = 0)",
			ck.Dir, t.cfg.Train.EMADecay)
	}
	names := ck.Names(stateGroup)
	vars := nn.StateWants(names, nn.VariableShapes(t.mctx, nil), nn.AdamMoments(t.mctx, optimizers.AdamDefaultScope))
	var avg []safetensors.Want
	if t.ema != nil {
		weights := nn.VariableShapes(t.mctx, isModelWeight)
		avg = nn.StateWants(slices.Sorted(maps.Keys(weights)), weights)
		if err := ck.Check(emaGroup, avg); err != nil {
			return state, fmt.Errorf("pretrain: %w", err)
		}
	}
	floats, err := ck.Read(stateGroup, vars)
	if err != nil {
		return state, fmt.Errorf("pretrain: %w", err)
	}
	if err := nn.RestoreVariables(t.mctx, floats, state.Integers, nil); err != nil {
		return state, fmt.Errorf("pretrain: checkpoint %s: %w", ck.Dir, err)
	}
	if t.ema != nil {
		values, err := ck.Read(emaGroup, avg)
		if err != nil {
			return state, fmt.Errorf("pretrain: %w", err)
		}
		// Every step of a run with an average was folded into it: a checkpoint without
		// one is refused above, so the average has seen exactly state.Step updates.
		t.ema = nn.NewEMA(t.cfg.Train.EMADecay, values)
		t.ema.Updates = state.Step
	}
	return state, nil
}

// Export writes the final weight files (TransformerFile and TextEncoderFile in Output.Dir)
// from the checkpoint in ckDir instead of training on: the way to pick an earlier step of a
// run. With train.ema_decay > 0 it exports the checkpoint's weight average, as the end of a
// run does.
func Export(cfg Config, ckDir string, opts Options) (res Result, err error) {
	res.LastLoss = float32(math.NaN())
	ck, err := checkpoint.Load(ckDir)
	if err != nil {
		return res, fmt.Errorf("pretrain: export: %w", err)
	}
	defer ck.Close()
	t, err := newTrainer(cfg, opts)
	if err != nil {
		return res, err
	}
	defer t.close()
	state, err := t.restore(ck)
	if err != nil {
		return res, err
	}
	res.Steps, res.Checkpoint = state.Step, ckDir
	return res, t.saveFinal(&res)
}

// trimLossLog keeps the loss records of steps <= step (all of them are from before the
// checkpoint being resumed; later ones were lost with the interrupted run). step 0 empties it.
func trimLossLog(path string, step int) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read loss log: %w", err)
	}
	var kept []byte
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		var r lossRecord
		if json.Unmarshal(line, &r) == nil && r.Step <= step && step > 0 {
			kept = append(kept, line...)
		}
	}
	// Atomic: a crash while trimming leaves the old log, never a half-written one.
	if err := atomicfile.WriteBytes(path, kept); err != nil {
		return fmt.Errorf("trim loss log: %w", err)
	}
	return nil
}

// window accumulates the steps between two log lines.
type window struct {
	steps      int
	loss, norm float64
	lr         float64
	start      time.Time
}

// loop runs the steps, with the data producer one goroutine ahead.
func (t *trainer) loop(ctx context.Context, state trainState) (res Result, err error) {
	cfg := t.cfg
	res = Result{Steps: state.Step, LastLoss: float32(math.NaN())}
	lossLog, err := os.OpenFile(filepath.Join(cfg.Output.Dir, LossFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return res, fmt.Errorf("pretrain: open loss log: %w", err)
	}
	defer lossLog.Close()

	var bar *progress.Bar
	if t.opts.Progress != nil {
		bar = progress.New(t.opts.Progress, "pretrain", cfg.Train.Steps)
		bar.Set(state.Step)
		defer bar.Done()
	}

	// The producer runs under its own context: it stops when the loop ends for any reason.
	prodCtx, stopProducer := context.WithCancel(context.Background())
	group, gctx := errgroup.WithContext(prodCtx)
	batches := make(chan batch, cfg.Data.Prefetch)
	group.Go(func() error { return t.data.produce(gctx, state.Step, cfg.Train.Steps, batches) })
	defer func() {
		stopProducer()
		if perr := group.Wait(); perr != nil && !errors.Is(perr, context.Canceled) && err == nil {
			err = fmt.Errorf("pretrain: data: %w", perr)
		}
	}()

	budget := cfg.Train.Budget()
	start := time.Now()
	// elapsed is the training wall time over all invocations: the earlier ones' (from the
	// checkpoint) plus this one's.
	before := state.ElapsedSeconds
	elapsed := func() float64 { return before + time.Since(start).Seconds() }
	firstStep := state.Step
	win := window{start: time.Now()}
	lastCheckpoint := -1

	checkpoint := func() error {
		state.ElapsedSeconds = elapsed()
		dir, err := t.saveCheckpoint(state)
		if err != nil {
			return err
		}
		res.Checkpoint, lastCheckpoint = dir, state.Step
		return nil
	}

	res.Stopped = StoppedSteps
	for state.Step < cfg.Train.Steps {
		if ctx.Err() != nil {
			res.Stopped = StoppedInterrupted
			break
		}
		if budget > 0 && elapsed() >= budget.Seconds() {
			res.Stopped = StoppedTimeBudget
			break
		}
		b, open, interrupted := receive(ctx, batches)
		if interrupted {
			res.Stopped = StoppedInterrupted
			break
		}
		if !open {
			stopProducer()
			if perr := group.Wait(); perr != nil {
				return res, fmt.Errorf("pretrain: data: %w", perr)
			}
			return res, fmt.Errorf("pretrain: data: producer ended before step %d", state.Step)
		}
		if b.step != state.Step {
			return res, fmt.Errorf("pretrain: data: got batch %d for step %d", b.step, state.Step)
		}
		p := float64(state.Step) / float64(cfg.Train.Steps)
		if budget > 0 {
			p = max(p, elapsed()/budget.Seconds())
		}
		lr := LearningRate(cfg.Train, state.Step, p)
		loss, norm, err := t.runStep(b, lr)
		if err != nil {
			return res, fmt.Errorf("pretrain: step %d: %w", state.Step+1, err)
		}
		if t.ema != nil {
			if err := t.updateEMA(); err != nil {
				return res, fmt.Errorf("pretrain: step %d: %w", state.Step+1, err)
			}
		}
		state.Step++
		res.Steps = state.Step
		win.steps++
		win.loss += float64(loss)
		win.norm += float64(norm)
		win.lr = lr
		if t.opts.OnStep != nil {
			t.opts.OnStep(state.Step, loss)
		}
		if bar != nil {
			bar.Add(1)
		}
		if state.Step%cfg.Output.LogEvery == 0 || state.Step == cfg.Train.Steps {
			rec := t.logWindow(lossLog, &win, state.Step, elapsed())
			res.LastLoss = float32(rec.Loss)
			if bar != nil {
				bar.SetSuffix(fmt.Sprintf("loss %.4f", rec.Loss))
			}
		}
		if state.Step%cfg.Output.CheckpointEvery == 0 {
			if err := checkpoint(); err != nil {
				return res, err
			}
		}
	}
	if secs := time.Since(start).Seconds(); secs > 0 {
		res.StepsPerSecond = float64(state.Step-firstStep) / secs
	}
	if win.steps > 0 {
		rec := t.logWindow(lossLog, &win, state.Step, elapsed())
		res.LastLoss = float32(rec.Loss)
	}
	if lastCheckpoint != state.Step {
		if err := checkpoint(); err != nil {
			return res, err
		}
	}
	if res.Stopped == StoppedInterrupted {
		return res, fmt.Errorf("pretrain interrupted after step %d, checkpoint %s (continue with --resume): %w",
			state.Step, res.Checkpoint, ctx.Err())
	}
	if err := t.saveFinal(&res); err != nil {
		return res, err
	}
	return res, nil
}

// receive waits for the next batch or ctx's cancellation.
func receive(ctx context.Context, batches <-chan batch) (b batch, open, interrupted bool) {
	select {
	case b, open = <-batches:
		return b, open, false
	case <-ctx.Done():
		return batch{}, true, true
	}
}

// runStep executes one training step at learning rate lr.
func (t *trainer) runStep(b batch, lr float64) (loss, norm float32, err error) {
	if err := t.lrVar.SetValue(tensors.FromScalar(float32(lr))); err != nil {
		return 0, 0, fmt.Errorf("set learning rate: %w", err)
	}
	workers := t.cfg.Train.Workers
	n := t.cfg.Train.BatchSize / workers
	l, ids := latentSize, tinyocr.MaxLength
	shardOuts := make([][]*tensors.Tensor, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo, hi := w*n, (w+1)*n
			var err error
			if perr := nn.Try(func() {
				shardOuts[w], err = t.grads.Exec(
					tensors.FromFlatDataAndDimensions(b.latents[lo*l:hi*l], n, latentChannels, latentHeight, latentWidth),
					tensors.FromFlatDataAndDimensions(b.noise[lo*l:hi*l], n, latentChannels, latentHeight, latentWidth),
					tensors.FromFlatDataAndDimensions(b.sigma[lo:hi], n),
					tensors.FromFlatDataAndDimensions(b.ids[lo*ids:hi*ids], n, ids))
			}); perr != nil {
				err = perr
			}
			errs[w] = err
		}()
	}
	wg.Wait()
	defer func() {
		for _, outs := range shardOuts {
			for _, o := range outs {
				o.FinalizeAll()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	var grads []any
	for _, outs := range shardOuts {
		loss += tensors.ToScalar[float32](outs[0]) / float32(workers)
		for _, g := range outs[1:] {
			grads = append(grads, g)
		}
	}
	if math.IsNaN(float64(loss)) || math.IsInf(float64(loss), 0) {
		return loss, 0, fmt.Errorf("loss is %v", loss)
	}
	var normT []*tensors.Tensor
	if perr := nn.Try(func() { normT, err = t.apply.Exec(grads...) }); perr != nil {
		return 0, 0, perr
	}
	if err != nil {
		return 0, 0, err
	}
	norm = tensors.ToScalar[float32](normT[0])
	normT[0].FinalizeAll()
	return loss, norm, nil
}

// logWindow writes the window's means to loss.jsonl and the log, and starts a new window.
func (t *trainer) logWindow(w io.Writer, win *window, step int, elapsed float64) lossRecord {
	secs := time.Since(win.start).Seconds()
	rec := lossRecord{
		Step: step, Loss: win.loss / float64(win.steps), GradNorm: win.norm / float64(win.steps),
		LR: win.lr, Seconds: math.Round(elapsed*1000) / 1000,
	}
	if secs > 0 {
		rec.SamplesPerSec = math.Round(float64(win.steps*t.cfg.Train.BatchSize)/secs*100) / 100
	}
	if line, err := json.Marshal(rec); err == nil {
		// The log is a record of progress; a failed write must not stop training.
		_, _ = w.Write(append(line, '\n'))
	}
	if t.opts.Log != nil {
		fmt.Fprintf(t.opts.Log, "step %d/%d loss %.4f grad_norm %.3f lr %.3g %.1f samples/s elapsed %s\n",
			step, t.cfg.Train.Steps, rec.Loss, rec.GradNorm, rec.LR, rec.SamplesPerSec,
			(time.Duration(elapsed) * time.Second).Round(time.Second))
	}
	*win = window{start: time.Now()}
	return rec
}

// saveCheckpoint writes every variable of the training context and the state.
func (t *trainer) saveCheckpoint(state trainState) (string, error) {
	floats, ints, err := nn.SnapshotVariables(t.mctx, nil)
	if err != nil {
		return "", fmt.Errorf("pretrain: checkpoint: %w", err)
	}
	state.Integers = ints
	raw, err := encodeState(state)
	if err != nil {
		return "", fmt.Errorf("pretrain: checkpoint: %w", err)
	}
	groups := map[string]map[string]safetensors.Tensor{stateGroup: floats}
	if t.ema != nil {
		groups[emaGroup] = t.ema.Values
	}
	dir, err := t.ckpt.Save(checkpoint.Checkpoint{Epoch: state.Step, State: raw, Tensors: groups})
	if err != nil {
		return "", fmt.Errorf("pretrain: %w", err)
	}
	return dir, nil
}

// updateEMA folds the weights after a step into the average.
func (t *trainer) updateEMA() error {
	w, _, err := nn.SnapshotVariables(t.mctx, isModelWeight)
	if err != nil {
		return fmt.Errorf("weight average: %w", err)
	}
	return t.ema.Update(w)
}

// saveFinal writes the trained transformer (diffusers names) and text encoder: the weights'
// moving average with train.ema_decay > 0, else the last step's weights. It runs after the
// final checkpoint, so putting the average into the context loses nothing.
func (t *trainer) saveFinal(res *Result) error {
	if t.ema != nil {
		if err := nn.RestoreVariables(t.mctx, t.ema.Values, nil, isModelWeight); err != nil {
			return fmt.Errorf("pretrain: load weight average: %w", err)
		}
	}
	dir := t.cfg.Output.Dir
	tr := filepath.Join(dir, TransformerFile)
	if err := t.model.SaveBase(t.mctx.In(transformerScope), tr); err != nil {
		return fmt.Errorf("pretrain: %w", err)
	}
	te := filepath.Join(dir, TextEncoderFile)
	if err := SaveTextEncoder(t.mctx, t.te, te); err != nil {
		return fmt.Errorf("pretrain: %w", err)
	}
	res.Transformer, res.TextEncoder = tr, te
	return nil
}

// textEncoderMeta is the "config" metadata of text_encoder.safetensors.
type textEncoderMeta struct {
	Dim       int `json:"dim"`
	PooledDim int `json:"pooled_dim"`
	Hidden    int `json:"hidden"`
	MaxLength int `json:"max_length"`
	VocabSize int `json:"vocab_size"`
}

// SaveTextEncoder writes the text encoder variables of mctx (scope "text_encoder") as F32
// safetensors with the keys of tinyocr.TextEncoderParamShapes(cfg, "text_encoder") — so
// tinyocr.ImportVariables with the same shapes loads them back — and the config as JSON
// metadata under "config".
func SaveTextEncoder(mctx *mlctx.Context, cfg tinyocr.TextEncoderConfig, path string) error {
	ts, err := tinyocr.ExportVariables(mctx, tinyocr.TextEncoderParamShapes(cfg, textEncoderScope))
	if err != nil {
		return fmt.Errorf("save text encoder %s: %w", path, err)
	}
	meta, err := json.Marshal(textEncoderMeta{
		Dim: cfg.Dim, PooledDim: cfg.PooledDim, Hidden: cfg.Hidden,
		MaxLength: tinyocr.MaxLength, VocabSize: tinyocr.VocabSize,
	})
	if err != nil {
		return fmt.Errorf("save text encoder %s: %w", path, err)
	}
	if err := safetensors.Write(path, ts, map[string]string{"format": "densegrpo-tinyocr-text-encoder-v1", "config": string(meta)}); err != nil {
		return fmt.Errorf("save text encoder %s: %w", path, err)
	}
	return nil
}
