// Package ocr owns the model-free parts of the PP-OCRv4 reward: the character dictionary,
// CTC greedy decoding of the recogniser's output, DB post-processing of the detector's
// probability map (threshold, boxes, unclip, reading order), the recogniser's input
// preparation, and Flow-GRPO's edit-distance score.
//
// PP-OCRv4 recogniser contract: input x [N,3,48,W] float32, BGR, (v/255−0.5)/0.5; output
// [N,T,C] softmax over C = 1 + len(keys) + 1 classes: 0 is the CTC blank, class i (1 ≤ i ≤
// len(keys)) is line i of ppocr_keys_v1.txt, and the last class is a space.
package ocr

import (
	"bufio"
	"fmt"
	"strings"
	"unicode"

	"github.com/densegrpo/densegrpo/internal/limitfile"
)

// Dict maps recogniser classes to text.
type Dict struct {
	// Keys are the lines of the keys file: class i ↔ Keys[i-1].
	Keys []string
}

// LoadDict reads a keys file (one character per line; the last line may lack a newline).
func LoadDict(path string) (Dict, error) {
	f, err := limitfile.Open(path, limitfile.Vocab, "a recogniser's character list")
	if err != nil {
		return Dict{}, fmt.Errorf("load OCR keys: %w", err)
	}
	defer f.Close()
	var keys []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		keys = append(keys, strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return Dict{}, fmt.Errorf("load OCR keys %s: %w", path, err)
	}
	if len(keys) == 0 {
		return Dict{}, fmt.Errorf("load OCR keys %s: file is empty", path)
	}
	return Dict{Keys: keys}, nil
}

// Classes is the number of output classes the recogniser must have: blank + keys + space.
func (d Dict) Classes() int { return len(d.Keys) + 2 }

// Text returns the string of class c (blank → "").
func (d Dict) Text(c int) string {
	switch {
	case c <= 0:
		return ""
	case c <= len(d.Keys):
		return d.Keys[c-1]
	default:
		return " "
	}
}

// DecodeCTC greedily decodes one sequence of T softmax rows of C classes (row-major
// probs[t*C+c]): take the arg-max class of each step, merge repeats, drop blanks (class 0).
// conf is the mean probability of the kept steps (0 for empty text), as PaddleOCR reports it.
func (d Dict) DecodeCTC(probs []float32, T, C int) (text string, conf float32) {
	var b strings.Builder
	prev := -1
	var sum float32
	kept := 0
	for t := 0; t < T; t++ {
		row := probs[t*C : (t+1)*C]
		best := 0
		for c := 1; c < C; c++ {
			if row[c] > row[best] {
				best = c
			}
		}
		if best != 0 && best != prev {
			b.WriteString(d.Text(best))
			sum += row[best]
			kept++
		}
		prev = best
	}
	if kept == 0 {
		return "", 0
	}
	return b.String(), sum / float32(kept)
}

// Target returns the text a prompt asks to render: the part between the first pair of double
// quotes (Flow-GRPO's prompt.split('"')[1]); a prompt without a quoted part is its own target.
func Target(prompt string) string {
	if i := strings.IndexByte(prompt, '"'); i >= 0 {
		rest := prompt[i+1:]
		if j := strings.IndexByte(rest, '"'); j >= 0 {
			return rest[:j]
		}
		return rest
	}
	return prompt
}

// normalise lower-cases and removes spaces, as Flow-GRPO's OcrScorer does before comparing.
func normalise(s string) []rune {
	var out []rune
	for _, r := range s {
		if r == ' ' {
			continue
		}
		out = append(out, unicode.ToLower(r))
	}
	return out
}

// EditDistance is the Levenshtein distance between a and b (insert, delete, substitute, each 1).
func EditDistance(a, b []rune) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Score is Flow-GRPO's OCR reward of the text read from an image against the target, and the
// project's only OCR score (the reward, the dataset's legibility test and the VAE's
// reconstruction check all use it): both lower-cased without spaces (' '); 1 if the target
// occurs in the read text, else 1 − min(edit distance, len(target))/len(target). An empty
// target occurs in every text and scores 1 (where Flow-GRPO would divide by zero). As in the
// paper, nothing else is normalised: a full-width "Ｋ" the recogniser's Chinese dictionary may
// emit does not match "K".
func Score(read, target string) float64 {
	r, t := normalise(read), normalise(target)
	if len(t) == 0 || strings.Contains(string(r), string(t)) {
		return 1
	}
	d := min(EditDistance(r, t), len(t))
	return 1 - float64(d)/float64(len(t))
}
