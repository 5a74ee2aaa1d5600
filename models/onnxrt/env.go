// Package onnxrt is the project's one door to ONNX Runtime: it loads the shared library once
// per process, opens models as sessions, reports what a graph declares (names, element types,
// dims with -1 for dynamic), and runs float32 / int64 batches, safely from several goroutines.
//
// Frozen parts of the system (text encoders, VAE decoders, reward models) all run through it.
// The execution provider is CPU or CUDA; asking for CUDA where its libraries are missing is an
// error, never a silent fallback to CPU.
package onnxrt

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/densegrpo/densegrpo/internal/setupcache"
)

// Config selects the runtime library and how sessions execute. It is the `[onnx]` table of
// the project's TOML configuration.
type Config struct {
	// Library is the path of libonnxruntime.so. Empty: $ONNXRUNTIME_LIB, else the setup cache.
	Library string `toml:"library"`
	// Provider is the execution provider: "cpu" (default) or "cuda".
	Provider string `toml:"provider"`
	// DeviceID is the CUDA device ordinal (cuda only). Default 0.
	DeviceID int `toml:"device_id"`
	// GPUMemLimitMB caps the CUDA arena in MiB (cuda only). 0 means no limit.
	GPUMemLimitMB int `toml:"gpu_mem_limit_mb"`
	// IntraOpThreads is the number of threads one session uses inside an operator.
	// 0 lets ONNX Runtime choose (one per core).
	IntraOpThreads int `toml:"intra_op_threads"`
	// InterOpThreads is the number of threads running independent operators. 0: ORT default.
	InterOpThreads int `toml:"inter_op_threads"`
	// MaxModelMB bounds, in MiB, the size of a model file plus the external data its tensors
	// name; a larger model is refused before ONNX Runtime reads it. 0 means
	// DefaultMaxModelMB (4096).
	MaxModelMB int `toml:"max_model_mb"`
}

// Validate checks the fields that do not need the library; errors name them as keys of the
// `[onnx]` table.
func (c Config) Validate() error { return c.ValidateAs("onnx") }

// ValidateAs is Validate with errors naming the keys under table (e.g. "vae.onnx").
func (c Config) ValidateAs(table string) error {
	switch c.Provider {
	case "", "cpu", "cuda":
	default:
		return fmt.Errorf("%s.provider: got %q, want \"cpu\" or \"cuda\"", table, c.Provider)
	}
	if c.DeviceID < 0 {
		return fmt.Errorf("%s.device_id: got %d, want >= 0", table, c.DeviceID)
	}
	if c.GPUMemLimitMB < 0 {
		return fmt.Errorf("%s.gpu_mem_limit_mb: got %d, want >= 0", table, c.GPUMemLimitMB)
	}
	if c.MaxModelMB < 0 {
		return fmt.Errorf("%s.max_model_mb: got %d, want >= 0 (0: %d)", table, c.MaxModelMB, DefaultMaxModelMB)
	}
	if c.IntraOpThreads < 0 || c.InterOpThreads < 0 {
		return fmt.Errorf("%s.intra_op_threads/inter_op_threads: got %d/%d, want >= 0",
			table, c.IntraOpThreads, c.InterOpThreads)
	}
	return nil
}

// Override is one model's own ONNX Runtime settings (a `[vae.onnx]`-style table): each key it
// sets replaces the process-wide Config's for that model's sessions, the others are
// inherited. The library is one per process, so it is not among them.
type Override struct {
	Provider       *string `toml:"provider"`
	DeviceID       *int    `toml:"device_id"`
	GPUMemLimitMB  *int    `toml:"gpu_mem_limit_mb"`
	IntraOpThreads *int    `toml:"intra_op_threads"`
	InterOpThreads *int    `toml:"inter_op_threads"`
	MaxModelMB     *int    `toml:"max_model_mb"`
}

// With returns c with the keys o sets replaced (c itself when o is nil).
func (c Config) With(o *Override) Config {
	if o == nil {
		return c
	}
	set := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	if o.Provider != nil {
		c.Provider = *o.Provider
	}
	set(&c.DeviceID, o.DeviceID)
	set(&c.GPUMemLimitMB, o.GPUMemLimitMB)
	set(&c.IntraOpThreads, o.IntraOpThreads)
	set(&c.InterOpThreads, o.InterOpThreads)
	set(&c.MaxModelMB, o.MaxModelMB)
	return c
}

// Validate checks the keys o sets, naming them under table.
func (o *Override) Validate(table string) error {
	if o == nil {
		return nil
	}
	return Config{}.With(o).ValidateAs(table)
}

// UsesCUDA reports whether a model with these settings runs on the CUDA provider.
func (c Config) UsesCUDA() bool { return c.provider() == "cuda" }

func (c Config) provider() string {
	if c.Provider == "" {
		return "cpu"
	}
	return c.Provider
}

// ErrLibraryNotFound is returned (wrapped) when no ONNX Runtime library exists at any of the
// candidate paths.
var ErrLibraryNotFound = errors.New("ONNX Runtime library not found")

// The library itself is process-global (one dlopen, one OrtEnv), so this is the one piece of
// package state; it records which library was loaded so that a conflicting request is an error.
var env struct {
	sync.Mutex
	library string
}

// LibraryCandidates lists, in order, the paths Init tries for cfg.
func LibraryCandidates(cfg Config) []string {
	if cfg.Library != "" {
		return []string{cfg.Library}
	}
	var out []string
	if p := os.Getenv("ONNXRUNTIME_LIB"); p != "" {
		out = append(out, p)
	}
	sub := filepath.Join("onnxruntime", "cpu", "libonnxruntime.so.1")
	if cfg.provider() == "cuda" {
		sub = filepath.Join("onnxruntime", "cuda", "libonnxruntime.so")
	}
	for _, dir := range CacheDirs() {
		out = append(out, filepath.Join(dir, sub))
	}
	return out
}

// CacheDirs lists the setup cache directories to look in (setupcache.Dirs).
func CacheDirs() []string { return setupcache.Dirs() }

// FindCached returns the first existing file rel (e.g. "ocr/ppocr_keys_v1.txt") inside the
// setup cache directories (setupcache.Find).
func FindCached(rel string) (string, error) { return setupcache.Find(rel) }

// Init loads the ONNX Runtime library and creates the process environment. It is idempotent
// for the same library; asking for a different library once one is loaded is an error.
func Init(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	env.Lock()
	defer env.Unlock()
	candidates := LibraryCandidates(cfg)
	if env.library != "" {
		if cfg.Library != "" && cfg.Library != env.library {
			return fmt.Errorf("init ONNX Runtime with %s: library %s is already loaded in this process",
				cfg.Library, env.library)
		}
		return nil
	}
	lib := ""
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			lib = c
			break
		}
	}
	if lib == "" {
		return fmt.Errorf("%w (tried %s); run `just setup` or set onnx.library / $ONNXRUNTIME_LIB",
			ErrLibraryNotFound, strings.Join(candidates, ", "))
	}
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		return fmt.Errorf("init ONNX Runtime from %s: %w", lib, err)
	}
	env.library = lib
	return nil
}

// LoadedLibrary returns the path of the loaded library, or "" before Init.
func LoadedLibrary() string {
	env.Lock()
	defer env.Unlock()
	return env.library
}

// Version returns the ONNX Runtime version string of the loaded library.
func Version() string { return ort.GetVersion() }
