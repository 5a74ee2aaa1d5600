package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/frozentest"
	"github.com/densegrpo/densegrpo/models/mmdit"
	"github.com/densegrpo/densegrpo/pipeline"
)

// writeFile writes data into dir/name and returns the path.
func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Hand-made evaluations: differences 0.5, 0, −0.25, 0.5 → mean 0.1875, standard error 0.1875.
func TestCompareEvalsCommand(t *testing.T) {
	dir := t.TempDir()
	prompts := `["a","b","c","d"]`
	before := writeFile(t, dir, "before.json", `{"n":4,"eval_reward_mean":0.4375,"rewards":{"ocr":0.4375},"prompts":`+prompts+`,"totals":[0,0.5,1,0.25]}`)
	after := writeFile(t, dir, "after.json", `{"n":4,"eval_reward_mean":0.625,"rewards":{"ocr":0.625},"prompts":`+prompts+`,"totals":[0.5,0.5,0.75,0.75]}`)
	out, errOut, code := runBinary(t, ".", nil, "compare-evals", before, after, before)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := fmt.Sprintf("%s (0.4375) → %s (0.6250): +0.1875 ± 0.1875 (standard error; 2 prompts better, 1 worse, 1 same)\n", before, after) +
		fmt.Sprintf("%s (0.4375) → %s (0.4375): +0.0000 ± 0.0000 (standard error; 0 prompts better, 0 worse, 4 same)\n", before, before)
	if out != want {
		t.Errorf("output\n%q\nwant\n%q", out, want)
	}

	other := writeFile(t, dir, "other.json", `{"n":4,"eval_reward_mean":0.5,"prompts":["a","b","c","e"],"totals":[0,0.5,1,0.5]}`)
	old := writeFile(t, dir, "old.json", `{"n":4,"eval_reward_mean":0.5,"rewards":{"ocr":0.5}}`)
	text := writeFile(t, dir, "text.json", "n=4 eval_reward_mean=0.5\n")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{before}, 2, "want BEFORE.json and at least one AFTER.json"},
		{[]string{before, other}, 1, "compare " + before + " with " + other + ": compare evaluations: 4 and 4 prompts that differ"},
		{[]string{before, old}, 1, old + ": 0 per-prompt totals for 0 prompts"},
		{[]string{text, after}, 1, text + ": not the output of eval --json"},
		{[]string{before, filepath.Join(dir, "missing.json")}, 1, "missing.json: no such file"},
	} {
		_, errOut, code := runBinary(t, ".", nil, append([]string{"compare-evals"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

// eval --json writes what compare-evals reads: the fixture's base model against a LoRA.
func TestCompareEvalsReadsEvalJSON(t *testing.T) {
	files := writeFixture(t, false)
	ckpt := t.TempDir()
	if err := frozentest.WriteLoRA(filepath.Join(ckpt, pipeline.LoRAFile), frozentest.TinyMMDiT, mmdit.LoRAConfig{Rank: 2, Alpha: 4}, 1, 0.3); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	eval := func(name string, args ...string) string {
		out, errOut, code := runBinary(t, ".", nil, append([]string{"eval", "--json", "--config", files.Config}, args...)...)
		if code != 0 {
			t.Fatalf("eval %v: exit %d: %s", args, code, errOut)
		}
		return writeFile(t, dir, name, out)
	}
	base, lora := eval("base.json"), eval("lora.json", "--checkpoint", ckpt)
	out, errOut, code := runBinary(t, ".", nil, "compare-evals", base, lora)
	if code != 0 || !strings.Contains(out, "(standard error; ") || strings.Contains(out, "3 same") {
		t.Errorf("exit %d, output %q (stderr %q): want a change over the fixture's 3 prompts", code, out, errOut)
	}
}
