// Package rewards owns config-driven reward models: a reward is a `[[reward]]` TOML block
// naming a kind (onnx-scalar, clip-score, ocr, geneval, remote), its ONNX graph(s) or served model, how the image is
// prepared for it, how the prompt is tokenized and how the graph's output becomes a number.
// Adding a reward model means writing such a block, never Go code.
//
// Open checks every declared input and output against the graphs before any compute is
// spent; Score batches images per reward up to batch_size, runs `concurrency` sessions per
// model, computes each distinct preprocessing once per call however many rewards share it,
// and returns every reward alone plus their weighted total. The package never imports GoMLX;
// ONNX Runtime is reached through models/onnxrt only.
package rewards

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/kserve"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

// Image is a decoded RGB image, values in [0,1], H rows of W pixels of (R, G, B).
type Image = preprocess.Image

// Prompt is what the image was generated from.
type Prompt struct {
	Text string
	// Metadata carries per-prompt task data: GenEval's `tag`, `include`, `exclude`, ….
	Metadata map[string]any
}

// Scores are the rewards of one Score call, one value per image.
type Scores struct {
	// Total is Σ weight·reward over the rewards.
	Total []float64
	// Names lists the rewards in config order.
	Names []string
	// ByName holds each reward alone (after its output scale/offset, before its weight).
	ByName map[string][]float64
	// Extra holds secondary metrics a kind reports, named "REWARD.METRIC" (e.g.
	// "geneval.strict", "ocr.exact").
	Extra map[string][]float64
	// Preprocessed counts the (image, preprocessing) pairs computed: each distinct
	// preprocessing runs once per image however many rewards share it.
	Preprocessed int
}

// Scorer is an opened reward. Score returns one value per image of the batch and optionally
// extra named metrics; it may be called from several goroutines.
type Scorer interface {
	Score(ctx context.Context, b *Batch) (values []float64, extra map[string][]float64, err error)
	Close() error
}

// PromptChecker is implemented by scorers that read prompt metadata: CheckPrompt rejects a prompt
// they could not score, so a bad prompt file fails before any image is generated.
type PromptChecker interface {
	CheckPrompt(p Prompt) error
}

// Kind turns a validated Config into a Scorer.
type Kind struct {
	// Validate checks the kind-specific fields of a defaulted Config (no file access).
	Validate func(c *Config) error
	// Open loads the models, checks their declared tensors and returns the scorer.
	Open func(ctx context.Context, c *Config, rt onnxrt.Config) (Scorer, error)
}

var kinds = map[string]Kind{}

// Register makes a kind available to `kind = "name"` blocks. It panics on a duplicate name
// (a programming error at init time).
func Register(name string, k Kind) {
	if _, dup := kinds[name]; dup {
		panic("rewards: kind registered twice: " + name)
	}
	kinds[name] = k
}

