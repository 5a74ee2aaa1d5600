package report

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
)

// fakeRun is a run directory the test writes itself.
type fakeRun struct {
	name    string
	config  string   // config.toml; "" writes none
	metrics []string // metrics.jsonl lines
	psi     string   // psi.json; "" writes none
	samples []string // names of PNG grids under samples/
}

func (f fakeRun) write(t *testing.T, root string) string {
	t.Helper()
	dir := filepath.Join(root, f.name)
	must(t, os.MkdirAll(filepath.Join(dir, "samples"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "metrics.jsonl"), []byte(strings.Join(f.metrics, "\n")+"\n"), 0o644))
	if f.config != "" {
		must(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(f.config), 0o644))
	}
	if f.psi != "" {
		must(t, os.WriteFile(filepath.Join(dir, "psi.json"), []byte(f.psi), 0o644))
	}
	for i, s := range f.samples {
		must(t, os.WriteFile(filepath.Join(dir, "samples", s), tinyPNG(t, uint8(40*i)), 0o644))
	}
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// tinyPNG is a 4×3 PNG whose red channel is red, so grids can be told apart.
func tinyPNG(t *testing.T, red uint8) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 4, 3))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+3] = red, 0xff
	}
	var b bytes.Buffer
	must(t, png.Encode(&b, img))
	return b.Bytes()
}

var denseOnMetrics = []string{
	`{"epoch":0,"eval_reward_mean":0.30,"eval/ocr":0.30}`,
	`{"epoch":1,"samples":64,"reward_mean":0.31,"reward_std":0.2,"reward/ocr":0.31,"loss":0.01,"policy_loss":0.01,"kl":0.0002,"approx_kl":1e-6,"clip_frac":0.1,"grad_norm":0.5,` +
		`"dense_pos_frac":[0.5,0.6,0.4],"dense_delta_mean":[0.01,0.02,-0.01],"dense_delta_std":[0.1,0.1,0.1],` +
		`"query_r_corr":[1,0.8,null],"query_r_mae":[0,0.1,0],"query_frac":[1,0.5,1],"query_delta_sign":[0.75,0.5],"query_delta_corr":[0.5,0.5],"query_delta_zero":[0.25,0],"query_delta_sign_moved":[0.5,null],"scored_images":96,` +
		`"stage_seconds":{"rollout":3.1,"lookahead":2.0,"decode":0.5,"score":1.2,"train":4.0},"wall_seconds":11.2,"elapsed_seconds":11.2,"samples_per_second":5.7,"dropped":2}`,
	``,
	`{"epoch":2,"samples":128,"reward_mean":0.41,"reward_std":0.2,"loss":0.02,"kl":0.0003,"clip_frac":0.2,` +
		`"dense_pos_frac":[0.7,0.2,0.6],"dense_delta_mean":[0.03,0.0,0.01],"dense_delta_std":[0.1,0.2,0.1],"eval_reward_mean":0.45,"eval/ocr":0.45,` +
		`"query_r_corr":[1,0.6,null],"query_r_mae":[0,0.3,0],"query_frac":[1,0.5,1],"query_delta_sign":[0.25,0.5],"query_delta_corr":[0.3,null],"query_delta_zero":[0.25,0.5],"query_delta_sign_moved":[0.25,null],` +
		`"stage_seconds":{"rollout":3.0,"lookahead":2.1,"decode":0.4,"score":1.1,"train":4.2},"wall_seconds":11.0,"elapsed_seconds":22.2,"samples_per_second":5.8}`,
}

var denseOffMetrics = []string{
	`{"epoch":1,"samples":64,"reward_mean":0.30,"reward_std":0.1,"loss":0.03,"stage_seconds":{"rollout":3.0,"decode":0.5,"score":1.0,"train":4.0},"wall_seconds":8.7}`,
	`{"epoch":2,"samples":128,"reward_mean":0.35,"reward_std":0.1,"loss":0.02,"stage_seconds":{"rollout":3.0,"decode":0.5,"score":1.0,"train":4.0},"wall_seconds":8.6}`,
}

