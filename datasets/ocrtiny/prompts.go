package ocrtiny

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// Alphabet is the set of characters target strings are drawn from: A–Z and 0–9 without the
// letter O and the digit 0. PP-OCRv4 confuses Go Mono's O and 0 with each other: on 200 rendered
// test strings over the full A–Z0–9 set, 18 had one read as the other, which would cap the
// reward of perfect images at about 0.95.
const Alphabet = "ABCDEFGHIJKLMNPQRSTUVWXYZ123456789"

// isRenderable reports whether the renderer draws c: any of A–Z and 0–9.
func isRenderable(c byte) bool { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') }

// Target lengths of the generated splits.
const (
	MinTargetLen = 3
	MaxTargetLen = 6
)

// Templates are the prompt patterns; %s is replaced by the quoted target.
var Templates = []string{
	`a sign that says "%s"`,
	`the word "%s" written on a wall`,
	`a poster with the text "%s"`,
	`a license plate reading "%s"`,
	`a label printed with "%s"`,
	`"%s" painted on a door`,
	`a street sign reading "%s"`,
	`a t-shirt with "%s" on it`,
	`a neon sign spelling "%s"`,
	`the code "%s" on a screen`,
}

// GenerateSeed, TrainSize and TestSize define the committed splits in datasets/ocr-tiny.
const (
	GenerateSeed = 20260122
	TrainSize    = 4000
	TestSize     = 400
)

// Prompt is one line of a split: the full prompt and the string the image must show.
type Prompt struct {
	Text   string
	Target string
}

// Target returns the string between the first pair of double quotes of prompt.
func Target(prompt string) (string, error) {
	i := strings.IndexByte(prompt, '"')
	if i < 0 {
		return "", fmt.Errorf("extract target of %q: no opening quote", prompt)
	}
	j := strings.IndexByte(prompt[i+1:], '"')
	if j < 0 {
		return "", fmt.Errorf("extract target of %q: no closing quote", prompt)
	}
	if j == 0 {
		return "", fmt.Errorf("extract target of %q: empty quotes", prompt)
	}
	return prompt[i+1 : i+1+j], nil
}

// Generate builds the train and test prompt lists from seed: distinct random target strings
// of MinTargetLen..MaxTargetLen characters of Alphabet, the first nTest for the test split and
// the next nTrain for the train split (so no target appears in both), each placed into a
// template drawn from the same generator.
func Generate(seed uint64, nTrain, nTest int) (train, test []string) {
	r := rand.New(rand.NewPCG(seed, 0x6f63722d74696e79)) // "ocr-tiny"
	seen := make(map[string]bool, nTrain+nTest)
	next := func() string {
		for {
			n := MinTargetLen + r.IntN(MaxTargetLen-MinTargetLen+1)
			b := make([]byte, n)
			for i := range b {
				b[i] = Alphabet[r.IntN(len(Alphabet))]
			}
			if s := string(b); !seen[s] {
				seen[s] = true
				return s
			}
		}
	}
	prompt := func() string {
		target := next()
		return fmt.Sprintf(Templates[r.IntN(len(Templates))], target)
	}
	for range nTest {
		test = append(test, prompt())
	}
	for range nTrain {
		train = append(train, prompt())
	}
	return train, test
}

// WriteSplits writes train.txt and test.txt (one prompt per line) of the committed splits
// into dir.
func WriteSplits(dir string) error {
	train, test := Generate(GenerateSeed, TrainSize, TestSize)
	for _, f := range []struct {
		name  string
		lines []string
	}{{"train.txt", train}, {"test.txt", test}} {
		path := filepath.Join(dir, f.name)
		if err := os.WriteFile(path, []byte(strings.Join(f.lines, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("write split %s: %w", path, err)
		}
	}
	return nil
}

// ReadPrompts parses one prompt per line; blank lines are skipped and every other line must
// hold a quoted target.
func ReadPrompts(r io.Reader, name string) ([]Prompt, error) {
	var out []Prompt
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		target, err := Target(text)
		if err != nil {
			return nil, fmt.Errorf("read prompts %s:%d: %w", name, line, err)
		}
		out = append(out, Prompt{Text: text, Target: target})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read prompts %s: %w", name, err)
	}
	return out, nil
}

// LoadPrompts reads a prompt file such as datasets/ocr-tiny/train.txt.
func LoadPrompts(path string) ([]Prompt, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load prompts: %w", err)
	}
	defer f.Close()
	return ReadPrompts(f, path)
}

// SplitPath finds datasets/ocr-tiny/<split>.txt ("train" or "test") from the working
// directory or any of its parents, so it works from tests, the repository root and cmd/.
func SplitPath(split string) (string, error) {
	if split != "train" && split != "test" {
		return "", fmt.Errorf("find split %q: want \"train\" or \"test\"", split)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find split %q: %w", split, err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		p := filepath.Join(dir, "datasets", "ocr-tiny", split+".txt")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("find split %q: no datasets/ocr-tiny/%s.txt in %s or its parents", split, split, wd)
		}
	}
}
