package geneval

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// meta parses one line of GenEval's evaluation_metadata.jsonl.
func meta(t *testing.T, line string) Metadata {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatal(err)
	}
	md, err := ParseMetadata(m)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func det(class string, score float32, x0, y0, x1, y1 float64, color string) Detection {
	// The colour travels in the Mask-free detection through the test colour function below,
	// keyed by the box's x0 (unique per test).
	colors[x0] = color
	return Detection{Class: class, Score: score, Box: [4]float64{x0, y0, x1, y1}}
}

var colors = map[float64]string{}

func colorOf(d Detection) string { return colors[d.Box[0]] }

func TestEvaluateTags(t *testing.T) {
	o := Options{}.Defaults()
	tests := []struct {
		name, metadata string
		dets           []Detection
		correct        bool
		strict         bool
		score          float64
	}{
		{
			// One dog at 0.9: include dog×1 → n = 1: term 1 − 0/1 = 1.
			name:     "single_object hit",
			metadata: `{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}`,
			dets:     []Detection{det("dog", 0.9, 10, 10, 50, 50, "")},
			correct:  true, strict: true, score: 1,
		},
		{
			// Dog at 0.25 is under the 0.3 threshold → n = 0: term 1 − 1/1 = 0.
			name:     "single_object below threshold",
			metadata: `{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}`,
			dets:     []Detection{det("dog", 0.25, 11, 10, 50, 50, "")},
			score:    0,
		},
		{
			// Bench found, clock missing: terms 1 and 0 → 0.5; not correct.
			name:     "two_object half",
			metadata: `{"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "clock", "count": 1}], "prompt": "a photo of a bench and a clock"}`,
			dets:     []Detection{det("bench", 0.8, 12, 10, 50, 50, ""), det("cup", 0.9, 13, 0, 5, 5, "")},
			score:    0.5,
		},
		{
			// Counting uses threshold 0.9: three cats at 0.95 and one at 0.85 → n = 3 of 4:
			// term 1 − 1/4 = 0.75. Neither accurate.
			name:     "counting short",
			metadata: `{"tag": "counting", "include": [{"class": "cat", "count": 4}], "exclude": [{"class": "cat", "count": 5}], "prompt": "a photo of four cats"}`,
			dets: []Detection{det("cat", 0.95, 14, 0, 10, 10, ""), det("cat", 0.95, 15, 0, 10, 10, ""),
				det("cat", 0.95, 16, 0, 10, 10, ""), det("cat", 0.85, 17, 0, 10, 10, "")},
			score: 0.75,
		},
		{
			// Five cats for "four": GenEval's at-least rule passes the include but the exclude
			// (count 5: fail when ≥ 5 found) fails it; Flow-GRPO's strict needs exactly 4;
			// term 1 − |4 − 5|/4 = 0.75.
			name:     "counting over",
			metadata: `{"tag": "counting", "include": [{"class": "cat", "count": 4}], "exclude": [{"class": "cat", "count": 5}], "prompt": "a photo of four cats"}`,
			dets: []Detection{det("cat", 0.95, 18, 0, 10, 10, ""), det("cat", 0.95, 19, 0, 10, 10, ""),
				det("cat", 0.95, 20, 0, 10, 10, ""), det("cat", 0.95, 21, 0, 10, 10, ""), det("cat", 0.95, 22, 0, 10, 10, "")},
			score: 0.75,
		},
		{
			// Colors: a blue car: count term 1, colour term 1 − 0/1 = 1 → mean 1.
			name:     "colors hit",
			metadata: `{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}], "prompt": "a photo of a blue car"}`,
			dets:     []Detection{det("car", 0.9, 23, 0, 10, 10, "blue")},
			correct:  true, strict: true, score: 1,
		},
		{
			// A red car for "blue": count term 1, colour term 0 → 0.5.
			name:     "colors wrong",
			metadata: `{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}], "prompt": "a photo of a blue car"}`,
			dets:     []Detection{det("car", 0.9, 24, 0, 10, 10, "red")},
			score:    0.5,
		},
		{
			// Position: dog right of cup. Cup box [0,0,10,10] centre (5,5), dog [40,0,50,10]
			// centre (45,5): offset (40,0), shrunk by 0.1·(10+10) = 2 → (38,0)/40 → dx 0.95 >
			// 0.5: "right of". Terms: cup 1; dog count 1, position 1 → mean 1.
			name:     "position hit",
			metadata: `{"tag": "position", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], "prompt": "a photo of a dog right of a cup"}`,
			dets:     []Detection{det("cup", 0.9, 0, 0, 10, 10, ""), det("dog", 0.9, 40, 0, 50, 10, "")},
			correct:  true, strict: true, score: 1,
		},
		{
			// Dog left of the cup instead: terms cup 1, dog count 1, position 0 then 1 (the
			// reference appends 1 after the loop even on failure) → (1+1+0+1)/4 = 0.75.
			name:     "position wrong",
			metadata: `{"tag": "position", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], "prompt": "a photo of a dog right of a cup"}`,
			dets:     []Detection{det("cup", 0.9, 60, 0, 70, 10, ""), det("dog", 0.9, 25, 0, 35, 10, "")},
			score:    0.75,
		},
		{
			// Position with the target missing: cup term 0; dog count 1; no target → 0.
			// Mean (0+1+0)/3.
			name:     "position no target",
			metadata: `{"tag": "position", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], "prompt": "a photo of a dog right of a cup"}`,
			dets:     []Detection{det("dog", 0.9, 26, 0, 35, 10, "")},
			score:    1.0 / 3,
		},
		{
			// color_attr: a red bus and a white sheep, the sheep is brown: bus terms 1, 1;
			// sheep terms 1, 0 → 0.75.
			name:     "color_attr one wrong",
			metadata: `{"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "red"}, {"class": "sheep", "count": 1, "color": "white"}], "prompt": "a photo of a red bus and a white sheep"}`,
			dets:     []Detection{det("bus", 0.9, 27, 0, 10, 10, "red"), det("sheep", 0.9, 28, 0, 10, 10, "brown")},
			score:    0.75,
		},
		{
			// Both colours right → 1.
			name:     "color_attr hit",
			metadata: `{"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "red"}, {"class": "sheep", "count": 1, "color": "white"}], "prompt": "a photo of a red bus and a white sheep"}`,
			dets:     []Detection{det("bus", 0.9, 29, 0, 10, 10, "red"), det("sheep", 0.9, 30, 0, 10, 10, "white")},
			correct:  true, strict: true, score: 1,
		},
		{
			// Missing sheep with a colour clause: bus 1, 1; sheep count term 0 plus the extra
			// 0 for its colour → 2/4.
			name:     "color_attr missing",
			metadata: `{"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "red"}, {"class": "sheep", "count": 1, "color": "white"}], "prompt": "a photo of a red bus and a white sheep"}`,
			dets:     []Detection{det("bus", 0.9, 31, 0, 10, 10, "red")},
			score:    0.5,
		},
	}
	seenTags := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := meta(t, tt.metadata)
			seenTags[md.Tag] = true
			res := Evaluate(Select(tt.dets, md.Tag, o), md, colorOf, o)
			if res.Correct != tt.correct || res.Strict != tt.strict || math.Abs(res.Score-tt.score) > 1e-12 {
				t.Errorf("got correct=%v strict=%v score=%v (%s), want %v %v %v", res.Correct, res.Strict, res.Score, res.Reason, tt.correct, tt.strict, tt.score)
			}
		})
	}
	for _, tag := range Tags {
		if !seenTags[tag] {
			t.Errorf("tag %s has no test", tag)
		}
	}
}

