// Package nntest provides the GoMLX backend for tests: SimpleGo configured against the 2-core
// deadlock (see nn.NewBackend), created once per test binary, never downloading XLA.
package nntest

import (
	"os"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/backends"

	"github.com/densegrpo/densegrpo/models/nn"
)

var shared = sync.OnceValues(func() (backends.Backend, error) {
	_ = os.Setenv("GOMLX_NO_AUTO_INSTALL", "1")
	b, _, err := nn.NewBackend("go")
	return b, err
})

// Backend returns the process-wide SimpleGo backend of nn.NewBackend("go"), with
// GOMLX_NO_AUTO_INSTALL set. It fails tb if the backend cannot be created. For tests only; do
// not Finalize it.
func Backend(tb testing.TB) backends.Backend {
	tb.Helper()
	b, err := shared()
	if err != nil {
		tb.Fatalf("create test backend: %v", err)
	}
	return b
}
