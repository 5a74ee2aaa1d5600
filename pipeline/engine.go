package pipeline

import (
	"context"
	"fmt"
	"os"

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
	// externalAbove, if not 0, replaces the constant externalAbove (tests force the export
	// through external data with 1).
	externalAbove int64
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
	weights, what := s.policy.Model.MergedTensor, "policy"
	if !withLoRA {
		weights, what = s.policy.Model.BaseTensor, "KL reference"
	}
	w := func(key string) (safetensors.Tensor, error) { return weights(s.policy.Ctx, key) }
	eng, err := newONNXEngine(s.cfg, s.policy, s.latent, w, s.external())
	if err != nil {
		return rl.Flow{}, nil, fmt.Errorf("pipeline.inference_engine %q: %s: %w", s.cfg.Pipeline.InferenceEngine, what, err)
	}
	f.Engine = eng
	return f, func() { eng.sess.Close() }, nil
}

// externalAbove is the size of the policy's weights, in bytes, past which its ONNX export is
// written to a file with the weights in external data rather than built in memory: protobuf
// refuses messages of 2 GiB, and this leaves room for the graph. SD3.5-M (9 GB in float32)
// is past it, the tiny models far below.
const externalAbove = 1 << 30

// external reports whether the policy's export goes through a file with external data.
func (s *engineSet) external() bool {
	limit := int64(externalAbove)
	if s.externalAbove != 0 {
		limit = s.externalAbove
	}
	return int64(4*s.policy.Model.Config.NumParams()) > limit
}

// onnxEngine is the rl.Engine of the policy's model exported to ONNX Runtime
// (exporters/transformer) with the weights it was made from.
type onnxEngine struct {
	sess   *onnxrt.Session
	latent []int
}

// newONNXEngine exports the policy's model with the weights w (read one tensor at a time) and
// opens it: built in memory, or (external) written with its weights in external data to a
// temporary folder under $TMPDIR, which is removed once ONNX Runtime has opened the model (it
// has read or mapped the weights by then).
func newONNXEngine(cfg Config, policy *Policy, latent []int, w transformer.Weights, external bool) (*onnxEngine, error) {
	oc := cfg.ONNX.With(cfg.Model.ONNX)
	// onnx.max_model_mb guards against files from outside; this export is the program's own.
	limit := oc.MaxModelMB
	if limit == 0 {
		limit = onnxrt.DefaultMaxModelMB
	}
	if need := 4*policy.Model.Config.NumParams()>>20 + 64; need > limit {
		oc.MaxModelMB = need
	}
	var sess *onnxrt.Session
	if external {
		dir, err := os.MkdirTemp("", "densegrpo-velocity-*")
		if err != nil {
			return nil, fmt.Errorf("export velocity: %w", err)
		}
		defer os.RemoveAll(dir)
		path, err := transformer.WriteExternal(dir, policy.Model.Config, latent, w)
		if err != nil {
			return nil, err
		}
		if sess, err = onnxrt.Open(path, oc); err != nil {
			return nil, err
		}
	} else {
		model, err := transformer.Model(policy.Model.Config, latent, w, nil)
		if err != nil {
			return nil, err
		}
		data, err := model.Marshal()
		if err != nil {
			return nil, fmt.Errorf("export velocity: %w", err)
		}
		if sess, err = onnxrt.OpenBytes("policy velocity (exported)", data, oc); err != nil {
			return nil, err
		}
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
