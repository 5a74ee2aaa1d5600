package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/densegrpo/densegrpo/models/sd3"
)

// sd3Exporter is the Python module that exports a diffusers SD3/SD3.5 snapshot.
const sd3Exporter = "exporters/sd3/export.py"

// exportSD3 makes sure model.diffusers holds an export: a folder with a manifest is kept;
// otherwise model.snapshot is exported into it by the Python exporter (exporters/sd3, run
// with the repository's .venv or opts.Python), which checks every graph against PyTorch.
func exportSD3(ctx context.Context, cfg Config, opts ExportOptions, out io.Writer) error {
	dir := cfg.Resolve(cfg.Model.Diffusers)
	if _, err := os.Stat(filepath.Join(dir, sd3.ManifestFile)); err == nil {
		fmt.Fprintf(out, "kept %s (it has a %s)\n", dir, sd3.ManifestFile)
		return nil
	}
	if cfg.Model.Snapshot == "" {
		return fmt.Errorf("export SD3 model: model.diffusers %s has no %s and model.snapshot is not set: set it to the diffusers snapshot to export (or run `just export-models MODEL_DIR=SNAPSHOT OUT=%s`)",
			dir, sd3.ManifestFile, dir)
	}
	snap, err := filepath.Abs(cfg.Resolve(cfg.Model.Snapshot))
	if err != nil {
		return fmt.Errorf("export SD3 model: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("export SD3 model: %w", err)
	}
	root, err := findRepoFile(sd3Exporter)
	if err != nil {
		return fmt.Errorf("export SD3 snapshot %s: %w", snap, err)
	}
	python := opts.Python
	if python == "" {
		python = filepath.Join(root, ".venv", "bin", "python")
		if _, err := os.Stat(python); err != nil {
			return fmt.Errorf("export SD3 snapshot %s: no Python environment at %s (run `just venv`, or pass --python)", snap, python)
		}
	}
	fmt.Fprintf(out, "exporting %s to %s with %s -m exporters.sd3.export\n", snap, abs, python)
	cmd := exec.CommandContext(ctx, python, "-m", "exporters.sd3.export", "--model-dir", snap, "--out", abs)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stdout = out
	cmd.Stderr = io.MultiWriter(&stderr, out)
	if err := cmd.Run(); err != nil {
		if last := lastLine(stderr.String()); last != "" {
			return fmt.Errorf("export SD3 snapshot %s: %s", snap, last)
		}
		return fmt.Errorf("export SD3 snapshot %s: %w", snap, err)
	}
	if _, err := sd3.ReadManifest(abs); err != nil {
		return fmt.Errorf("export SD3 snapshot %s: %w", snap, err)
	}
	return nil
}

// findRepoFile finds the repository holding rel, from the working directory or the
// executable's directory upwards, and returns the repository's root.
func findRepoFile(rel string) (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, start := range starts {
		for dir := start; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, rel)); err == nil {
				return dir, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", errors.New("no " + rel + " in the working directory, the binary's directory or their parents (run from the repository)")
}

// lastLine is the last non-empty line of s — the Python exporter's one-line error, without
// its "error: " prefix.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimPrefix(strings.TrimSpace(lines[len(lines)-1]), "error: ")
}
