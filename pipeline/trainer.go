package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/pipeline/checkpoint"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rl"
)

// trainer holds one run's state between epochs.
type trainer struct {
	cfg     Config
	policy  *Policy
	frozen  *Frozen
	col     *collector
	grpo    *rl.Trainer
	prompts []rewards.Prompt
	rngSrc  *rand.PCG
	rng     *rand.Rand
	ema     *nn.EMA
	epoch   int
	samples int
	elapsed float64
	// lastRollout is the newest epoch's first minibatch, for sample grids.
	lastRollout *epochBatch
	// psi is the calibrated ψ the rollouts use (sampler.psi), nil without.
	psi *runfiles.Psi
}

func newTrainer(ctx context.Context, cfg Config, policy *Policy, frozen *Frozen) (*trainer, error) {
	prompts, err := loadPrompts(cfg.Resolve(cfg.Prompts.Train), "prompts.train")
	if err != nil {
		return nil, err
	}
	if err := checkPrompts(prompts.Prompts, promptsAt("prompts.train", prompts), frozen.Rewards); err != nil {
		return nil, err
	}
	sched, err := rl.SD3Schedule(cfg.Sampler.Steps, cfg.Sampler.Shift)
	if err != nil {
		return nil, fmt.Errorf("sampler: %w", err)
	}
	psi, err := loadPsi(cfg, sched)
	if err != nil {
		return nil, err
	}
	var psiValues []float32
	if psi != nil {
		psiValues = psi.Psi
	}
	latent := frozen.VAE.LatentShape()
	sampler, err := rl.NewSampler(policy.Backend, sched, rl.SamplerConfig{
		Kind: cfg.Sampler.Kind, NoiseLevel: cfg.Sampler.NoiseLevel, Psi: psiValues,
		GroupSize: cfg.Sampler.GroupSize, SameNoise: cfg.Sampler.SameNoise, LatentShape: latent,
	})
	if err != nil {
		return nil, err
	}
	method := cfg.Method()
	if err := method.Validate(sched.Steps()); err != nil {
		return nil, err
	}
	col := &collector{cfg: cfg, policy: policy, frozen: frozen, sampler: sampler, method: method,
		engines: &engineSet{cfg: cfg, policy: policy, latent: latent}}
	// The KL reference (the base model, fixed) gets its own engine, made once; its velocities
	// are computed during the rollout, not in every training graph.
	if cfg.GRPO.Beta > 0 {
		ref, closeRef, err := col.engines.flow(false)
		if err != nil {
			return nil, err
		}
		col.ref, col.closeRef = &ref, closeRef
	}
	grpo, err := rl.NewTrainer(policy.Backend, policy.Ctx, policy.Velocity, rl.TrainConfig{
		Loss:     rl.LossConfig{Kind: cfg.Sampler.Kind, ClipRange: cfg.GRPO.ClipRange, Beta: cfg.GRPO.Beta},
		Guidance: Guidance(cfg), LearningRate: cfg.GRPO.LearningRate, WeightDecay: cfg.GRPO.WeightDecay,
		GradClip: cfg.GRPO.GradClip, Workers: cfg.Pipeline.TrainWorkers, Devices: cfg.Run.Devices, RefVelocities: col.ref != nil,
		MaxRows: maxRows(cfg.GRPO),
	})
	if err != nil {
		col.close()
		return nil, err
	}
	lora, err := policy.Model.LoRATensors(policy.Ctx)
	if err != nil {
		col.close()
		return nil, err
	}
	src, rng := newRNG(cfg.Run.Seed)
	return &trainer{
		cfg: cfg, policy: policy, frozen: frozen, grpo: grpo, prompts: prompts.Prompts, rngSrc: src, rng: rng,
		ema: nn.NewEMA(cfg.GRPO.EMADecayMax, lora), col: col, psi: psi,
	}, nil
}

