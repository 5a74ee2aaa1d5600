package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/BurntSushi/toml"

	"github.com/densegrpo/densegrpo/internal/imagefile"
	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/pipeline"
	"github.com/densegrpo/densegrpo/pipeline/promptfile"
	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

func init() {
	register(command{name: "rewards score", summary: "score one PNG or JPEG (or each image of a grid) against a prompt (or a prompt file's line, with its metadata) with the config's [[reward]] blocks", run: runRewardsScore})
}

func runRewardsScore(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("rewards score", "", out)
	configPath := fs.String("config", "", "training TOML whose [[reward]] blocks (and [onnx] table) are used (required)")
	imagePath := fs.String("image", "", "PNG or JPEG image to score (required); a grid written by `pipeline sample`, `eval --grid` or a run is scored cell by cell")
	maxPixels := fs.Int64("max-pixels", imagefile.DefaultLimits.MaxPixels, "refuse an image whose header declares more pixels (width × height), before decoding it")
	prompt := fs.String("prompt", "", "the prompt the image was generated from (for a grid: of every cell, instead of the prompts it records)")
	metadata := fs.String("metadata", "", "prompt metadata as a JSON object (GenEval's tag/include/exclude)")
	promptFile := fs.String("prompts", "", "take the prompt (and its metadata) from a prompt file instead: text, or JSON Lines (.jsonl) such as GenEval's evaluation_metadata.jsonl")
	index := fs.Int("index", 0, "with --prompts: the prompt's index in the file (0-based, blank lines not counted: the order eval uses)")
	anySize := fs.Bool("any-size", false, "score an image whose size is not the config's VAE output as it is (a photo, a crop of another size)")
	asJSON := fs.Bool("json", false, `print {"rewards":{...},"extra":{...},"total":...}; for a grid {"cells":[{"prompt":...,"rewards":...,"extra":...,"total":...}],"mean_total":...}`)
	library := fs.String("onnx-library", "", "path of libonnxruntime.so (default: [onnx] library, $ONNXRUNTIME_LIB, then the setup cache)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError("unexpected arguments %q", pos)
	}
	if *configPath == "" || *imagePath == "" {
		return usageError("--config and --image are required")
	}
	data, err := os.ReadFile(*configPath)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cfgs, err := rewards.DecodeTOML(data, filepath.Dir(*configPath))
	if err != nil {
		return fmt.Errorf("config %s: %w", *configPath, err)
	}
	var doc struct {
		ONNX onnxrt.Config `toml:"onnx"`
		VAE  struct {
			Decoder string `toml:"decoder"`
		} `toml:"vae"`
	}
	if _, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		return fmt.Errorf("config %s: %w", *configPath, err)
	}
	if *library != "" {
		doc.ONNX.Library = *library
	}
	p := rewards.Prompt{Text: *prompt}
	if *metadata != "" {
		if err := json.Unmarshal([]byte(*metadata), &p.Metadata); err != nil {
			return usageError("--metadata: %v", err)
		}
	}
	if *promptFile != "" {
		if *prompt != "" || *metadata != "" {
			return usageError("--prompts replaces --prompt and --metadata; give one or the other")
		}
		f, err := promptfile.Load(*promptFile)
		if err != nil {
			return err
		}
		if *index < 0 || *index >= len(f.Prompts) {
			return usageError("--index: got %d, want 0..%d (the prompts of %s)", *index, len(f.Prompts)-1, *promptFile)
		}
		p = f.Prompts[*index]
	}
	// A prompt given on the command line replaces those a grid records.
	given := *prompt != "" || *promptFile != ""
	im, err := preprocess.ReadImage(*imagePath, imagefile.Limits{MaxSide: imagefile.DefaultLimits.MaxSide, MaxPixels: *maxPixels})
	if err != nil {
		return err
	}
	layout, err := pipeline.ReadGridLayout(*imagePath)
	if err != nil {
		return err
	}
	images, prompts := []rewards.Image{im}, []rewards.Prompt{p}
	if layout != nil {
		if images, err = pipeline.GridImages(im, *layout); err != nil {
			return fmt.Errorf("score %s: %w", *imagePath, err)
		}
		prompts = make([]rewards.Prompt, len(images))
		for i, c := range layout.Cells {
			prompts[i] = rewards.Prompt{Text: c.Prompt, Metadata: p.Metadata}
			if given {
				prompts[i] = p
			}
		}
	} else if !*anySize && doc.VAE.Decoder != "" {
		// An image of another size than the model's samples is most often a labelled grid or a
		// screenshot, which a reward such as OCR reads as noise and scores near 0: say so.
		vae := doc.VAE.Decoder
		if !filepath.IsAbs(vae) {
			vae = filepath.Join(filepath.Dir(*configPath), vae)
		}
		if h, w, ok := vaeImageSize(vae, doc.ONNX); ok && (im.W != w || im.H != h) {
			return fmt.Errorf("score %s: the image is %d×%d, not one %d×%d sample of %s's VAE (%s); a grid PNG written by `pipeline sample`, `eval --grid` or a run is scored cell by cell, other grids need cutting; --any-size scores it as it is",
				*imagePath, im.W, im.H, w, h, *configPath, vae)
		}
	}
	// DecodeTOML has already resolved the paths against the config's directory.
	set, err := rewards.Open(ctx, cfgs, "", doc.ONNX)
	if err != nil {
		return err
	}
	defer set.Close()
	scores, err := set.Score(ctx, images, prompts)
	if err != nil {
		return err
	}
	results := make([]cellScore, len(images))
	mean := 0.0
	for i := range results {
		r := cellScore{Prompt: prompts[i].Text, Rewards: map[string]float64{}, Extra: map[string]float64{}, Total: scores.Total[i]}
		for _, n := range scores.Names {
			r.Rewards[n] = scores.ByName[n][i]
		}
		for k, v := range scores.Extra {
			r.Extra[k] = v[i]
		}
		results[i] = r
		mean += r.Total / float64(len(results))
	}
	if *asJSON {
		if layout == nil {
			r := results[0]
			r.Prompt = ""
			return json.NewEncoder(out).Encode(r)
		}
		return json.NewEncoder(out).Encode(struct {
			Cells     []cellScore `json:"cells"`
			MeanTotal float64     `json:"mean_total"`
		}{results, mean})
	}
	for i, r := range results {
		if layout != nil {
			fmt.Fprintf(out, "cell %d: %s\n", i, r.Prompt)
		}
		for _, n := range scores.Names {
			fmt.Fprintf(out, "%-20s %.6f\n", n, r.Rewards[n])
		}
		for _, k := range sortedKeys(r.Extra) {
			fmt.Fprintf(out, "  %-18s %.6f\n", k, r.Extra[k])
		}
		fmt.Fprintf(out, "%-20s %.6f\n", "total", r.Total)
	}
	if layout != nil {
		fmt.Fprintf(out, "%d cells, mean total %.6f\n", len(results), mean)
	}
	return nil
}

// cellScore is the score of one image (or one cell of a grid) as --json prints it.
type cellScore struct {
	Prompt  string             `json:"prompt,omitempty"`
	Rewards map[string]float64 `json:"rewards"`
	Extra   map[string]float64 `json:"extra"`
	Total   float64            `json:"total"`
}

// vaeImageSize reads the image size H×W of the VAE decoder's output [B,3,H,W] from its graph,
// ok false when the file cannot be inspected (not exported yet) or leaves the size open.
func vaeImageSize(path string, cfg onnxrt.Config) (h, w int, ok bool) {
	_, outs, err := onnxrt.Inspect(path, cfg)
	if err != nil || len(outs) != 1 || len(outs[0].Dims) != 4 || outs[0].Dims[2] <= 0 || outs[0].Dims[3] <= 0 {
		return 0, 0, false
	}
	return int(outs[0].Dims[2]), int(outs[0].Dims[3]), true
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
