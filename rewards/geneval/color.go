package geneval

import (
	"fmt"
	"math"

	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// PixelColor names the colour of one RGB pixel (values in [0,1]) in GenEval's vocabulary,
// or "" for greys, which the vocabulary lacks. Hue bands in degrees: red <15 or ≥345, orange
// 15–40 (brown when dark), yellow 40–70, green 70–165, blue 165–255, purple 255–290, pink
// 290–345 (and pale reds); value < 0.2 is black, saturation < 0.2 with value > 0.75 white.
func PixelColor(r, g, b float32) string {
	mx := max(r, g, b)
	mn := min(r, g, b)
	v := mx
	if v < 0.2 {
		return "black"
	}
	s := float32(0)
	if mx > 0 {
		s = (mx - mn) / mx
	}
	if s < 0.2 {
		if v > 0.75 {
			return "white"
		}
		return ""
	}
	var h float64
	d := float64(mx - mn)
	switch mx {
	case r:
		h = 60 * math.Mod(float64(g-b)/d, 6)
	case g:
		h = 60 * (float64(b-r)/d + 2)
	default:
		h = 60 * (float64(r-g)/d + 4)
	}
	if h < 0 {
		h += 360
	}
	switch {
	case h < 15 || h >= 345:
		if s < 0.5 && v > 0.7 {
			return "pink"
		}
		if v < 0.45 {
			return "brown"
		}
		return "red"
	case h < 40:
		if v < 0.6 {
			return "brown"
		}
		return "orange"
	case h < 70:
		return "yellow"
	case h < 165:
		return "green"
	case h < 255:
		return "blue"
	case h < 290:
		return "purple"
	default:
		return "pink"
	}
}

// ImageColor classifies a detection's colour from the image it was found in: the majority
// PixelColor over the pixels of its box (only those inside its mask when it has one). This
// replaces GenEval's CLIP zero-shot colour classifier with a model-free rule.
func ImageColor(im preprocess.Image) ColorFunc {
	return func(d Detection) string {
		x0 := max(int(math.Floor(d.Box[0])), 0)
		y0 := max(int(math.Floor(d.Box[1])), 0)
		x1 := min(int(math.Ceil(d.Box[2])), im.W)
		y1 := min(int(math.Ceil(d.Box[3])), im.H)
		votes := map[string]int{}
		for y := y0; y < y1; y++ {
			for x := x0; x < x1; x++ {
				if d.Mask != nil && (len(d.Mask) != im.W*im.H || !d.Mask[y*im.W+x]) {
					continue
				}
				p := im.Pix[(y*im.W+x)*3:]
				if c := PixelColor(p[0], p[1], p[2]); c != "" {
					votes[c]++
				}
			}
		}
		best, n := "", 0
		for _, c := range Colors { // fixed order: ties go to the earlier colour
			if votes[c] > n {
				best, n = c, votes[c]
			}
		}
		return best
	}
}

// ColorTemplates are GenEval's zero-shot prompts for the colour of an object of class: the
// classifier of colour c averages the normalised text embeddings of the three.
func ColorTemplates(class, color string) []string {
	return []string{
		fmt.Sprintf("a photo of a %s %s", color, class),
		fmt.Sprintf("a photo of a %s-colored %s", color, class),
		fmt.Sprintf("a photo of a %s object", color),
	}
}

// ColorTargets lists, per include clause with a colour, the objects whose colour GenEval
// classifies: the clause's class's `count` most confident detections (objects as from Select).
func ColorTargets(objects map[string][]Detection, md Metadata) []Detection {
	var out []Detection
	seen := map[string]bool{}
	for _, c := range md.Include {
		if c.Color == "" || seen[c.Class] {
			continue
		}
		seen[c.Class] = true
		found := objects[c.Class]
		out = append(out, found[:min(c.Count, len(found))]...)
	}
	return out
}

// pilRound is Python's round(): halves go to the even neighbour, as PIL's Image.crop rounds
// box coordinates.
func pilRound(v float64) int { return int(math.RoundToEven(v)) }

// ColorCrop is GenEval's view of a detection for the colour classifier: with a mask, the
// pixels outside it are replaced by background (GenEval's "#999"); then the box, with its
// coordinates rounded as PIL's crop does, is cut out (parts outside the image are black, as
// PIL pads them).
func ColorCrop(im preprocess.Image, d Detection, background [3]float32) preprocess.Image {
	x0, y0, x1, y1 := pilRound(d.Box[0]), pilRound(d.Box[1]), pilRound(d.Box[2]), pilRound(d.Box[3])
	w, h := max(x1-x0, 1), max(y1-y0, 1)
	out := preprocess.NewImage(w, h)
	masked := d.Mask != nil && len(d.Mask) == im.W*im.H
	for y := 0; y < h; y++ {
		sy := y0 + y
		for x := 0; x < w; x++ {
			sx := x0 + x
			if sx < 0 || sy < 0 || sx >= im.W || sy >= im.H {
				continue
			}
			o := (y*w + x) * 3
			if masked && !d.Mask[sy*im.W+sx] {
				copy(out.Pix[o:o+3], background[:])
				continue
			}
			copy(out.Pix[o:o+3], im.Pix[(sy*im.W+sx)*3:(sy*im.W+sx)*3+3])
		}
	}
	return out
}
