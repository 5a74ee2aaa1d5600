package report

import (
	"fmt"
	"image/color"
	"math"
	"strconv"
	"strings"
)

// The charts are drawn by hand: a lineChart or barChart is laid out once (frame) and rendered
// either as inline SVG for the HTML page or into an image.RGBA for the PNG. Text is measured
// as charW pixels per character, exact for basicfont's 7×13 face and a slight overestimate for
// the page's 11 px sans-serif.

const (
	charW      = 7
	titleY     = 15 // baseline of the title
	legendRowH = 16
	tickLen    = 4
	axisGap    = 38 // from the plot's bottom edge to the bottom of the image: tick labels, x label
)

// palette is the run colour cycle (Tableau 10).
var palette = []color.RGBA{
	{0x4e, 0x79, 0xa7, 0xff}, {0xf2, 0x8e, 0x2b, 0xff}, {0xe1, 0x57, 0x59, 0xff},
	{0x76, 0xb7, 0xb2, 0xff}, {0x59, 0xa1, 0x4f, 0xff}, {0xed, 0xc9, 0x48, 0xff},
	{0xb0, 0x7a, 0xa1, 0xff}, {0xff, 0x9d, 0xa7, 0xff}, {0x9c, 0x75, 0x5f, 0xff},
	{0xba, 0xb0, 0xac, 0xff},
}

var (
	colBackground = color.RGBA{0xff, 0xff, 0xff, 0xff}
	colGrid       = color.RGBA{0xe6, 0xe6, 0xe6, 0xff}
	colAxis       = color.RGBA{0x55, 0x55, 0x55, 0xff}
	colText       = color.RGBA{0x22, 0x22, 0x22, 0xff}
	colGreyLine   = color.RGBA{0x88, 0x88, 0x88, 0xff}
)

func runColor(i int) color.RGBA { return palette[i%len(palette)] }

func hexColor(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

// axis is a linear scale with "nice" tick marks at multiples of step from lo to hi.
type axis struct {
	lo, hi, step float64
	ticks        []float64
}

// niceStep rounds x > 0 up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	e := math.Floor(math.Log10(x))
	p := math.Pow(10, e)
	f := x / p
	const tol = 1e-9
	switch {
	case f <= 1+tol:
		return p
	case f <= 2+tol:
		return 2 * p
	case f <= 5+tol:
		return 5 * p
	}
	return 10 * p
}

// niceAxis covers [lo, hi] with at most about maxTicks ticks; integer axes never step below 1.
// An empty range (lo > hi) becomes [0, 1]; a single value is padded by 10% of itself (or 1).
func niceAxis(lo, hi float64, maxTicks int, integer bool) axis {
	if lo > hi || math.IsInf(lo, 0) || math.IsInf(hi, 0) {
		lo, hi = 0, 1
	}
	if lo == hi {
		pad := math.Abs(lo) * 0.1
		if pad == 0 || integer {
			pad = 1
		}
		lo, hi = lo-pad, hi+pad
	}
	if maxTicks < 2 {
		maxTicks = 2
	}
	step := niceStep((hi - lo) / float64(maxTicks-1))
	if integer && step < 1 {
		step = 1
	}
	first := math.Floor(lo/step + 1e-9)
	last := math.Ceil(hi/step - 1e-9)
	a := axis{lo: first * step, hi: last * step, step: step}
	for i := first; i <= last; i++ {
		a.ticks = append(a.ticks, i*step)
	}
	return a
}

