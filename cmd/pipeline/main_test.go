package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// binary is the real pipeline binary, built once for the end-to-end tests of this package.
var binary string

// repoConfigs holds the shipped configs the end-to-end tests run (smoke.toml, tiny-ocr.toml,
// sd3-tiny.toml), rewritten to read the committed weights, fixtures and prompt lists in place
// and to write their ONNX exports and runs under the test binary's temp dir: tests never write
// into the source tree.
var repoConfigs string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pipeline-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "pipeline")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("build pipeline: " + err.Error())
	}
	repoConfigs = filepath.Join(dir, "configs")
	if err := writeRepoConfigs(filepath.Join("..", ".."), dir, "smoke.toml", "tiny-ocr.toml", "sd3-tiny.toml"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// writeRepoConfigs copies configs/NAME of the repository at root into out/configs/, its paths
// pointing at root's models/ and datasets/ except the generated ONNX files (out/onnx/) and the
// runs (out/runs/).
func writeRepoConfigs(root, out string, names ...string) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(out, "configs"), 0o755); err != nil {
		return err
	}
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(root, "configs", name))
		if err != nil {
			return err
		}
		doc := strings.NewReplacer(
			`"../models/tinyocr/onnx/`, `"`+filepath.Join(out, "onnx")+`/`,
			`"../models/`, `"`+filepath.Join(root, "models")+`/`,
			`"../datasets/`, `"`+filepath.Join(root, "datasets")+`/`,
			`"../testdata/`, `"`+filepath.Join(root, "testdata")+`/`,
			`"../runs"`, `"`+filepath.Join(out, "runs")+`"`,
		).Replace(string(data))
		if strings.Contains(doc, `"../`) {
			return fmt.Errorf("configs/%s: a relative path the tests do not redirect", name)
		}
		if err := os.WriteFile(filepath.Join(out, "configs", name), []byte(doc), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// runBinary runs the binary with env added to the test's environment.
func runBinary(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return o.String(), e.String(), ee.ExitCode()
		}
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), 0
}

func TestModelsInspectRecogniser(t *testing.T) {
	rec, err := onnxrt.FindCached("ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		t.Fatal(err)
	}
	// The file is read in Go: no ONNX Runtime library is needed (run from a temp dir so the
	// repository's own .cache is not found either).
	dir := t.TempDir()
	noLib := []string{"ONNXRUNTIME_LIB=" + filepath.Join(dir, "lib", "libonnxruntime.so.1"), "DENSEGRPO_CACHE=" + filepath.Join(dir, "cache")}
	out, errOut, code := runBinary(t, dir, noLib, "models", "inspect", rec, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got struct {
		Inputs, Outputs []onnxrt.TensorInfo
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	if len(got.Inputs) != 1 || got.Inputs[0].Name != "x" || got.Inputs[0].Type != "float32" ||
		onnxrt.FormatDims(got.Inputs[0].Dims) != "[-1,3,48,-1]" {
		t.Errorf("inputs %+v, want x float32 [-1,3,48,-1]", got.Inputs)
	}
	if len(got.Outputs) != 1 || got.Outputs[0].Type != "float32" || onnxrt.FormatDims(got.Outputs[0].Dims) != "[-1,-1,6625]" {
		t.Errorf("outputs %+v, want one float32 [-1,-1,6625]", got.Outputs)
	}
}

// Bad input must end in one line that names the file, and a non-zero exit.
func TestModelsInspectErrors(t *testing.T) {
	rec, err := onnxrt.FindCached("ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.onnx")
	if err := os.WriteFile(truncated, data[:4096], 0o644); err != nil {
		t.Fatal(err)
	}
	lib, err := onnxrt.FindCached("onnxruntime/cpu/libonnxruntime.so.1")
	if err != nil {
		t.Fatal(err)
	}
	haveLib := []string{"ONNXRUNTIME_LIB=" + lib}
	tests := []struct {
		name string
		env  []string
		file string
		want []string
	}{
		{"wrong path", haveLib, filepath.Join(dir, "absent.onnx"), []string{filepath.Join(dir, "absent.onnx"), "does not exist"}},
		{"truncated file", haveLib, truncated, []string{truncated, "not a valid ONNX protobuf", "past the end of its message"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := runBinary(t, dir, tc.env, "models", "inspect", tc.file)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			msg := strings.TrimSpace(errOut)
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q: want it to contain %q", msg, w)
				}
			}
		})
	}
}

func TestUnknownCommand(t *testing.T) {
	_, errOut, code := runBinary(t, ".", nil, "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Fatalf("exit %d, stderr %q: want 2 and the unknown command named", code, errOut)
	}
}

// Help asked for is output: `pipeline -h` and every `pipeline COMMAND -h` print their usage on
// stdout and exit 0 with nothing on stderr; a bad flag or command is one error on stderr, exit 2.
func TestHelpGoesToStdout(t *testing.T) {
	ctx := context.Background()
	call := func(args ...string) (string, string, int) {
		var o, e bytes.Buffer
		code := runMain(ctx, args, &o, &e)
		return o.String(), e.String(), code
	}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}, {}} {
		out, errOut, code := call(args...)
		if code != 0 || errOut != "" || !strings.Contains(out, "usage: pipeline COMMAND") {
			t.Errorf("pipeline %v: exit %d, stdout %q, stderr %q; want 0 and the usage on stdout only", args, code, out, errOut)
		}
	}
	for name := range commands {
		args := append(strings.Fields(name), "-h")
		out, errOut, code := call(args...)
		if code != 0 || errOut != "" || !strings.Contains(out, "usage: pipeline "+name) {
			t.Errorf("pipeline %s -h: exit %d, stdout %q, stderr %q; want 0 and the usage on stdout only", name, code, out, errOut)
		}
		out, errOut, code = call(append(strings.Fields(name), "--no-such-flag")...)
		if code != 2 || out != "" || strings.Count(strings.TrimSpace(errOut), "\n") != 0 ||
			!strings.Contains(errOut, "flag provided but not defined: -no-such-flag") || !strings.Contains(errOut, "pipeline "+name+" -h") {
			t.Errorf("pipeline %s --no-such-flag: exit %d, stdout %q, stderr %q; want 2 and one error line on stderr", name, code, out, errOut)
		}
	}
	out, errOut, code := call("frobnicate")
	if code != 2 || out != "" || !strings.Contains(errOut, "usage: pipeline COMMAND") {
		t.Errorf("unknown command: exit %d, stdout %q, stderr %q; want 2 and the usage on stderr", code, out, errOut)
	}
}