// Kinds lists the registered kind names, sorted.
func Kinds() []string {
	out := make([]string, 0, len(kinds))
	for n := range kinds {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

type reward struct {
	cfg    Config
	scorer Scorer
}

// Set is the opened rewards of a run.
type Set struct {
	rewards []reward
	onRetry func(reward string, r kserve.Retry)
}

// retryHooker is a scorer that may wait for a server (kind "remote"): hookRetries gives it the
// function its client tells of each retry.
type retryHooker interface {
	hookRetries(fn func(kserve.Retry))
}

// OnRetry makes the set tell fn of every retry of a remote reward's request, and of a request
// that succeeded after retries, with the reward's name, so that a long run can say why it
// waits. Call it before the first Score; fn may be called from several goroutines at once.
func (s *Set) OnRetry(fn func(reward string, r kserve.Retry)) { s.onRetry = fn }

// Open validates cfgs, resolves their relative paths against baseDir, opens every model and
// checks its declared inputs and outputs. On error nothing stays open.
func Open(ctx context.Context, cfgs []Config, baseDir string, rt onnxrt.Config) (*Set, error) {
	cfgs = append([]Config(nil), cfgs...)
	if err := ValidateAll(cfgs); err != nil {
		return nil, err
	}
	s := &Set{}
	for i := range cfgs {
		c := cfgs[i]
		c.ResolvePaths(baseDir)
		if err := ctx.Err(); err != nil {
			s.Close()
			return nil, err
		}
		sc, err := kinds[c.Kind].Open(ctx, &c, rt.With(c.ONNX))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("open reward %q: %w", c.Name, err)
		}
		if h, ok := sc.(retryHooker); ok {
			h.hookRetries(func(r kserve.Retry) {
				if s.onRetry != nil {
					s.onRetry(c.Name, r)
				}
			})
		}
		s.rewards = append(s.rewards, reward{cfg: c, scorer: sc})
	}
	return s, nil
}

// Names lists the rewards in config order.
func (s *Set) Names() []string {
	out := make([]string, len(s.rewards))
	for i, r := range s.rewards {
		out[i] = r.cfg.Name
	}
	return out
}

// CheckPrompt asks every reward that reads prompt metadata whether it can score p.
func (s *Set) CheckPrompt(p Prompt) error {
	for _, r := range s.rewards {
		if c, ok := r.scorer.(PromptChecker); ok {
			if err := c.CheckPrompt(p); err != nil {
				return fmt.Errorf("reward %q: %w", r.cfg.Name, err)
			}
		}
	}
	return nil
}

// Close releases every session. It is safe to call more than once.
func (s *Set) Close() error {
	var errs []error
	for _, r := range s.rewards {
		if err := r.scorer.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close reward %q: %w", r.cfg.Name, err))
		}
	}
	s.rewards = nil
	return errors.Join(errs...)
}

// Score scores images[i] against prompts[i] with every reward. A bad image (zero size,
// wrong buffer length, NaN or infinite values) is an error naming its index; a cancelled ctx
// stops the work and returns ctx's error.
func (s *Set) Score(ctx context.Context, images []Image, prompts []Prompt) (Scores, error) {
	if len(images) != len(prompts) {
		return Scores{}, fmt.Errorf("score: got %d images and %d prompts, want one prompt per image", len(images), len(prompts))
	}
	for i, im := range images {
		if err := im.Check(); err != nil {
			return Scores{}, fmt.Errorf("score: image %d: %w", i, err)
		}
	}
	n := len(images)
	out := Scores{Total: make([]float64, n), Names: s.Names(), ByName: map[string][]float64{}, Extra: map[string][]float64{}}
	if n == 0 {
		for _, name := range out.Names {
			out.ByName[name] = []float64{}
		}
		return out, nil
	}
	cache := &prepCache{images: images, entries: map[string][]*prepEntry{}}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	for _, r := range s.rewards {
		vals := make([]float64, n)
		out.ByName[r.cfg.Name] = vals
		for lo := 0; lo < n; lo += r.cfg.BatchSize {
			hi := min(lo+r.cfg.BatchSize, n)
			g.Go(func() (err error) {
				defer recoverTo(&err, r.cfg.Name)
				b := &Batch{Images: images[lo:hi], Prompts: prompts[lo:hi], cache: cache, lo: lo}
				v, extra, err := r.scorer.Score(gctx, b)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return fmt.Errorf("score reward %q, images %d..%d: %w", r.cfg.Name, lo, hi-1, err)
				}
				if len(v) != hi-lo {
					return fmt.Errorf("score reward %q: got %d values for %d images", r.cfg.Name, len(v), hi-lo)
				}
				copy(vals[lo:hi], v)
				mu.Lock()
				defer mu.Unlock()
				for k, ev := range extra {
					full := r.cfg.Name + "." + k
					if out.Extra[full] == nil {
						out.Extra[full] = make([]float64, n)
					}
					copy(out.Extra[full][lo:hi], ev)
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			return Scores{}, fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return Scores{}, err
	}
	out.Preprocessed = cache.count()
	for _, r := range s.rewards {
		w := *r.cfg.Weight
		for i, v := range out.ByName[r.cfg.Name] {
			out.Total[i] += w * v
		}
	}
	return out, nil
}

// recoverTo turns a panic in a scoring goroutine into an error with its stack, since
// errgroup does not recover panics.
func recoverTo(err *error, name string) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("score reward %q: panic: %v\n%s", name, p, debug.Stack())
	}
}

// Batch is a slice of a Score call handed to one Scorer.Score: images, their prompts and
// access to the call's shared preprocessing.
type Batch struct {
	Images  []Image
	Prompts []Prompt
	cache   *prepCache
	lo      int // index of Images[0] in the call
}

// Prepared returns image i of the batch transformed by spec (computed once per call for all
// rewards sharing the spec) and its output height and width. The slice must not be modified.
func (b *Batch) Prepared(spec preprocess.Spec, i int) (data []float32, h, w int, err error) {
	e := b.cache.entry(spec, b.lo+i)
	e.once.Do(func() {
		im := b.cache.images[b.lo+i]
		e.h, e.w = spec.OutSize(im)
		e.data = make([]float32, 3*e.h*e.w)
		e.err = spec.Apply(im, e.data)
	})
	return e.data, e.h, e.w, e.err
}

// Pixels returns the whole batch transformed by spec as one tensor [N,3,H,W] (or [N,H,W,3]).
// Images of different prepared sizes cannot share a tensor: that is an error asking for a
// declared image.size.
func (b *Batch) Pixels(spec preprocess.Spec) (onnxrt.Tensor, error) {
	var data []float32
	h0, w0 := 0, 0
	for i := range b.Images {
		d, h, w, err := b.Prepared(spec, i)
		if err != nil {
			return onnxrt.Tensor{}, err
		}
		if i == 0 {
			h0, w0 = h, w
			data = make([]float32, 0, len(b.Images)*len(d))
		} else if h != h0 || w != w0 {
			return onnxrt.Tensor{}, fmt.Errorf("images %d and %d prepare to different sizes %dx%d and %dx%d; declare image.size to batch them", b.lo, b.lo+i, h0, w0, h, w)
		}
		data = append(data, d...)
	}
	return onnxrt.Tensor{Shape: spec.Dims(len(b.Images), h0, w0), Float32: data}, nil
}

type prepEntry struct {
	once sync.Once
	data []float32
	h, w int
	err  error
}

type prepCache struct {
	mu      sync.Mutex
	images  []Image
	entries map[string][]*prepEntry
}

func (c *prepCache) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, list := range c.entries {
		for _, e := range list {
			if e != nil {
				n++
			}
		}
	}
	return n
}

