package transformer

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// BenchmarkSD35MShapes runs one velocity call of an MMDiT at Stable Diffusion 3.5 Medium's
// real widths (models/mmdit/testdata/sd35m.json: 24 heads × 64, joint_attention_dim 4096,
// pooled 2048, pos_embed_max_size 384, RMS QK-norm) and 512-px shapes (latent 16×64×64 =
// 1024 image tokens, 77 + 256 text tokens, batch 1), cut to 2 layers (a dual-attention block,
// as SD3.5-M's first 13 are, plus the last, context_pre_only block) and 3 layers (one more
// dual-attention block): the difference is one full block, from which the runbook scales to
// 24. (One layer alone is the last block's kind, which has no text output to adapt; the
// default LoRA targets need two.) Each engine is set up inside its
// own sub-benchmark, so a run of one sub-benchmark measures that engine's memory alone; each
// reports the resident memory after setup (weights and graph, "setup-MB") and the peak above
// it over the calls, the untimed first one included (activations, workspace and ONNX
// Runtime's arena, "call-MB"), from /proc/self on Linux:
//
//	go test ./exporters/transformer -run '^$' -bench SD35MShapes -benchtime 3x -timeout 60m
func BenchmarkSD35MShapes(b *testing.B) {
	full, err := mmdit.LoadConfig("../../models/mmdit/testdata/sd35m.json")
	if err != nil {
		b.Fatal(err)
	}
	const batch, textLen = 1, 77 + 256
	latent := []int{full.InChannels, 64, 64}
	r := rand.New(rand.NewPCG(3, 4))
	lat := gaussian(r, batch*latent[0]*latent[1]*latent[2], 1)
	ts := []float32{500}
	enc := gaussian(r, batch*textLen*full.JointAttentionDim, 1)
	pooled := gaussian(r, batch*full.PooledProjectionDim, 1)
	inputs := func(cfg mmdit.Config) velocityInputs {
		return velocityInputs{cfg: cfg, batch: batch, textLen: textLen, latent: latent, lat: lat, ts: ts, enc: enc, pooled: pooled}
	}
	for _, layers := range []int{2, 3} {
		cfg := full
		cfg.NumLayers, cfg.DualAttentionLayers = layers, nil
		for l := range layers - 1 {
			cfg.DualAttentionLayers = append(cfg.DualAttentionLayers, l)
		}
		b.Run(fmt.Sprintf("layers=%d/gomlx", layers), func(b *testing.B) {
			m, ctx := randomModel(b, cfg, 1)
			exec, err := mlctx.NewExec(nntest.Backend(b), ctx, func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
				return m.Forward(ctx, lat, ts, enc, pooled, false)
			})
			if err != nil {
				b.Fatal(err)
			}
			defer exec.Finalize()
			args := inputs(cfg).gomlx()
			call := func() {
				if err := nn.Try(func() { exec.MustExec1(args...).FinalizeAll() }); err != nil {
					b.Fatal(err)
				}
			}
			mem := startCallMemory(b)
			call() // graph building and compilation, outside the timing
			for b.Loop() {
				call()
			}
			mem.report(b)
		})
		// A training step's memory: the gradient of Σv² w.r.t. the adapters through the whole
		// model, one row (a trajectory's conditional half with guidance), so "call-MB" is what
		// backpropagation keeps per row at these widths.
		b.Run(fmt.Sprintf("layers=%d/gomlx-grad", layers), func(b *testing.B) {
			m, ctx := randomModel(b, cfg, 1)
			exec, err := mlctx.NewExec(nntest.Backend(b), ctx, func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) []*Node {
				v := m.Forward(ctx, lat, ts, enc, pooled, true)
				var params []*Node
				for variable := range ctx.IterVariables() {
					if variable.Trainable {
						params = append(params, variable.ValueGraph(lat.Graph()))
					}
				}
				return Gradient(ReduceAllSum(Square(v)), params...)
			})
			if err != nil {
				b.Fatal(err)
			}
			defer exec.Finalize()
			args := inputs(cfg).gomlx()
			call := func() {
				if err := nn.Try(func() {
					for _, g := range exec.MustExec(args...) {
						g.FinalizeAll()
					}
				}); err != nil {
					b.Fatal(err)
				}
			}
			// No untimed first call here: the point is the memory of one step, and its time
			// (which then includes building the graph) is not reported.
			mem := startCallMemory(b)
			for b.Loop() {
				call()
			}
			mem.report(b)
		})
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("layers=%d/onnx-threads=%d", layers, threads), func(b *testing.B) {
				m, ctx := randomModel(b, cfg, 1)
				s := exportedSessionWith(b, m, ctx, latent, threads, false)
				in := inputs(cfg).onnx()
				call := func() {
					if _, err := s.Run(context.Background(), in); err != nil {
						b.Fatal(err)
					}
				}
				mem := startCallMemory(b)
				call() // first-run allocations (ONNX Runtime's arena), outside the timing
				for b.Loop() {
					call()
				}
				mem.report(b)
			})
		}
	}
}

// callMemory measures the process's peak resident memory above a baseline, on Linux: the
// kernel's high-water mark (VmHWM) is reset to the current size by writing "5" to
// /proc/self/clear_refs.
type callMemory struct {
	baseKB int64
	ok     bool
}

func startCallMemory(b *testing.B) callMemory {
	b.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return callMemory{}
	}
	rss, ok := procStatusKB("VmRSS")
	return callMemory{baseKB: rss, ok: ok}
}

