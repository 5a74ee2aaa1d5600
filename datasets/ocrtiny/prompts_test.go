package ocrtiny

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestTarget(t *testing.T) {
	tests := []struct {
		prompt, want string
		wantErr      bool
	}{
		{`a sign that says "K4RT"`, "K4RT", false},
		{`"AB1" painted on a door`, "AB1", false},
		{`the word "X" written on "Y"`, "X", false}, // first pair of quotes wins
		{`no quotes here`, "", true},
		{`an open "quote`, "", true},
		{`empty "" quotes`, "", true},
	}
	for _, tt := range tests {
		got, err := Target(tt.prompt)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Target(%q) = %q, %v; want %q, error %v", tt.prompt, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestReadPrompts(t *testing.T) {
	ps, err := ReadPrompts(strings.NewReader("a sign that says \"AB\"\n\n  \"CD\" painted on a door  \n"), "inline")
	if err != nil {
		t.Fatal(err)
	}
	want := []Prompt{{`a sign that says "AB"`, "AB"}, {`"CD" painted on a door`, "CD"}}
	if !reflect.DeepEqual(ps, want) {
		t.Errorf("got %v, want %v", ps, want)
	}
	_, err = ReadPrompts(strings.NewReader("ok \"A\"\nbroken\n"), "inline")
	if err == nil || !strings.Contains(err.Error(), "inline:2") {
		t.Errorf("error %v, want one naming inline:2", err)
	}
}

// The committed files must be exactly what the generator writes, so `go generate` is a no-op.
func TestCommittedSplitsMatchGenerator(t *testing.T) {
	dir := t.TempDir()
	if err := WriteSplits(dir); err != nil {
		t.Fatal(err)
	}
	for _, split := range []string{"train", "test"} {
		committed, err := SplitPath(split)
		if err != nil {
			t.Fatal(err)
		}
		a, err := os.ReadFile(committed)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, split+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		if string(a) != string(b) {
			t.Errorf("%s differs from the generator's output: run `go generate ./datasets/ocrtiny`", committed)
		}
	}
}

func TestSplits(t *testing.T) {
	load := func(split string) []Prompt {
		p, err := SplitPath(split)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := LoadPrompts(p)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	train, test := load("train"), load("test")
	if len(train) != TrainSize || len(test) != TestSize {
		t.Fatalf("sizes train %d test %d, want %d and %d", len(train), len(test), TrainSize, TestSize)
	}
	seen := map[string]string{}
	lengths := map[int]int{}
	for split, ps := range map[string][]Prompt{"train": train, "test": test} {
		for _, p := range ps {
			if other, ok := seen[p.Target]; ok {
				t.Errorf("target %q appears in %s and %s", p.Target, other, split)
			}
			seen[p.Target] = split
			lengths[len(p.Target)]++
			if len(p.Target) < MinTargetLen || len(p.Target) > MaxTargetLen {
				t.Errorf("target %q: length %d outside [%d,%d]", p.Target, len(p.Target), MinTargetLen, MaxTargetLen)
			}
			if strings.Trim(p.Target, Alphabet) != "" {
				t.Errorf("target %q has characters outside the alphabet", p.Target)
			}
			// The text encoder's context is 48 tokens; every prompt must fit untruncated.
			if len(p.Text) > 48 {
				t.Errorf("prompt %q: %d characters, want <= 48", p.Text, len(p.Text))
			}
			if err := CheckText(p.Target); err != nil {
				t.Error(err)
			}
		}
	}
	// Lengths are drawn uniformly from 3..6: each should hold roughly a quarter of 4400.
	for n := MinTargetLen; n <= MaxTargetLen; n++ {
		if c := lengths[n]; c < 900 || c > 1300 {
			t.Errorf("%d targets of length %d, want about 1100", c, n)
		}
	}
}

func TestGenerateDeterministic(t *testing.T) {
	a1, b1 := Generate(7, 50, 20)
	a2, b2 := Generate(7, 50, 20)
	if !reflect.DeepEqual(a1, a2) || !reflect.DeepEqual(b1, b2) {
		t.Error("Generate(7) differs between two calls")
	}
	a3, _ := Generate(8, 50, 20)
	if reflect.DeepEqual(a1, a3) {
		t.Error("Generate(7) and Generate(8) agree")
	}
}
