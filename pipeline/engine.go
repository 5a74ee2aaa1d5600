package pipeline

import (
	"context"
	"fmt"

	"github.com/densegrpo/densegrpo/exporters/transformer"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/rl"
)

// engineSet makes the engines that run the policy's gradient-free passes (rollouts,
// look-aheads, evaluation, the KL reference) as pipeline.inference_engine selects: ONNX Runtime
// sessions of the exported velocity, or the policy's own GoMLX graph. Everything else about
// those passes — guidance, the Euler loop, the step — is rl's (rl.Flow, rl.Sampler).
type engineSet struct {
	cfg    Config
	policy *Policy
	latent []int
	// graph is the GoMLX engine of the adapted policy, built once: it reads the weights live.
	graph *rl.GraphEngine
}

// flow returns the policy as an rl.Flow for its current weights — with the adapters, or the
// base model alone (the KL reference) — and a function that releases it. An ONNX engine is a
// snapshot of the weights: make a new flow after they change.
func (s *engineSet) flow(withLoRA bool) (rl.Flow, func(), error) {
	f := rl.Flow{Guidance: Guidance(s.cfg)}
	if s.cfg.Pipeline.InferenceEngine == EngineGoMLX {
		if withLoRA && s.graph != nil {
			f.Engine = s.graph
			return f, func() {}, nil
		}
		eng, err := rl.NewGraphEngine(s.policy.Backend, s.policy.Ctx, s.policy.Velocity, s.latent, withLoRA)
		if err != nil {
			return rl.Flow{}, nil, err
		}
		if withLoRA {
			s.graph = eng
		}
		f.Engine = eng
		return f, func() {}, nil
	}
	weights := s.policy.Model.MergedTensors
	what := "policy"
	if !withLoRA {
		weights, what = s.policy.Model.BaseTensors, "KL reference"
	}
	ts, err := weights(s.policy.Ctx)
	if err != nil {
		return rl.Flow{}, nil, err
	}
	eng, err := newONNXEngine(s.cfg, s.policy, s.latent, ts)
	if err != nil {
		return rl.Flow{}, nil, fmt.Errorf("pipeline.inference_engine %q: %s: %w", s.cfg.Pipeline.InferenceEngine, what, err)
	}
	f.Engine = eng
	return f, func() { eng.sess.Close() }, nil
}

// onnxEngine is the rl.Engine of the policy's model exported to ONNX Runtime
// (exporters/transformer) with the weights it was made from.
type onnxEngine struct {
	sess   *onnxrt.Session
	latent []int
}

// newONNXEngine exports the policy's model with the weights ts (checkpoint keys) and opens it.
func newONNXEngine(cfg Config, policy *Policy, latent []int, ts map[string]safetensors.Tensor) (*onnxEngine, error) {
	model, err := transformer.Model(policy.Model.Config, latent, ts)
	if err != nil {
		return nil, err
	}
	data, err := model.Marshal()
	if err != nil {
		return nil, fmt.Errorf("export velocity: %w", err)
	}
	sess, err := onnxrt.OpenBytes("policy velocity (exported)", data, cfg.ONNX)
	if err != nil {
		return nil, err
	}
	return &onnxEngine{sess: sess, latent: latent}, nil
}

// Velocity implements rl.Engine: one session run of the n rows.
func (e *onnxEngine) Velocity(ctx context.Context, c rl.Conditioning, x, timestep []float32, rows []rl.Row) ([]float32, error) {
	cond, err := c.Gather(rows)
	if err != nil {
		return nil, fmt.Errorf("onnx velocity: %w", err)
	}
	if len(cond) != 2 {
		return nil, fmt.Errorf("onnx velocity: got %d conditioning tensors, want 2 (prompt_embeds, pooled_prompt_embeds)", len(cond))
	}
	n := int64(len(rows))
	res, err := e.sess.Run(ctx, map[string]onnxrt.Tensor{
		transformer.InputLatents:      {Shape: append([]int64{n}, int64s(e.latent)...), Float32: x},
		transformer.InputTimestep:     {Shape: []int64{n}, Float32: timestep},
		transformer.InputPromptEmbeds: {Shape: int64s(cond[0].Shape), Float32: cond[0].Data},
		transformer.InputPooled:       {Shape: int64s(cond[1].Shape), Float32: cond[1].Data},
	}, transformer.OutputVelocity)
	if err != nil {
		return nil, fmt.Errorf("onnx velocity: %w", err)
	}
	return res[transformer.OutputVelocity].Float32, nil
}

func int64s(xs []int) []int64 {
	out := make([]int64, len(xs))
	for i, x := range xs {
		out[i] = int64(x)
	}
	return out
}