// loadPsi reads sampler.psi, checking it was calibrated for this schedule.
func loadPsi(cfg Config, sched rl.Schedule) (*runfiles.Psi, error) {
	if cfg.Sampler.Psi == "" {
		return nil, nil
	}
	path := cfg.Resolve(cfg.Sampler.Psi)
	f, err := runfiles.ReadPsi(path)
	if err != nil {
		return nil, fmt.Errorf("sampler.psi: %w", err)
	}
	if len(f.Psi) != sched.Steps() {
		return nil, fmt.Errorf("sampler.psi: %s has %d values, want %d (sampler.steps)", path, len(f.Psi), sched.Steps())
	}
	for k, s := range f.Sigmas {
		if k < len(sched.Sigmas) && math.Abs(float64(s-sched.Sigmas[k])) > 1e-6 {
			return nil, fmt.Errorf("sampler.psi: %s was calibrated for another schedule (σ_%d = %v, this run has %v)", path, k, s, sched.Sigmas[k])
		}
	}
	return f, nil
}

// evaluate runs the configured evaluation with the current adapters.
func (t *trainer) evaluate(ctx context.Context, log io.Writer) (EvalResult, error) {
	return Evaluate(ctx, t.cfg, t.policy, EvalOptions{Frozen: t.frozen, KeepImages: true, Progress: log})
}

// evaluateEMA evaluates with the EMA of the adapters, then puts the trained adapters back.
func (t *trainer) evaluateEMA(ctx context.Context, log io.Writer) (EvalResult, error) {
	current, err := t.policy.Model.LoRATensors(t.policy.Ctx)
	if err != nil {
		return EvalResult{}, err
	}
	if err := t.policy.Model.SetLoRATensors(t.policy.Ctx, t.ema.Values); err != nil {
		return EvalResult{}, err
	}
	res, evalErr := t.evaluate(ctx, log)
	if err := t.policy.Model.SetLoRATensors(t.policy.Ctx, current); err != nil {
		return EvalResult{}, err
	}
	return res, evalErr
}

// collected is one epoch's data: the scored minibatches and their rewards.
type collected struct {
	batches []*epochBatch
	rewards epochRewards
	timer   *stageTimer
	wall    float64
}

// collect draws the epoch's prompts and rollout seeds from the run's RNG, runs the collection
// stages and gathers the rewards.
func (t *trainer) collect(ctx context.Context) (collected, error) {
	cfg := t.cfg
	start := time.Now()
	perBatch := max(1, cfg.Pipeline.RolloutBatch/cfg.Sampler.GroupSize) // prompts per rollout minibatch
	prompts := make([]rewards.Prompt, cfg.Prompts.PerEpoch)
	ids := make([]int, len(prompts))
	for i := range prompts {
		prompts[i] = t.prompts[t.rng.IntN(len(t.prompts))]
		ids[i] = i
	}
	n := (len(prompts) + perBatch - 1) / perBatch
	seeds := make([]uint64, n)
	for j := range seeds {
		seeds[j] = t.rng.Uint64()
	}
	c := collected{timer: newStageTimer()}
	if err := t.renewInference(); err != nil {
		return c, err
	}
	method := t.col.method
	method.Audit = method.Dense && method.Queries > 0 && cfg.Dense.AuditEvery > 0 && t.epoch%cfg.Dense.AuditEvery == 0
	var err error
	c.batches, err = runStages(ctx, n, t.col.stages(method, prompts, ids, perBatch, seeds), cfg.Pipeline.Overlap,
		cfg.Pipeline.Buffer, stageWorkers{lookahead: cfg.Pipeline.LookaheadWorkers, score: cfg.Pipeline.ScoreWorkers}, c.timer)
	if err != nil {
		return c, err
	}
	c.wall = time.Since(start).Seconds()
	c.rewards, err = gatherRewards(c.batches, method)
	if err != nil {
		return c, &StageError{Stage: StageScore, Err: err}
	}
	return c, nil
}

// renewInference gives the collector a flow of the policy's current weights (an ONNX engine
// holds a snapshot of them), releasing the previous one.
func (t *trainer) renewInference() error {
	t.col.closeInference()
	flow, closeFlow, err := t.col.engines.flow(true)
	if err != nil {
		return &StageError{Stage: StageRollout, Err: err}
	}
	t.col.flow, t.col.closeFlow = flow, closeFlow
	return nil
}

// close releases the trainer's ONNX Runtime sessions.
func (t *trainer) close() { t.col.close() }

