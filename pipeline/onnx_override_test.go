package pipeline

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/rl"
)

// TestONNXOverridesValidate: each model's own ONNX table is checked once, with the config, and
// its errors name the table and key.
func TestONNXOverridesValidate(t *testing.T) {
	_, files := fixture(t)
	for _, tc := range []struct {
		name string
		sets []string
		want string
	}{
		{"provider", []string{`vae.onnx.provider="gpu"`}, `vae.onnx.provider: got "gpu", want "cpu" or "cuda"`},
		{"threads", []string{"text_encoder.onnx.intra_op_threads=-1"}, "text_encoder.onnx.intra_op_threads/inter_op_threads: got -1/0, want >= 0"},
		{"device", []string{"model.onnx.device_id=-2"}, "model.onnx.device_id: got -2, want >= 0"},
		{"policy on gomlx", []string{"model.onnx.device_id=1", `pipeline.inference_engine="gomlx"`},
			`model.onnx: got a table, want none with pipeline.inference_engine = "gomlx"`},
		{"library is per process", []string{`vae.onnx.library="/x/libonnxruntime.so"`}, `unknown key "vae.onnx.library"`},
		{"reward", []string{`reward.bright.onnx.provider="tpu"`}, `onnx.provider: got "tpu", want "cpu" or "cuda"`},
		{"reward max_model_mb", []string{"reward.bright.onnx.max_model_mb=-1"}, "onnx.max_model_mb: got -1, want >= 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(files.Config, tc.sets)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Unset keys are inherited from [onnx]; set ones replace it for that model alone.
	cfg, err := Load(files.Config, []string{"onnx.intra_op_threads=3", "vae.onnx.intra_op_threads=1", `vae.onnx.provider="cpu"`})
	if err != nil {
		t.Fatal(err)
	}
	if vae, te := cfg.ONNX.With(cfg.VAE.ONNX), cfg.ONNX.With(cfg.TextEncoder.ONNX); vae.IntraOpThreads != 1 || vae.Provider != "cpu" ||
		te.IntraOpThreads != 3 || vae.Library != cfg.ONNX.Library {
		t.Fatalf("vae %+v, text encoder %+v: want the vae's 1 thread, the text encoder's 3 from [onnx], one library", vae, te)
	}
	// A run's resolved config.toml (what --resume reads) keeps the tables.
	cfg, err = Load(files.Config, []string{"vae.onnx.intra_op_threads=1", "reward.bright.onnx.device_id=1"})
	if err != nil {
		t.Fatal(err)
	}
	data, err := ResolvedTOML(cfg)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(files.Config, data)
	if err != nil {
		t.Fatal(err)
	}
	if v, r := again.VAE.ONNX, again.Rewards[0].ONNX; v == nil || *v.IntraOpThreads != 1 || v.Provider != nil || r == nil || *r.DeviceID != 1 {
		t.Fatalf("resolved config lost the overrides:\n%s", data)
	}
}

// TestONNXOverrideRoutesCUDA: on this CPU-only machine, asking for CUDA in one model's table is
// an error naming that model's file and the provider, after the models before it opened on
// the CPU; the same tables set to the CPU open everything and run.
func TestONNXOverrideRoutesCUDA(t *testing.T) {
	ctx := context.Background()
	_, files := fixture(t)
	for _, tc := range []struct {
		set   string
		model string // the file the error names
	}{
		{`text_encoder.onnx.provider="cuda"`, files.TextEncoder},
		{`vae.onnx.provider="cuda"`, files.VAEDecoder},
		{`reward.bright.onnx.provider="cuda"`, files.Reward},
	} {
		t.Run(tc.set, func(t *testing.T) {
			cfg, err := Load(files.Config, []string{tc.set, "vae.onnx.device_id=2", "text_encoder.onnx.device_id=2", "reward.bright.onnx.device_id=2"})
			if err != nil {
				t.Fatal(err)
			}
			f, err := OpenFrozen(ctx, cfg)
			if err == nil {
				f.Close()
				t.Skip("a CUDA provider is available on this machine")
			}
			for _, want := range []string{filepath.Base(tc.model), "provider cuda (device_id 2) requested but unavailable"} {
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("got %v, want an error containing %q", err, want)
				}
			}
			t.Log(err)
		})
	}
	t.Run(`model.onnx.provider="cuda"`, func(t *testing.T) {
		cfg, err := Load(files.Config, []string{`model.onnx.provider="cuda"`})
		if err != nil {
			t.Fatal(err)
		}
		f, err := OpenFrozen(ctx, cfg) // the frozen models stay on the CPU
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		policy := newTestPolicy(t, cfg, "")
		defer policy.Close()
		_, _, err = (&engineSet{cfg: cfg, policy: policy, latent: f.VAE.LatentShape()}).flow(true)
		if err == nil {
			t.Skip("a CUDA provider is available on this machine")
		}
		for _, want := range []string{"policy", "provider cuda (device_id 0) requested but unavailable"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want an error containing %q", err, want)
			}
		}
		t.Log(err)
	})
	t.Run("every table on the CPU", func(t *testing.T) {
		cfg, err := Load(files.Config, []string{`onnx.provider="cpu"`, `text_encoder.onnx.provider="cpu"`, "vae.onnx.intra_op_threads=1",
			"reward.bright.onnx.inter_op_threads=1", "model.onnx.intra_op_threads=1"})
		if err != nil {
			t.Fatal(err)
		}
		f, err := OpenFrozen(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		policy := newTestPolicy(t, cfg, "")
		defer policy.Close()
		flow, closeFlow, err := (&engineSet{cfg: cfg, policy: policy, latent: f.VAE.LatentShape()}).flow(true)
		if err != nil {
			t.Fatal(err)
		}
		defer closeFlow()
		cond, err := policy.Condition(ctx, f.TextEncoder, []string{"a sign"}, Guidance(cfg))
		if err != nil {
			t.Fatal(err)
		}
		sched, err := rl.SD3Schedule(2, cfg.Sampler.Shift)
		if err != nil {
			t.Fatal(err)
		}
		ls := f.VAE.LatentShape()
		paths := []rl.ODEPath{{X: rl.InitialNoise(1, 0, ls[0]*ls[1]*ls[2]), Sigmas: sched.Sigmas}}
		if _, err := flow.IntegrateODE(ctx, cond, paths, 1); err != nil {
			t.Fatal(err)
		}
	})
}

// TestFirstCUDA: the library is chosen for the first model on CUDA, whichever table put it
// there; with every model on the CPU none is chosen before the first model opens.
func TestFirstCUDA(t *testing.T) {
	_, files := fixture(t)
	for _, tc := range []struct {
		sets  []string
		where string // "" for none
	}{
		{nil, ""},
		{[]string{`onnx.provider="cuda"`}, "onnx"},
		{[]string{`onnx.provider="cuda"`, `text_encoder.onnx.provider="cpu"`, `vae.onnx.provider="cpu"`, `model.onnx.provider="cpu"`,
			`reward.bright.onnx.provider="cpu"`}, ""},
		{[]string{`vae.onnx.provider="cuda"`}, "vae.onnx"},
		{[]string{`model.onnx.provider="cuda"`}, "model.onnx"},
		{[]string{`reward.bright.onnx.provider="cuda"`, "reward.bright.onnx.device_id=3"}, `reward "bright": onnx`},
		{[]string{`onnx.provider="cuda"`, `text_encoder.onnx.provider="cpu"`}, "onnx"}, // the VAE's, from [onnx]
	} {
		cfg, err := Load(files.Config, tc.sets)
		if err != nil {
			t.Fatal(err)
		}
		where, rt, ok := firstCUDA(cfg)
		if where != tc.where || ok != (tc.where != "") || (ok && !rt.UsesCUDA()) {
			t.Errorf("%v: first CUDA model in %q (%v, %+v), want %q", tc.sets, where, ok, rt, tc.where)
		}
	}
}
