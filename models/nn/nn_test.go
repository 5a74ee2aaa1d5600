package nn_test

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends/xla"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/internal/setupcache"
	"github.com/densegrpo/densegrpo/models/nn"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
)

func TestMain(m *testing.M) {
	_ = os.Setenv("GOMLX_NO_AUTO_INSTALL", "1")
	// GoMLX read the variable at init, before this ran; tests that list plugins before any
	// nn.NewBackend must not download XLA either.
	xla.EnableAutoInstall(false)
	os.Exit(m.Run())
}

func TestNewBackendGo(t *testing.T) {
	backend, desc, err := nn.NewBackend("go")
	if err != nil {
		t.Fatalf("NewBackend(go): %v", err)
	}
	defer backend.Finalize()
	if !strings.Contains(desc, "SimpleGo") || !strings.Contains(desc, nn.SimpleGoConfig) {
		t.Errorf("desc %q: want it to name SimpleGo and its config %q", desc, nn.SimpleGoConfig)
	}
	// [[1 2] [3 4]]·[5 6]ᵀ = [1·5+2·6, 3·5+4·6] = [17, 39].
	got, err := graph.ExecOnce(backend, func(x, w *graph.Node) *graph.Node { return nn.MatMul(x, w) },
		[][]float32{{1, 2}, {3, 4}}, [][]float32{{5}, {6}})
	if err != nil {
		t.Fatalf("exec on go backend: %v", err)
	}
	if want := []float32{17, 39}; !slices.Equal(tensors.MustCopyFlatData[float32](got), want) {
		t.Errorf("MatMul = %v, want %v", got, want)
	}
}

func TestNewBackendUnknown(t *testing.T) {
	for _, spec := range []string{"", "xla", "cuda", "go:parallelism=2"} {
		_, _, err := nn.NewBackend(spec)
		if err == nil {
			t.Errorf("NewBackend(%q): no error, want unknown backend", spec)
			continue
		}
		for _, valid := range nn.BackendSpecs {
			if !strings.Contains(err.Error(), valid) {
				t.Errorf("NewBackend(%q) error %q does not list valid spec %q", spec, err, valid)
			}
		}
	}
}

// TestNewBackendXLAWithoutPlugin checks that xla:* without an installed PJRT plugin is a clear
// error and that nothing was downloaded (the installer's target directory is not created).
func TestNewBackendXLAWithoutPlugin(t *testing.T) {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatalf("home directory: %v", err)
	}
	installDir := filepath.Join(home, ".local", "lib", "go-xla")
	_, statErr := os.Stat(installDir)
	existedBefore := statErr == nil
	for _, spec := range []string{"xla:cpu", "xla:cuda"} {
		plugin := strings.TrimPrefix(spec, "xla:")
		if slices.Contains(xla.GetAvailablePlugins(), plugin) {
			t.Logf("PJRT plugin %q is installed here: the no-plugin error cannot be tested", plugin)
			continue
		}
		if _, err := setupcache.Find(nn.CachedCPUPlugin); err == nil && plugin == "cpu" {
			t.Logf("PJRT plugin %q is in the setup cache: the no-plugin error cannot be tested", plugin)
			continue
		}
		backend, _, err := nn.NewBackend(spec)
		if err == nil {
			backend.Finalize()
			t.Fatalf("NewBackend(%q) succeeded without an installed plugin", spec)
		}
		for _, want := range []string{spec, "not installed", "download is disabled"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("NewBackend(%q) error %q: want it to contain %q", spec, err, want)
			}
		}
	}
	if _, err := os.Stat(installDir); err == nil && !existedBefore {
		t.Errorf("%s was created: NewBackend downloaded XLA", installDir)
	}
	if os.Getenv(xla.NoAutoInstallEnv) == "" {
		t.Errorf("%s not set after NewBackend", xla.NoAutoInstallEnv)
	}
}

