package pipeline

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/frozentest"
	"github.com/densegrpo/densegrpo/models/nn/nntest"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// heldoutJudge is a held-out reward on the fixture's brightness graph with scale −1: a judge
// that disagrees with the training reward exactly, so its scores are known.
const heldoutJudge = `
[[eval.reward]]
name = "judge"
kind = "onnx-scalar"
model = "bright.onnx"
[eval.reward.output]
scale = -1.0
`

func TestEvaluateHeldout(t *testing.T) {
	cfg, _ := fixtureWith(t, heldoutJudge)
	if len(cfg.Eval.Rewards) != 1 || cfg.Eval.Rewards[0].Model != filepath.Join(filepath.Dir(cfg.Path), "bright.onnx") {
		t.Fatalf("held-out rewards %+v, want the judge with its path resolved against the config's directory", cfg.Eval.Rewards)
	}
	res, err := Evaluate(context.Background(), cfg, newTestPolicy(t, cfg, ""), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.HeldoutMean == nil || math.Abs(*res.HeldoutMean+res.RewardMean) > 1e-12 || math.Abs(res.Heldout["judge"]+res.Rewards["bright"]) > 1e-12 {
		t.Errorf("held-out mean %v, judge %v; want −%v (the training reward's)", res.HeldoutMean, res.Heldout["judge"], res.RewardMean)
	}
	if _, trained := res.Rewards["judge"]; trained {
		t.Errorf("the held-out judge is among the training rewards: %v", res.Rewards)
	}
	if s := res.Summary(); !strings.Contains(s, "eval_heldout_mean=") || !strings.Contains(s, "heldout/judge=") {
		t.Errorf("summary %q lacks the held-out rewards", s)
	}
}

// TestRunHeldout: evaluations of a run carry the held-out judge beside the training reward;
// training epochs never score it; the resolved config.toml keeps the block.
func TestRunHeldout(t *testing.T) {
	cfg, _ := fixtureWith(t, heldoutJudge, append(append([]string{}, smallRun...), "run.epochs=1")...)
	res, err := Run(context.Background(), cfg, RunOptions{Backend: nntest.Backend(t)})
	if err != nil {
		t.Fatal(err)
	}
	lines, err := runfiles.ReadMetrics(filepath.Join(res.Dir, runfiles.MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	evals := 0
	for _, l := range lines {
		if l.Train != nil {
			if _, ok := l.Train.Rewards["judge"]; ok {
				t.Errorf("epoch %d trains on the held-out judge: %v", l.Epoch, l.Train.Rewards)
			}
		}
		if l.Eval == nil {
			continue
		}
		evals++
		if l.Eval.HeldoutMean == nil || math.Abs(*l.Eval.HeldoutMean+l.Eval.RewardMean) > 1e-12 || l.Eval.Heldout["judge"] != *l.Eval.HeldoutMean {
			t.Errorf("epoch %d: eval %v, held-out %v %v", l.Epoch, l.Eval.RewardMean, l.Eval.HeldoutMean, l.Eval.Heldout)
		}
	}
	if evals != 2 {
		t.Errorf("%d evaluations, want 2 (before and after)", evals)
	}
	resolved, err := os.ReadFile(filepath.Join(res.Dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(filepath.Join(res.Dir, "config.toml"), resolved)
	if err != nil {
		t.Fatalf("resolved config: %v\n%s", err, resolved)
	}
	if len(again.Eval.Rewards) != 1 || again.Eval.Rewards[0].Model != cfg.Eval.Rewards[0].Model || *again.Eval.Rewards[0].Output.Scale != -1 {
		t.Errorf("resolved [[eval.reward]] %+v, want the judge with its absolute model path and scale", again.Eval.Rewards)
	}
}

func TestHeldoutConfigErrors(t *testing.T) {
	for _, tt := range []struct{ name, extra, want string }{
		{"same name as a training reward", "\n[[eval.reward]]\nname = \"bright\"\nkind = \"onnx-scalar\"\nmodel = \"bright.onnx\"\n",
			`eval.reward: got a block named "bright", want held-out names distinct from the [[reward]] names`},
		{"unknown key", heldoutJudge + "colour = 1\n", `decode [[eval.reward]]: unknown key eval.reward.output.colour`},
		{"unknown kind", "\n[[eval.reward]]\nname = \"j\"\nkind = \"magic\"\n", `[[eval.reward]] "j": kind: got "magic", want one of`},
		{"duplicate", heldoutJudge + heldoutJudge, `[[eval.reward]] "judge": name: "judge" is also the name of [[eval.reward]] #1`},
		{"missing model file", "\n[[eval.reward]]\nname = \"j\"\nkind = \"onnx-scalar\"\nmodel = \"nowhere.onnx\"\n", `[[eval.reward]]: open reward "j": `},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if onnxErr := strings.HasPrefix(tt.want, "[[eval.reward]]: open"); onnxErr {
				cfg, _ := fixtureWith(t, tt.extra)
				_, err := OpenFrozen(context.Background(), cfg)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("open: %v\nwant %q", err, tt.want)
				}
				return
			}
			files, err := frozentest.WriteConfig(t.TempDir(), tt.extra)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Load(files.Config, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("load: %v\nwant %q", err, tt.want)
			}
		})
	}
}
