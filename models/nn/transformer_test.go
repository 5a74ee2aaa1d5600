package nn_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"syscall"
	"testing"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/train/optimizers"

	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

// transformer is a pre-norm transformer encoder built only from nn.Dense and nn.BatchMatMul,
// used to exercise a realistic training step: per layer, attention (to_q, to_k, to_v, to_out)
// and an MLP dim→4·dim→dim, each with residual connections, on float32 inputs
// [batch, seq, dim], regressing a target of the same shape with the mean squared error.
type transformer struct {
	batch, seq, dim, heads, layers int
}

// params is the number of trainable parameters: per layer 4 attention projections
// (dim²+dim each) and the MLP (4·dim² + 4·dim) + (4·dim² + dim).
func (m transformer) params() int {
	d := m.dim
	return m.layers * (4*(d*d+d) + 8*d*d + 5*d)
}

// flops is the multiply-add count ×2 of one training step's matrix products: forward per layer
// 2·tokens·12·dim² for the projections plus 2·2·batch·seq²·dim for scores and attention·values;
// the backward pass costs twice the forward pass.
func (m transformer) flops() float64 {
	tokens := float64(m.batch * m.seq)
	d := float64(m.dim)
	perLayer := 2*tokens*12*d*d + 4*float64(m.batch)*float64(m.seq)*float64(m.seq)*d
	return 3 * float64(m.layers) * perLayer
}

func rmsNorm(x *graph.Node) *graph.Node {
	meanSquare := graph.ReduceAndKeep(graph.Square(x), graph.ReduceMean, -1)
	// Div by Sqrt rather than Mul by Rsqrt: GoMLX v0.26.0 defines no gradient for Rsqrt.
	return graph.Div(x, graph.Sqrt(graph.AddScalar(meanSquare, 1e-6)))
}

// attention: x [batch, seq, dim] -> [batch, seq, dim].
func (m transformer) attention(ctx *mlctx.Context, x *graph.Node) *graph.Node {
	headDim := m.dim / m.heads
	split := func(t *graph.Node) *graph.Node { // [b, s, d] -> [b, h, s, d/h]
		return graph.TransposeAllAxes(graph.Reshape(t, m.batch, m.seq, m.heads, headDim), 0, 2, 1, 3)
	}
	q := split(nn.Dense(ctx.In("to_q"), x, m.dim, true))
	k := split(nn.Dense(ctx.In("to_k"), x, m.dim, true))
	v := split(nn.Dense(ctx.In("to_v"), x, m.dim, true))
	scores := graph.MulScalar(nn.BatchMatMul(q, k, true), 1/math.Sqrt(float64(headDim)))
	attended := nn.BatchMatMul(graph.Softmax(scores, -1), v, false) // [b, h, s, d/h]
	merged := graph.Reshape(graph.TransposeAllAxes(attended, 0, 2, 1, 3), m.batch, m.seq, m.dim)
	return nn.Dense(ctx.In("to_out"), merged, m.dim, true)
}

// loss returns the mean squared error of the model's output for x against target.
func (m transformer) loss(ctx *mlctx.Context, x, target *graph.Node) *graph.Node {
	h := x
	for l := range m.layers {
		layerCtx := ctx.In(fmt.Sprintf("blocks.%d", l))
		h = graph.Add(h, m.attention(layerCtx.In("attn"), rmsNorm(h)))
		up := nn.Dense(layerCtx.In("ff.up"), rmsNorm(h), 4*m.dim, true)
		up = graph.Mul(up, graph.Sigmoid(graph.MulScalar(up, 1.702))) // GELU, sigmoid approximation
		h = graph.Add(h, nn.Dense(layerCtx.In("ff.down"), up, m.dim, true))
	}
	return graph.ReduceAllMean(graph.Square(graph.Sub(h, target)))
}

// trainStep is a compiled AdamW training step of a transformer and its fixed batch.
type trainStep struct {
	exec      *mlctx.Exec
	ctx       *mlctx.Context
	x, target *tensors.Tensor
}

// newTrainStep builds (but does not compile: that happens at the first run) an AdamW step of m
// on backend; the fast gradient setting in effect is the one used for the step's graph.
func newTrainStep(tb testing.TB, backend backends.Backend, m transformer) *trainStep {
	tb.Helper()
	ctx := mlctx.New()
	if err := ctx.SetRNGStateFromSeed(42); err != nil {
		tb.Fatalf("seed context: %v", err)
	}
	opt := optimizers.Adam().LearningRate(1e-3).WeightDecay(0.01).Done()
	exec, err := mlctx.NewExec(backend, ctx, func(ctx *mlctx.Context, x, target *graph.Node) *graph.Node {
		ctx.SetTraining(x.Graph(), true)
		loss := m.loss(ctx, x, target)
		opt.UpdateGraph(ctx, x.Graph(), loss)
		return loss
	})
	if err != nil {
		tb.Fatalf("new train step exec: %v", err)
	}
	n := m.batch * m.seq * m.dim
	xs, ys := make([]float32, n), make([]float32, n)
	for i := range xs {
		xs[i] = float32(math.Sin(float64(i) * 0.37))
		ys[i] = float32(math.Cos(float64(i) * 0.11))
	}
	return &trainStep{
		exec:   exec,
		ctx:    ctx,
		x:      tensors.FromFlatDataAndDimensions(xs, m.batch, m.seq, m.dim),
		target: tensors.FromFlatDataAndDimensions(ys, m.batch, m.seq, m.dim),
	}
}

// run executes one step and returns the loss before the update.
func (s *trainStep) run() (float32, error) {
	out, err := s.exec.Exec(s.x, s.target)
	if err != nil {
		return 0, err
	}
	return tensors.MustCopyFlatData[float32](out[0])[0], nil
}

