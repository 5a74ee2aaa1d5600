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
	"github.com/densegrpo/densegrpo/pipeline/promptfile"
	"github.com/densegrpo/densegrpo/rewards"
	"github.com/densegrpo/densegrpo/rewards/preprocess"
)

func init() {
	register(command{name: "rewards score", summary: "score one PNG or JPEG against a prompt (or a prompt file's line, with its metadata) with the config's [[reward]] blocks", run: runRewardsScore})
}

func runRewardsScore(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("rewards score", "", out)
	configPath := fs.String("config", "", "training TOML whose [[reward]] blocks (and [onnx] table) are used (required)")
	imagePath := fs.String("image", "", "PNG or JPEG image to score (required)")
	maxPixels := fs.Int64("max-pixels", imagefile.DefaultLimits.MaxPixels, "refuse an image whose header declares more pixels (width × height), before decoding it")
	prompt := fs.String("prompt", "", "the prompt the image was generated from")
	metadata := fs.String("metadata", "", "prompt metadata as a JSON object (GenEval's tag/include/exclude)")
	promptFile := fs.String("prompts", "", "take the prompt (and its metadata) from a prompt file instead: text, or JSON Lines (.jsonl) such as GenEval's evaluation_metadata.jsonl")
	index := fs.Int("index", 0, "with --prompts: the prompt's index in the file (0-based, blank lines not counted: the order eval uses)")
	asJSON := fs.Bool("json", false, `print {"rewards":{...},"total":...}`)
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
	im, err := preprocess.ReadImage(*imagePath, imagefile.Limits{MaxSide: imagefile.DefaultLimits.MaxSide, MaxPixels: *maxPixels})
	if err != nil {
		return err
	}
	// DecodeTOML has already resolved the paths against the config's directory.
	set, err := rewards.Open(ctx, cfgs, "", doc.ONNX)
	if err != nil {
		return err
	}
	defer set.Close()
	scores, err := set.Score(ctx, []rewards.Image{im}, []rewards.Prompt{p})
	if err != nil {
		return err
	}
	if *asJSON {
		byName := map[string]float64{}
		for _, n := range scores.Names {
			byName[n] = scores.ByName[n][0]
		}
		return json.NewEncoder(out).Encode(struct {
			Rewards map[string]float64 `json:"rewards"`
			Total   float64            `json:"total"`
		}{byName, scores.Total[0]})
	}
	for _, n := range scores.Names {
		fmt.Fprintf(out, "%-20s %.6f\n", n, scores.ByName[n][0])
	}
	extras := make([]string, 0, len(scores.Extra))
	for k := range scores.Extra {
		extras = append(extras, k)
	}
	sort.Strings(extras)
	for _, k := range extras {
		fmt.Fprintf(out, "  %-18s %.6f\n", k, scores.Extra[k][0])
	}
	fmt.Fprintf(out, "%-20s %.6f\n", "total", scores.Total[0])
	return nil
}
