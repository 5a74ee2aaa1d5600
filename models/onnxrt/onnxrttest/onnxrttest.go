// Package onnxrttest is the shared test setup of the packages whose tests run ONNX Runtime.
package onnxrttest

import (
	"fmt"
	"os"
	"testing"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// Main is a TestMain: it loads ONNX Runtime once (from $ONNXRUNTIME_LIB, else the setup cache)
// and runs the tests. CPU ONNX Runtime tests never skip: without the library every test of the
// package fails, with a message naming the package (what) and how to get the library.
func Main(m *testing.M, what string) {
	if err := onnxrt.Init(onnxrt.Config{}); err != nil {
		fmt.Fprintf(os.Stderr, "%s tests need ONNX Runtime: %v\nrun scripts/setup.sh (or `just setup`), or set ONNXRUNTIME_LIB\n", what, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