// runEpoch collects one epoch of rollouts, computes advantages and updates the policy. It
// returns the epoch's metrics line.
func (t *trainer) runEpoch(ctx context.Context) (runfiles.Line, error) {
	start := time.Now()
	col, err := t.collect(ctx)
	if err != nil {
		return runfiles.Line{}, err
	}
	batches, rw, timer := col.batches, col.rewards, col.timer
	final := rw.Final()
	adv, err := t.col.method.Advantages(rw.Rewards)
	if err != nil {
		return runfiles.Line{}, fmt.Errorf("advantages: %w", err)
	}

	trainStart := time.Now()
	stats, dropped, err := t.update(ctx, batches, adv)
	timer.mu.Lock()
	timer.busy[StageTrain] += time.Since(trainStart).Seconds()
	timer.mu.Unlock()
	if err != nil {
		return runfiles.Line{}, &StageError{Stage: StageTrain, Err: err}
	}
	t.epoch++
	t.samples += len(final)
	t.lastRollout = batches[0]

	mean, std := rl.MeanStd(final)
	wall := time.Since(start).Seconds()
	tr := &runfiles.Train{
		Samples: t.samples, RewardMean: mean, RewardStd: std, Rewards: map[string]float64{},
		Loss: stats.Loss, PolicyLoss: stats.Policy, KL: stats.KL, ApproxKL: stats.ApproxKL,
		ClipFrac: stats.ClipFrac, RatioMean: stats.RatioMean, GradNorm: stats.GradNorm,
		Updates: stats.Updates, Dropped: dropped,
		StageSeconds: timer.snapshot(), CollectWallSeconds: col.wall,
		WallSeconds: wall, SamplesPerSecond: float64(len(final)) / wall,
	}
	for name, vs := range rw.ByName {
		tr.Rewards[name], _ = rl.MeanStd(vs)
	}
	if t.col.method.Dense {
		tr.DensePosFrac, tr.DenseDeltaMean, tr.DenseDeltaStd = rl.DeltaStats(rw.Delta)
	}
	if a := rw.Accuracy; a != nil {
		tr.QueryRCorr, tr.QueryRMAE, tr.QueryFrac = a.RCorr, a.RMAE, a.Queried
		tr.QueryDeltaSign, tr.QueryDeltaCorr, tr.QueryDeltaZero, tr.QueryDeltaMoved = a.DeltaSign, a.DeltaCorr, a.DeltaZero, a.DeltaSignMoved
	}
	tr.ScoredImages = rw.Scored
	for k, v := range map[string]float64{runfiles.KeyLoss: tr.Loss, runfiles.KeyKL: tr.KL, runfiles.KeyPolicyLoss: tr.PolicyLoss} {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return runfiles.Line{}, fmt.Errorf("%s is %v after epoch %d: stopping (the last good checkpoint is kept)", k, v, t.epoch)
		}
	}
	return runfiles.Line{Epoch: t.epoch, Train: tr}, nil
}

// updateStats are the diagnostics of an epoch's updates: means over the trained samples and
// steps.
type updateStats struct {
	Loss, Policy, KL, ApproxKL, ClipFrac, RatioMean, GradNorm float64
	Updates                                                   int
}

// maxRows is the most samples update accumulates at once: a minibatch, capped by micro_batch.
func maxRows(c GRPOConfig) int {
	if c.MicroBatch > 0 {
		return min(c.Minibatch, c.MicroBatch)
	}
	return c.Minibatch
}