func TestNewBackendAuto(t *testing.T) {
	backend, desc, err := nn.NewBackend("auto")
	if err != nil {
		t.Fatalf("NewBackend(auto): %v", err)
	}
	defer backend.Finalize()
	_, cacheErr := setupcache.Find(nn.CachedCPUPlugin)
	switch {
	case len(xla.GetAvailablePlugins()) == 0 && cacheErr != nil && !strings.Contains(desc, "SimpleGo"):
		t.Errorf("auto without PJRT plugins chose %q, want SimpleGo", desc)
	case cacheErr == nil && !strings.Contains(desc, "XLA"):
		t.Errorf("auto with the PJRT CPU plugin in the setup cache chose %q, want XLA", desc)
	}
	t.Logf("auto: %s", desc)
}

func TestLinearAndBatchMatMulValues(t *testing.T) {
	backend := nntest.Backend(t)
	// x [1, 2] = [[1, 2]], weight [3, 2] = [[1, 0], [0, 1], [1, 1]], bias [10, 20, 30]:
	// x·weightᵀ = [1, 2, 3]; + bias = [11, 22, 33].
	got, err := graph.ExecOnce(backend, func(x, w, b *graph.Node) *graph.Node { return nn.Linear(x, w, b) },
		[][]float32{{1, 2}}, [][]float32{{1, 0}, {0, 1}, {1, 1}}, []float32{10, 20, 30})
	if err != nil {
		t.Fatalf("Linear: %v", err)
	}
	if want := []float32{11, 22, 33}; !slices.Equal(tensors.MustCopyFlatData[float32](got), want) {
		t.Errorf("Linear = %v, want %v", got, want)
	}
	// Batch 0: [[1, 2]]·[[3, 4]]ᵀ = [[11]]; batch 1: [[1, 0]]·[[5, 6]]ᵀ = [[5]].
	got, err = graph.ExecOnce(backend, func(a, b *graph.Node) *graph.Node { return nn.BatchMatMul(a, b, true) },
		[][][]float32{{{1, 2}}, {{1, 0}}}, [][][]float32{{{3, 4}}, {{5, 6}}})
	if err != nil {
		t.Fatalf("BatchMatMul: %v", err)
	}
	if want := []float32{11, 5}; !slices.Equal(tensors.MustCopyFlatData[float32](got), want) {
		t.Errorf("BatchMatMul(transposeB) = %v, want %v", got, want)
	}
}

