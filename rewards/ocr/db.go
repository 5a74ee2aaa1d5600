package ocr

import (
	"fmt"
	"math"
	"sort"

	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// DBOptions are the post-processing parameters of a DB (differentiable binarisation)
// text detector, with PaddleOCR's PP-OCRv4 defaults.
type DBOptions struct {
	// Threshold binarises the probability map (default 0.3).
	Threshold float32 `toml:"threshold"`
	// BoxThreshold drops boxes whose mean probability is lower (default 0.6).
	BoxThreshold float32 `toml:"box_threshold"`
	// UnclipRatio grows each box by area·ratio/perimeter on every side (default 1.5), undoing
	// the shrink DB training applies to text regions.
	UnclipRatio float32 `toml:"unclip_ratio"`
	// MinSize drops boxes whose shorter side, in map pixels, is smaller (default 3).
	MinSize int `toml:"min_size"`
	// MaxBoxes keeps at most this many boxes, largest score first (default 100).
	MaxBoxes int `toml:"max_boxes"`
}

// Defaults fills zero fields with PaddleOCR's defaults.
func (o DBOptions) Defaults() DBOptions {
	if o.Threshold == 0 {
		o.Threshold = 0.3
	}
	if o.BoxThreshold == 0 {
		o.BoxThreshold = 0.6
	}
	if o.UnclipRatio == 0 {
		o.UnclipRatio = 1.5
	}
	if o.MinSize == 0 {
		o.MinSize = 3
	}
	if o.MaxBoxes == 0 {
		o.MaxBoxes = 100
	}
	return o
}

// Validate checks defaulted options.
func (o DBOptions) Validate() error {
	if !(o.Threshold > 0 && o.Threshold < 1) {
		return fmt.Errorf("ocr.threshold: got %v, want in (0,1)", o.Threshold)
	}
	if !(o.BoxThreshold > 0 && o.BoxThreshold < 1) {
		return fmt.Errorf("ocr.box_threshold: got %v, want in (0,1)", o.BoxThreshold)
	}
	if !(o.UnclipRatio >= 0 && o.UnclipRatio < 10) {
		return fmt.Errorf("ocr.unclip_ratio: got %v, want in [0,10)", o.UnclipRatio)
	}
	if o.MinSize < 1 || o.MaxBoxes < 1 {
		return fmt.Errorf("ocr.min_size/max_boxes: got %d/%d, want >= 1", o.MinSize, o.MaxBoxes)
	}
	return nil
}

// Box is an axis-aligned text region [X0,X1)×[Y0,Y1) in image pixels, with the mean
// detector probability inside it.
type Box struct {
	X0, Y0, X1, Y1 float64
	Score          float32
}

// DetectBoxes turns a detector probability map (h×w, row-major) into text boxes in the
// coordinates of an image of size imgW×imgH, in reading order (top to bottom; boxes whose
// tops are within 10 pixels count as one line and go left to right).
//
// Regions are the 8-connected components of prob > Threshold; each one's bounding rectangle
// is scored by the mean probability inside it, kept if ≥ BoxThreshold and its shorter side
// ≥ MinSize, then unclipped by d = area·UnclipRatio/perimeter and scaled to the image.
func DetectBoxes(prob []float32, w, h, imgW, imgH int, o DBOptions) ([]Box, error) {
	if len(prob) != w*h || w <= 0 || h <= 0 {
		return nil, fmt.Errorf("detect text boxes: map of %d values, want %d×%d", len(prob), w, h)
	}
	label := make([]int32, w*h)
	var boxes []Box
	stack := make([]int, 0, 256)
	next := int32(0)
	for start := range prob {
		if label[start] != 0 || !(prob[start] > o.Threshold) {
			continue
		}
		next++
		x0, y0, x1, y1 := w, h, -1, -1
		stack = append(stack[:0], start)
		label[start] = next
		for len(stack) > 0 {
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			px, py := p%w, p/w
			x0, y0, x1, y1 = min(x0, px), min(y0, py), max(x1, px), max(y1, py)
			for dy := -1; dy <= 1; dy++ {
				for dx := -1; dx <= 1; dx++ {
					qx, qy := px+dx, py+dy
					if qx < 0 || qy < 0 || qx >= w || qy >= h {
						continue
					}
					q := qy*w + qx
					if label[q] == 0 && prob[q] > o.Threshold {
						label[q] = next
						stack = append(stack, q)
					}
				}
			}
		}
		bw, bh := x1-x0+1, y1-y0+1
		if min(bw, bh) < o.MinSize {
			continue
		}
		var sum float64
		for y := y0; y <= y1; y++ {
			for x := x0; x <= x1; x++ {
				sum += float64(prob[y*w+x])
			}
		}
		score := float32(sum / float64(bw*bh))
		if score < o.BoxThreshold {
			continue
		}
		d := float64(bw*bh) * float64(o.UnclipRatio) / float64(2*(bw+bh))
		sx, sy := float64(imgW)/float64(w), float64(imgH)/float64(h)
		boxes = append(boxes, Box{
			X0:    math.Max((float64(x0)-d)*sx, 0),
			Y0:    math.Max((float64(y0)-d)*sy, 0),
			X1:    math.Min((float64(x1+1)+d)*sx, float64(imgW)),
			Y1:    math.Min((float64(y1+1)+d)*sy, float64(imgH)),
			Score: score,
		})
	}
	if len(boxes) > o.MaxBoxes {
		sort.SliceStable(boxes, func(i, j int) bool { return boxes[i].Score > boxes[j].Score })
		boxes = boxes[:o.MaxBoxes]
	}
	ReadingOrder(boxes)
	return boxes, nil
}

// ReadingOrder sorts boxes top to bottom, then left to right among boxes whose tops differ by
// less than 10 pixels (PaddleOCR's sorted_boxes rule).
func ReadingOrder(boxes []Box) {
	sort.SliceStable(boxes, func(i, j int) bool {
		if boxes[i].Y0 != boxes[j].Y0 {
			return boxes[i].Y0 < boxes[j].Y0
		}
		return boxes[i].X0 < boxes[j].X0
	})
	for i := 1; i < len(boxes); i++ {
		for j := i; j > 0 && math.Abs(boxes[j].Y0-boxes[j-1].Y0) < 10 && boxes[j].X0 < boxes[j-1].X0; j-- {
			boxes[j], boxes[j-1] = boxes[j-1], boxes[j]
		}
	}
}

// CropBox cuts a box out of an image (rounded outwards to whole pixels).
func CropBox(im preprocess.Image, b Box) preprocess.Image {
	return im.Crop(int(math.Floor(b.X0)), int(math.Floor(b.Y0)), int(math.Ceil(b.X1)), int(math.Ceil(b.Y1)))
}

// RecHeight is the recogniser's fixed input height.
const RecHeight = 48

// RecInput builds the recogniser batch for crops: each resized (bilinear) to height 48 and
// width ceil(48·w/h) capped at the batch width, converted to BGR (v−0.5)/0.5, and padded with
// zeros on the right to the batch width. The batch width is 48·(the largest w/h among the
// crops, at least 320/48), capped at maxWidth — PaddleOCR's resize_norm_img.
func RecInput(crops []preprocess.Image, maxWidth int) (data []float32, width int) {
	ratio := 320.0 / RecHeight
	for _, c := range crops {
		ratio = math.Max(ratio, float64(c.W)/float64(c.H))
	}
	width = min(int(math.Ceil(RecHeight*ratio)), maxWidth)
	plane := RecHeight * width
	data = make([]float32, len(crops)*3*plane)
	for i, c := range crops {
		cw := min(int(math.Ceil(RecHeight*float64(c.W)/float64(c.H))), width)
		r := preprocess.Resize(c, cw, RecHeight, preprocess.Bilinear)
		base := data[i*3*plane:]
		for ch := 0; ch < 3; ch++ {
			src := 2 - ch // BGR
			for y := 0; y < RecHeight; y++ {
				for x := 0; x < cw; x++ {
					base[ch*plane+y*width+x] = (r.Pix[(y*cw+x)*3+src] - 0.5) / 0.5
				}
			}
		}
	}
	return data, width
}
