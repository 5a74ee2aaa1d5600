package pipeline

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/pipeline/progress"
	"github.com/densegrpo/densegrpo/rewards"
)

// SampleOptions configures Sample.
type SampleOptions struct {
	// Prompts to draw, each N times.
	Prompts []string
	// N images per prompt (>= 1). Default 1.
	N int
	// Steps of the Euler ODE (>= 1). Default cfg.Eval.Steps.
	Steps int
	// Seed of the initial noise: image k (prompt-major) starts from rl.InitialNoise(Seed, k, …).
	Seed int64
	// Score also scores the images with the config's rewards.
	Score bool
	// Base draws with the base model (the adapters switched off) instead of the policy.
	Base bool
	// Frozen are the opened text encoder, VAE and rewards; nil opens them from the config and
	// closes them at the end.
	Frozen *Frozen
	// Progress receives a progress bar (nil: none).
	Progress io.Writer
}

// SampleResult holds the images of Sample, prompt-major: image k shows Prompts[k].
type SampleResult struct {
	Images  []rewards.Image
	Prompts []string
	// Scores are the rewards of the images (with SampleOptions.Score).
	Scores *rewards.Scores
}

// Sample draws N images of every prompt with the deterministic Euler ODE (SD3 schedule of
// Steps steps, shift cfg.Sampler.Shift), in batches of cfg.Eval.BatchSize, and decodes them.
func Sample(ctx context.Context, cfg Config, policy *Policy, opts SampleOptions) (SampleResult, error) {
	if opts.N == 0 {
		opts.N = 1
	}
	if opts.Steps == 0 {
		opts.Steps = cfg.Eval.Steps
	}
	if len(opts.Prompts) == 0 || opts.N < 1 || opts.Steps < 1 {
		return SampleResult{}, fmt.Errorf("sample: got %d prompts, n %d, steps %d; want >= 1 each", len(opts.Prompts), opts.N, opts.Steps)
	}
	var res SampleResult
	for _, p := range opts.Prompts {
		for range opts.N {
			res.Prompts = append(res.Prompts, p)
		}
	}
	f := opts.Frozen
	if f == nil {
		var err error
		if f, err = OpenFrozen(ctx, cfg); err != nil {
			return SampleResult{}, fmt.Errorf("sample: %w", err)
		}
		defer f.Close()
	}
	gen, err := newGenerator(cfg, policy, f, opts.Steps, min(cfg.Eval.BatchSize, len(res.Prompts)), opts.Seed, opts.Base)
	if err != nil {
		return SampleResult{}, fmt.Errorf("sample: %w", err)
	}
	defer gen.close()
	var bar *progress.Bar
	if opts.Progress != nil {
		bar = progress.New(opts.Progress, "sample", len(res.Prompts))
		defer bar.Done()
	}
	for lo := 0; lo < len(res.Prompts); lo += gen.batch {
		hi := min(lo+gen.batch, len(res.Prompts))
		imgs, err := gen.run(ctx, res.Prompts[lo:hi], lo)
		if err != nil {
			return SampleResult{}, fmt.Errorf("sample images %d..%d: %w", lo, hi-1, err)
		}
		res.Images = append(res.Images, imgs...)
		if bar != nil {
			bar.Add(len(imgs))
		}
	}
	if opts.Score {
		rp := make([]rewards.Prompt, len(res.Prompts))
		for i, p := range res.Prompts {
			rp[i] = rewards.Prompt{Text: p}
		}
		scores, err := f.Rewards.Score(ctx, res.Images, rp)
		if err != nil {
			return SampleResult{}, fmt.Errorf("sample: %w", err)
		}
		res.Scores = &scores
	}
	return res, nil
}

// Grid geometry: cells are images scaled up by an integer factor to at least gridMinCell
// pixels wide, separated by gridGap pixels; labels are drawn with basicfont's 7×13 face, at most
// gridMaxLines lines per label.
const (
	gridMinCell  = 192
	gridGap      = 4
	gridMaxLines = 4
	glyphW       = 7
	lineH        = 13
)

// Grid tiles images into rows of cols (cols <= 0: one row), each scaled up by the smallest
// integer factor that makes it at least 192 px wide, with labels[i] (if labels is not nil)
// wrapped under image i in black on white. Images may differ in size; cells take the largest.
func Grid(images []rewards.Image, labels []string, cols int) (*image.RGBA, error) {
	img, _, err := grid(images, labels, nil, cols)
	return img, err
}

