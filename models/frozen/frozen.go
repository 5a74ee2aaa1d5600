// Package frozen owns the frozen inference parts of a text-to-image model as they run in ONNX
// Runtime: the text encoder (prompts → per-token and pooled embeddings, with the tokenizer the
// encoder was trained with and a per-prompt cache) and the VAE decoder (model-space latents →
// RGB images in [0,1]).
//
// Opening a model checks its declared inputs and outputs (names, element types, ranks, fixed
// dims) against what this package feeds and reads; a mismatch is an error naming the file, the
// tensor, what was expected and what the graph declares, before any compute is spent. Both
// wrappers are safe for concurrent use: ONNX Runtime sessions are, and the caches are guarded.
package frozen

import (
	"fmt"
	"strings"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// tensorWant is what the package requires of one declared graph tensor. dims has -1 where any
// size is accepted; a declared dynamic dim (-1) always fits.
type tensorWant struct {
	role  string // "input" or "output"
	name  string
	dtype string
	dims  []int64
}

func (w tensorWant) String() string {
	parts := make([]string, len(w.dims))
	for i, d := range w.dims {
		parts[i] = "?"
		if d >= 0 {
			parts[i] = fmt.Sprint(d)
		}
	}
	return fmt.Sprintf("%s [%s]", w.dtype, strings.Join(parts, ","))
}

// checkDeclared finds want among the declared tensors and checks its type, rank and fixed
// dims. what names the model ("text encoder") for the error.
func checkDeclared(what, path string, declared []onnxrt.TensorInfo, want tensorWant) (onnxrt.TensorInfo, error) {
	var names []string
	for _, info := range declared {
		names = append(names, info.Name)
		if info.Name != want.name {
			continue
		}
		ok := info.Type == want.dtype && len(info.Dims) == len(want.dims)
		for i := 0; ok && i < len(want.dims); i++ {
			ok = want.dims[i] < 0 || info.Dims[i] < 0 || info.Dims[i] == want.dims[i]
		}
		if !ok {
			return info, fmt.Errorf("%s %s: %s %q: graph declares %s %s, want %s", what, path, want.role, want.name,
				info.Type, onnxrt.FormatDims(info.Dims), want)
		}
		return info, nil
	}
	return onnxrt.TensorInfo{}, fmt.Errorf("%s %s: no %s %q (want %s; graph %ss: %s)", what, path, want.role, want.name,
		want, want.role, strings.Join(names, ", "))
}

// checkOnlyInputs rejects graph inputs this package would not feed.
func checkOnlyInputs(what, path string, declared []onnxrt.TensorInfo, fed ...string) error {
	for _, info := range declared {
		known := false
		for _, f := range fed {
			known = known || info.Name == f
		}
		if !known {
			return fmt.Errorf("%s %s: unexpected input %q (%s %s): this wrapper feeds only %s", what, path, info.Name,
				info.Type, onnxrt.FormatDims(info.Dims), strings.Join(fed, ", "))
		}
	}
	return nil
}

// chunks splits n rows into runs [lo, hi) of at most size rows.
func chunks(n, size int) [][2]int {
	var out [][2]int
	for lo := 0; lo < n; lo += size {
		out = append(out, [2]int{lo, min(lo+size, n)})
	}
	return out
}
