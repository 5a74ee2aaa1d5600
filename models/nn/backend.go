package nn

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/backends/xla"

	"github.com/densegrpo/densegrpo/internal/setupcache"
)

// SimpleGoConfig is the SimpleGo backend configuration NewBackend("go") uses.
//
// "ops_sequential" runs the ops of one computation one after another in the calling goroutine,
// so no op holds a worker of the pool while it waits for workers for its own parallel parts
// (the batch splits of a large DotGeneral): the 2-core deadlock cannot happen, whatever the
// model, and several computations may still run at once. Each large DotGeneral still uses all
// cores. The alternative, "parallelism=8", only raises the pool to 16 workers, so a wide enough
// graph can still deadlock. Both were equally fast on the 1.8M-parameter AdamW training step of
// BenchmarkTrainStep (interleaved steps on 2 shared cores: 6.8 s vs 6.7 s wall, 2.31 vs 2.30
// CPU-seconds per step; see BenchmarkSimpleGoConfig), so the safe one is used.
const SimpleGoConfig = "ops_sequential"

// BackendSpecs lists the specs NewBackend accepts.
var BackendSpecs = []string{"auto", "go", "xla:cpu", "xla:cuda"}

// Backend is a backend spec as a config field holds it (run.backend, train.backend).
type Backend string

// Valid reports whether b is one of BackendSpecs.
func (b Backend) Valid() bool { return slices.Contains(BackendSpecs, string(b)) }

// CachedCPUPlugin is where `just setup` puts the PJRT CPU plugin inside the setup cache
// (internal/setupcache): XLA's CPU client from the PyPI wheel xla-cpu-pjrt (scripts/setup.sh).
const CachedCPUPlugin = "pjrt/cpu/pjrt_c_api_cpu_plugin.so"

// NewBackend returns a GoMLX backend for spec:
//
//   - "go": SimpleGo, configured with SimpleGoConfig so it cannot deadlock on small CPUs;
//   - "xla:cpu", "xla:cuda": the XLA backend with that PJRT plugin, which must already be
//     installed (PJRT_PLUGIN_LIBRARY_PATH, /usr/local/lib/go-xla, ~/.local/lib/go-xla or the
//     system library path, and for cpu also CachedCPUPlugin in the setup cache); an error
//     otherwise;
//   - "auto": XLA with the first PJRT plugin found (cuda before cpu) if one loads, else "go".
//     On CPU, XLA's compiled graphs take ~7× less CPU time than SimpleGo for a LoRA update of
//     the tiny-ocr model (README, performance notes), so "auto" prefers it.
//
// It never downloads XLA: it sets GOMLX_NO_AUTO_INSTALL and disables the XLA auto-installer.
// desc is a one-line human description of what was chosen. An unknown spec is an error listing
// the valid ones.
func NewBackend(spec string) (backend backends.Backend, desc string, err error) {
	disableXLAAutoInstall()
	switch spec {
	case "go":
		return newSimpleGo("")
	case "xla:cpu", "xla:cuda":
		plugin := strings.TrimPrefix(spec, "xla:")
		return newXLA(plugin)
	case "auto":
		plugins := xla.GetAvailablePlugins()
		if !slices.Contains(plugins, "cpu") {
			if _, err := setupcache.Find(CachedCPUPlugin); err == nil {
				plugins = append(plugins, "cpu")
			}
		}
		var failures []string
		for _, plugin := range []string{"cuda", "cpu"} {
			if !slices.Contains(plugins, plugin) {
				continue
			}
			b, d, err := newXLA(plugin)
			if err == nil {
				return b, d, nil
			}
			failures = append(failures, err.Error())
		}
		reason := "no PJRT plugin installed"
		if len(failures) > 0 {
			reason = strings.Join(failures, "; ")
		}
		return newSimpleGo(fmt.Sprintf(" (auto: %s)", reason))
	default:
		return nil, "", fmt.Errorf("unknown backend %q: valid backends are %s", spec, strings.Join(BackendSpecs, ", "))
	}
}

// disableXLAAutoInstall makes sure no code path downloads XLA: GoMLX reads the environment
// variable only once at init, so the installer flag is also switched off directly.
func disableXLAAutoInstall() {
	if _, ok := os.LookupEnv(xla.NoAutoInstallEnv); !ok {
		_ = os.Setenv(xla.NoAutoInstallEnv, "1")
	}
	xla.EnableAutoInstall(false)
}

func newSimpleGo(note string) (backends.Backend, string, error) {
	b, err := simplego.New(SimpleGoConfig)
	if err != nil {
		return nil, "", fmt.Errorf("create SimpleGo backend %q: %w", SimpleGoConfig, err)
	}
	desc := fmt.Sprintf("GoMLX SimpleGo (pure Go, %s, %d CPUs)%s", SimpleGoConfig, runtime.NumCPU(), note)
	return b, desc, nil
}

func newXLA(plugin string) (backends.Backend, string, error) {
	available := xla.GetAvailablePlugins()
	config := plugin
	if !slices.Contains(available, plugin) {
		cached, cacheErr := setupcache.Find(CachedCPUPlugin)
		if plugin != "cpu" || cacheErr != nil {
			where := ""
			if plugin == "cpu" {
				where = " and the setup cache (`just setup` fetches it)"
			}
			return nil, "", fmt.Errorf("create XLA backend %q: PJRT plugin %q not installed (found %q; searched "+
				"$PJRT_PLUGIN_LIBRARY_PATH, /usr/local/lib/go-xla, ~/.local/lib/go-xla, the system library path%s; "+
				"automatic download is disabled): install the plugin or use backend \"go\"", "xla:"+plugin, plugin, available, where)
		}
		// Loaded by path, the plugin has no platform name from which GoMLX would infer that
		// host buffers can be shared with the CPU device, so that is said explicitly.
		abs, err := filepath.Abs(cached)
		if err != nil {
			return nil, "", fmt.Errorf("create XLA backend %q: %w", "xla:"+plugin, err)
		}
		config = abs + ",shared_buffers"
	}
	b, err := xla.New(config)
	if err != nil {
		return nil, "", fmt.Errorf("create XLA backend %q: %w", "xla:"+plugin, err)
	}
	return b, fmt.Sprintf("GoMLX XLA/PJRT plugin %q (%s)", plugin, b.Description()), nil
}
