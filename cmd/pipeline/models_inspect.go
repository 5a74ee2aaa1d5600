package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

func init() {
	register(command{name: "models inspect", summary: "print an ONNX model's inputs and outputs (read from the file in Go; ONNX Runtime is not loaded)", run: runModelsInspect})
}

func runModelsInspect(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("models inspect", "FILE.onnx", out)
	asJSON := fs.Bool("json", false, "print JSON for machines")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("want one ONNX file, got %d arguments", len(pos))
	}
	ins, outs, err := onnxrt.Inspect(pos[0], onnxrt.Config{})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			File    string              `json:"file"`
			Inputs  []onnxrt.TensorInfo `json:"inputs"`
			Outputs []onnxrt.TensorInfo `json:"outputs"`
		}{pos[0], ins, outs})
	}
	fmt.Fprintf(out, "%s\ninputs:\n", pos[0])
	for _, t := range ins {
		fmt.Fprintf(out, "  %-24s %-8s %s\n", t.Name, t.Type, onnxrt.FormatDims(t.Dims))
	}
	fmt.Fprintln(out, "outputs:")
	for _, t := range outs {
		fmt.Fprintf(out, "  %-24s %-8s %s\n", t.Name, t.Type, onnxrt.FormatDims(t.Dims))
	}
	return nil
}