// update trains on the epoch: the samples whose advantage is not zero everywhere, in update
// minibatches of grpo.minibatch samples that may span rollout minibatches, computed in parts
// of at most grpo.micro_batch samples (when set). Each update
// accumulates the gradient of every trained step of its samples — a part of c samples of a
// minibatch of m weighs c/(m·steps), so the update is the mean over its samples and steps —
// and takes one AdamW step, after which the EMA is updated.
func (t *trainer) update(ctx context.Context, batches []*epochBatch, adv [][]float64) (updateStats, int, error) {
	var st updateStats
	need, mb := t.col.method.Trained, t.cfg.GRPO.Minibatch
	kept, dropped := rl.DropZeroAdvantages(adv)
	keep := make(map[int]bool, len(kept))
	for _, i := range kept {
		keep[i] = true
	}
	var acc, pending int
	apply := func() error {
		norm, err := t.grpo.Apply(ctx)
		if err != nil {
			return err
		}
		st.GradNorm += norm
		st.Updates++
		pending = 0
		lora, err := t.policy.Model.LoRATensors(t.policy.Ctx)
		if err != nil {
			return err
		}
		return t.ema.Update(lora)
	}
	base := 0
	for _, b := range batches {
		var samples []int
		for i := range b.traj.Len() {
			if keep[base+i] {
				samples = append(samples, i)
			}
		}
		for lo := 0; lo < len(samples); {
			end := min(lo+mb-pending, len(samples))
			if micro := t.cfg.GRPO.MicroBatch; micro > 0 {
				end = min(end, lo+micro)
			}
			chunk := samples[lo:end]
			lo += len(chunk)
			weight := float64(len(chunk)) / float64(mb*need)
			ks, a := make([]int, need), make([][]float64, need)
			for k := range need {
				ks[k], a[k] = k, make([]float64, len(chunk))
				for j, i := range chunk {
					a[k][j] = adv[base+i][k]
				}
			}
			steps, err := t.grpo.AccumulateSteps(ctx, b.cond, b.traj, ks, chunk, a, weight)
			if err != nil {
				return st, 0, err
			}
			for _, s := range steps {
				// Weighted by the chunk's samples: a chunk of one sample would otherwise
				// count as much as a full minibatch (a lone A = −5 read as a loss spike).
				c := float64(len(chunk))
				st.Loss += c * s.Loss
				st.Policy += c * s.Policy
				st.KL += c * s.KL
				st.ApproxKL += c * s.ApproxKL
				st.ClipFrac += c * s.ClipFrac
				st.RatioMean += c * s.RatioMean
				acc += len(chunk)
			}
			if pending += len(chunk); pending == mb {
				if err := apply(); err != nil {
					return st, 0, err
				}
			}
		}
		base += b.traj.Len()
	}
	if pending > 0 {
		if err := apply(); err != nil {
			return st, 0, err
		}
	}
	if acc > 0 {
		n := float64(acc)
		st.Loss, st.Policy, st.KL, st.ApproxKL, st.ClipFrac, st.RatioMean = st.Loss/n, st.Policy/n, st.KL/n, st.ApproxKL/n, st.ClipFrac/n, st.RatioMean/n
	}
	if st.Updates > 0 {
		st.GradNorm /= float64(st.Updates)
	}
	return st, len(dropped), nil
}

// checkpoint captures everything a resumed run needs.
func (t *trainer) checkpoint() (checkpoint.Checkpoint, error) {
	lora, err := t.policy.Model.LoRATensors(t.policy.Ctx)
	if err != nil {
		return checkpoint.Checkpoint{}, err
	}
	floats, ints, err := trainerVariables(t.policy.Ctx, t.policy.Model)
	if err != nil {
		return checkpoint.Checkpoint{}, err
	}
	rng, err := t.rngSrc.MarshalBinary()
	if err != nil {
		return checkpoint.Checkpoint{}, fmt.Errorf("save RNG state: %w", err)
	}
	state, err := json.Marshal(trainState{RNG: rng, Samples: t.samples, Elapsed: t.elapsed, EMAUpdates: t.ema.Updates, Ints: ints})
	if err != nil {
		return checkpoint.Checkpoint{}, err
	}
	ema := safetensors.Clone(t.ema.Values)
	// The EMA adapters (what evaluation uses) also in diffusers' LoRA format, so the
	// checkpoint folder loads with StableDiffusion3Pipeline.load_lora_weights(folder).
	diffusers, meta, err := mmdit.DiffusersLoRA(*t.policy.Model.LoRA, ema)
	if err != nil {
		return checkpoint.Checkpoint{}, err
	}
	return checkpoint.Checkpoint{Epoch: t.epoch, State: state, Tensors: map[string]map[string]safetensors.Tensor{
		groupLoRA: lora, groupEMA: ema, groupTrainer: floats, groupDiffusers: diffusers,
	}, Metadata: map[string]map[string]string{groupDiffusers: meta}}, nil
}

