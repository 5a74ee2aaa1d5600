package report

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"sort"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"

	"github.com/densegrpo/densegrpo/pipeline/runfiles"
)

// PNG size of WriteCurvesPNG.
const (
	curvesPNGWidth  = 960
	curvesPNGHeight = 540
)

// WriteCurvesPNG renders metric (default "reward_mean") against epoch for every run in
// runDirs as a curvesPNGWidth×curvesPNGHeight PNG at out, written atomically. A metric named
// "X_mean" gets a ± band from "X_std" where the runs log it. Several metrics joined by "+"
// ("eval_reward_mean+eval_heldout_mean") share one chart, the first solid and the others
// dashed. It is an error when no run logs the metric (or any of them); the error lists the
// metrics that are there.
func WriteCurvesPNG(runDirs []string, out string, metric string) error {
	if metric == "" {
		metric = runfiles.KeyRewardMean
	}
	runs, err := loadRuns(runDirs)
	if err != nil {
		return err
	}
	c := curveChart(runs, metric, runfiles.KeyEpoch)
	if metrics := strings.Split(metric, "+"); len(metrics) > 1 {
		for _, m := range metrics {
			if !hasMetric(runs, m) {
				return fmt.Errorf("write curves %s: metric %q not found in any run (have %s)", out, m, strings.Join(scalarKeys(runs), ", "))
			}
		}
		c = pairedChart(runs, metrics)
	}
	if c.empty() {
		return fmt.Errorf("write curves %s: metric %q not found in any run (have %s)", out, metric, strings.Join(scalarKeys(runs), ", "))
	}
	img := c.raster(curvesPNGWidth, curvesPNGHeight)
	if err := files.Write(out, func(w io.Writer) error { return png.Encode(w, img) }); err != nil {
		return fmt.Errorf("write curves: %w", err)
	}
	return nil
}

