package frozen_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/internal/frozentest"
	. "github.com/densegrpo/densegrpo/models/frozen"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/models/onnxrt/onnxrttest"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// CPU ONNX Runtime tests never skip: without the library they fail.
func TestMain(m *testing.M) { onnxrttest.Main(m, "models/frozen") }

var rt = onnxrt.Config{IntraOpThreads: 1}

func near(a, b float32) bool { return math.Abs(float64(a-b)) <= 1e-6*math.Max(1, math.Abs(float64(b))) }

func writeTextEncoder(t *testing.T, d, p, batch int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "te.onnx")
	if err := frozentest.WriteTextEncoder(path, d, p, batch); err != nil {
		t.Fatal(err)
	}
	return path
}

// The fixture computes embeds[t,j] = id_t·0.01·(j+1) and pooled[j] = Σ_t id_t·0.001·(j+1).
// Ids (models/tinyocr vocabulary): 'A' = 1, 'B' = 2, 'a' = 37, ' ' = 63, '"' = 64+1 = 65.
func TestTextEncoderValues(t *testing.T) {
	for _, tc := range []struct {
		name         string
		batchSize    int // TextEncoderOptions.BatchSize
		fixed        int // the graph's fixed batch dim, 0 = symbolic
		wantRunsCold int64
	}{
		{"one run", 0, 0, 1},        // 3 distinct prompts, default batch 64: 1 run
		{"batch 2", 2, 0, 2},        // 3 distinct prompts in runs of 2: 2 runs
		{"fixed batch 2", 0, 2, 2},  // graph batch 2: runs of 2, the last padded
		{"batch 1", 1, 0, 3},        // one run per distinct prompt
		{"fixed batch 4", 0, 4, 1},  // one run padded from 3 to 4 rows
		{"fixed batch 1", 64, 1, 3}, // a fixed graph batch overrides the option
	} {
		t.Run(tc.name, func(t *testing.T) {
			const d, p = 4, 2
			enc, err := OpenTextEncoder(writeTextEncoder(t, d, p, tc.fixed), TextEncoderOptions{Runtime: rt, BatchSize: tc.batchSize})
			if err != nil {
				t.Fatal(err)
			}
			defer enc.Close()
			if gd, gp := enc.Dims(); gd != d || gp != p {
				t.Errorf("Dims() = %d, %d, want %d, %d", gd, gp, d, p)
			}
			prompts := []string{"AB", "a", "AB", `a "B"`, "a"}
			ids := map[string][]float32{"AB": {1, 2}, "a": {37}, `a "B"`: {37, 63, 65, 2, 65}}
			sums := map[string]float32{"AB": 3, "a": 37, `a "B"`: 37 + 63 + 65 + 2 + 65}
			for round := range 2 {
				emb, pooled, err := enc.Encode(context.Background(), prompts)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(emb.Shape) != "[5 48 4]" || fmt.Sprint(pooled.Shape) != "[5 2]" {
					t.Fatalf("shapes %v %v, want [5 48 4] [5 2]", emb.Shape, pooled.Shape)
				}
				for i, pr := range prompts {
					for tok := range 48 {
						id := float32(0)
						if tok < len(ids[pr]) {
							id = ids[pr][tok]
						}
						for j := range d {
							if got, want := emb.Float32[(i*48+tok)*d+j], id*frozentest.EmbedScale(j); !near(got, want) {
								t.Fatalf("round %d: embeds[%d,%d,%d] = %v, want %v", round, i, tok, j, got, want)
							}
						}
					}
					for j := range p {
						if got, want := pooled.Float32[i*p+j], sums[pr]*frozentest.PooledScale(j); !near(got, want) {
							t.Fatalf("round %d: pooled[%d,%d] = %v, want %v", round, i, j, got, want)
						}
					}
				}
				// The second round is served from the cache: no new run.
				if got := Runs(enc); got != tc.wantRunsCold {
					t.Errorf("round %d: %d ONNX runs, want %d", round, got, tc.wantRunsCold)
				}
			}
			if enc.CacheLen() != 3 {
				t.Errorf("cache holds %d prompts, want 3", enc.CacheLen())
			}
		})
	}
}