// label formats a tick with as many decimals as the step needs.
func (a axis) label(v float64) string {
	if math.Abs(v) < a.step*1e-6 {
		v = 0
	}
	big := math.Max(math.Abs(a.lo), math.Abs(a.hi))
	if a.step < 1e-3 || big >= 1e6 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	decimals := int(math.Max(0, math.Ceil(-math.Log10(a.step)-1e-9)))
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

// scale maps v in [a.lo, a.hi] linearly onto [p0, p1].
func (a axis) scale(v, p0, p1 float64) float64 {
	return p0 + (v-a.lo)/(a.hi-a.lo)*(p1-p0)
}

// legendEntry is one coloured swatch and label.
type legendEntry struct {
	label string
	color color.RGBA
	dash  bool
	box   bool // a filled box (bars) instead of a line
}

// placedLegend is a legend entry with the position of its swatch's left end, on the row's
// text baseline.
type placedLegend struct {
	legendEntry
	x, y float64
}

// frame is a chart's layout in pixels: the plot rectangle and where legend entries go.
type frame struct {
	w, h                     int
	left, top, right, bottom float64
	legend                   []placedLegend
}

const swatchW = 18

// layout places the title, wraps the legend into rows under it and leaves room for the y tick
// labels (the longest of yLabels) on the left and the x tick labels and x label below.
func layout(w, h int, legend []legendEntry, yLabels []string) frame {
	f := frame{w: w, h: h}
	maxY := 0
	for _, s := range yLabels {
		maxY = max(maxY, len([]rune(s)))
	}
	f.left = float64(12 + maxY*charW + tickLen)
	f.right = float64(w - 14)
	x, y := f.left, float64(titleY+legendRowH)
	for _, e := range legend {
		itemW := float64(swatchW + 5 + len([]rune(e.label))*charW + 14)
		if x > f.left && x+itemW > f.right {
			x, y = f.left, y+legendRowH
		}
		f.legend = append(f.legend, placedLegend{legendEntry: e, x: x, y: y})
		x += itemW
	}
	f.top = float64(titleY + 12)
	if len(legend) > 0 {
		f.top = y + 10
	}
	f.bottom = float64(h - axisGap)
	return f
}

// series is one line of a line chart, with an optional band lo..hi around it, optional ±err
// whiskers at its points, and drawn as points only (no line) when points is set.
type series struct {
	label  string
	color  color.RGBA
	dash   bool
	x, y   []float64
	lo, hi []float64 // band, nil or the length of x
	err    []float64 // whisker half-widths, nil or the length of x
	points bool
}

// lineChart is a set of series on shared axes.
type lineChart struct {
	title, xLabel string
	series        []series
	integerX      bool
}

func (c *lineChart) empty() bool {
	for _, s := range c.series {
		if len(s.x) > 0 {
			return false
		}
	}
	return true
}

// axes covers every point and band of every series.
func (c *lineChart) axes() (xa, ya axis) {
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range c.series {
		for i := range s.x {
			xlo, xhi = math.Min(xlo, s.x[i]), math.Max(xhi, s.x[i])
			ylo, yhi = math.Min(ylo, s.y[i]), math.Max(yhi, s.y[i])
			if s.lo != nil {
				ylo, yhi = math.Min(ylo, s.lo[i]), math.Max(yhi, s.hi[i])
			}
			if s.err != nil {
				ylo, yhi = math.Min(ylo, s.y[i]-s.err[i]), math.Max(yhi, s.y[i]+s.err[i])
			}
		}
	}
	return niceAxis(xlo, xhi, 8, c.integerX), niceAxis(ylo, yhi, 6, false)
}

func (c *lineChart) legend() []legendEntry {
	var l []legendEntry
	for _, s := range c.series {
		l = append(l, legendEntry{label: s.label, color: s.color, dash: s.dash})
	}
	return l
}

// plotLayout is the frame and the axes of a line chart of size w×h.
func (c *lineChart) plotLayout(w, h int) (frame, axis, axis) {
	xa, ya := c.axes()
	var yl []string
	for _, t := range ya.ticks {
		yl = append(yl, ya.label(t))
	}
	return layout(w, h, c.legend(), yl), xa, ya
}

// esc escapes text for SVG and HTML.
func esc(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;")
	return r.Replace(s)
}

func num(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// svgStart opens an SVG of w×h with its title, background and legend.
func svgStart(b *strings.Builder, f frame, title string) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img" font-family="sans-serif" font-size="11">`, f.w, f.h, f.w, f.h)
	fmt.Fprintf(b, `<title>%s</title><rect width="%d" height="%d" fill="#fff"/>`, esc(title), f.w, f.h)
	fmt.Fprintf(b, `<text x="%s" y="%d" font-size="13" font-weight="bold" fill="%s">%s</text>`, num(f.left), titleY, hexColor(colText), esc(title))
	for _, e := range f.legend {
		col := hexColor(e.color)
		if e.box {
			fmt.Fprintf(b, `<rect x="%s" y="%s" width="%d" height="9" fill="%s"/>`, num(e.x), num(e.y-8), swatchW, col)
		} else {
			fmt.Fprintf(b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="2.5"%s/>`,
				num(e.x), num(e.y-4), num(e.x+swatchW), num(e.y-4), col, dashAttr(e.dash))
		}
		fmt.Fprintf(b, `<text x="%s" y="%s" fill="%s">%s</text>`, num(e.x+swatchW+5), num(e.y), hexColor(colText), esc(e.label))
	}
}

func dashAttr(dash bool) string {
	if dash {
		return ` stroke-dasharray="5 3"`
	}
	return ""
}

// svgYAxis draws horizontal grid lines with tick labels.
func svgYAxis(b *strings.Builder, f frame, ya axis) {
	for _, t := range ya.ticks {
		y := ya.scale(t, f.bottom, f.top)
		fmt.Fprintf(b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"/>`, num(f.left), num(y), num(f.right), num(y), hexColor(colGrid))
		fmt.Fprintf(b, `<text x="%s" y="%s" text-anchor="end" fill="%s">%s</text>`, num(f.left-tickLen-2), num(y+4), hexColor(colText), esc(ya.label(t)))
	}
}

// svgFrameEnd draws the axis lines and x label and closes the SVG.
func svgFrameEnd(b *strings.Builder, f frame, xLabel string) {
	ax := hexColor(colAxis)
	fmt.Fprintf(b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"/>`, num(f.left), num(f.top), num(f.left), num(f.bottom), ax)
	fmt.Fprintf(b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"/>`, num(f.left), num(f.bottom), num(f.right), num(f.bottom), ax)
	fmt.Fprintf(b, `<text x="%s" y="%d" text-anchor="middle" fill="%s">%s</text>`, num((f.left+f.right)/2), f.h-6, hexColor(colText), esc(xLabel))
	b.WriteString("</svg>")
}

// maxMarkers is the most points per series that get a hover marker.
const maxMarkers = 150

// svg renders the chart as inline SVG of w×h pixels.
func (c *lineChart) svg(w, h int) string {
	f, xa, ya := c.plotLayout(w, h)
	var b strings.Builder
	svgStart(&b, f, c.title)
	svgYAxis(&b, f, ya)
	for _, t := range xa.ticks {
		x := xa.scale(t, f.left, f.right)
		fmt.Fprintf(&b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"/>`, num(x), num(f.bottom), num(x), num(f.bottom+tickLen), hexColor(colAxis))
		fmt.Fprintf(&b, `<text x="%s" y="%s" text-anchor="middle" fill="%s">%s</text>`, num(x), num(f.bottom+tickLen+12), hexColor(colText), esc(xa.label(t)))
	}
	px := func(v float64) float64 { return xa.scale(v, f.left, f.right) }
	py := func(v float64) float64 { return ya.scale(v, f.bottom, f.top) }
	for _, s := range c.series {
		if s.lo == nil || len(s.x) < 2 {
			continue
		}
		var d strings.Builder
		for i := range s.x {
			cmd := "L"
			if i == 0 {
				cmd = "M"
			}
			fmt.Fprintf(&d, "%s%s,%s ", cmd, num(px(s.x[i])), num(py(s.hi[i])))
		}
		for i := len(s.x) - 1; i >= 0; i-- {
			fmt.Fprintf(&d, "L%s,%s ", num(px(s.x[i])), num(py(s.lo[i])))
		}
		fmt.Fprintf(&b, `<path d="%sZ" fill="%s" fill-opacity="0.15" stroke="none"/>`, d.String(), hexColor(s.color))
	}
	for _, s := range c.series {
		col := hexColor(s.color)
		for i := range s.err {
			x, lo, hi := px(s.x[i]), py(s.y[i]-s.err[i]), py(s.y[i]+s.err[i])
			fmt.Fprintf(&b, `<path d="M%s,%sV%sM%s,%sH%sM%s,%sH%s" stroke="%s" stroke-width="1.2" fill="none"/>`,
				num(x), num(lo), num(hi), num(x-3), num(lo), num(x+3), num(x-3), num(hi), num(x+3), col)
		}
		if len(s.x) > 1 && !s.points {
			var pts strings.Builder
			for i := range s.x {
				fmt.Fprintf(&pts, "%s,%s ", num(px(s.x[i])), num(py(s.y[i])))
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="1.8" stroke-linejoin="round"%s/>`,
				strings.TrimSpace(pts.String()), col, dashAttr(s.dash))
		}
		if len(s.x) <= maxMarkers {
			r := "2.4"
			if s.points || s.err != nil {
				r = "3.2"
			}
			for i := range s.x {
				tip := fmtValue(s.y[i])
				if s.err != nil {
					tip += " ± " + fmtValue(s.err[i])
				}
				fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="%s" fill="%s"><title>%s: %s %s = %s</title></circle>`,
					num(px(s.x[i])), num(py(s.y[i])), r, col, esc(s.label), esc(c.xLabel), fmtValue(s.x[i]), tip)
			}
		}
	}
	svgFrameEnd(&b, f, c.xLabel)
	return b.String()
}

// fmtValue formats a data value for tooltips and tables.
func fmtValue(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e9 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// barSeries is one colour of bars, one value per category (NaN: none), with optional ±
// whiskers.
type barSeries struct {
	label  string
	color  color.RGBA
	values []float64
	err    []float64
}

// barChart draws categories side by side, its series grouped or stacked within a category,
// and an optional overlay line through the category centres.
type barChart struct {
	title, xLabel string
	categories    []string
	series        []barSeries
	stacked       bool
	overlay       *series // x is the category index
}

func (c *barChart) axis() axis {
	lo, hi := 0.0, 0.0
	for i := range c.categories {
		pos, neg := 0.0, 0.0
		for _, s := range c.series {
			if i >= len(s.values) {
				continue
			}
			v := s.values[i]
			if math.IsNaN(v) { // no value in this category
				continue
			}
			e := 0.0
			if s.err != nil && i < len(s.err) {
				e = s.err[i]
			}
			if c.stacked {
				if v > 0 {
					pos += v
				} else {
					neg += v
				}
				continue
			}
			lo, hi = math.Min(lo, v-e), math.Max(hi, v+e)
		}
		lo, hi = math.Min(lo, neg), math.Max(hi, pos)
	}
	if c.overlay != nil {
		for _, v := range c.overlay.y {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if lo == 0 && hi == 0 {
		hi = 1
	}
	return niceAxis(lo, hi, 6, false)
}

// svg renders the bar chart as inline SVG of w×h pixels.
func (c *barChart) svg(w, h int) string {
	ya := c.axis()
	var yl []string
	for _, t := range ya.ticks {
		yl = append(yl, ya.label(t))
	}
	var legend []legendEntry
	for _, s := range c.series {
		legend = append(legend, legendEntry{label: s.label, color: s.color, box: true})
	}
	if c.overlay != nil {
		legend = append(legend, legendEntry{label: c.overlay.label, color: c.overlay.color, dash: c.overlay.dash})
	}
	f := layout(w, h, legend, yl)
	var b strings.Builder
	svgStart(&b, f, c.title)
	svgYAxis(&b, f, ya)
	n := len(c.categories)
	band := (f.right - f.left) / float64(max(n, 1))
	py := func(v float64) float64 { return ya.scale(v, f.bottom, f.top) }
	// Label every k-th category so that labels do not overlap.
	longest := 1
	for _, s := range c.categories {
		longest = max(longest, len([]rune(s)))
	}
	every := int(math.Ceil(float64(longest*charW+6) / band))
	for i, cat := range c.categories {
		x0 := f.left + float64(i)*band
		if i%max(every, 1) == 0 {
			fmt.Fprintf(&b, `<text x="%s" y="%s" text-anchor="middle" fill="%s">%s</text>`, num(x0+band/2), num(f.bottom+tickLen+12), hexColor(colText), esc(cat))
		}
		if c.stacked {
			pos, neg := 0.0, 0.0
			bw := band * 0.7
			for _, s := range c.series {
				if i >= len(s.values) || s.values[i] == 0 {
					continue
				}
				v := s.values[i]
				var y0, y1 float64
				if v > 0 {
					y0, y1 = pos, pos+v
					pos += v
				} else {
					y0, y1 = neg+v, neg
					neg += v
				}
				fmt.Fprintf(&b, `<rect x="%s" y="%s" width="%s" height="%s" fill="%s"><title>%s %s: %s</title></rect>`,
					num(x0+band*0.15), num(py(y1)), num(bw), num(py(y0)-py(y1)), hexColor(s.color), esc(cat), esc(s.label), fmtValue(v))
			}
			continue
		}
		bw := band * 0.8 / float64(max(len(c.series), 1))
		for j, s := range c.series {
			if i >= len(s.values) || math.IsNaN(s.values[i]) {
				continue
			}
			v := s.values[i]
			x := x0 + band*0.1 + float64(j)*bw
			top, bot := py(math.Max(v, 0)), py(math.Min(v, 0))
			fmt.Fprintf(&b, `<rect x="%s" y="%s" width="%s" height="%s" fill="%s"><title>%s %s: %s</title></rect>`,
				num(x), num(top), num(math.Max(bw-1, 0.5)), num(bot-top), hexColor(s.color), esc(cat), esc(s.label), fmtValue(v))
			if s.err != nil && i < len(s.err) && s.err[i] > 0 {
				xm := x + bw/2
				fmt.Fprintf(&b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"/>`, num(xm), num(py(v-s.err[i])), num(xm), num(py(v+s.err[i])), hexColor(colAxis))
			}
		}
	}
	if ya.lo < 0 {
		fmt.Fprintf(&b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"/>`, num(f.left), num(py(0)), num(f.right), num(py(0)), hexColor(colAxis))
	}
	if o := c.overlay; o != nil && len(o.x) > 0 {
		col := hexColor(o.color)
		var pts strings.Builder
		for i := range o.x {
			fmt.Fprintf(&pts, "%s,%s ", num(f.left+(o.x[i]+0.5)*band), num(py(o.y[i])))
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="1.5"%s/>`, strings.TrimSpace(pts.String()), col, dashAttr(o.dash))
		if len(o.x) <= maxMarkers {
			for i := range o.x {
				cat := ""
				if k := int(o.x[i]); k >= 0 && k < n {
					cat = c.categories[k]
				}
				fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="2.2" fill="%s"><title>%s %s: %s</title></circle>`,
					num(f.left+(o.x[i]+0.5)*band), num(py(o.y[i])), col, esc(cat), esc(o.label), fmtValue(o.y[i]))
			}
		}
	}
	svgFrameEnd(&b, f, c.xLabel)
	return b.String()
}