// scalarKeys lists every scalar metric any run logs, sorted.
func scalarKeys(runs []*Run) []string {
	seen := map[string]bool{}
	for _, r := range runs {
		for _, e := range r.Epochs {
			for k := range e.Scalars {
				seen[k] = true
			}
		}
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// canvas is an opaque RGBA image with alpha-blended drawing.
type canvas struct {
	img *image.RGBA
	w   int
	h   int
}

func newCanvas(w, h int) *canvas {
	c := &canvas{img: image.NewRGBA(image.Rect(0, 0, w, h)), w: w, h: h}
	c.fillRect(0, 0, w, h, colBackground, 1)
	return c
}

// blend mixes col into pixel (x, y) with coverage a in [0, 1].
func (c *canvas) blend(x, y int, col color.RGBA, a float64) {
	if x < 0 || y < 0 || x >= c.w || y >= c.h || a <= 0 {
		return
	}
	if a > 1 {
		a = 1
	}
	i := c.img.PixOffset(x, y)
	p := c.img.Pix[i : i+4 : i+4]
	mix := func(dst, src uint8) uint8 { return uint8(math.Round(float64(dst)*(1-a) + float64(src)*a)) }
	p[0], p[1], p[2], p[3] = mix(p[0], col.R), mix(p[1], col.G), mix(p[2], col.B), 0xff
}

// fillRect fills the pixels [x0, x1) × [y0, y1) with col at opacity a.
func (c *canvas) fillRect(x0, y0, x1, y1 int, col color.RGBA, a float64) {
	for y := max(y0, 0); y < min(y1, c.h); y++ {
		for x := max(x0, 0); x < min(x1, c.w); x++ {
			c.blend(x, y, col, a)
		}
	}
}

// hline and vline draw one-pixel axis-aligned lines through pixel centres nearest to the
// given coordinates.
func (c *canvas) hline(x0, x1, y float64, col color.RGBA) {
	c.fillRect(int(math.Round(x0)), int(math.Floor(y)), int(math.Round(x1))+1, int(math.Floor(y))+1, col, 1)
}

func (c *canvas) vline(x, y0, y1 float64, col color.RGBA) {
	c.fillRect(int(math.Floor(x)), int(math.Round(y0)), int(math.Floor(x))+1, int(math.Round(y1))+1, col, 1)
}

// mask accumulates the anti-aliased coverage of one stroke, so that where segments of a
// polyline overlap at a joint the pixel is painted once, at the larger coverage.
type mask struct {
	w, h int
	a    []float32
}

func newMask(w, h int) *mask { return &mask{w: w, h: h, a: make([]float32, w*h)} }

// segment adds a line of the given width from (x0, y0) to (x1, y1) with round caps. A pixel's
// coverage is width/2 + 0.5 − d clamped to [0, 1], d the distance of its centre from the
// segment: 1 inside the stroke, falling linearly to 0 over the one-pixel rim.
func (m *mask) segment(x0, y0, x1, y1, width float64) {
	hw := width / 2
	minX := max(int(math.Floor(math.Min(x0, x1)-hw-1)), 0)
	maxX := min(int(math.Ceil(math.Max(x0, x1)+hw+1)), m.w-1)
	minY := max(int(math.Floor(math.Min(y0, y1)-hw-1)), 0)
	maxY := min(int(math.Ceil(math.Max(y0, y1)+hw+1)), m.h-1)
	dx, dy := x1-x0, y1-y0
	l2 := dx*dx + dy*dy
	for py := minY; py <= maxY; py++ {
		for px := minX; px <= maxX; px++ {
			cx, cy := float64(px)+0.5, float64(py)+0.5
			t := 0.0
			if l2 > 0 {
				t = math.Max(0, math.Min(1, ((cx-x0)*dx+(cy-y0)*dy)/l2))
			}
			d := math.Hypot(cx-(x0+t*dx), cy-(y0+t*dy))
			a := float32(math.Max(0, math.Min(1, hw+0.5-d)))
			if i := py*m.w + px; a > m.a[i] {
				m.a[i] = a
			}
		}
	}
}

// polyline adds the segments through pts; dashed strokes alternate dashOn pixels drawn and
// dashOff pixels skipped along the length.
func (m *mask) polyline(xs, ys []float64, width float64, dashed bool) {
	const dashOn, dashOff = 6.0, 4.0
	phase := 0.0 // distance into the current on+off period
	for i := 1; i < len(xs); i++ {
		x0, y0, x1, y1 := xs[i-1], ys[i-1], xs[i], ys[i]
		if !dashed {
			m.segment(x0, y0, x1, y1, width)
			continue
		}
		l := math.Hypot(x1-x0, y1-y0)
		for s := 0.0; s < l; {
			var step float64
			if phase < dashOn {
				step = math.Min(dashOn-phase, l-s)
				a, b := s/l, (s+step)/l
				m.segment(x0+a*(x1-x0), y0+a*(y1-y0), x0+b*(x1-x0), y0+b*(y1-y0), width)
			} else {
				step = math.Min(dashOn+dashOff-phase, l-s)
			}
			s += step
			phase = math.Mod(phase+step, dashOn+dashOff)
		}
	}
}

// paint composites the mask onto the canvas in col.
func (c *canvas) paint(m *mask, col color.RGBA) {
	for i, a := range m.a {
		if a > 0 {
			c.blend(i%m.w, i/m.w, col, float64(a))
		}
	}
}

// stroke draws an anti-aliased polyline.
func (c *canvas) stroke(xs, ys []float64, width float64, col color.RGBA, dashed bool) {
	m := newMask(c.w, c.h)
	if len(xs) == 1 {
		m.segment(xs[0], ys[0], xs[0], ys[0], width+2) // a lone point: a dot
	}
	m.polyline(xs, ys, width, dashed)
	c.paint(m, col)
}

// fillBand fills between the curves hi and lo, both sampled at the increasing xs, column by
// column; each pixel column [x, x+1) belongs to exactly one interval so nothing is blended twice.
func (c *canvas) fillBand(xs, lo, hi []float64, col color.RGBA, a float64) {
	for i := 1; i < len(xs); i++ {
		x0, x1 := xs[i-1], xs[i]
		if x1 <= x0 {
			continue
		}
		last := int(math.Ceil(x1))
		if i == len(xs)-1 {
			last = int(math.Floor(x1)) + 1
		}
		for px := int(math.Ceil(x0)); px < last; px++ {
			t := (float64(px) - x0) / (x1 - x0)
			t = math.Max(0, math.Min(1, t))
			yTop := hi[i-1] + t*(hi[i]-hi[i-1])
			yBot := lo[i-1] + t*(lo[i]-lo[i-1])
			c.fillRect(px, int(math.Round(math.Min(yTop, yBot))), px+1, int(math.Round(math.Max(yTop, yBot)))+1, col, a)
		}
	}
}

// asciiText spells the symbols of titles and labels in ASCII, which is all basicfont has;
// other non-ASCII runes become '?'.
func asciiText(s string) string {
	s = strings.NewReplacer("±", "+/-", "ψ", "psi", "σ", "sigma", "Δ", "d", "→", "->", "−", "-", "–", "-", "×", "x").Replace(s)
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// text draws s with its baseline at y; anchor is "start", "middle" or "end".
func (c *canvas) text(x, y float64, s string, col color.RGBA, anchor string) {
	s = asciiText(s)
	w := float64(len([]rune(s)) * charW)
	switch anchor {
	case "middle":
		x -= w / 2
	case "end":
		x -= w
	}
	d := font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: basicfont.Face7x13,
		Dot: fixed.P(int(math.Round(x)), int(math.Round(y)))}
	d.DrawString(s)
}

// raster draws the line chart into a w×h image, laid out like its SVG.
func (lc *lineChart) raster(w, h int) *image.RGBA {
	f, xa, ya := lc.plotLayout(w, h)
	c := newCanvas(w, h)
	c.text(f.left, titleY, lc.title, colText, "start")
	for _, e := range f.legend {
		m := newMask(w, h)
		m.polyline([]float64{e.x, e.x + swatchW}, []float64{e.y - 4, e.y - 4}, 2.5, e.dash)
		c.paint(m, e.color)
		c.text(e.x+swatchW+5, e.y, e.label, colText, "start")
	}
	for _, t := range ya.ticks {
		y := ya.scale(t, f.bottom, f.top)
		c.hline(f.left, f.right, y, colGrid)
		c.text(f.left-tickLen-2, y+4, ya.label(t), colText, "end")
	}
	for _, t := range xa.ticks {
		x := xa.scale(t, f.left, f.right)
		c.vline(x, f.bottom, f.bottom+tickLen, colAxis)
		c.text(x, f.bottom+tickLen+12, xa.label(t), colText, "middle")
	}
	c.vline(f.left, f.top, f.bottom, colAxis)
	c.hline(f.left, f.right, f.bottom, colAxis)
	c.text((f.left+f.right)/2, float64(h-6), lc.xLabel, colText, "middle")
	px := func(v []float64) []float64 {
		out := make([]float64, len(v))
		for i := range v {
			out[i] = xa.scale(v[i], f.left, f.right)
		}
		return out
	}
	py := func(v []float64) []float64 {
		out := make([]float64, len(v))
		for i := range v {
			out[i] = ya.scale(v[i], f.bottom, f.top)
		}
		return out
	}
	for _, s := range lc.series {
		if s.lo != nil {
			c.fillBand(px(s.x), py(s.lo), py(s.hi), s.color, 0.15)
		}
	}
	for _, s := range lc.series {
		xs, ys := px(s.x), py(s.y)
		if !s.points {
			c.stroke(xs, ys, 2, s.color, s.dash)
		}
		if s.err == nil && !s.points {
			continue
		}
		// Points (with their ± whiskers) are drawn as small squares: legible at PNG size.
		for i := range xs {
			if s.err != nil {
				lo, hi := ya.scale(s.y[i]-s.err[i], f.bottom, f.top), ya.scale(s.y[i]+s.err[i], f.bottom, f.top)
				m := newMask(w, h)
				m.polyline([]float64{xs[i], xs[i]}, []float64{lo, hi}, 1.3, false)
				m.polyline([]float64{xs[i] - 3, xs[i] + 3}, []float64{lo, lo}, 1.3, false)
				m.polyline([]float64{xs[i] - 3, xs[i] + 3}, []float64{hi, hi}, 1.3, false)
				c.paint(m, s.color)
			}
			c.fillRect(int(math.Round(xs[i]))-2, int(math.Round(ys[i]))-2, int(math.Round(xs[i]))+3, int(math.Round(ys[i]))+3, s.color, 1)
		}
	}
	return c.img
}