// runWithin runs steps training steps of s and fails tb if they do not all finish within limit;
// it returns the losses. A hang (the deadlock) is reported instead of blocking the test binary.
func runWithin(tb testing.TB, s *trainStep, steps int, limit time.Duration) []float32 {
	tb.Helper()
	type result struct {
		losses []float32
		err    error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		var runErr error
		panicErr := nn.Try(func() {
			for range steps {
				loss, err := s.run()
				if err != nil {
					runErr = err
					return
				}
				r.losses = append(r.losses, loss)
			}
		})
		r.err = errors.Join(runErr, panicErr)
		done <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	select {
	case r := <-done:
		if r.err != nil {
			tb.Fatalf("train step: %v", r.err)
		}
		return r.losses
	case <-ctx.Done():
		tb.Fatalf("%d train steps did not finish within %s: the backend deadlocked (or is far too slow)", steps, limit)
		return nil
	}
}

// deadlockModel is large enough that SimpleGo runs several big DotGenerals side by side. Verified
// by hand on the 2-core development machine: with simplego.New("") (a worker pool of
// 2·NumCPU = 4) three steps of it did not finish in 60 s (they take under a second with
// nn.NewBackend("go")), and the goroutine dump showed the 4 pool workers each executing a
// DotGeneral, all blocked in workersPool.WaitToStart waiting for a worker for their batch splits.
var deadlockModel = transformer{batch: 8, seq: 32, dim: 128, heads: 4, layers: 2}

// TestTrainStepDoesNotDeadlock runs training steps of a transformer on the backend of
// nn.NewBackend("go") under a deadline, and checks that AdamW lowers the loss.
func TestTrainStepDoesNotDeadlock(t *testing.T) {
	step := newTrainStep(t, nntest.Backend(t), deadlockModel)
	defer step.exec.Finalize()
	losses := runWithin(t, step, 3, 120*time.Second)
	for i, loss := range losses {
		if math.IsNaN(float64(loss)) || math.IsInf(float64(loss), 0) {
			t.Fatalf("step %d: loss %v", i, loss)
		}
	}
	if !(losses[2] < losses[0]) {
		t.Errorf("losses %v: want the loss to decrease over AdamW steps", losses)
	}
}

// BenchmarkTrainStep measures an AdamW training step of a ~1.8M-parameter transformer with
// GoMLX's default DotGeneral gradient and with nn's fast gradient, on nn.NewBackend("go"), and
// reports the matrix-product throughput. Run:
//
//	GOMLX_NO_AUTO_INSTALL=1 go test ./models/nn -run XXX -bench TrainStep -benchtime 3x
//
// Measured on the 2-core development machine shared with other jobs (1,776,384 parameters,
// 5.74 GFLOP per step): default-grad 25.5 CPU-s and 29.9 s wall per step, fast-grad 2.17 CPU-s
// and 4.43 s wall: 11.7× less CPU time (6.8× wall time under that load), 2.64 GFLOP per CPU-second.
func BenchmarkTrainStep(b *testing.B) {
	benchModel := transformer{batch: 8, seq: 64, dim: 192, heads: 6, layers: 4}
	backend, desc, err := nn.NewBackend("go")
	if err != nil {
		b.Fatalf("backend: %v", err)
	}
	b.Logf("backend: %s; model: %d parameters, %.2f GFLOP per step", desc, benchModel.params(), benchModel.flops()/1e9)
	for _, fast := range []bool{false, true} {
		name := "default-grad"
		if fast {
			name = "fast-grad"
		}
		b.Run(name, func(b *testing.B) { benchmarkSteps(b, backend, benchModel, fast) })
	}
}

// BenchmarkSimpleGoConfig compares SimpleGo configurations that avoid the deadlock on the same
// training step (fast gradient), to choose nn.SimpleGoConfig.
func BenchmarkSimpleGoConfig(b *testing.B) {
	benchModel := transformer{batch: 8, seq: 64, dim: 192, heads: 6, layers: 4}
	for _, config := range []string{"ops_sequential", "parallelism=8"} {
		b.Run(config, func(b *testing.B) {
			backend, err := simplego.New(config)
			if err != nil {
				b.Fatalf("backend %q: %v", config, err)
			}
			defer backend.Finalize()
			benchmarkSteps(b, backend, benchModel, true)
		})
	}
}

func benchmarkSteps(b *testing.B, backend backends.Backend, m transformer, fast bool) {
	previous := nn.SetFastGradients(fast)
	step := newTrainStep(b, backend, m)
	// The first step builds and compiles the graph (reading the fast-gradient setting).
	runWithin(b, step, 1, 10*time.Minute)
	nn.SetFastGradients(previous)
	defer step.exec.Finalize()
	b.ResetTimer()
	start, startCPU := time.Now(), processCPUTime(b)
	for range b.N {
		if _, err := step.run(); err != nil {
			b.Fatalf("train step: %v", err)
		}
	}
	elapsed, cpu := time.Since(start), processCPUTime(b)-startCPU
	b.ReportMetric(m.flops()*float64(b.N)/elapsed.Seconds()/1e9, "GFLOP/s")
	b.ReportMetric(elapsed.Seconds()/float64(b.N), "s/step")
	// CPU time per step does not depend on how many other processes share the cores.
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/step")
	b.ReportMetric(m.flops()*float64(b.N)/cpu.Seconds()/1e9, "GFLOP/cpu-s")
}

// processCPUTime returns the user+system CPU time this process has used so far.
func processCPUTime(tb testing.TB) time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}