func TestSelectNMSAndLimit(t *testing.T) {
	o := Options{MaxOverlap: 0.5, MaxObjects: 2}.Defaults()
	dets := []Detection{
		{Class: "dog", Score: 0.5, Box: [4]float64{0, 0, 9, 9}},
		{Class: "dog", Score: 0.9, Box: [4]float64{1, 0, 10, 9}}, // IoU with the first: 90/110 = 0.82 → suppressed
		{Class: "dog", Score: 0.7, Box: [4]float64{50, 50, 59, 59}},
		{Class: "dog", Score: 0.4, Box: [4]float64{80, 80, 89, 89}}, // fourth by score: cut by MaxObjects before NMS
	}
	got := Select(dets, "two_object", o)["dog"]
	if len(got) != 2 || got[0].Score != 0.9 || got[1].Score != 0.7 {
		t.Errorf("selected %+v, want scores 0.9 and 0.7", got)
	}
	// IoU with inclusive pixels: [0,0,9,9] and [1,0,10,9] overlap 9×10 = 90, union 100+100−90 = 110.
	if iou := IoU([4]float64{0, 0, 9, 9}, [4]float64{1, 0, 10, 9}); math.Abs(iou-90.0/110) > 1e-12 {
		t.Errorf("IoU = %v, want 90/110", iou)
	}
}