func (m callMemory) report(b *testing.B) {
	b.Helper()
	peak, ok := procStatusKB("VmHWM")
	if !m.ok || !ok {
		return
	}
	b.ReportMetric(float64(m.baseKB)/1024, "setup-MB")
	b.ReportMetric(float64(peak-m.baseKB)/1024, "call-MB")
}

// procStatusKB reads one "Key:   N kB" line of /proc/self/status.
func procStatusKB(key string) (int64, bool) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb); err == nil {
				return kb, true
			}
		}
	}
	return 0, false
}

// BenchmarkExportPast2GiB exports an MMDiT at SD3.5-M's widths cut to 7 layers (6
// dual-attention blocks and the last; 2.9 GB of float32 weights, past protobuf's 2 GiB) the
// way the pipeline does each epoch — the adapters folded in one tensor at a time, written with
// the weights in external data (WriteExternal) — opens it in ONNX Runtime and runs one
// velocity call on a small latent (16×8×8, 8 text tokens: the weights' size is the point),
// checked against GoMLX's Forward with the adapters to the parity tests' 1e-4. It reports the
// weights GoMLX holds ("weights-MB"), the peak resident memory above them while exporting
// ("export-MB", one tensor's worth if nothing else is held), the export's seconds, the
// session's resident memory once open ("session-MB") and its peak while opening
// ("open-peak-MB"):
//
//	go test ./exporters/transformer -run '^$' -bench ExportPast2GiB -benchtime 1x -timeout 60m
func BenchmarkExportPast2GiB(b *testing.B) {
	cfg, err := mmdit.LoadConfig("../../models/mmdit/testdata/sd35m.json")
	if err != nil {
		b.Fatal(err)
	}
	cfg.NumLayers, cfg.DualAttentionLayers = 7, []int{0, 1, 2, 3, 4, 5}
	if bytes := 4 * int64(cfg.NumParams()); bytes <= 1<<31 {
		b.Fatalf("%d bytes of weights: the benchmark must be past 2 GiB", bytes)
	}
	const batch, textLen = 1, 8
	latent := []int{cfg.InChannels, 8, 8}
	r := rand.New(rand.NewPCG(5, 6))
	vi := velocityInputs{cfg: cfg, batch: batch, textLen: textLen, latent: latent,
		lat: gaussian(r, batch*latent[0]*latent[1]*latent[2], 1), ts: []float32{500},
		enc: gaussian(r, batch*textLen*cfg.JointAttentionDim, 1), pooled: gaussian(r, batch*cfg.PooledProjectionDim, 1)}
	for b.Loop() {
		base := startCallMemory(b) // before the model: its weights are measured too
		// N(0, 0.02²), SD3's initialisation: at this width the tests' 0.2 would grow the
		// activations until float32 rounding, not the engines, decides the comparison.
		m, ctx := randomModelStd(b, cfg, 1, 0.02)
		weights := startCallMemory(b)
		dir := b.TempDir()
		start := time.Now()
		path, err := WriteExternal(dir, m.Config, latent, mergedWeights(m, ctx))
		if err != nil {
			b.Fatal(err)
		}
		exportSeconds := time.Since(start).Seconds()
		exportPeak, _ := procStatusKB("VmHWM")
		opening := startCallMemory(b)
		s, err := onnxrt.Open(path, onnxrt.Config{IntraOpThreads: 2, MaxModelMB: 1 << 14})
		if err != nil {
			b.Fatal(err)
		}
		openPeak, _ := procStatusKB("VmHWM")
		runtime.GC()
		debug.FreeOSMemory()
		open, _ := procStatusKB("VmRSS")
		out, err := s.Run(context.Background(), vi.onnx())
		s.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(weights.baseKB-base.baseKB)/1024, "weights-MB")
		b.ReportMetric(float64(exportPeak-weights.baseKB)/1024, "export-MB")
		b.ReportMetric(exportSeconds, "export-s")
		b.ReportMetric(float64(open-opening.baseKB)/1024, "session-MB")
		b.ReportMetric(float64(openPeak-opening.baseKB)/1024, "open-peak-MB")
		want := gomlxVelocity(b, m, ctx, vi)
		got := out[OutputVelocity].Float32
		maxDiff, maxRel, scale := 0.0, 0.0, 0.0
		for i := range want {
			d := math.Abs(float64(got[i] - want[i]))
			maxDiff, scale = math.Max(maxDiff, d), math.Max(scale, math.Abs(float64(want[i])))
			maxRel = math.Max(maxRel, d/math.Max(1, math.Abs(float64(want[i]))))
		}
		b.Logf("%d parameters (%.2f GiB), export %s: max |ONNX − GoMLX| = %.2g (%.2g relative) over %d values, max |v| %.3g",
			cfg.NumParams(), float64(4*cfg.NumParams())/(1<<30), path, maxDiff, maxRel, len(want), scale)
		if maxRel > 1e-4 || math.IsNaN(maxRel) {
			b.Fatalf("ONNX and GoMLX differ by %.2g relative, want <= 1e-4", maxRel)
		}
	}
}

// gomlxVelocity is mmdit's Forward with the adapters on vi, on the SimpleGo backend.
func gomlxVelocity(b *testing.B, m *mmdit.Model, ctx *mlctx.Context, vi velocityInputs) []float32 {
	b.Helper()
	exec, err := mlctx.NewExec(nntest.Backend(b), ctx, func(ctx *mlctx.Context, lat, ts, enc, pooled *Node) *Node {
		return m.Forward(ctx, lat, ts, enc, pooled, true)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer exec.Finalize()
	var out []float32
	if err := nn.Try(func() { out = tensors.MustCopyFlatData[float32](exec.MustExec1(vi.gomlx()...)) }); err != nil {
		b.Fatal(err)
	}
	return out
}