// grid is Grid that also returns where each image went, with prompts[i] (if not nil) as the
// prompt of image i.
func grid(images []rewards.Image, labels, prompts []string, cols int) (*image.RGBA, GridLayout, error) {
	var layout GridLayout
	if len(images) == 0 {
		return nil, layout, fmt.Errorf("grid: no images")
	}
	if labels != nil && len(labels) != len(images) {
		return nil, layout, fmt.Errorf("grid: %d labels for %d images", len(labels), len(images))
	}
	if prompts != nil && len(prompts) != len(images) {
		return nil, layout, fmt.Errorf("grid: %d prompts for %d images", len(prompts), len(images))
	}
	cellW, cellH := 0, 0
	for i, im := range images {
		if err := im.Check(); err != nil {
			return nil, layout, fmt.Errorf("grid: image %d: %w", i, err)
		}
		cellW, cellH = max(cellW, im.W), max(cellH, im.H)
	}
	scale := (gridMinCell + cellW - 1) / cellW
	cellW, cellH = cellW*scale, cellH*scale
	perLine := max(cellW/glyphW, 1)
	wrapped := make([][]string, len(images))
	lines := 0
	for i := range labels {
		wrapped[i] = wrap(labels[i], perLine, gridMaxLines)
		lines = max(lines, len(wrapped[i]))
	}
	labelH := 0
	if lines > 0 {
		labelH = lines*lineH + 4
	}
	if cols <= 0 || cols > len(images) {
		cols = len(images)
	}
	rows := (len(images) + cols - 1) / cols
	out := image.NewRGBA(image.Rect(0, 0, gridGap+cols*(cellW+gridGap), gridGap+rows*(cellH+labelH+gridGap)))
	draw.Draw(out, out.Bounds(), image.NewUniform(color.RGBA{160, 160, 160, 255}), image.Point{}, draw.Src)
	d := &font.Drawer{Dst: out, Src: image.Black, Face: basicfont.Face7x13}
	for i, im := range images {
		x0, y0 := gridGap+(i%cols)*(cellW+gridGap), gridGap+(i/cols)*(cellH+labelH+gridGap)
		cell := GridCell{X: x0, Y: y0, W: im.W, H: im.H, Scale: scale}
		if prompts != nil {
			cell.Prompt = prompts[i]
		}
		layout.Cells = append(layout.Cells, cell)
		for y := range im.H * scale {
			for x := range im.W * scale {
				p := im.Pix[((y/scale)*im.W+x/scale)*3:]
				off := out.PixOffset(x0+x, y0+y)
				out.Pix[off], out.Pix[off+1], out.Pix[off+2], out.Pix[off+3] = byte8(p[0]), byte8(p[1]), byte8(p[2]), 255
			}
		}
		if labelH == 0 {
			continue
		}
		draw.Draw(out, image.Rect(x0, y0+cellH, x0+cellW, y0+cellH+labelH), image.White, image.Point{}, draw.Src)
		for l, line := range wrapped[i] {
			d.Dot = fixed.P(x0+1, y0+cellH+2+l*lineH+basicfont.Face7x13.Ascent)
			d.DrawString(line)
		}
	}
	return out, layout, nil
}

// byte8 maps [0,1] to 0…255, rounding, clamped.
func byte8(v float32) uint8 { return uint8(min(max(v, 0), 1)*255 + 0.5) }

// wrap breaks s into lines of at most width characters, at spaces where possible, keeping at
// most maxLines lines (the last one ends in "..." if text was cut).
func wrap(s string, width, maxLines int) []string {
	var lines []string
	for _, para := range strings.Split(s, "\n") {
		line := ""
		for _, word := range strings.Fields(para) {
			for len(word) > width { // a word longer than a line is split
				if line != "" {
					lines, line = append(lines, line), ""
				}
				lines, word = append(lines, word[:width]), word[width:]
			}
			switch {
			case line == "":
				line = word
			case len(line)+1+len(word) <= width:
				line += " " + word
			default:
				lines, line = append(lines, line), word
			}
		}
		lines = append(lines, line)
	}
	if len(lines) > maxLines {
		last := lines[maxLines-1]
		if len(last) > width-3 {
			last = last[:width-3]
		}
		lines = append(lines[:maxLines-1], last+"...")
	}
	return lines
}