func TestRelativePosition(t *testing.T) {
	// Boxes 10 wide: centre offset (12, 0) shrunk by 0.1·20 = 2 → 10/12 = 0.83 → right of.
	if r := RelativePosition([4]float64{12, 0, 22, 10}, [4]float64{0, 0, 10, 10}, 0.1); !r["right of"] || len(r) != 1 {
		t.Errorf("got %v, want {right of}", r)
	}
	// Diagonal (10,10) offset: each shrinks to 8, /|(10,10)| = 14.14 → 0.566 both: below and right of.
	if r := RelativePosition([4]float64{10, 10, 20, 20}, [4]float64{0, 0, 10, 10}, 0.1); !r["right of"] || !r["below"] {
		t.Errorf("got %v, want right of and below", r)
	}
	// Overlapping centres within the threshold: no relation.
	if r := RelativePosition([4]float64{1, 0, 11, 10}, [4]float64{0, 0, 10, 10}, 0.1); len(r) != 0 {
		t.Errorf("got %v, want none", r)
	}
}

func TestParseMetadataErrors(t *testing.T) {
	for _, tt := range []struct{ line, want string }{
		{`{"include": []}`, "field tag"},
		{`{"tag": "x", "include": [{"class": "dog"}]}`, "include[0]: field count"},
		{`{"tag": "x", "include": [{"class": "dog", "count": 1e300}]}`, "include[0]: field count: got 1e+300, want an integer >= 1"},
		{`{"tag": "x", "include": [{"class": "dog", "count": 1, "color": "teal"}]}`, "field color"},
		{`{"tag": "x", "include": [{"class": "dog", "count": 1, "position": ["right of", 0]}]}`, "want an earlier include index"},
		{`{"tag": "x", "include": [{"class": "a", "count": 1}, {"class": "dog", "count": 1, "position": ["beside", 0]}]}`, "field position"},
	} {
		var m map[string]any
		if err := json.Unmarshal([]byte(tt.line), &m); err != nil {
			t.Fatal(err)
		}
		_, err := ParseMetadata(m)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.line, err, tt.want)
		}
	}
}

func TestPixelAndImageColor(t *testing.T) {
	for _, tt := range []struct {
		r, g, b float32
		want    string
	}{
		{1, 0, 0, "red"}, {1, 0.5, 0, "orange"}, {1, 1, 0, "yellow"}, {0, 0.8, 0, "green"},
		{0, 0, 1, "blue"}, {0.5, 0, 0.8, "purple"}, {1, 0.6, 0.8, "pink"}, {0.5, 0.3, 0.1, "brown"},
		{0.05, 0.05, 0.05, "black"}, {0.95, 0.95, 0.95, "white"}, {0.5, 0.5, 0.5, ""},
	} {
		if got := PixelColor(tt.r, tt.g, tt.b); got != tt.want {
			t.Errorf("PixelColor(%v,%v,%v) = %q, want %q", tt.r, tt.g, tt.b, got, tt.want)
		}
	}
	// A 10×10 image: left half blue, right half red; a box over columns 0..6 votes blue
	// 5·10 to red 2·10.
	im := preprocess.NewImage(10, 10)
	for y := 0; y < 10; y++ {
		for x := 0; x < 10; x++ {
			p := im.Pix[(y*10+x)*3:]
			if x < 5 {
				p[2] = 1
			} else {
				p[0] = 1
			}
		}
	}
	color := ImageColor(im)
	if got := color(Detection{Box: [4]float64{0, 0, 7, 10}}); got != "blue" {
		t.Errorf("box colour = %q, want blue", got)
	}
	// With a mask selecting only the right half, red wins.
	mask := make([]bool, 100)
	for i := range mask {
		mask[i] = i%10 >= 5
	}
	if got := color(Detection{Box: [4]float64{0, 0, 10, 10}, Mask: mask}); got != "red" {
		t.Errorf("masked colour = %q, want red", got)
	}
}