const psiJSON = `{"sigmas":[1,0.66,0.33,0],"start":[0.7,0.5,0.35],"psi":[0.72,0.49,0.36],
"iterations":[{"iteration":1,"psi":[0.71,0.49,0.36],"pos":[10,20,15],"neg":[22,12,17]},{"iteration":2,"psi":[0.72,0.49,0.36],"pos":[15,16,16],"neg":[17,16,16]}]}`

func twoRuns(t *testing.T) (on, off string) {
	root := t.TempDir()
	on = fakeRun{name: "dense-run", config: "[dense]\nenabled = true\nlookahead = 0\n", metrics: denseOnMetrics, psi: psiJSON,
		samples: []string{"epoch-0002.png", "eval-0002.png", "epoch-0001.png", "before-after.png", "eval-0000.png"}}.write(t, root)
	off = fakeRun{name: "sparse-run", config: "[dense]\nenabled = false\n", metrics: denseOffMetrics,
		samples: []string{"epoch-0002.png"}}.write(t, root)
	return on, off
}

func TestWriteHTML(t *testing.T) {
	on, off := twoRuns(t)
	out := filepath.Join(t.TempDir(), "report.html")
	must(t, Write(context.Background(), []string{on, off}, out))
	data, err := os.ReadFile(out)
	must(t, err)
	html := string(data)
	for _, want := range []string{
		"dense-run (dense on)", "sparse-run (dense off)", "<svg", `id="psi"`, "ψ(k): start vs calibrated",
		"reward_mean ± reward_std vs epoch", "reward_mean ± reward_std vs samples", "eval_reward_mean vs epoch",
		"dense_pos_frac per step", "dense_delta_mean per step", "mean of 2 epochs", "stage seconds per epoch",
		"lookahead", "loss vs epoch", "clip_frac vs epoch",
		// The ψ table: iteration 1 has mean ψ (0.71+0.49+0.36)/3 = 0.52, Σpos = 45, Σneg = 51,
		// max |pos−neg| = |10−22| = 12.
		"<td>1</td><td>0.52</td><td>45</td><td>51</td><td>12</td>",
		// The predicted-reward table, means of the two audited epochs; R_2's correlation is
		// undefined in both, and there is no ΔR_2 (two trained steps). Sign agreement where
		// ΔR_k moved: (0.5 + 0.25)/2 at k = 0; at k = 1 no scored ΔR_1 moved in either epoch.
		"mean of 2 audited epochs", "<tr><td>0</td><td>1.000</td><td>1.000</td><td>0.000</td><td>0.500</td><td>0.400</td><td>0.250</td><td>0.375</td></tr>",
		"<tr><td>1</td><td>0.500</td><td>0.700</td><td>0.200</td><td>0.500</td><td>0.500</td><td>0.250</td><td>–</td></tr>",
		"<tr><td>2</td><td>1.000</td><td>–</td><td>0.000</td><td></td><td></td><td></td><td></td></tr>",
		"sparse-run (dense off): no audited epoch with predicted rewards",
		// sparse-run has neither psi.json nor dense statistics: notes, not errors.
		"sparse-run (dense off): no psi.json", "sparse-run (dense off): no per-step dense statistics",
		"sparse-run: no evaluation logged",
		// The eval summary: first (epoch 0) and last.
		"0.3 (epoch 0) → 0.45 (epoch 2)",
	} {
		if !strings.Contains(html, esc(want)) && !strings.Contains(html, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Self-contained: no scripts, no external references.
	for _, bad := range []string{"<script", `src="http`, `href="http`, "@import"} {
		if strings.Contains(html, bad) {
			t.Errorf("report contains %q", bad)
		}
	}
	// Every SVG is well-formed XML.
	svgs := regexp.MustCompile(`(?s)<svg .*?</svg>`).FindAllString(html, -1)
	if len(svgs) < 10 {
		t.Errorf("got %d charts, want at least 10", len(svgs))
	}
	for i, s := range svgs {
		d := xml.NewDecoder(strings.NewReader(s))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("svg %d is not well-formed: %v\n%s", i, err, s)
			}
		}
	}
	// Every grid of each run is embedded, byte for byte: the before/after grid, the evaluation
	// grids, the training grids.
	imgs := regexp.MustCompile(`data:image/png;base64,([A-Za-z0-9+/=]+)`).FindAllStringSubmatch(html, -1)
	order := []string{filepath.Join(on, "samples", "before-after.png"), filepath.Join(on, "samples", "eval-0000.png"),
		filepath.Join(on, "samples", "eval-0002.png"), filepath.Join(on, "samples", "epoch-0001.png"),
		filepath.Join(on, "samples", "epoch-0002.png"), filepath.Join(off, "samples", "epoch-0002.png")}
	if len(imgs) != len(order) {
		t.Fatalf("got %d embedded images, want %d", len(imgs), len(order))
	}
	for i, want := range order {
		got, err := base64.StdEncoding.DecodeString(imgs[i][1])
		must(t, err)
		wantData, err := os.ReadFile(want)
		must(t, err)
		if !bytes.Equal(got, wantData) {
			t.Errorf("image %d is not %s", i, want)
		}
	}
	// No temporary file is left next to the report.
	entries, err := os.ReadDir(filepath.Dir(out))
	must(t, err)
	if len(entries) != 1 {
		t.Errorf("output directory holds %d entries, want only report.html", len(entries))
	}
}

