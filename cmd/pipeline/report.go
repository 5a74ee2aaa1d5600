package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/densegrpo/densegrpo/pipeline/report"
)

func init() {
	register(command{name: "report", summary: "write the HTML report (and a curves PNG) of run directories", run: runReport})
}

func runReport(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("report", "RUN_DIR...", out)
	html := fs.String("out", "", "HTML file to write (default: RUN_DIR/report.html when there is one run)")
	curves := fs.String("curves", "", "also write the curves of --metric against epoch to this PNG")
	metric := fs.String("metric", "reward_mean", "metric drawn by --curves, a key of metrics.jsonl")
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
	if *curves != "" {
		if err := report.WriteCurvesPNG(dirs, *curves, *metric); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s\n", *curves)
	}
	return nil
}