func (c *prepCache) entry(spec preprocess.Spec, i int) *prepEntry {
	key := spec.Key()
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.entries[key]
	if list == nil {
		list = make([]*prepEntry, len(c.images))
		c.entries[key] = list
	}
	if list[i] == nil {
		list[i] = &prepEntry{}
	}
	return list[i]
}

// pool holds `concurrency` sessions of one model; run borrows one for the duration of a call.
// newPool reads what the model declares from its file; the reward checks that against its
// config, and only then open creates the sessions (ONNX Runtime reads the model there).
type pool struct {
	path     string
	n        int
	rt       onnxrt.Config
	ins      []onnxrt.TensorInfo
	outs     []onnxrt.TensorInfo
	sessions []*onnxrt.Session
	free     chan *onnxrt.Session
}

func newPool(path string, n int, rt onnxrt.Config) (*pool, error) {
	ins, outs, err := onnxrt.Inspect(path, rt)
	if err != nil {
		return nil, err
	}
	return &pool{path: path, n: n, rt: rt, ins: ins, outs: outs, free: make(chan *onnxrt.Session, n)}, nil
}

// openPools creates the sessions of pools whose declared tensors the reward accepted (nil
// pools and pools already open are skipped); on error every pool is closed.
func openPools(pools ...*pool) error {
	for _, p := range pools {
		if p == nil || p.sessions != nil {
			continue
		}
		for range p.n {
			s, err := onnxrt.Open(p.path, p.rt)
			if err != nil {
				for _, q := range pools {
					q.close()
				}
				return err
			}
			p.sessions = append(p.sessions, s)
			p.free <- s
		}
	}
	return nil
}

func (p *pool) where() string                { return p.path }
func (p *pool) inputs() []onnxrt.TensorInfo  { return p.ins }
func (p *pool) outputs() []onnxrt.TensorInfo { return p.outs }

