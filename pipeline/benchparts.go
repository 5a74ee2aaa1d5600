package pipeline

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/rewards"
)

// The parts of an epoch that BenchParts times, each on the data of a real epoch of the config:
const (
	// PartVelocity is one policy velocity call at the rollout batch (the inference engine's).
	PartVelocity = "velocity"
	// PartLookahead is the ODE look-ahead of one rollout minibatch: every sample from every
	// x_k of the trained steps to σ = 0, batched as the pipeline batches it.
	PartLookahead = "lookahead"
	// PartTrain is one LoRA update on one rollout minibatch: the KL reference's velocities at
	// the trained steps, the forward and backward pass of every trained step, and AdamW.
	PartTrain = "train"
	// PartReference is the KL reference's part of PartTrain alone: the reference velocities at
	// the trained steps of the minibatch (none without a reference engine).
	PartReference = "reference"
	// PartScore is the reward scoring of all images a dense epoch decodes.
	PartScore = "score"
	// PartEpoch is a whole training epoch (collection, advantages, update).
	PartEpoch = "epoch"
)

// BenchPartsOptions are the choices of BenchParts.
type BenchPartsOptions struct {
	// Dump, if not empty, is the safetensors file the data of the parts are written to (see
	// writeBenchData).
	Dump string
	// In carries the commands, Out the JSON results, Log progress (nil: discarded).
	In       io.Reader
	Out, Log io.Writer
	// Backend, if not nil, is used instead of the config's (tests share one).
	Backend backends.Backend
}

