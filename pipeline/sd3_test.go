package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/safetensors"
	"github.com/densegrpo/densegrpo/models/sd3"
	"github.com/densegrpo/densegrpo/rl"
)

// sd3TinyConfig trains on the tiny random SD3.5 fixture (testdata/sd3-tiny).
const sd3TinyConfig = "../configs/sd3-tiny.toml"

// sampleImageTolerance bounds the whole sample's image against diffusers' (pixels in [0,1]).
const sampleImageTolerance = 1e-3

// TestSD3SampleMatchesDiffusers: a whole ODE sample through the pipeline's own path — the
// sd3-tiny config's policy and export, the tokenizers and text encoders, rl's SD3 schedule,
// guidance and Euler loop with either inference engine, the VAE with its factors — against
// StableDiffusion3Pipeline on the same prompts and initial latents (8 steps, CFG 4.5).
func TestSD3SampleMatchesDiffusers(t *testing.T) {
	ref, meta, err := safetensors.Read("../testdata/sd3-tiny/reference/sample.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	var prompts []string
	if err := json.Unmarshal([]byte(meta["prompts"]), &prompts); err != nil {
		t.Fatal(err)
	}
	var steps int
	var guidance float64
	if _, err := fmt.Sscan(meta["steps"], &steps); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscan(meta["guidance"], &guidance); err != nil {
		t.Fatal(err)
	}
	sched, err := rl.SD3Schedule(steps, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range ref["sigmas"].Data {
		if got := sched.Sigmas[i]; got != want {
			t.Errorf("sigma %d: %v, FlowMatchEulerDiscreteScheduler has %v", i, got, want)
		}
	}

	for _, engine := range Engines {
		t.Run(string(engine), func(t *testing.T) {
			cfg, err := Load(sd3TinyConfig, []string{"pipeline.inference_engine=" + string(engine), fmt.Sprintf("sampler.guidance=%g", guidance)})
			if err != nil {
				t.Fatal(err)
			}
			policy, err := NewPolicy(cfg, PolicyOptions{Backend: nntest.Backend(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer policy.Close()
			m, err := sd3.ReadManifest(cfg.Resolve(cfg.Model.Diffusers))
			if err != nil {
				t.Fatal(err)
			}
			te, err := m.OpenTextEncoder(cfg.ONNX, policy.Model.Config)
			if err != nil {
				t.Fatal(err)
			}
			defer te.Close()
			vae, err := m.OpenVAEDecoder(cfg.ONNX, 64, 64, 2)
			if err != nil {
				t.Fatal(err)
			}
			defer vae.Close()
			if err := policy.Check(te, vae); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			cond, err := policy.Condition(ctx, te, prompts, Guidance(cfg))
			if err != nil {
				t.Fatal(err)
			}
			engines := &engineSet{cfg: cfg, policy: policy, latent: vae.LatentShape()}
			flow, release, err := engines.flow(true)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			init := ref["latents"]
			size := len(init.Data) / len(prompts)
			paths := make([]rl.ODEPath, len(prompts))
			for j := range paths {
				paths[j] = rl.ODEPath{Prompt: j, X: append([]float32(nil), init.Data[j*size:(j+1)*size]...), Sigmas: sched.Sigmas}
			}
			final, err := flow.IntegrateODE(ctx, cond, paths, len(paths))
			if err != nil {
				t.Fatal(err)
			}
			var got []float32
			for _, f := range final {
				got = append(got, f...)
			}
			abs, rel := maxDiff(got, ref["final_latents"].Data)
			t.Logf("parity whole sample (%s engine) final latents: max abs %.3g, rel %.3g", engine, abs, rel)
			imgs, err := vae.Decode(ctx, final)
			if err != nil {
				t.Fatal(err)
			}
			want := ref["image"] // [2,3,64,64]
			var pix []float32
			for _, im := range imgs {
				for c := range 3 {
					for i := range im.W * im.H {
						pix = append(pix, im.Pix[3*i+c])
					}
				}
			}
			abs, _ = maxDiff(pix, want.Data)
			t.Logf("parity whole sample (%s engine) image [2 3 64 64]: max abs %.3g (tolerance %g)", engine, abs, sampleImageTolerance)
			if abs > sampleImageTolerance {
				t.Errorf("image differs from StableDiffusion3Pipeline's by %.3g, tolerance %g", abs, sampleImageTolerance)
			}
		})
	}
}

// maxDiff returns max |a − b| and that over max |b|.
func maxDiff(a, b []float32) (abs, rel float64) {
	if len(a) != len(b) {
		return math.Inf(1), math.Inf(1)
	}
	scale := 0.0
	for i := range b {
		abs = math.Max(abs, math.Abs(float64(a[i])-float64(b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return abs, abs / scale
}

// TestSD3Export: model.diffusers without a manifest names how to export it; with
// model.snapshot, export-models runs the Python exporter from the repository root with the
// snapshot and the folder (here a stand-in script that checks its arguments and copies the
// committed export, as the exporter would write it), checks that the result opens, and
// reports a failing exporter by its last line.
func TestSD3Export(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "export")
	cfg, err := Load(sd3TinyConfig, []string{"model.diffusers=" + dir})
	if err != nil {
		t.Fatal(err)
	}
	err = exportSD3(ctx, cfg, ExportOptions{}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), dir+" has no manifest.json and model.snapshot is not set") {
		t.Fatalf("error %v: want it to name %s, the manifest and model.snapshot", err, dir)
	}

	fixture, err := filepath.Abs("../testdata/sd3-tiny")
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(tmp, "python")
	err = os.WriteFile(script, []byte(`#!/bin/sh
[ "$1 $2 $3 $4 $5 $6" = "-m exporters.sd3.export --model-dir `+fixture+`/snapshot --out `+dir+`" ] || { echo "bad arguments: $*" >&2; exit 3; }
[ "$(pwd)" = "`+root+`" ] || { echo "bad directory $(pwd)" >&2; exit 3; }
cp -r `+fixture+`/export "$6"
sed -i 's|"../snapshot/transformer"|"`+fixture+`/snapshot/transformer"|' "$6/manifest.json"
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(sd3TinyConfig, []string{"model.diffusers=" + dir, "model.snapshot=" + fixture + "/snapshot"})
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	if err := exportSD3(ctx, cfg, ExportOptions{Python: script}, &log); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if _, err := sd3.ReadManifest(dir); err != nil {
		t.Fatal(err)
	}
	// A second export keeps the folder.
	log.Reset()
	if err := exportSD3(ctx, cfg, ExportOptions{Python: script}, &log); err != nil || !strings.Contains(log.String(), "kept "+dir) {
		t.Fatalf("second export: %v, log %q; want the folder kept", err, log.String())
	}

	failing := filepath.Join(tmp, "failing")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho progress\necho 'error: /s/model_index.json: component text_encoder_2 is missing' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(sd3TinyConfig, []string{"model.diffusers=" + filepath.Join(tmp, "other"), "model.snapshot=" + fixture + "/snapshot"})
	if err != nil {
		t.Fatal(err)
	}
	err = exportSD3(ctx, cfg, ExportOptions{Python: failing}, io.Discard)
	if err == nil || !strings.HasSuffix(err.Error(), "snapshot: /s/model_index.json: component text_encoder_2 is missing") ||
		!strings.Contains(err.Error(), "export SD3 snapshot "+fixture+"/snapshot") {
		t.Fatalf("error %v: want the snapshot and the exporter's last line", err)
	}
}