func (p *pool) run(ctx context.Context, in map[string]onnxrt.Tensor, outputs ...string) (map[string]onnxrt.Tensor, error) {
	if p.sessions == nil {
		return nil, fmt.Errorf("model %s: no session (the pool was not opened)", p.path)
	}
	var s *onnxrt.Session
	select {
	case s = <-p.free:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { p.free <- s }()
	return s.Run(ctx, in, outputs...)
}

func (p *pool) close() error {
	if p == nil {
		return nil
	}
	var errs []error
	for _, s := range p.sessions {
		errs = append(errs, s.Close())
	}
	p.sessions = nil
	return errors.Join(errs...)
}

// tensorWant is what a reward requires of one graph tensor. Dims: -1 accepts any size.
type tensorWant struct {
	role  string // "input" or "output"
	name  string
	types []string
	dims  []int64
	// what says where the requirement comes from, e.g. `[reward.image] size = [224, 224]`.
	what string
}

// check finds the tensor in the graph and compares name, element type, rank and fixed dims.
// Errors name the file, the tensor, and both the expected and the actual declaration.
func (w tensorWant) check(path string, infos []onnxrt.TensorInfo) (onnxrt.TensorInfo, error) {
	var names []string
	for _, t := range infos {
		names = append(names, t.Name)
		if t.Name != w.name {
			continue
		}
		want := fmt.Sprintf("%s %s", strings.Join(w.types, "|"), fmtWant(w.dims))
		bad := !contains(w.types, t.Type) || len(t.Dims) != len(w.dims)
		for i := 0; !bad && i < len(t.Dims); i++ {
			bad = t.Dims[i] >= 0 && w.dims[i] >= 0 && t.Dims[i] != w.dims[i]
		}
		if bad {
			return t, fmt.Errorf("model %s: %s %q: got %s %s, want %s (from %s)", path, w.role, w.name, t.Type, onnxrt.FormatDims(t.Dims), want, w.what)
		}
		return t, nil
	}
	return onnxrt.TensorInfo{}, fmt.Errorf("model %s: no %s %q (from %s); the graph's %ss are: %s", path, w.role, w.name, w.what, w.role, strings.Join(names, ", "))
}

func fmtWant(dims []int64) string {
	parts := make([]string, len(dims))
	for i, d := range dims {
		if d < 0 {
			parts[i] = "?"
		} else {
			parts[i] = fmt.Sprint(d)
		}
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkBatchDim rejects a graph whose batch dimension is fixed at a size other than 1, and
// one fixed at 1 when batch_size > 1.
func checkBatchDim(c *Config, path string, t onnxrt.TensorInfo) error {
	if len(t.Dims) == 0 || t.Dims[0] < 0 {
		return nil
	}
	if t.Dims[0] == 1 && c.BatchSize == 1 {
		return nil
	}
	return fmt.Errorf("model %s: input %q has a fixed batch dimension %d (%s), want dynamic; or set batch_size = 1 for a graph fixed at 1", path, t.Name, t.Dims[0], onnxrt.FormatDims(t.Dims))
}

// imageWant is the requirement an image input places on the graph.
func imageWant(c *Config, spec preprocess.Spec, name, section string) tensorWant {
	h, w := int64(-1), int64(-1)
	what := fmt.Sprintf("%s input = %q, native size, layout = %q", section, name, spec.Layout)
	if len(spec.Size) == 2 {
		h, w = int64(spec.Size[0]), int64(spec.Size[1])
		what = fmt.Sprintf("%s input = %q, size = [%d, %d], layout = %q", section, name, h, w, spec.Layout)
	}
	dims := []int64{-1, 3, h, w}
	if spec.Layout == "NHWC" {
		dims = []int64{-1, h, w, 3}
	}
	return tensorWant{role: "input", name: name, types: []string{"float32"}, dims: dims, what: what}
}

// finite reports whether every value is a real number.
func finite(vals []float64) error {
	for i, v := range vals {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("image %d: reward is %v", i, v)
		}
	}
	return nil
}