// BenchParts prepares the parts of cfg's epoch for timing: it builds the run's trainer, runs
// one warm-up epoch (graph compilation; the adapters move away from zero), collects one more
// epoch's rollouts, look-aheads and images, and — if opts.Dump is set — writes what a second
// implementation needs to time the same work on the same data and check it computes the same
// velocity and rewards. Then it serves commands "PART REPS" read line by line from opts.In,
// answering each with a JSON line {"part", "seconds": [...], "cpu_seconds": [...]} on
// opts.Out, until "quit" or the end of the input: another process (exporters/benchtorch)
// interleaves its own timings with these.
func BenchParts(ctx context.Context, cfgPath string, sets []string, opts BenchPartsOptions) error {
	in, out, log := opts.In, opts.Out, opts.Log
	if log == nil {
		log = io.Discard
	}
	cfg, err := Load(cfgPath, sets)
	if err != nil {
		return err
	}
	frozen, err := OpenFrozen(ctx, cfg)
	if err != nil {
		return err
	}
	defer frozen.Close()
	policy, err := NewPolicy(cfg, PolicyOptions{Backend: opts.Backend})
	if err != nil {
		return err
	}
	defer policy.Close()
	fmt.Fprintf(log, "bench-parts: backend %s\n", policy.BackendDesc)
	t, err := newTrainer(ctx, cfg, policy, frozen)
	if err != nil {
		return err
	}
	defer t.close()
	if _, err := t.runEpoch(ctx); err != nil {
		return fmt.Errorf("warm-up epoch: %w", err)
	}
	col, err := t.collect(ctx)
	if err != nil {
		return err
	}
	b := col.batches[0]
	var images []rewards.Image
	var prompts []rewards.Prompt
	for _, bb := range col.batches {
		images = append(images, bb.images...)
		for _, s := range bb.targets.Slots {
			prompts = append(prompts, bb.prompts[bb.traj.Prompts[s.Sample]])
		}
	}
	need := t.col.method.Trained
	all := make([]int, b.traj.Len())
	for i := range all {
		all[i] = i
	}
	// The velocity check point: a mid-schedule state, where both terms of the output matter.
	kCheck := min(3, b.traj.Schedule.Steps()-1)
	velocity := func(ctx context.Context) ([]float32, error) {
		sigmas := make([]float32, b.traj.Len())
		for i := range sigmas {
			sigmas[i] = b.traj.Schedule.Sigmas[kCheck]
		}
		return t.col.flow.Velocity(ctx, b.cond, b.traj.X[kCheck], sigmas, b.traj.Prompts)
	}
	parts := map[string]func(ctx context.Context) error{
		PartVelocity: func(ctx context.Context) error { _, err := velocity(ctx); return err },
		PartLookahead: func(ctx context.Context) error {
			_, err := t.col.method.Targets(ctx, t.col.flow, b.cond, b.traj)
			return err
		},
		PartTrain: func(ctx context.Context) error {
			if t.col.ref != nil {
				if err := b.traj.AddReference(ctx, *t.col.ref, b.cond, need); err != nil {
					return err
				}
			}
			ks, adv := make([]int, need), make([][]float64, need)
			for k := range need {
				ks[k], adv[k] = k, make([]float64, len(all))
				for i := range all {
					adv[k][i] = float64(i%3) - 1 // −1, 0, 1: every sample trains
				}
			}
			if _, err := t.grpo.AccumulateSteps(ctx, b.cond, b.traj, ks, all, adv, 1/float64(need)); err != nil {
				return err
			}
			_, err := t.grpo.Apply(ctx)
			return err
		},
		PartReference: func(ctx context.Context) error {
			if t.col.ref == nil {
				return nil
			}
			return b.traj.AddReference(ctx, *t.col.ref, b.cond, need)
		},
		PartScore: func(ctx context.Context) error {
			_, err := frozen.Rewards.Score(ctx, images, prompts)
			return err
		},
		PartEpoch: func(ctx context.Context) error { _, err := t.runEpoch(ctx); return err },
	}
	if dump := opts.Dump; dump != "" {
		v, err := velocity(ctx)
		if err != nil {
			return err
		}
		lora, err := policy.Model.LoRATensors(policy.Ctx)
		if err != nil {
			return err
		}
		scores, err := frozen.Rewards.Score(ctx, images, prompts)
		if err != nil {
			return err
		}
		if err := writeBenchData(dump, cfg, b, kCheck, v, lora, images, prompts, scores.Total); err != nil {
			return err
		}
		fmt.Fprintf(log, "bench-parts: wrote %s\n", dump)
	}
	fmt.Fprintln(out, `{"ready": true}`)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if fields[0] == "quit" {
			return nil
		}
		run, ok := parts[fields[0]]
		reps, err := 1, error(nil)
		if len(fields) > 1 {
			reps, err = strconv.Atoi(fields[1])
		}
		if !ok || err != nil || reps < 1 || len(fields) > 2 {
			return fmt.Errorf("bench parts: command %q: want \"PART REPS\" with PART one of velocity, lookahead, train, reference, score, epoch, or \"quit\"", sc.Text())
		}
		res := struct {
			Part       string    `json:"part"`
			Seconds    []float64 `json:"seconds"`
			CPUSeconds []float64 `json:"cpu_seconds"`
		}{Part: fields[0]}
		for range reps {
			cpu0, _ := processCPU()
			start := time.Now()
			if err := run(ctx); err != nil {
				return fmt.Errorf("bench parts: %s: %w", fields[0], err)
			}
			res.Seconds = append(res.Seconds, time.Since(start).Seconds())
			cpu1, _ := processCPU()
			res.CPUSeconds = append(res.CPUSeconds, (cpu1 - cpu0).Seconds())
		}
		line, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(line))
	}
	return sc.Err()
}