func TestTextEncoderCacheBound(t *testing.T) {
	enc, err := OpenTextEncoder(writeTextEncoder(t, 2, 2, 0), TextEncoderOptions{Runtime: rt, CacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	ctx := context.Background()
	for i, tc := range []struct {
		prompts []string
		runs    int64
		cached  int
	}{
		{[]string{"A", "B"}, 1, 2},      // fills the cache
		{[]string{"A"}, 1, 2},           // hit
		{[]string{"C"}, 2, 1},           // full: emptied, then C cached
		{[]string{"A", "B", "C"}, 3, 2}, // C hit; A, B run, would overflow: emptied, A and B kept
	} {
		if _, _, err := enc.Encode(ctx, tc.prompts); err != nil {
			t.Fatal(err)
		}
		if Runs(enc) != tc.runs || enc.CacheLen() != tc.cached {
			t.Errorf("call %d: %d runs, %d cached; want %d, %d", i, Runs(enc), enc.CacheLen(), tc.runs, tc.cached)
		}
	}
}

// Concurrent calls agree with a serial call (run with -race to check the locking).
func TestTextEncoderConcurrent(t *testing.T) {
	enc, err := OpenTextEncoder(writeTextEncoder(t, 3, 2, 0), TextEncoderOptions{Runtime: rt, BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	prompts := []string{"A", "BB", "CCC", "DDDD", "x y", "A"}
	ref, err := OpenTextEncoder(writeTextEncoder(t, 3, 2, 0), TextEncoderOptions{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	want, _, err := ref.Encode(context.Background(), prompts)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for g := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			order := append(prompts[g:], prompts[:g]...)
			got, _, err := enc.Encode(context.Background(), order)
			if err != nil {
				errs[g] = err
				return
			}
			for i := range order {
				src := (i + g) % len(prompts)
				for k := range 48 * 3 {
					if got.Float32[i*48*3+k] != want.Float32[src*48*3+k] {
						errs[g] = fmt.Errorf("goroutine %d: prompt %q differs at %d", g, order[i], k)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// writeGraph writes a graph built by build into a temp file.
func writeGraph(t *testing.T, build func(g *onnx.Graph)) string {
	t.Helper()
	g := onnx.NewGraph("g")
	build(g)
	path := filepath.Join(t.TempDir(), "g.onnx")
	if err := (&onnx.Model{Graph: g}).WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestTextEncoderOpenErrors(t *testing.T) {
	b := onnx.Sym("batch")
	// A text encoder graph with the given input and two identity-like outputs.
	encoder := func(inName string, inType onnx.DType, l int64, pooledName string, extra bool) func(g *onnx.Graph) {
		return func(g *onnx.Graph) {
			x := g.Input(inName, inType, b, onnx.Fixed(l)[0])
			if extra {
				g.Input("attention_mask", onnx.Int64, b, onnx.Fixed(l)[0])
			}
			f := g.Op("Cast", []string{x}, onnx.AttrInt("to", int64(onnx.Float32)))
			g.Node("Unsqueeze", []string{f, g.ConstI64("ax", []int64{1}, []int64{2})}, []string{PromptEmbeds})
			g.Node("Identity", []string{f}, []string{pooledName})
			g.Output(PromptEmbeds, onnx.Float32, b, onnx.Fixed(l)[0], onnx.Fixed(1)[0])
			g.Output(pooledName, onnx.Float32, b, onnx.Fixed(l)[0])
		}
	}
	for _, tc := range []struct {
		name  string
		build func(g *onnx.Graph)
		opts  TextEncoderOptions
		want  string
	}{
		{"wrong input name", encoder("ids", onnx.Int64, 48, PooledPromptEmbeds, false), TextEncoderOptions{},
			`no input "input_ids" (want int64 [?,48]; graph inputs: ids)`},
		{"int32 ids", encoder(InputIDs, onnx.Int32, 48, PooledPromptEmbeds, false), TextEncoderOptions{},
			`input "input_ids": graph declares int32 [-1,48], want int64 [?,48]`},
		{"length 77", encoder(InputIDs, onnx.Int64, 77, PooledPromptEmbeds, false), TextEncoderOptions{},
			`input "input_ids": graph declares int64 [-1,77], want int64 [?,48]`},
		{"no pooled", encoder(InputIDs, onnx.Int64, 48, "pooled", false), TextEncoderOptions{},
			`no output "pooled_prompt_embeds" (want float32 [?,?]; graph outputs: prompt_embeds, pooled)`},
		{"extra input", encoder(InputIDs, onnx.Int64, 48, PooledPromptEmbeds, true), TextEncoderOptions{},
			`unexpected input "attention_mask" (int64 [-1,48]): this wrapper feeds only input_ids`},
		{"unknown tokenizer", encoder(InputIDs, onnx.Int64, 48, PooledPromptEmbeds, false), TextEncoderOptions{Tokenizer: "t5"},
			`unknown tokenizer "t5" (known: chars)`},
		{"max length", encoder(InputIDs, onnx.Int64, 48, PooledPromptEmbeds, false), TextEncoderOptions{MaxLength: 77},
			`max_length: got 77, want 48 (tokenizer "chars" makes 48 ids per prompt)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Runtime = rt
			checkOpenError(t, tc.build, tc.want, func(path string) error { _, err := OpenTextEncoder(path, tc.opts); return err })
		})
	}
	_, err := OpenTextEncoder(filepath.Join(t.TempDir(), "missing.onnx"), TextEncoderOptions{Runtime: rt})
	if err == nil || !strings.Contains(err.Error(), "missing.onnx: file does not exist") {
		t.Errorf("missing file: error %v", err)
	}
}

func sigmoid(v float32) float32 { return float32(1 / (1 + math.Exp(-float64(v)))) }

// The fixture decoder is image[k,y,x] = sigmoid(latent[k,y,x]) for k < 3; Decode returns HWC,
// so pixel (x,y) channel k must be sigmoid(latent[k,y,x]).
func TestVAEDecode(t *testing.T) {
	const c, h, w = 4, 2, 3
	latent := func(i int) []float32 {
		out := make([]float32, c*h*w)
		for k := range out {
			out[k] = float32(i) - 0.3*float32(k) // distinct per image, channel, row and column
		}
		return out
	}
	for _, tc := range []struct {
		name         string
		batch, fixed int
	}{{"default", 0, 0}, {"batch 2", 2, 0}, {"fixed 2", 0, 2}, {"fixed 4", 0, 4}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vae.onnx")
			if err := frozentest.WriteVAEDecoder(path, c, h, w, tc.fixed); err != nil {
				t.Fatal(err)
			}
			dec, err := OpenVAEDecoder(path, VAEOptions{Runtime: rt, BatchSize: tc.batch})
			if err != nil {
				t.Fatal(err)
			}
			defer dec.Close()
			if fmt.Sprint(dec.LatentShape()) != "[4 2 3]" {
				t.Errorf("LatentShape() = %v, want [4 2 3]", dec.LatentShape())
			}
			lat := [][]float32{latent(0), latent(1), latent(2)}
			imgs, err := dec.Decode(context.Background(), lat)
			if err != nil {
				t.Fatal(err)
			}
			if len(imgs) != 3 {
				t.Fatalf("%d images, want 3", len(imgs))
			}
			for i, im := range imgs {
				if im.W != w || im.H != h || len(im.Pix) != w*h*3 {
					t.Fatalf("image %d: %dx%d with %d values, want %dx%d", i, im.W, im.H, len(im.Pix), w, h)
				}
				for y := range h {
					for x := range w {
						for k := range 3 {
							if got, want := im.Pix[(y*w+x)*3+k], sigmoid(lat[i][(k*h+y)*w+x]); !near(got, want) {
								t.Fatalf("image %d pixel (%d,%d) channel %d = %v, want %v", i, x, y, k, got, want)
							}
						}
					}
				}
				// rewards.Image is preprocess.Image: a conversion, no copy.
				if err := preprocess.Image(im).Check(); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// An identity decoder shows the clamping to [0,1] and the NaN error.
func TestVAEDecodeClampAndNaN(t *testing.T) {
	path := writeGraph(t, func(g *onnx.Graph) {
		x := g.Input(LatentInput, onnx.Float32, onnx.Sym("b"), onnx.Sym("c"), onnx.Sym("h"), onnx.Sym("w"))
		g.Node("Identity", []string{x}, []string{ImageOutput})
		g.Output(ImageOutput, onnx.Float32, onnx.Sym("b"), onnx.Sym("c"), onnx.Sym("h"), onnx.Sym("w"))
	})
	if _, err := OpenVAEDecoder(path, VAEOptions{Runtime: rt}); err == nil || !strings.Contains(err.Error(), "dim 1 is dynamic, so the latent shape [C,h,w] must be given") {
		t.Fatalf("no latent shape: error %v", err)
	}
	dec, err := OpenVAEDecoder(path, VAEOptions{Runtime: rt, LatentShape: []int{3, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	imgs, err := dec.Decode(context.Background(), [][]float32{{-0.5, 0.25, 1.5, 0.75, 2, -1}})
	if err != nil {
		t.Fatal(err)
	}
	// [C=3,h=1,w=2]: R = (-0.5, 0.25), G = (1.5, 0.75), B = (2, -1) → clamped, HWC.
	if want := "[0 1 1 0.25 0.75 0]"; fmt.Sprint(imgs[0].Pix) != want {
		t.Errorf("pixels %v, want %s", imgs[0].Pix, want)
	}
	nan := float32(math.NaN())
	_, err = dec.Decode(context.Background(), [][]float32{{0, 0, 0, 0, 0, 0}, {0, 0, 0, nan, 0, 0}})
	if err == nil || !strings.Contains(err.Error(), "image 1: pixel (1,0) channel 1 is NaN") {
		t.Errorf("NaN: error %v", err)
	}
	_, err = dec.Decode(context.Background(), [][]float32{{0, 0}})
	if err == nil || !strings.Contains(err.Error(), "latent 0 has 2 values, want 6 (shape [3 1 2])") {
		t.Errorf("short latent: error %v", err)
	}
}

func TestVAEOpenErrors(t *testing.T) {
	b := onnx.Sym("b")
	for _, tc := range []struct {
		name  string
		build func(g *onnx.Graph)
		opts  VAEOptions
		want  string
	}{
		{"four channels out", func(g *onnx.Graph) {
			x := g.Input(LatentInput, onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(4, 2, 2)...)...)
			g.Node("Identity", []string{x}, []string{ImageOutput})
			g.Output(ImageOutput, onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(4, 2, 2)...)...)
		}, VAEOptions{}, `output "image": graph declares float32 [-1,4,2,2], want float32 [?,3,?,?]`},
		{"latent shape differs", func(g *onnx.Graph) {
			x := g.Input(LatentInput, onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(3, 2, 2)...)...)
			g.Node("Identity", []string{x}, []string{ImageOutput})
			g.Output(ImageOutput, onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(3, 2, 2)...)...)
		}, VAEOptions{LatentShape: []int{16, 2, 2}}, `input "latent": graph declares float32 [-1,3,2,2], want float32 [?,16,2,2]`},
		{"named z", func(g *onnx.Graph) {
			x := g.Input("z", onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(3, 2, 2)...)...)
			g.Node("Identity", []string{x}, []string{ImageOutput})
			g.Output(ImageOutput, onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(3, 2, 2)...)...)
		}, VAEOptions{}, `no input "latent" (want float32 [?,?,?,?]; graph inputs: z)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Runtime = rt
			checkOpenError(t, tc.build, tc.want, func(path string) error { _, err := OpenVAEDecoder(path, tc.opts); return err })
		})
	}
	// ONNX Runtime refuses the unloadable graphs: the errors above came before it read them.
	path := writeGraph(t, unloadable(func(g *onnx.Graph) {
		x := g.Input(LatentInput, onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(3, 2, 2)...)...)
		g.Node("Identity", []string{x}, []string{ImageOutput})
		g.Output(ImageOutput, onnx.Float32, append([]onnx.Dim{b}, onnx.Fixed(3, 2, 2)...)...)
	}))
	if _, err := OpenVAEDecoder(path, VAEOptions{Runtime: rt}); err == nil || !strings.Contains(err.Error(), "NoSuchOp") {
		t.Errorf("a fitting graph ONNX Runtime cannot load: error %v, want ONNX Runtime's naming NoSuchOp", err)
	}
}

// checkOpenError checks that open refuses the graph build makes with an error naming the file
// and containing want — also when the graph holds an operator ONNX Runtime cannot load, so
// the check ran before ONNX Runtime read the file.
func checkOpenError(t *testing.T, build func(g *onnx.Graph), want string, open func(path string) error) {
	t.Helper()
	for _, b := range []func(g *onnx.Graph){build, unloadable(build)} {
		path := writeGraph(t, b)
		if err := open(path); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Fatalf("error %v, want one naming %s and containing %q", err, path, want)
		}
	}
}

// unloadable adds a node of an operator ONNX Runtime does not know to the graph build makes, so
// that a test sees whether a check ran before ONNX Runtime read the file.
func unloadable(build func(g *onnx.Graph)) func(g *onnx.Graph) {
	return func(g *onnx.Graph) {
		build(g)
		g.Node("NoSuchOp", []string{g.Inputs[0].Name}, []string{"unloadable"})
	}
}