func TestWriteErrors(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		name    string
		metrics []string
		config  string
		want    []string
	}{
		{"malformed line", []string{`{"epoch":1,"reward_mean":0.1}`, ``, `{"epoch":2,"reward_mean":0.2`},
			"", []string{"metrics.jsonl:3:", "unexpected end of JSON input"}},
		{"missing epoch", []string{`{"reward_mean":0.1}`}, "", []string{"metrics.jsonl:1:", `missing field "epoch"`}},
		{"fractional epoch", []string{`{"epoch":1.5}`}, "", []string{"metrics.jsonl:1:", "field epoch"}},
		{"string reward", []string{`{"epoch":1}`, `{"epoch":2,"reward_mean":"high"}`}, "", []string{"metrics.jsonl:2:", "field reward_mean"}},
		{"vector not an array", []string{`{"epoch":1,"dense_pos_frac":0.5}`}, "", []string{"metrics.jsonl:1:", "field dense_pos_frac"}},
		{"stages not an object", []string{`{"epoch":1,"stage_seconds":[1,2]}`}, "", []string{"metrics.jsonl:1:", "field stage_seconds"}},
		{"bad config", []string{`{"epoch":1}`}, "[dense\n", []string{"config.toml"}},
		{"dense not a bool", []string{`{"epoch":1}`}, "[dense]\nenabled = 1\n", []string{"config.toml", "dense.enabled", "want a boolean"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeRun{name: "run" + string(rune('a'+i)), metrics: tc.metrics, config: tc.config}.write(t, root)
			out := filepath.Join(root, "report.html")
			err := Write(context.Background(), []string{dir}, out)
			if err == nil {
				t.Fatal("got no error")
			}
			for _, w := range append(tc.want, dir) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("report written despite the error")
			}
		})
	}
	if err := Write(context.Background(), []string{filepath.Join(root, "absent")}, filepath.Join(root, "r.html")); err == nil ||
		!strings.Contains(err.Error(), "metrics.jsonl") {
		t.Errorf("absent run: got %v, want an error naming metrics.jsonl", err)
	}
	if err := Write(context.Background(), nil, filepath.Join(root, "r.html")); err == nil {
		t.Error("no runs: got no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	on, _ := twoRuns(t)
	if err := Write(ctx, []string{on}, filepath.Join(root, "r.html")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: got %v, want context.Canceled", err)
	}
}

func TestLoadRun(t *testing.T) {
	root := t.TempDir()
	dir := fakeRun{name: "r", config: "[sampler]\nsteps = 10\n", metrics: []string{
		`{"epoch":2,"reward_mean":0.5,"kl":null,"prompt":"a sign","flag":true,"custom":3}`,
		`{"epoch":1,"reward_mean":0.1}`,
		`{"epoch":2,"reward_mean":0.6}`, // a resumed run re-wrote epoch 2: the later line wins
	}, samples: []string{"epoch-0010.png", "epoch-0009.png", "epoch-0002.png"}}.write(t, root)
	r, err := LoadRun(dir)
	must(t, err)
	if r.Name != "r" || r.Dense != "" || r.Label() != "r" || r.Psi != nil {
		t.Errorf("run %+v: want name r, dense unknown, no psi", r)
	}
	if len(r.Samples) != 3 || filepath.Base(r.Samples[0]) != "epoch-0002.png" || filepath.Base(r.Samples[2]) != "epoch-0010.png" {
		t.Errorf("samples %v, want the three grids by name", r.Samples)
	}
	if len(r.Epochs) != 2 || r.Epochs[0].Epoch != 1 || r.Epochs[1].Epoch != 2 {
		t.Fatalf("epochs %+v, want 1 and 2 in order", r.Epochs)
	}
	if v, _ := r.Epochs[1].Value("reward_mean"); v != 0.6 {
		t.Errorf("epoch 2 reward_mean %v, want the later line's 0.6", v)
	}
	first := fakeRun{name: "s", metrics: []string{`{"epoch":2,"reward_mean":0.5,"kl":null,"prompt":"a sign","custom":3}`}}.write(t, root)
	r, err = LoadRun(first)
	must(t, err)
	e := r.Epochs[0]
	if _, ok := e.Value("kl"); ok {
		t.Error("kl null: want absent")
	}
	if v, ok := e.Value("custom"); !ok || v != 3 {
		t.Errorf("custom %v %v: unknown numeric fields are kept", v, ok)
	}
	if _, ok := e.Scalars["prompt"]; ok {
		t.Error("prompt: a string field must be skipped")
	}
}

func TestRunLabels(t *testing.T) {
	root := t.TempDir()
	a := fakeRun{name: filepath.Join("x", "run"), config: "[dense]\nenabled = true\n", metrics: []string{`{"epoch":1}`}}.write(t, root)
	b := fakeRun{name: filepath.Join("y", "run"), config: "[dense]\nenabled = false\n", metrics: []string{`{"epoch":1}`}}.write(t, root)
	runs, err := loadRuns([]string{a, b})
	must(t, err)
	// Two runs named "run" are told apart by their paths.
	if runs[0].Label() != a+" (dense on)" || runs[1].Label() != b+" (dense off)" {
		t.Errorf("labels %q, %q", runs[0].Label(), runs[1].Label())
	}
}

func TestNiceAxis(t *testing.T) {
	tests := []struct {
		lo, hi   float64
		maxTicks int
		integer  bool
		want     axis
		labels   []string
	}{
		// (1−0)/5 = 0.2 is already nice.
		{0, 1, 6, false, axis{0, 1, 0.2, nil}, []string{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}},
		// 0.34/4 = 0.085 rounds up to 0.1; 0.13 floors to 0.1, 0.47 ceils to 0.5.
		{0.13, 0.47, 5, false, axis{0.1, 0.5, 0.1, nil}, []string{"0.1", "0.2", "0.3", "0.4", "0.5"}},
		// 3/7 = 0.43 → 0.5, but an integer axis steps by at least 1.
		{1, 4, 8, true, axis{1, 4, 1, nil}, []string{"1", "2", "3", "4"}},
		// 199/5 = 39.8 → 50.
		{1, 200, 6, true, axis{0, 200, 50, nil}, []string{"0", "50", "100", "150", "200"}},
		// −0.03..0.02: 0.05/5 = 0.01 is nice.
		{-0.03, 0.02, 6, false, axis{-0.03, 0.02, 0.01, nil}, []string{"-0.03", "-0.02", "-0.01", "0.00", "0.01", "0.02"}},
		// A single value 0.5 is padded by 10%: 0.45..0.55, 0.1/5 = 0.02.
		{0.5, 0.5, 6, false, axis{0.44, 0.56, 0.02, nil}, []string{"0.44", "0.46", "0.48", "0.50", "0.52", "0.54", "0.56"}},
		// No data: 0..1.
		{math.Inf(1), math.Inf(-1), 6, false, axis{0, 1, 0.2, nil}, []string{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}},
		// Tiny KL values use 'g' formatting: 3e-4/5 = 6e-5 → 1e-4.
		{0, 3e-4, 6, false, axis{0, 3e-4, 1e-4, nil}, []string{"0", "0.0001", "0.0002", "0.0003"}},
	}
	for _, tc := range tests {
		got := niceAxis(tc.lo, tc.hi, tc.maxTicks, tc.integer)
		if !near(got.lo, tc.want.lo) || !near(got.hi, tc.want.hi) || !near(got.step, tc.want.step) {
			t.Errorf("niceAxis(%v, %v, %d, %v) = [%v, %v] step %v, want [%v, %v] step %v",
				tc.lo, tc.hi, tc.maxTicks, tc.integer, got.lo, got.hi, got.step, tc.want.lo, tc.want.hi, tc.want.step)
		}
		var labels []string
		for _, v := range got.ticks {
			labels = append(labels, got.label(v))
		}
		if strings.Join(labels, " ") != strings.Join(tc.labels, " ") {
			t.Errorf("niceAxis(%v, %v) labels %v, want %v", tc.lo, tc.hi, labels, tc.labels)
		}
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestWriteCurvesPNG(t *testing.T) {
	root := t.TempDir()
	up := fakeRun{name: "up", config: "[dense]\nenabled = true\n", metrics: []string{
		`{"epoch":1,"reward_mean":0.2}`, `{"epoch":2,"reward_mean":0.4}`, `{"epoch":3,"reward_mean":0.6}`, `{"epoch":4,"reward_mean":0.8}`,
	}}.write(t, root)
	down := fakeRun{name: "down", config: "[dense]\nenabled = false\n", metrics: []string{
		`{"epoch":1,"reward_mean":0.8}`, `{"epoch":4,"reward_mean":0.2}`,
	}}.write(t, root)
	out := filepath.Join(root, "curves.png")
	must(t, WriteCurvesPNG([]string{up, down}, out, ""))
	f, err := os.Open(out)
	must(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	must(t, err)
	if b := img.Bounds(); b.Dx() != 960 || b.Dy() != 540 {
		t.Fatalf("size %v, want 960×540", b)
	}
	// Layout, by hand: y ticks 0.2..0.8 step 0.2 ("0.2" is 3 chars) → left = 12 + 3·7 + 4 = 37;
	// right = 960 − 14 = 946; both legend entries fit one row at baseline 15 + 16 = 31 → top =
	// 41; bottom = 540 − 38 = 502. x runs 1..4 (integer step 1), y 0.2..0.8, so run "up" is
	// the diagonal from (37, 502) to (946, 41).
	c := curveChart([]*Run{{Name: "up", Dense: "on", Epochs: []Epoch{{Epoch: 1, Scalars: map[string]float64{"reward_mean": 0.2}}, {Epoch: 4, Scalars: map[string]float64{"reward_mean": 0.8}}}},
		{Name: "down", Dense: "off"}}, "reward_mean", "epoch")
	fr, _, _ := c.plotLayout(960, 540)
	if fr.left != 37 || fr.right != 946 || fr.top != 41 || fr.bottom != 502 {
		t.Fatalf("plot rectangle %v..%v × %v..%v, want 37..946 × 41..502", fr.left, fr.right, fr.top, fr.bottom)
	}
	want := runColor(0)
	for _, s := range []float64{0.1, 0.2, 0.3, 0.65, 0.8, 0.9} { // away from the crossing at 0.5
		x, y := 37+s*(946-37), 502+s*(41-502)
		if !hasColorNear(img, int(x), int(y), want) {
			t.Errorf("no pixel of the curve's colour %v near (%.0f, %.0f)", want, x, y)
		}
	}
	// Far from both curves, inside the plot, the background shows: (0.1, 0.5) of the way is
	// 0.4·461 ≈ 184 px from either line.
	if got := color.RGBAModel.Convert(img.At(37+91, 502-230)).(color.RGBA); got != colBackground && got != colGrid {
		t.Errorf("pixel away from the curves is %v, want background", got)
	}
	if err := WriteCurvesPNG([]string{up}, out, "no_such"); err == nil || !strings.Contains(err.Error(), `"no_such"`) ||
		!strings.Contains(err.Error(), "reward_mean") {
		t.Errorf("unknown metric: got %v, want an error naming it and listing reward_mean", err)
	}
}

// hasColorNear reports whether a pixel within one of (x, y) is exactly c.
func hasColorNear(img image.Image, x, y int, c color.RGBA) bool {
	for dy := -1; dy <= 1; dy++ {
		for dx := -1; dx <= 1; dx++ {
			if color.RGBAModel.Convert(img.At(x+dx, y+dy)).(color.RGBA) == c {
				return true
			}
		}
	}
	return false
}

// failingSync is a temporary file whose fsync fails, as on a full or broken disk.
type failingSync struct{ *os.File }

func (failingSync) Sync() error { return errors.New("disk full") }

// A disk that fails while the report or the curves PNG is written leaves the previous file and
// no temporary file; the error names the output and the cause.
func TestWriteDiskFailure(t *testing.T) {
	on, off := twoRuns(t)
	dir := t.TempDir()
	page, curves := filepath.Join(dir, "r.html"), filepath.Join(dir, "curves.png")
	must(t, os.WriteFile(page, []byte("old page"), 0o644))
	must(t, os.WriteFile(curves, []byte("old png"), 0o644))
	defer func() { files = atomicfile.Writer{} }()

	files.CreateTemp = func(string, string) (atomicfile.File, error) { return nil, errors.New("disk full") }
	if err := Write(context.Background(), []string{on, off}, page); err == nil ||
		!strings.Contains(err.Error(), "write report") || !strings.Contains(err.Error(), page) || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("create failure: got %v, want an error naming the report and disk full", err)
	}
	files.CreateTemp = func(d, pattern string) (atomicfile.File, error) {
		f, err := os.CreateTemp(d, pattern)
		if err != nil {
			return nil, err
		}
		return failingSync{f}, nil
	}
	if err := WriteCurvesPNG([]string{on, off}, curves, ""); err == nil ||
		!strings.Contains(err.Error(), "write curves") || !strings.Contains(err.Error(), curves) || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("sync failure: got %v, want an error naming the PNG and disk full", err)
	}
	for path, want := range map[string]string{page: "old page", curves: "old png"} {
		if data, _ := os.ReadFile(path); string(data) != want {
			t.Errorf("%s holds %q after the failed write, want %q", path, data, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("failed writes left %d entries, want the 2 old files", len(entries))
	}
}

func TestASCIIText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"reward_mean ± reward_std vs epoch", "reward_mean +/- reward_std vs epoch"},
		{"ψ(k) at σ = 0.5", "psi(k) at sigma = 0.5"},
		{"café\t1", "caf??1"}, // é and the tab are outside basicfont's printable ASCII
	}
	for _, tc := range tests {
		if got := asciiText(tc.in); got != tc.want {
			t.Errorf("asciiText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A run with held-out rewards gets the training judge and the held-out judges on one chart
// (and one small chart per held-out reward); the PNG draws both with METRIC+METRIC.
func TestHeldoutCharts(t *testing.T) {
	root := t.TempDir()
	dir := fakeRun{name: "held", config: "[dense]\nenabled = true\n", metrics: []string{
		`{"epoch":0,"eval_reward_mean":0.30,"eval_heldout_mean":0.28,"heldout/judge":0.28,"heldout/judge.exact":0.1}`,
		`{"epoch":1,"samples":8,"reward_mean":0.4}`,
		`{"epoch":2,"samples":16,"reward_mean":0.5,"eval_reward_mean":0.60,"eval_heldout_mean":0.35,"heldout/judge":0.35,"heldout/judge.exact":0.2}`,
	}}.write(t, root)
	out := filepath.Join(root, "report.html")
	must(t, Write(context.Background(), []string{dir}, out))
	html, err := os.ReadFile(out)
	must(t, err)
	for _, want := range []string{"Training judge against held-out judges", "eval_reward_mean and eval_heldout_mean vs epoch", "heldout/judge.exact vs epoch"} {
		if !strings.Contains(string(html), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	png := filepath.Join(root, "heldout.png")
	must(t, WriteCurvesPNG([]string{dir}, png, "eval_reward_mean+eval_heldout_mean"))
	if st, err := os.Stat(png); err != nil || st.Size() == 0 {
		t.Errorf("curves PNG: %v", err)
	}
	if err := WriteCurvesPNG([]string{dir}, png, "eval_reward_mean+no_such"); err == nil || !strings.Contains(err.Error(), `metric "no_such" not found`) {
		t.Errorf("unknown second metric: %v", err)
	}
	// Without held-out rewards the section is left out.
	plain := fakeRun{name: "plain", metrics: denseOffMetrics}.write(t, root)
	must(t, Write(context.Background(), []string{plain}, out))
	if html, _ := os.ReadFile(out); strings.Contains(string(html), "held-out judges") {
		t.Error("a run without held-out rewards has the held-out chart")
	}
}

// A run evaluated only before and after training (as `just demo`): the eval chart shows two
// points with ± standard-error whiskers and no line between them, and the change against epoch
// 0 is a bar and a table row with its paired standard error. Totals as in runfiles.TestPaired:
// change +0.25 ± sqrt(0.625/3)/2 = 0.2282 (1.1 SEs), 2 prompts better, 1 worse, 1 same; the
// after-mean 0.6875 has SE sqrt(0.171875/3)/2 = 0.1197. A CPS run's ψ note says CPS has none.
func TestEvalBeforeAfter(t *testing.T) {
	dir := fakeRun{name: "demo", config: "[sampler]\nkind = \"cps\"\n\n[dense]\nenabled = true\n", metrics: []string{
		`{"epoch":0,"eval_reward_mean":0.4375,"eval_n":4,"eval_totals":[0,0.5,1,0.25]}`,
		`{"epoch":1,"samples":64,"reward_mean":0.5,"reward_std":0.2}`,
		`{"epoch":2,"samples":128,"reward_mean":0.6,"reward_std":0.2,"eval_reward_mean":0.6875,"eval_n":4,"eval_totals":[0.5,0.5,0.75,1]}`,
	}}.write(t, t.TempDir())
	out := filepath.Join(t.TempDir(), "report.html")
	must(t, Write(context.Background(), []string{dir}, out))
	data, err := os.ReadFile(out)
	must(t, err)
	html := string(data)
	for _, want := range []string{
		"<td>2</td><td>4</td><td>0.6875 ± 0.1197</td><td>+0.2500 ± 0.2282</td><td>+1.1</td><td>2 / 1 / 1</td>",
		esc("eval_reward_mean − epoch 0, prompt by prompt (± paired standard error)"),
		esc("demo (dense on): CPS sampling, which has no ψ"),
	} {
		if !strings.Contains(html, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	evalChart := regexp.MustCompile(`(?s)<svg [^>]*><title>eval_reward_mean ± standard error over the test prompts vs epoch</title>.*?</svg>`).FindString(html)
	if evalChart == "" {
		t.Fatal("no eval chart with standard errors")
	}
	if strings.Contains(evalChart, "<polyline") {
		t.Error("the eval chart joins two evaluations with a line")
	}
	if n := strings.Count(evalChart, `stroke-width="1.2" fill="none"/>`); n != 2 {
		t.Errorf("eval chart has %d whiskers, want 2", n)
	}
}