// WriteGrid writes Grid(images, labels, cols) as a PNG to path, atomically (temp file, fsync,
// rename), with the grid's layout and prompts[i] (if not nil) as the prompt of image i in the
// file (ReadGridLayout), so that the cells can be scored one by one.
func WriteGrid(path string, images []rewards.Image, labels, prompts []string, cols int) error {
	img, layout, err := grid(images, labels, prompts, cols)
	if err != nil {
		return fmt.Errorf("write grid %s: %w", path, err)
	}
	return writeGridPNG(path, img, layout)
}

// beforeAfterPairs is how many before/after pairs a row of WriteBeforeAfter holds.
const beforeAfterPairs = 2

// WriteBeforeAfter writes the grid of each prompt's image before and after training (the same
// prompt and initial noise; before: the base model, after: the trained adapters) side by side,
// two pairs a row, each labelled with the prompt and, where totals are given, its reward (and
// the change, under the after image). The grid records its prompts, so `pipeline rewards
// score` scores it cell by cell.
func WriteBeforeAfter(path string, prompts []string, before, after []rewards.Image, beforeTotals, afterTotals []float64) error {
	n := len(prompts)
	if len(before) != n || len(after) != n || (beforeTotals != nil && len(beforeTotals) != n) || (afterTotals != nil && len(afterTotals) != n) {
		return fmt.Errorf("write before/after grid %s: %d prompts, %d/%d images, %d/%d totals; want one of each per prompt",
			path, n, len(before), len(after), len(beforeTotals), len(afterTotals))
	}
	images := make([]rewards.Image, 0, 2*n)
	labels := make([]string, 0, 2*n)
	cells := make([]string, 0, 2*n)
	for i, p := range prompts {
		b, a := "before", "after"
		if beforeTotals != nil && afterTotals != nil {
			b = fmt.Sprintf("before %.2f", beforeTotals[i])
			a = fmt.Sprintf("after %.2f (%+.2f)", afterTotals[i], afterTotals[i]-beforeTotals[i])
		}
		images = append(images, before[i], after[i])
		labels = append(labels, p+"\n"+b, p+"\n"+a)
		cells = append(cells, p, p)
	}
	return WriteGrid(path, images, labels, cells, 2*beforeAfterPairs)
}

// WriteImages writes image i to dir/NNN-<slug of labels[i]>.png (NNN = i, zero-padded), each
// atomically, creating dir; it returns the paths.
func WriteImages(dir string, images []rewards.Image, labels []string) ([]string, error) {
	if labels != nil && len(labels) != len(images) {
		return nil, fmt.Errorf("write images to %s: %d labels for %d images", dir, len(labels), len(images))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("write images: %w", err)
	}
	var paths []string
	for i, im := range images {
		if err := im.Check(); err != nil {
			return nil, fmt.Errorf("write images to %s: image %d: %w", dir, i, err)
		}
		name := fmt.Sprintf("%03d", i)
		if labels != nil {
			if s := slug(labels[i]); s != "" {
				name += "-" + s
			}
		}
		p := filepath.Join(dir, name+".png")
		if err := writePNG(p, toRGBA(im)); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func toRGBA(im rewards.Image) *image.RGBA {
	out := image.NewRGBA(image.Rect(0, 0, im.W, im.H))
	for i := range im.W * im.H {
		out.Pix[4*i], out.Pix[4*i+1], out.Pix[4*i+2], out.Pix[4*i+3] = byte8(im.Pix[3*i]), byte8(im.Pix[3*i+1]), byte8(im.Pix[3*i+2]), 255
	}
	return out
}

// slug keeps letters and digits of s, other runs become one "-", at most 40 characters.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
		} else {
			dash = true
		}
		if b.Len() >= 40 {
			break
		}
	}
	return b.String()
}

func writePNG(path string, img image.Image) error {
	if err := atomicfile.Write(path, func(w io.Writer) error { return png.Encode(w, img) }); err != nil {
		return fmt.Errorf("write PNG: %w", err)
	}
	return nil
}
