// Package geneval owns GenEval's scoring rules over object detections: per-class confidence
// filtering, the include/exclude/count/color/position clauses of a prompt's metadata, GenEval's
// strict accuracy, and Flow-GRPO's partial reward. It is model-free: detections come in as
// boxes, scores and class names; colours come from a caller-supplied classifier.
//
// Metadata is GenEval's evaluation_metadata.jsonl format, e.g.
//
//	{"tag": "position", "prompt": "a photo of a dog right of a cup",
//	 "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]}
package geneval

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Tags are GenEval's six task tags.
var Tags = []string{"single_object", "two_object", "counting", "colors", "position", "color_attr"}

// Colors are GenEval's colour vocabulary.
var Colors = []string{"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"}

// Relations are the position relations GenEval uses.
var Relations = []string{"left of", "right of", "above", "below"}

// Detection is one detected object. Box is [x0, y0, x1, y1] in image pixels.
type Detection struct {
	Class string
	Score float32
	Box   [4]float64
	// Mask is an optional per-pixel mask (image height×width, true inside the object).
	Mask []bool
}

// Clause is one entry of a metadata `include` or `exclude` list.
type Clause struct {
	Class string
	Count int
	Color string // "" when the clause has no colour
	// Position, when set, requires every counted object to be Relation of every object of
	// include group Group (an index into the include list).
	Position *Position
}

// Position is a clause's ["relation", group] pair.
type Position struct {
	Relation string
	Group    int
}

// Metadata is one prompt's GenEval specification.
type Metadata struct {
	Tag     string
	Prompt  string
	Include []Clause
	Exclude []Clause
}

// ParseMetadata reads GenEval metadata from a decoded JSON or TOML value (numbers may be
// float64 or int64).
func ParseMetadata(m map[string]any) (Metadata, error) {
	var md Metadata
	tag, ok := m["tag"].(string)
	if !ok {
		return md, fmt.Errorf("geneval metadata: field tag: got %T, want a string", m["tag"])
	}
	md.Tag = tag
	md.Prompt, _ = m["prompt"].(string)
	for _, part := range []string{"include", "exclude"} {
		raw, present := m[part]
		if !present {
			continue
		}
		list, ok := toList(raw)
		if !ok {
			return md, fmt.Errorf("geneval metadata: field %s: got %T, want a list", part, raw)
		}
		for i, item := range list {
			obj, ok := item.(map[string]any)
			if !ok {
				return md, fmt.Errorf("geneval metadata: %s[%d]: got %T, want an object", part, i, item)
			}
			c, err := parseClause(obj)
			if err != nil {
				return md, fmt.Errorf("geneval metadata: %s[%d]: %w", part, i, err)
			}
			if part == "include" {
				if c.Position != nil && (c.Position.Group < 0 || c.Position.Group >= i) {
					return md, fmt.Errorf("geneval metadata: include[%d].position: group %d, want an earlier include index in 0..%d", i, c.Position.Group, i-1)
				}
				md.Include = append(md.Include, c)
			} else {
				md.Exclude = append(md.Exclude, c)
			}
		}
	}
	return md, nil
}

func toList(v any) ([]any, bool) {
	switch l := v.(type) {
	case []any:
		return l, true
	case []map[string]any:
		out := make([]any, len(l))
		for i := range l {
			out[i] = l[i]
		}
		return out, true
	}
	return nil, false
}

func toInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		if n >= math.MinInt32 && n <= math.MaxInt32 {
			return int(n), true
		}
	case float64:
		// Bounded first: converting a float beyond int's range is implementation-defined.
		if n == math.Trunc(n) && n >= math.MinInt32 && n <= math.MaxInt32 {
			return int(n), true
		}
	}
	return 0, false
}

