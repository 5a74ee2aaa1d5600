// Package limitfile reads the small files that come with downloaded models — JSON configs,
// safetensors indexes, tokenizer vocabularies — and JSON data brought from elsewhere, with a stated size limit, so a hostile or
// mistaken file (gigabytes of JSON, a device, a file that keeps growing) is refused with an
// error naming it before it costs memory.
package limitfile

import (
	"fmt"
	"io"
	"os"
)

// The limits, far above what real files need.
const (
	// Config bounds a JSON config: a diffusers config.json, adapter_config.json,
	// tokenizer_config.json, special_tokens_map.json, an export's manifest.json (real ones:
	// a few KB; a tokenizer_config.json listing many added tokens, tens of KB).
	Config = 1 << 20
	// Index bounds a safetensors index.json ({"weight_map": {tensor: shard}}: one short line
	// per tensor, some hundred KB for thousands of tensors).
	Index = 64 << 20
	// Vocab bounds a tokenizer's tokenizer.json, vocab.json or merges.txt (CLIP's and T5's are
	// one to a few MB).
	Vocab = 64 << 20
	// Data bounds a JSON data file the project writes and a user may bring from elsewhere: a
	// psi.json, the output of eval --json (both well under a MB for a thousand steps or
	// prompts).
	Data = 64 << 20
)

// Read returns the contents of the file at path if it holds at most limit bytes; what names
// the kind of file for the error ("a JSON config").
func Read(path string, limit int64, what string) ([]byte, error) {
	f, err := Open(path, limit, what)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Open opens the file at path for reading if its size is at most limit bytes; reading past
// limit bytes (a file that grew, a device) is an error too.
func Open(path string, limit int64, what string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() > limit {
		f.Close()
		return nil, fmt.Errorf("%s: %d bytes, want at most %s for %s", path, st.Size(), Size(limit), what)
	}
	return &bounded{f: f, path: path, left: limit, limit: limit, what: what}, nil
}

// bounded fails a read that goes past the limit.
type bounded struct {
	f     *os.File
	path  string
	left  int64
	limit int64
	what  string
}

func (b *bounded) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, b.tooLong()
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.f.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return n, b.tooLong()
	}
	return n, err
}

func (b *bounded) tooLong() error {
	return fmt.Errorf("%s: more than %s to read (a growing file or a device?), want at most %s for %s", b.path, Size(b.limit), Size(b.limit), b.what)
}

func (b *bounded) Close() error { return b.f.Close() }

// Size writes a byte count in the largest binary unit that divides it: "1 MiB", "64 MiB",
// "1500 bytes".
func Size(n int64) string {
	for _, u := range []struct {
		shift int
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
