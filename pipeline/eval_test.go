package pipeline

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	exptinyocr "github.com/densegrpo/densegrpo/exporters/tinyocr"
	"github.com/densegrpo/densegrpo/internal/frozentest"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/models/tinyocr"
	"github.com/densegrpo/densegrpo/rl"
)

// fixture writes the frozentest configuration into a temp dir and loads it with sets.
func fixture(t *testing.T, sets ...string) (Config, frozentest.Files) {
	t.Helper()
	return fixtureWith(t, "", sets...)
}

// fixtureWith is fixture with extra TOML appended to the config (more [[reward]] blocks).
func fixtureWith(t *testing.T, extra string, sets ...string) (Config, frozentest.Files) {
	t.Helper()
	// CPU ONNX Runtime tests never skip: without the library they fail.
	if err := onnxrt.Init(onnxrt.Config{}); err != nil {
		t.Fatalf("pipeline tests need ONNX Runtime (run scripts/setup.sh or set ONNXRUNTIME_LIB): %v", err)
	}
	files, err := frozentest.WriteConfig(t.TempDir(), extra)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(files.Config, sets)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, files
}

func newTestPolicy(t *testing.T, cfg Config, lora string) *Policy {
	t.Helper()
	p, err := NewPolicy(cfg, PolicyOptions{Backend: nntest.Backend(t), LoRA: lora})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// writeZeroModel overwrites the fixture's weights with mmdit's Init, whose proj_out is zero:
// the velocity is 0 everywhere, so every Euler step leaves x unchanged and the clean latent is
// the initial noise.
func writeZeroModel(t *testing.T, files frozentest.Files) {
	t.Helper()
	m, err := mmdit.New(frozentest.TinyMMDiT, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := mlctx.New()
	if err := m.Init(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.SaveBase(ctx, files.Weights); err != nil {
		t.Fatal(err)
	}
}

func sigmoid(v float32) float64 { return 1 / (1 + math.Exp(-float64(v))) }

// brightness is the fixture pipeline's reward of a zero-velocity model for image i: the fixture
// VAE shows sigmoid of the first 3 of the 4 latent channels [4,4,8] and the reward is the mean
// pixel value, so it is the mean of sigmoid(x0) over the first 3·4·8 = 96 noise values.
func brightness(seed int64, i int) float64 {
	x0 := rl.InitialNoise(seed, i, 4*4*8)
	var s float64
	for _, v := range x0[:96] {
		s += sigmoid(v)
	}
	return s / 96
}

func TestEvaluateZeroVelocityClosedForm(t *testing.T) {
	cfg, files := fixture(t)
	writeZeroModel(t, files)
	p := newTestPolicy(t, cfg, "")
	res, err := Evaluate(context.Background(), cfg, p, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.N != 3 || len(res.Totals) != 3 {
		t.Fatalf("n %d, %d totals, want 3", res.N, len(res.Totals))
	}
	var mean float64
	for i, got := range res.Totals {
		want := brightness(cfg.Run.Seed, i)
		mean += want / 3
		if math.Abs(got-want) > 1e-5 {
			t.Errorf("image %d: reward %v, want %v", i, got, want)
		}
	}
	if math.Abs(res.RewardMean-mean) > 1e-5 || math.Abs(res.Rewards["bright"]-mean) > 1e-5 {
		t.Errorf("eval_reward_mean %v, rewards %v; want %v", res.RewardMean, res.Rewards, mean)
	}
	if res.Images != nil {
		t.Error("images kept without KeepImages")
	}
}

// With a random (non-zero) model the result of prompt i must not depend on the batch it ran in,
// nor on how many prompts were evaluated.
func TestEvaluateBatchInvariance(t *testing.T) {
	cfg, _ := fixture(t)
	p := newTestPolicy(t, cfg, "")
	ctx := context.Background()
	var ref EvalResult
	for _, tc := range []struct{ batch, prompts int }{{3, 0}, {1, 0}, {2, 0}, {2, 2}} {
		c := cfg
		c.Eval.BatchSize, c.Eval.Prompts = tc.batch, tc.prompts
		res, err := Evaluate(ctx, c, p, EvalOptions{KeepImages: true})
		if err != nil {
			t.Fatal(err)
		}
		if tc.batch == 3 {
			ref = res
			// A non-trivial model: not the zero-velocity rewards.
			if math.Abs(res.Totals[0]-brightness(cfg.Run.Seed, 0)) < 1e-4 {
				t.Fatalf("random model gives the zero-velocity reward %v", res.Totals[0])
			}
			continue
		}
		want := 3
		if tc.prompts > 0 {
			want = tc.prompts
		}
		if res.N != want || len(res.Images) != want {
			t.Fatalf("batch %d prompts %d: n %d, %d images; want %d", tc.batch, tc.prompts, res.N, len(res.Images), want)
		}
		for i := range res.Totals {
			if math.Abs(res.Totals[i]-ref.Totals[i]) > 1e-5 {
				t.Errorf("batch %d prompts %d: image %d reward %v, batch 3 gave %v", tc.batch, tc.prompts, i, res.Totals[i], ref.Totals[i])
			}
		}
	}
}

// A checkpoint's EMA adapters are preferred to its raw adapters; both change the model.
func TestEvaluateCheckpointLoRA(t *testing.T) {
	cfg, _ := fixture(t)
	ctx := context.Background()
	lora := mmdit.LoRAConfig{Rank: cfg.Model.LoRA.Rank, Alpha: cfg.Model.LoRA.Alpha, Targets: cfg.Model.LoRA.Targets}
	dir := t.TempDir()
	if err := frozentest.WriteLoRA(filepath.Join(dir, LoRAFile), frozentest.TinyMMDiT, lora, 1, 0.3); err != nil {
		t.Fatal(err)
	}
	eval := func(loraFile string) EvalResult {
		t.Helper()
		res, err := Evaluate(ctx, cfg, newTestPolicy(t, cfg, loraFile), EvalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	base := eval("")
	path, err := CheckpointLoRA(dir)
	if err != nil || path != filepath.Join(dir, LoRAFile) {
		t.Fatalf("CheckpointLoRA without EMA = %q, %v; want %s", path, err, LoRAFile)
	}
	raw := eval(path)
	if err := frozentest.WriteLoRA(filepath.Join(dir, EMALoRAFile), frozentest.TinyMMDiT, lora, 2, 0.3); err != nil {
		t.Fatal(err)
	}
	if path, err = CheckpointLoRA(dir); err != nil || path != filepath.Join(dir, EMALoRAFile) {
		t.Fatalf("CheckpointLoRA with EMA = %q, %v; want %s", path, err, EMALoRAFile)
	}
	ema := eval(path)
	if base.RewardMean == raw.RewardMean || raw.RewardMean == ema.RewardMean || base.RewardMean == ema.RewardMean {
		t.Errorf("base %v, lora %v, ema %v: want three different rewards", base.RewardMean, raw.RewardMean, ema.RewardMean)
	}
	if _, err := CheckpointLoRA(t.TempDir()); err == nil || !strings.Contains(err.Error(), "neither ema.safetensors nor lora.safetensors") {
		t.Errorf("empty checkpoint: error %v", err)
	}
}

func TestPolicyErrors(t *testing.T) {
	cfg, files := fixture(t)
	ctx := context.Background()
	// A LoRA file of another rank that records its config is loaded as it says; without a
	// recorded config it must fit [model.lora], and a misfit names the tensor and both shapes.
	other := filepath.Join(t.TempDir(), "r4.safetensors")
	if err := frozentest.WriteLoRA(other, frozentest.TinyMMDiT, mmdit.LoRAConfig{Rank: 4, Alpha: 4}, 1, 0.1); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(cfg, PolicyOptions{Backend: nntest.Backend(t), LoRA: other})
	if err != nil || p.Model.LoRA.Rank != 4 || p.Model.LoRA.Alpha != 4 {
		t.Fatalf("rank-4 LoRA with its config: %v; want it loaded at rank 4, alpha 4", err)
	}
	p.Close()
	ts, _, err := safetensors.Read(other)
	if err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(t.TempDir(), "bare.safetensors")
	if err := safetensors.Write(bare, ts, nil); err != nil {
		t.Fatal(err)
	}
	_, err = NewPolicy(cfg, PolicyOptions{Backend: nntest.Backend(t), LoRA: bare})
	if err == nil || !strings.Contains(err.Error(), "file has shape [4 16], model wants [2 16]") {
		t.Errorf("rank-4 LoRA without a config: error %v", err)
	}
	// A text encoder of the wrong width is caught before any sampling.
	if err := frozentest.WriteTextEncoder(files.TextEncoder, 12, 8, 0); err != nil {
		t.Fatal(err)
	}
	_, err = Evaluate(ctx, cfg, newTestPolicy(t, cfg, ""), EvalOptions{})
	if err == nil || !strings.Contains(err.Error(), "gives widths D=12, P=8; the transformer wants joint_attention_dim 16, pooled_projection_dim 8") {
		t.Errorf("wrong text width: error %v", err)
	}
	// A VAE with other latent channels.
	if err := frozentest.WriteTextEncoder(files.TextEncoder, 16, 8, 0); err != nil {
		t.Fatal(err)
	}
	if err := frozentest.WriteVAEDecoder(files.VAEDecoder, 3, 4, 8, 0); err != nil {
		t.Fatal(err)
	}
	_, err = Evaluate(ctx, cfg, newTestPolicy(t, cfg, ""), EvalOptions{})
	if err == nil || !strings.Contains(err.Error(), "takes latents [3 4 8]; the transformer wants [4,h,w]") {
		t.Errorf("wrong latent channels: error %v", err)
	}
	// LoRA targets matching no layer name the config and its table.
	bad := cfg
	bad.Model.LoRA.Targets = []string{"attn.to_qq"}
	_, err = NewPolicy(bad, PolicyOptions{Backend: nntest.Backend(t)})
	if err == nil || !strings.Contains(err.Error(), "config "+cfg.Path+`: model.lora: lora target "attn.to_qq": matches no linear layer`) {
		t.Errorf("unknown LoRA target: error %v", err)
	}
	// A missing weight file.
	os.Remove(files.Weights)
	_, err = NewPolicy(cfg, PolicyOptions{Backend: nntest.Backend(t)})
	if err == nil || !strings.Contains(err.Error(), "transformer.safetensors") {
		t.Errorf("missing weights: error %v", err)
	}
}

func TestEvaluateCancelled(t *testing.T) {
	cfg, _ := fixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Evaluate(ctx, cfg, newTestPolicy(t, cfg, ""), EvalOptions{})
	if err == nil || !strings.Contains(err.Error(), context.Canceled.Error()) {
		t.Errorf("cancelled: error %v", err)
	}
}

// BenchmarkEvaluateTinyOCR measures Evaluate at the tiny-ocr geometry: a 4-layer MMDiT of width
// 64 (4 heads × 16; random weights), latents [4,8,32], the tiny-ocr text encoder and VAE decoder
// (random weights, exported by exporters/tinyocr), PP-OCRv4 recognition as the reward, 16
// prompts in one batch, 40 Euler steps. Run:
//
//	GOMLX_NO_AUTO_INSTALL=1 go test ./pipeline -run XXX -bench EvaluateTinyOCR -benchtime 2x
func BenchmarkEvaluateTinyOCR(b *testing.B) {
	if err := onnxrt.Init(onnxrt.Config{}); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	mcfg := frozentest.TinyMMDiT
	mcfg.SampleSize, mcfg.NumLayers, mcfg.NumAttentionHeads, mcfg.AttentionHeadDim = 32, 4, 4, 16
	mcfg.JointAttentionDim, mcfg.CaptionProjectionDim, mcfg.PooledProjectionDim, mcfg.PosEmbedMaxSize = 64, 64, 64, 16
	if err := frozentest.WriteMMDiT(filepath.Join(dir, "mmdit.json"), filepath.Join(dir, "transformer.safetensors"), mcfg, 1, 0.02); err != nil {
		b.Fatal(err)
	}
	backend := nntest.Backend(b)
	ts, err := tinyocr.InitTextEncoder(backend, tinyocr.DefaultTextEncoderConfig(), tinyocr.TextEncoderPrefix, 1)
	if err != nil {
		b.Fatal(err)
	}
	te, err := exptinyocr.TextEncoderModel(ts, tinyocr.TextEncoderPrefix)
	if err != nil {
		b.Fatal(err)
	}
	w, err := tinyocr.InitVAE(backend, tinyocr.DefaultVAEConfig(), tinyocr.VAEScaling{ScalingFactor: 1}, 1)
	if err != nil {
		b.Fatal(err)
	}
	vae, err := exptinyocr.VAEDecoderModel(w)
	if err != nil {
		b.Fatal(err)
	}
	if err := te.WriteFile(filepath.Join(dir, "te.onnx")); err != nil {
		b.Fatal(err)
	}
	if err := vae.WriteFile(filepath.Join(dir, "vae.onnx")); err != nil {
		b.Fatal(err)
	}
	rec, err := onnxrt.FindCached("ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		b.Fatal(err)
	}
	keys, err := onnxrt.FindCached("ocr/ppocr_keys_v1.txt")
	if err != nil {
		b.Fatal(err)
	}
	test, err := filepath.Abs(filepath.Join("..", "datasets", "ocr-tiny", "test.txt"))
	if err != nil {
		b.Fatal(err)
	}
	toml := fmt.Sprintf(`[run]
epochs = 1
backend = "go"
[model]
config = "mmdit.json"
weights = "transformer.safetensors"
[onnx]
intra_op_threads = 1
[text_encoder]
model = "te.onnx"
[vae]
decoder = "vae.onnx"
[prompts]
train = %q
test = %q
[eval]
steps = 40
prompts = 16
batch_size = 16
[[reward]]
name = "ocr"
kind = "ocr"
model = %q
keys = %q
`, test, test, rec, keys)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg, err := Load(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	p, err := NewPolicy(cfg, PolicyOptions{Backend: backend})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	f, err := OpenFrozen(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := Evaluate(ctx, cfg, p, EvalOptions{Frozen: f}); err != nil { // compiles the step graph
		b.Fatal(err)
	}
	cpu0 := cpuSeconds()
	b.ResetTimer()
	for range b.N {
		if _, err := Evaluate(ctx, cfg, p, EvalOptions{Frozen: f}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(16*b.N)/b.Elapsed().Seconds(), "images/s")
	// On a shared machine CPU time is the stable figure.
	b.ReportMetric((cpuSeconds()-cpu0)/float64(16*b.N), "cpu-s/image")
}

// cpuSeconds is the user+system CPU time of the process so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func TestCompareEvals(t *testing.T) {
	totals := func(v ...float64) EvalResult { return EvalResult{N: len(v), Totals: v} }
	for _, tc := range []struct {
		name          string
		before, after EvalResult
		want          EvalChange
		wantErr       string
	}{
		// Differences 0.5, 0, −0.25, 0.5: mean 0.1875; squared deviations 0.09765625,
		// 0.03515625, 0.19140625, 0.09765625 sum to 0.421875; /3/4 = 0.03515625 = 0.1875².
		{name: "mixed", before: totals(0, 0.5, 1, 0.25), after: totals(0.5, 0.5, 0.75, 0.75),
			want: EvalChange{N: 4, Mean: 0.1875, StdErr: 0.1875, Better: 2, Worse: 1, Same: 1}},
		{name: "unchanged", before: totals(0.25, 0.75, 1), after: totals(0.25, 0.75, 1),
			want: EvalChange{N: 3, Same: 3}},
		// Every prompt down by exactly 0.25: no spread, so no standard error.
		{name: "shifted", before: totals(1, 0.5), after: totals(0.75, 0.25),
			want: EvalChange{N: 2, Mean: -0.25, Worse: 2}},
		{name: "lengths differ", before: totals(1, 0.5, 0), after: totals(1, 0.5), wantErr: "3 prompts before, 2 after"},
		{name: "one prompt", before: totals(1), after: totals(0), wantErr: "1 prompts, want at least 2"},
		{name: "prompts differ", before: EvalResult{N: 2, Totals: []float64{1, 0}, Prompts: []string{"a", "b"}},
			after: EvalResult{N: 2, Totals: []float64{1, 0}, Prompts: []string{"a", "c"}}, wantErr: "2 and 2 prompts that differ"},
		// A restored base evaluation carries totals but no prompt list: paired by position.
		{name: "prompts listed on one side only", before: totals(0, 1), after: EvalResult{N: 2, Totals: []float64{1, 1}, Prompts: []string{"a", "b"}},
			want: EvalChange{N: 2, Mean: 0.5, StdErr: 0.5, Better: 1, Same: 1}},
		{name: "no totals (a base evaluation logged before totals were)", before: EvalResult{N: 32, RewardMean: 0.4}, after: totals(1, 0.5),
			wantErr: "0 prompts before, 2 after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CompareEvals(tc.before, tc.after)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.N != tc.want.N || got.Better != tc.want.Better || got.Worse != tc.want.Worse || got.Same != tc.want.Same ||
				math.Abs(got.Mean-tc.want.Mean) > 1e-12 || math.Abs(got.StdErr-tc.want.StdErr) > 1e-12 {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	c := EvalChange{N: 32, Mean: 0.03125, StdErr: 0.015, Better: 9, Worse: 4, Same: 19}
	if got, want := c.String(), "+0.0312 ± 0.0150 (standard error; 9 prompts better, 4 worse, 19 same)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// ExportLoRA writes a run's EMA adapters as a PEFT folder that evaluates exactly as the
// checkpoint does, from the run directory (newest checkpoint) or a checkpoint directory.
func TestExportLoRA(t *testing.T) {
	cfg, _ := fixture(t, append(append([]string{}, smallRun...), "run.epochs=1")...)
	res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "adapter")
	info, err := ExportLoRA(res.Dir, out)
	if err != nil {
		t.Fatal(err)
	}
	if info.Epoch != 1 || info.Method != "DenseGRPO" || info.Checkpoint != "epoch-000001" || info.Rank != cfg.Model.LoRA.Rank {
		t.Errorf("info %+v", info)
	}
	if got, ok, err := ReadAdapterInfo(out); err != nil || !ok || got != info {
		t.Errorf("ReadAdapterInfo = %+v, %v, %v; want %+v", got, ok, err, info)
	}
	for _, name := range []string{mmdit.PEFTAdapterModel, mmdit.PEFTAdapterConfig} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Error(err)
		}
	}
	ema, err := CheckpointLoRA(res.Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want, err := Evaluate(ctx, cfg, newTestPolicy(t, cfg, ema), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Evaluate(ctx, cfg, newTestPolicy(t, cfg, out), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Totals, want.Totals) {
		t.Errorf("exported adapter evaluates to %v, the checkpoint's EMA to %v", got.Totals, want.Totals)
	}
	if _, err := ExportLoRA(res.Checkpoint, filepath.Join(t.TempDir(), "b")); err != nil {
		t.Errorf("from the checkpoint directory: %v", err)
	}
	if _, err := ExportLoRA(t.TempDir(), filepath.Join(t.TempDir(), "c")); err == nil || !strings.Contains(err.Error(), "want a run directory or one of its checkpoints") {
		t.Errorf("from an empty directory: error %v", err)
	}
}
