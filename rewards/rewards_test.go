package rewards

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/densegrpo/densegrpo/models/onnxrt"
)

// constImage is a w×h image with every value v.
func constImage(w, h int, v float32) Image {
	im := Image{W: w, H: h, Pix: make([]float32, w*h*3)}
	for i := range im.Pix {
		im.Pix[i] = v
	}
	return im
}

const swapTOML = `
[run]            # other tables of the training config are ignored here
name = "swap"

[[reward]]
name = "brightness"
weight = 0.5
kind = "onnx-scalar"
model = "models/brightness.onnx"
batch_size = 2
concurrency = 2
[reward.image]
input = "image"
size = [8, 8]
resize = "bilinear"
[reward.output]
name = "score"
scale = 2.0
offset = 1.0
`

// TestSwapInScalarModel: a brand-new ONNX model plus a TOML block, and it scores — no Go.
func TestSwapInScalarModel(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "models"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeModel(t, filepath.Join(dir, "models"), meanModel("brightness", "image", 8, 8))
	cfgs, err := DecodeTOML([]byte(swapTOML), dir)
	if err != nil {
		t.Fatal(err)
	}
	set, err := Open(context.Background(), cfgs, dir, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if n := len(set.rewards[0].scorer.(*scalarScorer).m.(*pool).sessions); n != 2 {
		t.Errorf("concurrency = 2 opened %d sessions", n)
	}
	// Constant 16×16 images resize to constant 8×8 ones; the graph's mean is the value v;
	// reward = 2v + 1; total = 0.5·reward. Three images in batches of 2 and 1.
	images := []Image{constImage(16, 16, 0.25), constImage(16, 16, 0.5), constImage(16, 16, 0.75)}
	got, err := set.Score(context.Background(), images, make([]Prompt, 3))
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{1.5, 2, 2.5}
	for i := range want {
		if math.Abs(got.ByName["brightness"][i]-want[i]) > 1e-6 || math.Abs(got.Total[i]-0.5*want[i]) > 1e-6 {
			t.Errorf("image %d: reward %v total %v, want %v %v", i, got.ByName["brightness"][i], got.Total[i], want[i], 0.5*want[i])
		}
	}
}

// TestSwapErrors: the same model declared wrongly fails at Open, naming the reward, the
// file, the tensor, and what was expected and found.
func TestSwapErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "models"), 0o755); err != nil {
		t.Fatal(err)
	}
	model := writeModel(t, filepath.Join(dir, "models"), meanModel("brightness", "image", 8, 8))
	tests := []struct {
		name, from, to string
		want           []string
	}{
		{"wrong input name", `input = "image"`, `input = "pixel_values"`,
			[]string{`reward "brightness"`, model, `no input "pixel_values"`, "[reward.image]", "inputs are: image"}},
		{"wrong size", `size = [8, 8]`, `size = [16, 16]`,
			[]string{`reward "brightness"`, model, `input "image": got float32 [-1,3,8,8], want float32 [?,3,16,16]`, "size = [16, 16]"}},
		{"wrong layout", `resize = "bilinear"`, `layout = "NHWC"`,
			[]string{model, `input "image": got float32 [-1,3,8,8], want float32 [?,8,8,3]`}},
		{"wrong output", `name = "score"`, `name = "logits"`,
			[]string{model, `no output "logits"`, "outputs are: score"}},
		{"missing file", `models/brightness.onnx`, `models/aesthetic.onnx`,
			[]string{`reward "brightness"`, filepath.Join(dir, "models/aesthetic.onnx"), "does not exist"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := openSwapped(t, dir, tt.from, tt.to)
			if err == nil {
				t.Fatal("Open succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// TestDeclaredBeforeSession: a reward's declared tensors are checked from the file before
// ONNX Runtime reads it. The model here also holds an operator ONNX Runtime does not know, so
// it cannot be loaded at all: a config that does not fit it still gets the declaration error,
// and only a config that fits reaches ONNX Runtime (and its refusal).
func TestDeclaredBeforeSession(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "models"), 0o755); err != nil {
		t.Fatal(err)
	}
	g := meanModel("brightness", "image", 8, 8)
	g.Node("NoSuchOp", []string{"image"}, []string{"unloadable"})
	model := writeModel(t, filepath.Join(dir, "models"), g)
	for _, tt := range []struct {
		from, to, want string
	}{
		{`size = [8, 8]`, `size = [16, 16]`, `input "image": got float32 [-1,3,8,8], want float32 [?,3,16,16]`},
		{`name = "score"`, `name = "logits"`, `no output "logits"`},
		{"", "", "NoSuchOp"},
	} {
		err := openSwapped(t, dir, tt.from, tt.to)
		if err == nil {
			t.Fatalf("%s → %s: Open succeeded, want an error", tt.from, tt.to)
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), model) {
			t.Errorf("%s → %s: error %q, want it to name %s and contain %q", tt.from, tt.to, err, model, tt.want)
		}
	}
}

// openSwapped opens the rewards of swapTOML with from replaced by to (models under dir) and
// returns Open's error; a set that opens is closed.
func openSwapped(t *testing.T, dir, from, to string) error {
	t.Helper()
	cfgs, err := DecodeTOML([]byte(strings.Replace(swapTOML, from, to, 1)), dir)
	if err != nil {
		t.Fatal(err)
	}
	set, err := Open(context.Background(), cfgs, dir, onnxrt.Config{IntraOpThreads: 1})
	if err == nil {
		set.Close()
	}
	return err
}

// TestDecodePrimitive: the pipeline's config keeps the reward blocks as a primitive of its own
// document; unknown keys under them are still errors.
func TestDecodePrimitive(t *testing.T) {
	var doc struct {
		Run    struct{ Name string } `toml:"run"`
		Reward toml.Primitive        `toml:"reward"`
	}
	md, err := toml.Decode(swapTOML, &doc)
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := DecodePrimitive(md, doc.Reward)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 1 || cfgs[0].Name != "brightness" || *cfgs[0].Weight != 0.5 || cfgs[0].Image.Size[1] != 8 || *cfgs[0].Output.Scale != 2 {
		t.Errorf("decoded %+v", cfgs)
	}
	md, err = toml.Decode(strings.Replace(swapTOML, "offset = 1.0", "ofset = 1.0", 1), &doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodePrimitive(md, doc.Reward); err == nil || !strings.Contains(err.Error(), "unknown key reward.output.ofset") {
		t.Errorf("err = %v, want the unknown key named", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, toml string
		want       []string
	}{
		{"unknown kind", "[[reward]]\nname = \"aes\"\nkind = \"aesthetic-v2\"\nmodel = \"a.onnx\"\n",
			[]string{`[[reward]] "aes"`, `kind: got "aesthetic-v2"`, "clip-score, geneval, ocr, onnx-scalar"}},
		{"unknown key", "[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"a.onnx\"\n[reward.image]\nsise = [8, 8]\n",
			[]string{"unknown key reward.image.sise"}},
		{"unknown top key", "[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"a.onnx\"\nwieght = 2\n",
			[]string{"unknown key reward.wieght"}},
		{"duplicate name", "[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"a.onnx\"\n[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"b.onnx\"\n",
			[]string{`[[reward]] "a"`, "also the name of [[reward]] #1"}},
		{"field of another kind", "[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"a.onnx\"\nkeys = \"k.txt\"\n",
			[]string{`keys: set, but kind "onnx-scalar" does not use it`}},
		{"no model", "[[reward]]\nname = \"o\"\nkind = \"ocr\"\nkeys = \"k.txt\"\n",
			[]string{`[[reward]] "o"`, `model: missing, want it for kind "ocr"`}},
		{"bad resize", "[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"a.onnx\"\n[reward.image]\nresize = \"lanczos\"\n",
			[]string{`image.resize: got "lanczos"`}},
		{"clip without tokenizer", "[[reward]]\nname = \"p\"\nkind = \"clip-score\"\nmodel = \"a.onnx\"\n",
			[]string{`text.tokenizer: got "none"`}},
		{"no blocks", "[run]\nname = \"x\"\n", []string{"no [[reward]] block"}},
		{"onnx table", "[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"a.onnx\"\n[reward.onnx]\nprovider = \"gpu\"\n",
			[]string{`[[reward]] "a"`, `onnx.provider: got "gpu", want "cpu" or "cuda"`}},
		{"onnx table library", "[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"a.onnx\"\n[reward.onnx]\nlibrary = \"x.so\"\n",
			[]string{"unknown key reward.onnx.library"}},
		{"onnx table of a remote reward", "[[reward]]\nname = \"r\"\nkind = \"remote\"\n[reward.remote]\nurl = \"http://h:8000\"\nmodel = \"m\"\n[reward.onnx]\ndevice_id = 1\n",
			[]string{`[[reward]] "r"`, `onnx: set, but kind "remote" does not use it`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeTOML([]byte(tt.toml), "/cfg")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
	// Relative paths resolve against the config's directory.
	cfgs, err := DecodeTOML([]byte("[[reward]]\nname = \"a\"\nkind = \"onnx-scalar\"\nmodel = \"m/a.onnx\"\n"), "/cfg")
	if err != nil {
		t.Fatal(err)
	}
	if cfgs[0].Model != "/cfg/m/a.onnx" || *cfgs[0].Weight != 1 || cfgs[0].BatchSize != 8 {
		t.Errorf("model %q weight %v batch %d, want /cfg/m/a.onnx 1 8", cfgs[0].Model, *cfgs[0].Weight, cfgs[0].BatchSize)
	}
}

// TestSharedPreprocessingAndBadInput: two rewards declaring the same preprocessing share it;
// a third with another size adds its own; bad images and cancelled contexts are errors.
func TestSharedPreprocessingAndBadInput(t *testing.T) {
	dir := t.TempDir()
	m8 := writeModel(t, dir, meanModel("mean8", "image", 8, 8))
	m4 := writeModel(t, dir, meanModel("mean4", "image", 4, 4))
	w2 := 2.0
	mk := func(name, model string, size int, weight *float64) Config {
		c := Config{Name: name, Kind: "onnx-scalar", Model: model, Weight: weight}
		c.Image.Input = "image"
		c.Image.Size = []int{size, size}
		return c
	}
	set, err := Open(context.Background(), []Config{mk("a", m8, 8, nil), mk("b", m8, 8, &w2), mk("c", m4, 4, nil)}, dir, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	images := []Image{constImage(10, 6, 0.2), constImage(10, 6, 0.4), constImage(10, 6, 0.6)}
	got, err := set.Score(context.Background(), images, make([]Prompt, 3))
	if err != nil {
		t.Fatal(err)
	}
	// 3 images × 2 distinct preprocessings (8×8 shared by a and b, and 4×4).
	if got.Preprocessed != 6 {
		t.Errorf("preprocessed %d (image, spec) pairs, want 6", got.Preprocessed)
	}
	// Each reward is the mean v; total = v + 2v + v = 4v.
	for i, v := range []float64{0.2, 0.4, 0.6} {
		if math.Abs(got.Total[i]-4*v) > 1e-6 || math.Abs(got.ByName["b"][i]-v) > 1e-6 {
			t.Errorf("image %d: total %v b %v, want %v %v", i, got.Total[i], got.ByName["b"][i], 4*v, v)
		}
	}
	if names := strings.Join(got.Names, ","); names != "a,b,c" {
		t.Errorf("names %s, want a,b,c", names)
	}

	nan := constImage(4, 4, 0.5)
	nan.Pix[5] = float32(math.NaN())
	for _, tt := range []struct {
		images []Image
		want   string
	}{
		{[]Image{constImage(4, 4, 0), {W: 0, H: 0}}, "image 1: image size 0x0"},
		{[]Image{nan}, "image 0: image 4x4: pixel (1,0) channel 2 is NaN"},
		{[]Image{{W: 4, H: 4, Pix: make([]float32, 10)}}, "got 10 values, want 48"},
	} {
		_, err := set.Score(context.Background(), tt.images, make([]Prompt, len(tt.images)))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Score = %v, want an error containing %q", err, tt.want)
		}
	}
	if _, err := set.Score(context.Background(), images, make([]Prompt, 2)); err == nil {
		t.Error("3 images, 2 prompts: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := set.Score(ctx, images, make([]Prompt, 3)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v, want context.Canceled", err)
	}
}
