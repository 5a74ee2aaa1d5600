package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/densegrpo/densegrpo/pipeline/report"
)

func init() {
	register(command{name: "report", summary: "write the HTML report (and a curves PNG) of run directories", run: runReport})
}

func runReport(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("report", "RUN_DIR...", out)
	html := fs.String("out", "", "HTML file to write (default: RUN_DIR/report.html when there is one run)")
	var curves curveFlags
	fs.Var(&curves, "curves", "also write curves against epoch to a PNG: PATH draws --metric, METRIC=PATH a key of metrics.jsonl, A+B=PATH several on one chart (repeatable)")
	metric := fs.String("metric", "reward_mean", "metric drawn by a --curves PATH without METRIC=, a key of metrics.jsonl")
	dirs, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(dirs) == 0 {
		return usageError("want at least one run directory")
	}
	if *html == "" {
		if len(dirs) > 1 {
			return usageError("--out is required with %d run directories", len(dirs))
		}
		*html = filepath.Join(dirs[0], "report.html")
	}
	if err := report.Write(ctx, dirs, *html); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s\n", *html)
	for _, c := range curves {
		m := c.metric
		if m == "" {
			m = *metric
		}
		if err := report.WriteCurvesPNG(dirs, c.path, m); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s\n", c.path)
	}
	return nil
}

// curveFlags collects the --curves flags: "PATH" or "METRIC=PATH".
type curveFlags []struct{ metric, path string }

func (c *curveFlags) String() string { return fmt.Sprint(*c) }

func (c *curveFlags) Set(v string) error {
	metric, path, ok := strings.Cut(v, "=")
	if !ok {
		metric, path = "", v
	}
	if path == "" || (ok && metric == "") {
		return fmt.Errorf("want PATH or METRIC=PATH, got %q", v)
	}
	*c = append(*c, struct{ metric, path string }{metric, path})
	return nil
}