// restore puts a checkpoint back: adapters, EMA, optimizer state, RNG, counters. Each group's
// header is checked against what the model and the trainer expect (names, shapes, F32) before
// any tensor is read, so a checkpoint that does not fit costs only its headers.
func (t *trainer) restore(ck *checkpoint.Stored) error {
	var st trainState
	if err := json.Unmarshal(ck.State, &st); err != nil {
		return fmt.Errorf("decode state: %w", err)
	}
	adapters := adapterWants(*t.policy.Model.LoRA, t.policy.Model.Config)
	// The trainer group holds the GRPO trainer's state and, in checkpoints written before
	// trainerVariable left them out, copies of the frozen base weights (variables of the context).
	names := ck.Names(groupTrainer)
	state := nn.StateWants(names, t.grpo.StateShapes(names), nn.VariableShapes(t.policy.Ctx, nil))
	wants := map[string][]safetensors.Want{groupLoRA: adapters, groupEMA: adapters, groupTrainer: state}
	for _, g := range []string{groupLoRA, groupEMA, groupTrainer} {
		if err := ck.Check(g, wants[g]); err != nil {
			return err
		}
	}
	tensors := map[string]map[string]safetensors.Tensor{}
	for _, g := range []string{groupLoRA, groupEMA, groupTrainer} {
		var err error
		if tensors[g], err = ck.Read(g, wants[g]); err != nil {
			return err
		}
	}
	if err := t.policy.Model.SetLoRATensors(t.policy.Ctx, tensors[groupLoRA]); err != nil {
		return err
	}
	if err := restoreTrainerVariables(t.policy.Ctx, t.policy.Model, tensors[groupTrainer], st.Ints); err != nil {
		return err
	}
	if err := t.rngSrc.UnmarshalBinary(st.RNG); err != nil {
		return fmt.Errorf("restore RNG state: %w", err)
	}
	t.ema = nn.NewEMA(t.cfg.GRPO.EMADecayMax, tensors[groupEMA])
	t.ema.Updates = st.EMAUpdates
	t.epoch, t.samples, t.elapsed = ck.Epoch, st.Samples, st.Elapsed
	return nil
}

// writeSamples writes a grid of evaluation images with their prompts and rewards.
func (t *trainer) writeSamples(dir string, epoch int, r EvalResult) error {
	n := min(len(r.Images), gridSamples)
	if n == 0 {
		return nil
	}
	labels := make([]string, n)
	for i := range labels {
		labels[i] = fmt.Sprintf("%s  %.2f", r.Prompts[i], r.Totals[i])
	}
	return WriteGrid(filepath.Join(dir, "samples", fmt.Sprintf("eval-%04d.png", epoch)), r.Images[:n], labels, r.Prompts[:n], 4)
}

// gridSamples is how many images (or before/after pairs) the run's grids show.
const gridSamples = 16

// writeBeforeAfter writes samples/before-after.png: the first test prompts as the base model and
// the final EMA adapters draw them from the same noise, with their rewards. before is the base
// evaluation with its images, or nil (a resumed run), when they are drawn again.
func (t *trainer) writeBeforeAfter(ctx context.Context, dir string, before *EvalResult, after EvalResult) error {
	n := min(len(after.Images), gridSamples)
	if n == 0 {
		return nil
	}
	if before == nil || len(before.Images) < n {
		// The same prompts, noise and batching as the base evaluation's first batch.
		cfg := t.cfg
		cfg.Eval.Prompts = n
		b, err := Evaluate(ctx, cfg, t.policy, EvalOptions{Frozen: t.frozen, KeepImages: true, Base: true})
		if err != nil {
			return fmt.Errorf("before/after grid: base model: %w", err)
		}
		before = &b
	}
	return WriteBeforeAfter(filepath.Join(dir, runfiles.SamplesDir, runfiles.BeforeAfterFile), after.Prompts[:n],
		before.Images[:n], after.Images[:n], before.Totals[:n], after.Totals[:n])
}

// writeRolloutSamples writes the final images of the newest epoch's first minibatch.
func (t *trainer) writeRolloutSamples(dir string, epoch int) error {
	b := t.lastRollout
	if b == nil {
		return nil
	}
	var idx []int
	for j, s := range b.targets.Slots {
		if s.Step == t.col.sampler.Schedule().Steps() {
			idx = append(idx, j)
		}
	}
	idx = idx[:min(len(idx), gridSamples)]
	imgs := make([]rewards.Image, len(idx))
	labels := make([]string, len(idx))
	prompts := make([]string, len(idx))
	for n, j := range idx {
		imgs[n] = b.images[j]
		prompts[n] = b.prompts[b.traj.Prompts[b.targets.Slots[j].Sample]].Text
		labels[n] = fmt.Sprintf("%s  %.2f", prompts[n], b.scores.Total[j])
	}
	return WriteGrid(filepath.Join(dir, "samples", fmt.Sprintf("epoch-%04d.png", epoch)), imgs, labels, prompts, 4)
}
