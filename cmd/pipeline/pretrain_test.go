package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/models/tinyocr"
	"github.com/densegrpo/densegrpo/pipeline/pretrain"
)

// pretrainFixture writes a tiny transformer config, a small random VAE and a pretraining
// TOML (batch 2, checkpoint every 2 steps) into a temp dir; extra is appended to [train].
func pretrainFixture(t *testing.T, steps int, extra string) (dir, config string) {
	t.Helper()
	dir = t.TempDir()
	model := `{"sample_size": 32, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 1,
  "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 16,
  "caption_projection_dim": 16, "pooled_projection_dim": 16, "pos_embed_max_size": 16}`
	if err := os.WriteFile(filepath.Join(dir, "tiny.json"), []byte(model), 0o644); err != nil {
		t.Fatal(err)
	}
	writeRandomVAE(t, filepath.Join(dir, "vae.safetensors"))
	prompts, err := filepath.Abs(filepath.Join("..", "..", "datasets", "ocr-tiny", "train.txt"))
	if err != nil {
		t.Fatal(err)
	}
	doc := `[model]
transformer = "tiny.json"
vae = "vae.safetensors"
[model.text_encoder]
dim = 16
pooled_dim = 16
hidden = 16
[data]
prompts = "` + prompts + `"
[train]
batch_size = 2
steps = ` + strconv.Itoa(steps) + `
warmup_steps = 1
` + extra + `
[output]
dir = "out"
checkpoint_every = 2
log_every = 1
`
	config = filepath.Join(dir, "pretrain.toml")
	if err := os.WriteFile(config, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, config
}

// writeRandomVAE writes a randomly initialised small VAE in tinyocr's format.
func writeRandomVAE(t *testing.T, path string) {
	t.Helper()
	cfg := tinyocr.VAEConfig{Hidden: 8}
	mctx := mlctx.New()
	if err := mctx.SetRNGStateFromSeed(7); err != nil {
		t.Fatal(err)
	}
	e, err := mlctx.NewExec(nntest.Backend(t), mctx, func(c *mlctx.Context, images, noise *Node) *Node {
		loss, _ := tinyocr.VAELoss(c, cfg, images, noise, 0)
		return loss
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Finalize()
	if _, err := e.Exec(tensors.FromFlatDataAndDimensions(make([]float32, 3*32*128), 1, 3, 32, 128),
		tensors.FromFlatDataAndDimensions(make([]float32, 4*8*32), 1, 4, 8, 32)); err != nil {
		t.Fatal(err)
	}
	if err := tinyocr.SaveVAE(path, mctx, cfg, tinyocr.VAEScaling{ScalingFactor: 1}); err != nil {
		t.Fatal(err)
	}
}

func TestPretrainCommand(t *testing.T) {
	dir, config := pretrainFixture(t, 3, "")
	out, errOut, code := runBinary(t, dir, nil, "pretrain", "--config", config)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	for _, w := range []string{"step 3/3 loss", "stopped by steps after step 3", pretrain.TransformerFile, pretrain.TextEncoderFile} {
		if !strings.Contains(out, w) {
			t.Errorf("output %q: want it to contain %q", out, w)
		}
	}
	for _, f := range []string{pretrain.TransformerFile, pretrain.TextEncoderFile, pretrain.LossFile, pretrain.ConfigFile, "checkpoints/epoch-000003/state.json"} {
		if _, err := os.Stat(filepath.Join(dir, "out", f)); err != nil {
			t.Errorf("output file: %v", err)
		}
	}
	// A second run into the same output dir is refused rather than overwriting it.
	_, errOut, code = runBinary(t, dir, nil, "pretrain", "--config", config)
	if code != 1 || !strings.Contains(errOut, "--resume") {
		t.Errorf("rerun: exit %d, stderr %q; want 1 and a hint to --resume", code, errOut)
	}
	// An earlier checkpoint is picked with --export-checkpoint (not with --resume).
	out, errOut, code = runBinary(t, dir, nil, "pretrain", "--config", config, "--export-checkpoint", filepath.Join("out", "checkpoints", "epoch-000003"))
	if code != 0 || !strings.Contains(out, "exported step 3") {
		t.Errorf("export: exit %d, stdout %q, stderr %q; want 0 and step 3 named", code, out, errOut)
	}
	_, errOut, code = runBinary(t, dir, nil, "pretrain", "--config", config, "--resume", "--export-checkpoint", "x")
	if code != 2 || !strings.Contains(errOut, "exclude") {
		t.Errorf("--resume with --export-checkpoint: exit %d, stderr %q; want a usage error", code, errOut)
	}
}

// A bad key is one line naming the file and the key, exit code 1, before any work.
func TestPretrainCommandBadConfig(t *testing.T) {
	tests := []struct {
		name, extra string
		want        []string
	}{
		{"unknown key", "learning_rate = 0.1", []string{"unknown keys", "train.learning_rate"}},
		{"bad value", "batch_size = -2", []string{"field train.batch_size: got -2, want >= 1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, config := pretrainFixture(t, 3, "")
			doc, err := os.ReadFile(config)
			if err != nil {
				t.Fatal(err)
			}
			// Replace batch_size rather than define it twice.
			text := strings.Replace(string(doc), "batch_size = 2\n", "batch_size = 2\n"+tc.extra+"\n", 1)
			if strings.HasPrefix(tc.extra, "batch_size") {
				text = strings.Replace(string(doc), "batch_size = 2\n", tc.extra+"\n", 1)
			}
			if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := runBinary(t, dir, nil, "pretrain", "--config", config)
			msg := strings.TrimSpace(errOut)
			if code != 1 || strings.Contains(msg, "\n") {
				t.Errorf("exit %d, stderr %q: want 1 and one line", code, msg)
			}
			for _, w := range append(tc.want, config) {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr %q: want it to contain %q", msg, w)
				}
			}
		})
	}
}

// Ctrl-C writes a checkpoint and exits 130; --resume then finishes the run.
func TestPretrainCommandInterruptAndResume(t *testing.T) {
	dir, config := pretrainFixture(t, 400, "")
	cmd := exec.Command(binary, "pretrain", "--config", config)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lossLog := filepath.Join(dir, "out", pretrain.LossFile)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if data, err := os.ReadFile(lossLog); err == nil && bytes.Count(data, []byte("\n")) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no loss record within 2 minutes: %s", errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 130 {
		t.Fatalf("after SIGINT: %v (stderr %q), want exit 130", err, errOut.String())
	}
	if !strings.Contains(out.String(), "interrupted after step") || !strings.Contains(errOut.String(), "--resume") {
		t.Errorf("stdout %q, stderr %q: want the checkpoint and --resume named", out.String(), errOut.String())
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "out", "checkpoints", "epoch-*", "state.json"))
	if len(matches) == 0 {
		t.Fatal("no checkpoint after SIGINT")
	}

	// Resume under a time budget (total training time, over both invocations) that is already
	// spent: the run restores the checkpoint, stops at once and writes the final weights.
	text, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(config, []byte(strings.Replace(string(text), "warmup_steps = 1\n", "warmup_steps = 1\ntime_budget = \"1ms\"\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runBinary(t, dir, nil, "pretrain", "--config", config, "--resume")
	if code != 0 || !strings.Contains(stdout, "stopped by time budget") {
		t.Fatalf("resume: exit %d, stdout %q, stderr %q; want 0 and a stop by the time budget", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "out", pretrain.TransformerFile)); err != nil {
		t.Errorf("resumed run: %v", err)
	}
}