// writeBenchData writes to path, as safetensors, one rollout minibatch b of the epoch and what
// the PyTorch benchmark needs to redo its work: "x" [T+1, B, C, H, W] (the states x_0 … x_T),
// "logp" [T, B], "s" [T] (the noise levels), "sigmas" [T+1], "prompt_embeds" [B, L, D] and
// "pooled" [B, P] (each sample's text conditioning), the velocity the project computed at
// x_kCheck ("check_x", "check_timestep", "check_velocity"), the rollout's velocities "v"
// [T, B, C, H, W], the adapters ("lora.<PEFT key>"), and the epoch's decoded images "images"
// [N, H, W, 3] in [0, 1] with their reward totals "scores" [N]. The metadata holds the
// config's training settings and the images' prompts (JSON).
func writeBenchData(path string, cfg Config, b *epochBatch, kCheck int, v []float32, lora map[string]safetensors.Tensor, images []rewards.Image, prompts []rewards.Prompt, scores []float64) error {
	tr := b.traj
	n, l, steps := tr.Len(), tr.LatentSize(), tr.Schedule.Steps()
	lat := append([]int{n}, tr.LatentShape...)
	ts := map[string]safetensors.Tensor{}
	var x []float32
	for k := range steps + 1 {
		x = append(x, tr.X[k]...)
	}
	ts["x"] = safetensors.Tensor{Shape: append([]int{steps + 1}, lat...), Data: x}
	var logp []float32
	for k := range steps {
		logp = append(logp, tr.LogProb[k]...)
	}
	ts["logp"] = safetensors.Tensor{Shape: []int{steps, n}, Data: logp}
	var vs []float32
	for k := range steps {
		vs = append(vs, tr.V[k]...)
	}
	ts["v"] = safetensors.Tensor{Shape: append([]int{steps}, lat...), Data: vs}
	ts["s"] = safetensors.Tensor{Shape: []int{steps}, Data: append([]float32(nil), tr.S...)}
	ts["sigmas"] = safetensors.Tensor{Shape: []int{steps + 1}, Data: append([]float32(nil), tr.Schedule.Sigmas...)}
	for i, name := range []string{"prompt_embeds", "pooled"} {
		ct := b.cond.Cond[i]
		data, err := tensors.CopyFlatData[float32](ct)
		if err != nil {
			return fmt.Errorf("bench data: %s: %w", name, err)
		}
		dims := ct.Shape().Dimensions
		row := len(data) / dims[0]
		var rows []float32
		for _, p := range tr.Prompts {
			rows = append(rows, data[p*row:(p+1)*row]...)
		}
		ts[name] = safetensors.Tensor{Shape: append([]int{n}, dims[1:]...), Data: rows}
	}
	ts["check_x"] = safetensors.Tensor{Shape: lat, Data: append([]float32(nil), tr.X[kCheck]...)}
	tsteps := make([]float32, n)
	for i := range tsteps {
		tsteps[i] = 1000 * tr.Schedule.Sigmas[kCheck]
	}
	ts["check_timestep"] = safetensors.Tensor{Shape: []int{n}, Data: tsteps}
	ts["check_velocity"] = safetensors.Tensor{Shape: lat, Data: v[:n*l]}
	for k, t := range lora {
		ts["lora."+k] = t
	}
	h, w := images[0].H, images[0].W
	var pix []float32
	texts := make([]string, len(images))
	for i, im := range images {
		if im.H != h || im.W != w {
			return fmt.Errorf("bench data: image %d is %dx%d, want %dx%d as image 0", i, im.W, im.H, w, h)
		}
		pix = append(pix, im.Pix...)
		texts[i] = prompts[i].Text
	}
	ts["images"] = safetensors.Tensor{Shape: []int{len(images), h, w, 3}, Data: pix}
	total := make([]float32, len(scores))
	for i, s := range scores {
		total[i] = float32(s)
	}
	ts["scores"] = safetensors.Tensor{Shape: []int{len(scores)}, Data: total}
	meta, err := json.Marshal(map[string]any{
		"image_prompts": texts, "kind": cfg.Sampler.Kind, "noise_level": cfg.Sampler.NoiseLevel,
		"clip_range": cfg.GRPO.ClipRange, "beta": cfg.GRPO.Beta, "learning_rate": cfg.GRPO.LearningRate,
		"weight_decay": cfg.GRPO.WeightDecay, "grad_clip": cfg.GRPO.GradClip, "trained_steps": cfg.TrainedSteps(),
		"lora_rank": cfg.Model.LoRA.Rank, "lora_alpha": cfg.Model.LoRA.Alpha, "check_step": kCheck,
		"prompts_per_epoch": cfg.Prompts.PerEpoch, "group_size": cfg.Sampler.GroupSize,
		"rollout_batch": cfg.Pipeline.RolloutBatch, "minibatch": cfg.GRPO.Minibatch,
		"inference_engine": cfg.Pipeline.InferenceEngine, "onnx_intra_op_threads": cfg.ONNX.IntraOpThreads,
	})
	if err != nil {
		return err
	}
	return safetensors.Write(path, ts, map[string]string{"bench": string(meta)})
}
