package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

func init() {
	register(command{name: "version", summary: "print the build and dependency versions", run: runVersion})
}

func runVersion(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("version", "", out)
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return fmt.Errorf("read build info: not available in this binary")
	}
	rev := "unknown"
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			rev = s.Value
		}
	}
	fmt.Fprintf(out, "pipeline %s (%s, %s)\n", info.Main.Version, rev, runtime.Version())
	for _, dep := range info.Deps {
		switch dep.Path {
		case "github.com/gomlx/gomlx", "github.com/gomlx/go-xla", "github.com/yalue/onnxruntime_go", "github.com/BurntSushi/toml":
			fmt.Fprintf(out, "  %s %s\n", dep.Path, dep.Version)
		}
	}
	return nil
}
