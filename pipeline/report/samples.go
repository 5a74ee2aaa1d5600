package report

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/densegrpo/densegrpo/internal/imagefile"
	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// sampleSection shows every grid of every run: the before/after grid, then all evaluation
// grids (the same test prompts and noise at every evaluation), then all training grids (the
// rollout images of an epoch), the last two groups folded.
func sampleSection(p *page, runs []*Run) error {
	p.f("<h2 id=\"samples\">Samples</h2>\n")
	for i, r := range runs {
		if len(r.Samples) == 0 {
			p.note("%s: no samples/*.png", r.Label())
			continue
		}
		p.f("<h3>%s%s</h3>\n", swatch(runColor(i)), esc(r.Label()))
		var eval, train, other []string
		for _, s := range r.Samples {
			switch b := filepath.Base(s); {
			case b == runfiles.BeforeAfterFile:
				if err := p.figure(s, "before / after training: the first test prompts with the same noise, each pair the base model then the EMA adapters, each with its reward"); err != nil {
					return err
				}
			case strings.HasPrefix(b, "eval-"):
				eval = append(eval, s)
			case strings.HasPrefix(b, "epoch-"):
				train = append(train, s)
			default:
				other = append(other, s)
			}
		}
		for _, g := range []struct {
			what  string
			files []string
			open  bool
		}{
			{"evaluation grids (EMA adapters, ODE, the same test prompts and noise each time)", eval, true},
			{"training grids (final rollout images of the epoch with their rewards)", train, false},
			{"other grids", other, false},
		} {
			if len(g.files) == 0 {
				continue
			}
			open := ""
			if g.open {
				open = " open"
			}
			p.f("<details%s><summary>%d %s</summary>\n", open, len(g.files), esc(g.what))
			for _, f := range g.files {
				if err := p.figure(f, ""); err != nil {
					return err
				}
			}
			p.f("</details>\n")
		}
	}
	return nil
}

// figure embeds the PNG at path, captioned with its name and what it shows.
func (p *page) figure(path, what string) error {
	// The header is checked before the file is read whole (it is embedded as it is).
	cfg, err := imagefile.ReadFileHeader(path)
	if err == nil && cfg.Format != "png" {
		err = fmt.Errorf("%s is a %s file, want PNG", path, cfg.Format)
	}
	if err == nil {
		err = imagefile.DefaultLimits.Check(cfg)
	}
	if err != nil {
		return fmt.Errorf("sample grid: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read sample grid: %w", err)
	}
	// Small grids are shown at twice their size, pixelated, so that a 64-px sample is legible.
	w := cfg.Width
	if w < 540 {
		w *= 2
	}
	caption := filepath.Base(path)
	if what != "" {
		caption += " — " + what
	}
	p.f("<figure><figcaption>%s (%d×%d)</figcaption><img class=\"grid\" width=\"%d\" alt=\"%s\" src=\"data:image/png;base64,%s\"></figure>\n",
		esc(caption), cfg.Width, cfg.Height, w, esc(filepath.Base(path)), base64.StdEncoding.EncodeToString(data))
	return nil
}
