package mmdit

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"
)

// FuzzLoadLoRA feeds arbitrary files to the adapter loader of a small model. Nothing may
// panic; a file it accepts holds exactly the model's adapters with their shapes, and those are
// what the context holds afterwards.
func FuzzLoadLoRA(f *testing.F) {
	// Two targets of rank 1 keep the seed files small (~2 KB), so mutations reach every part.
	m, err := New(smallConfig(), &LoRAConfig{Rank: 1, Alpha: 4, Targets: []string{"attn.to_q", "attn.to_k"}})
	if err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	ctx := mlctx.New()
	if err := m.InitLoRA(ctx, 1); err != nil {
		f.Fatal(err)
	}
	saved := filepath.Join(dir, "lora.safetensors")
	if err := m.SaveLoRA(ctx, saved); err != nil {
		f.Fatal(err)
	}
	valid, err := os.ReadFile(saved)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	// The same adapters under PEFT's and diffusers' prefixes.
	ts, meta, err := safetensors.Read(saved)
	if err != nil {
		f.Fatal(err)
	}
	for _, prefix := range loraPrefixes {
		renamed := map[string]safetensors.Tensor{}
		for k, v := range ts {
			renamed[prefix+k] = v
		}
		p := filepath.Join(dir, "prefixed.safetensors")
		if err := safetensors.Write(p, renamed, meta); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Every tensor pointed at the same bytes (the overlap the reference refuses).
	f.Add(bytes.ReplaceAll(valid, []byte(`"data_offsets":[`), []byte(`"data_offsets":[0,0],"x":[`)))
	f.Add(valid[:len(valid)/2])

	// One input file per fuzzing process (each runs one input at a time).
	path := filepath.Join(dir, "input.safetensors")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		ctx := mlctx.New()
		if err := m.LoadLoRA(ctx, path); err != nil {
			return
		}
		got, err := m.LoRATensors(ctx)
		if err != nil {
			t.Fatalf("accepted file: %v", err)
		}
		file, err := safetensors.Open(path)
		if err != nil {
			t.Fatalf("LoadLoRA accepted a file Open refuses: %v", err)
		}
		defer file.Close()
		for _, p := range m.LoRA.Params(m.Config) {
			name := p.Key
			if _, ok := file.Info(name); !ok {
				for _, pre := range loraPrefixes {
					if _, ok := file.Info(pre + p.Key); ok {
						name = pre + p.Key
					}
				}
			}
			want, err := file.Tensor(name)
			if err != nil {
				t.Fatalf("accepted file: tensor %q: %v", name, err)
			}
			if !slices.Equal(got[p.Key].Shape, p.Shape) || !sameBits(got[p.Key].Data, want.Data) {
				t.Fatalf("adapter %q differs from the file's %q", p.Key, name)
			}
		}
	})
}

// sameBits compares bit patterns: decoding is bit-exact, NaN payloads included.
func sameBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}