func parseClause(obj map[string]any) (Clause, error) {
	var c Clause
	var ok bool
	if c.Class, ok = obj["class"].(string); !ok || c.Class == "" {
		return c, fmt.Errorf("field class: got %v, want a class name", obj["class"])
	}
	if c.Count, ok = toInt(obj["count"]); !ok || c.Count < 1 {
		return c, fmt.Errorf("field count: got %v, want an integer >= 1", obj["count"])
	}
	if v, present := obj["color"]; present {
		if c.Color, ok = v.(string); !ok || !contains(Colors, c.Color) {
			return c, fmt.Errorf("field color: got %v, want one of %s", v, strings.Join(Colors, ", "))
		}
	}
	if v, present := obj["position"]; present {
		l, ok := toList(v)
		if !ok || len(l) != 2 {
			return c, fmt.Errorf("field position: got %v, want [relation, group]", v)
		}
		rel, ok1 := l[0].(string)
		group, ok2 := toInt(l[1])
		if !ok1 || !ok2 || !contains(Relations, rel) {
			return c, fmt.Errorf("field position: got %v, want [one of %q, group index]", v, Relations)
		}
		c.Position = &Position{Relation: rel, Group: group}
	}
	return c, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Options are GenEval's detection-filtering constants.
type Options struct {
	// Threshold is the minimum detection score (default 0.3). It is float64, as GenEval's is
	// Python's: a float32 score of exactly float32(0.3) passes it.
	Threshold float64 `toml:"threshold"`
	// CountingThreshold replaces Threshold for the "counting" tag (default 0.9).
	CountingThreshold float64 `toml:"counting_threshold"`
	// MaxObjects keeps at most this many detections per class (default 16).
	MaxObjects int `toml:"max_objects"`
	// MaxOverlap is the per-class NMS IoU limit; 1 (default) disables NMS.
	MaxOverlap float64 `toml:"max_overlap"`
	// PositionThreshold is the fraction of the summed box sizes an offset must exceed to
	// count as a relation (default 0.1).
	PositionThreshold float64 `toml:"position_threshold"`
}

// Defaults fills zero fields with GenEval's values.
func (o Options) Defaults() Options {
	if o.Threshold == 0 {
		o.Threshold = 0.3
	}
	if o.CountingThreshold == 0 {
		o.CountingThreshold = 0.9
	}
	if o.MaxObjects == 0 {
		o.MaxObjects = 16
	}
	if o.MaxOverlap == 0 {
		o.MaxOverlap = 1
	}
	if o.PositionThreshold == 0 {
		o.PositionThreshold = 0.1
	}
	return o
}

// Validate checks defaulted options.
func (o Options) Validate() error {
	if !(o.Threshold > 0 && o.Threshold < 1) || !(o.CountingThreshold > 0 && o.CountingThreshold < 1) {
		return fmt.Errorf("geneval.threshold/counting_threshold: got %v/%v, want in (0,1)", o.Threshold, o.CountingThreshold)
	}
	if o.MaxObjects < 1 {
		return fmt.Errorf("geneval.max_objects: got %d, want >= 1", o.MaxObjects)
	}
	if !(o.MaxOverlap > 0 && o.MaxOverlap <= 1) {
		return fmt.Errorf("geneval.max_overlap: got %v, want in (0,1]", o.MaxOverlap)
	}
	if !(o.PositionThreshold >= 0 && o.PositionThreshold < 1) {
		return fmt.Errorf("geneval.position_threshold: got %v, want in [0,1)", o.PositionThreshold)
	}
	return nil
}

// Select groups detections by class, keeping per class those above the tag's threshold,
// most confident first, at most MaxObjects, after NMS at MaxOverlap (GenEval's evaluate_image).
func Select(dets []Detection, tag string, o Options) map[string][]Detection {
	th := o.Threshold
	if tag == "counting" {
		th = o.CountingThreshold
	}
	byClass := map[string][]Detection{}
	for _, d := range dets {
		if float64(d.Score) > th {
			byClass[d.Class] = append(byClass[d.Class], d)
		}
	}
	for class, list := range byClass {
		sort.SliceStable(list, func(i, j int) bool { return list[i].Score > list[j].Score })
		if len(list) > o.MaxObjects {
			list = list[:o.MaxObjects]
		}
		var kept []Detection
		for len(list) > 0 {
			best := list[0]
			kept = append(kept, best)
			rest := list[:0:0]
			for _, d := range list[1:] {
				if o.MaxOverlap == 1 || IoU(best.Box, d.Box) < o.MaxOverlap {
					rest = append(rest, d)
				}
			}
			list = rest
		}
		byClass[class] = kept
	}
	return byClass
}

// IoU is GenEval's intersection over union with inclusive pixel boxes (+1 on each side).
func IoU(a, b [4]float64) float64 {
	area := func(x0, y0, x1, y1 float64) float64 { return math.Max(x1-x0+1, 0) * math.Max(y1-y0+1, 0) }
	i := area(math.Max(a[0], b[0]), math.Max(a[1], b[1]), math.Min(a[2], b[2]), math.Min(a[3], b[3]))
	u := area(a[0], a[1], a[2], a[3]) + area(b[0], b[1], b[2], b[3]) - i
	if u == 0 {
		return 0
	}
	return i / u
}

// RelativePosition gives the relations of box a to box b: the centre offset, shrunk towards
// zero by threshold·(size a + size b) per axis, normalised by the raw offset's length; a
// component beyond ±0.5 is a relation ("left of" when a is left of b; y grows downwards).
func RelativePosition(a, b [4]float64, threshold float64) map[string]bool {
	rel := map[string]bool{}
	off := [2]float64{(a[0]+a[2])/2 - (b[0]+b[2])/2, (a[1]+a[3])/2 - (b[1]+b[3])/2}
	dim := [2]float64{math.Abs(a[2]-a[0]) + math.Abs(b[2]-b[0]), math.Abs(a[3]-a[1]) + math.Abs(b[3]-b[1])}
	var rev [2]float64
	for i := range rev {
		rev[i] = math.Max(math.Abs(off[i])-threshold*dim[i], 0) * sign(off[i])
	}
	if math.Abs(rev[0]) < 1e-3 && math.Abs(rev[1]) < 1e-3 {
		return rel
	}
	norm := math.Hypot(off[0], off[1])
	dx, dy := rev[0]/norm, rev[1]/norm
	if dx < -0.5 {
		rel["left of"] = true
	}
	if dx > 0.5 {
		rel["right of"] = true
	}
	if dy < -0.5 {
		rel["above"] = true
	}
	if dy > 0.5 {
		rel["below"] = true
	}
	return rel
}

func sign(x float64) float64 {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

// ColorFunc names the colour (one of Colors) of a detected object.
type ColorFunc func(d Detection) string

// Result is the verdict on one image.
type Result struct {
	// Correct is GenEval's accuracy: every include clause has at least `count` objects (with
	// colour and position holding for the most confident `count`), and no exclude clause
	// has `count` or more.
	Correct bool
	// Strict is Flow-GRPO's strict accuracy: counts must be exact, colour counts exact.
	Strict bool
	// Score is Flow-GRPO's partial reward: the mean of the per-clause terms (see Evaluate).
	Score float64
	// Reason lists the failed checks, one per line.
	Reason string
}

// Evaluate applies the metadata's rules to the selected objects (as from Select, most
// confident first per class).
//
// Score follows Flow-GRPO's reward server term by term: per include clause with n found
// objects, 1 − |count − n|/count; if n ≠ count and the clause has a colour or position, an
// extra 0; otherwise for a colour clause 1 − |count − k|/count with k objects of that colour,
// and for a position clause (reached only while the clause still matches) 0 on the first
// violating pair followed — as the reference does — by 1, or just 1 when all pairs hold, or 0
// when the target group did not match. Exclude clauses do not enter the score.
func Evaluate(objects map[string][]Detection, md Metadata, color ColorFunc, o Options) Result {
	res := Result{Correct: genevalCorrect(objects, md, color, o)}
	strict := true
	var terms []float64
	var reasons []string
	groups := make([][]Detection, len(md.Include))
	for i, c := range md.Include {
		found := objects[c.Class]
		matched := true
		terms = append(terms, 1-math.Abs(float64(c.Count-len(found)))/float64(c.Count))
		if len(found) != c.Count {
			matched = false
			reasons = append(reasons, fmt.Sprintf("expected %s==%d, found %d", c.Class, c.Count, len(found)))
			if c.Color != "" || c.Position != nil {
				terms = append(terms, 0)
			}
		} else {
			if c.Color != "" {
				k := countColor(found, c.Color, color)
				terms = append(terms, 1-math.Abs(float64(c.Count-k))/float64(c.Count))
				if k != c.Count {
					matched = false
					reasons = append(reasons, fmt.Sprintf("expected %s %s==%d, found %d %s", c.Color, c.Class, c.Count, k, c.Color))
				}
			}
			if c.Position != nil && matched {
				target := groups[c.Position.Group]
				if target == nil {
					matched = false
					reasons = append(reasons, fmt.Sprintf("no target for %s to be %s", c.Class, c.Position.Relation))
					terms = append(terms, 0)
				} else {
					if !holds(found, target, c.Position.Relation, o.PositionThreshold) {
						matched = false
						reasons = append(reasons, fmt.Sprintf("expected %s %s target", c.Class, c.Position.Relation))
						terms = append(terms, 0)
					}
					terms = append(terms, 1)
				}
			}
		}
		if matched {
			groups[i] = found
		} else {
			strict = false
		}
	}
	res.Strict = strict
	if len(terms) > 0 {
		var sum float64
		for _, t := range terms {
			sum += t
		}
		res.Score = sum / float64(len(terms))
	}
	res.Reason = strings.Join(reasons, "\n")
	return res
}

// genevalCorrect is GenEval's own evaluate(): at-least counts over the top-count objects.
func genevalCorrect(objects map[string][]Detection, md Metadata, color ColorFunc, o Options) bool {
	correct := true
	groups := make([][]Detection, len(md.Include))
	for i, c := range md.Include {
		found := objects[c.Class]
		if len(found) > c.Count {
			found = found[:c.Count]
		}
		matched := len(found) >= c.Count
		if matched && c.Color != "" && countColor(found, c.Color, color) < c.Count {
			matched = false
		}
		if matched && c.Position != nil {
			target := groups[c.Position.Group]
			matched = target != nil && holds(found, target, c.Position.Relation, o.PositionThreshold)
		}
		if matched {
			groups[i] = found
		} else {
			correct = false
		}
	}
	for _, c := range md.Exclude {
		if len(objects[c.Class]) >= c.Count {
			correct = false
		}
	}
	return correct
}

func countColor(found []Detection, want string, color ColorFunc) int {
	k := 0
	for _, d := range found {
		if color != nil && color(d) == want {
			k++
		}
	}
	return k
}

func holds(found, target []Detection, relation string, threshold float64) bool {
	for _, a := range found {
		for _, b := range target {
			if !RelativePosition(a.Box, b.Box, threshold)[relation] {
				return false
			}
		}
	}
	return true
}