func TestShapeErrorsPanicWithShapes(t *testing.T) {
	g := graph.NewGraph(nntest.Backend(t), "shape-errors")
	defer g.Finalize()
	x := graph.Parameter(g, "x", shapes.Make(dtypes.Float32, 2, 3))
	w := graph.Parameter(g, "w", shapes.Make(dtypes.Float32, 4, 5))
	for name, build := range map[string]func(){
		"MatMul":      func() { nn.MatMul(x, w) },
		"Linear":      func() { nn.Linear(x, w, nil) },
		"BatchMatMul": func() { nn.BatchMatMul(x, w, false) },
		"DotGeneral":  func() { nn.DotGeneral(x, []int{1}, nil, w, []int{0}, nil) },
	} {
		err := nn.Try(build)
		if err == nil {
			t.Errorf("%s of [2 3] and [4 5]: no panic", name)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "[2 3]") || !strings.Contains(msg, "[4 5]") {
			t.Errorf("%s error %q: want both shapes named", name, firstLine(msg))
		}
	}
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

func TestDense(t *testing.T) {
	const in, out, batch = 64, 32, 5
	ctx := mlctx.New()
	if err := ctx.SetRNGStateFromSeed(7); err != nil {
		t.Fatalf("seed: %v", err)
	}
	exec, err := mlctx.NewExec(nntest.Backend(t), ctx, func(ctx *mlctx.Context, x *graph.Node) *graph.Node {
		return nn.Dense(ctx.In("blocks.0").In("to_q"), x, out, true)
	})
	if err != nil {
		t.Fatalf("new exec: %v", err)
	}
	defer exec.Finalize()
	x := tensors.FromShape(shapes.Make(dtypes.Float32, batch, in)) // zeros: output = bias
	outputs, err := exec.Exec(x)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	if got := outputs[0].Shape().Dimensions; !slices.Equal(got, []int{batch, out}) {
		t.Errorf("output shape %v, want [%d %d]", got, batch, out)
	}
	scope := "/blocks.0/to_q"
	weight := ctx.GetVariableByScopeAndName(scope, "weight")
	bias := ctx.GetVariableByScopeAndName(scope, "bias")
	if weight == nil || bias == nil {
		t.Fatalf("variables weight/bias not found in scope %q", scope)
	}
	if got := weight.Shape().Dimensions; !slices.Equal(got, []int{out, in}) {
		t.Errorf("weight shape %v, want [out in] = [%d %d]", got, out, in)
	}
	if got := bias.Shape().Dimensions; !slices.Equal(got, []int{out}) {
		t.Errorf("bias shape %v, want [%d]", got, out)
	}
	for _, b := range tensors.MustCopyFlatData[float32](bias.MustValue()) {
		if b != 0 {
			t.Fatalf("bias initialised to %v, want zeros", b)
		}
	}
	// Xavier normal: stddev √(2/(in+out)) = √(2/96) ≈ 0.1443; the sample stddev of 2048 draws is
	// within ±10% of it with overwhelming probability.
	ws := tensors.MustCopyFlatData[float32](weight.MustValue())
	var sum, sumSq float64
	for _, w := range ws {
		sum += float64(w)
		sumSq += float64(w) * float64(w)
	}
	mean := sum / float64(len(ws))
	std := math.Sqrt(sumSq/float64(len(ws)) - mean*mean)
	if want := math.Sqrt(2.0 / (in + out)); math.Abs(std-want) > 0.1*want || math.Abs(mean) > 0.1*want {
		t.Errorf("weight mean %.4f stddev %.4f, want 0 and %.4f", mean, std, want)
	}
	// A second call reuses the variables (same scope): still 2 variables.
	if _, err := exec.Exec(x); err != nil {
		t.Fatalf("second exec: %v", err)
	}
	var names []string
	for v := range ctx.IterVariables() {
		if v.Scope() == scope {
			names = append(names, v.Name())
		}
	}
	if slices.Sort(names); !slices.Equal(names, []string{"bias", "weight"}) {
		t.Errorf("variables in %s: %v, want [bias weight]", scope, names)
	}
}

func TestTryAndRecover(t *testing.T) {
	sentinel := errors.New("shape mismatch")
	err := nn.Try(func() { panic(sentinel) })
	var pe *nn.PanicError
	if !errors.As(err, &pe) || !errors.Is(err, sentinel) {
		t.Fatalf("Try(panic(sentinel)) = %v, want a *PanicError wrapping sentinel", err)
	}
	if !strings.Contains(string(pe.Stack), "TestTryAndRecover") {
		t.Errorf("stack does not show the panicking test function:\n%s", pe.Stack)
	}
	if err := nn.Try(func() {}); err != nil {
		t.Errorf("Try(no panic) = %v, want nil", err)
	}
	if err := nn.Try(func() { panic("plain string") }); err == nil || !strings.Contains(err.Error(), "plain string") ||
		errors.Unwrap(err) != nil {
		t.Errorf("Try(panic(string)) = %v, want an error with the message and nothing to unwrap", err)
	}

	build := func(fail bool) (err error) {
		err = errors.New("untouched")
		defer nn.Recover(&err)
		if fail {
			var shapeErr = errors.New("boom")
			panic(shapeErr)
		}
		return err
	}
	if err := build(false); err == nil || err.Error() != "untouched" {
		t.Errorf("Recover without panic changed err to %v", err)
	}
	if err := build(true); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("Recover after panic: err = %v, want the panic", err)
	}
}
