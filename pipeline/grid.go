package pipeline

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"os"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/rewards"
)

// A grid PNG written by WriteGrid carries its layout — where each cell's image sits, at which
// scale, drawn from which prompt — in an iTXt chunk, so that a tool handed the grid (`pipeline
// rewards score`) can cut the cells out at their own size and score each against its prompt
// instead of reading the whole labelled sheet as one image.

// GridLayoutKey is the keyword of the iTXt chunk that holds a grid's layout (JSON).
const GridLayoutKey = "densegrpo-grid"

// GridLayout is where the images of a grid PNG are.
type GridLayout struct {
	Cells []GridCell `json:"cells"`
}

// GridCell is one image of a grid: its top-left pixel, its own size W×H (before scaling) and
// the integer factor it was scaled up by (nearest neighbour), and the prompt it was drawn from
// ("" when the grid's writer did not know it).
type GridCell struct {
	X      int    `json:"x"`
	Y      int    `json:"y"`
	W      int    `json:"w"`
	H      int    `json:"h"`
	Scale  int    `json:"scale"`
	Prompt string `json:"prompt,omitempty"`
}

// pngSignature starts every PNG file.
var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// encodeGridPNG encodes img as a PNG with layout in an iTXt chunk right after IHDR.
func encodeGridPNG(w io.Writer, img *bytes.Buffer, layout GridLayout) error {
	data := img.Bytes()
	// The signature, then IHDR: length (4), type (4), 13 bytes of data, CRC (4).
	const ihdrEnd = 8 + 4 + 4 + 13 + 4
	if len(data) < ihdrEnd || !bytes.Equal(data[:8], pngSignature) || string(data[12:16]) != "IHDR" {
		return errors.New("encode grid: not a PNG with IHDR first")
	}
	text, err := json.Marshal(layout)
	if err != nil {
		return fmt.Errorf("encode grid layout: %w", err)
	}
	// iTXt: keyword, NUL, compression flag 0, method 0, empty language tag, NUL, empty
	// translated keyword, NUL, UTF-8 text (prompts need not be Latin-1, which tEXt requires).
	var chunk bytes.Buffer
	chunk.WriteString(GridLayoutKey)
	chunk.Write([]byte{0, 0, 0, 0, 0})
	chunk.Write(text)
	for _, part := range [][]byte{data[:ihdrEnd], pngChunk("iTXt", chunk.Bytes()), data[ihdrEnd:]} {
		if _, err := w.Write(part); err != nil {
			return err
		}
	}
	return nil
}

// pngChunk is one PNG chunk: length, type, data, CRC-32 of type and data.
func pngChunk(typ string, data []byte) []byte {
	out := make([]byte, 0, 12+len(data))
	out = binary.BigEndian.AppendUint32(out, uint32(len(data)))
	out = append(out, typ...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(out[4:]))
}

// maxLayoutBytes bounds the layout chunk ReadGridLayout accepts: a grid of thousands of cells
// with long prompts fits in far less.
const maxLayoutBytes = 4 << 20

// ReadGridLayout returns the layout WriteGrid recorded in the PNG at path, nil for a PNG (or any
// other image) without one. It reads the chunks before the image data only.
func ReadGridLayout(path string) (*GridLayout, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read grid layout: %w", err)
	}
	defer f.Close()
	sig := make([]byte, 8)
	if _, err := io.ReadFull(f, sig); err != nil || !bytes.Equal(sig, pngSignature) {
		return nil, nil // not a PNG: no layout
	}
	fail := func(format string, args ...any) (*GridLayout, error) {
		return nil, fmt.Errorf("read grid layout of %s: %s", path, fmt.Sprintf(format, args...))
	}
	var head [8]byte
	for {
		if _, err := io.ReadFull(f, head[:]); err != nil {
			return fail("truncated chunk header: %v", err)
		}
		n, typ := binary.BigEndian.Uint32(head[:4]), string(head[4:])
		if typ == "IDAT" || typ == "IEND" {
			return nil, nil
		}
		if typ != "iTXt" || n > maxLayoutBytes {
			if _, err := f.Seek(int64(n)+4, io.SeekCurrent); err != nil {
				return fail("chunk %q: %v", typ, err)
			}
			continue
		}
		body := make([]byte, n+4)
		if _, err := io.ReadFull(f, body); err != nil {
			return fail("truncated iTXt chunk: %v", err)
		}
		if crc32.ChecksumIEEE(append([]byte(typ), body[:n]...)) != binary.BigEndian.Uint32(body[n:]) {
			return fail("iTXt chunk: CRC mismatch")
		}
		key, rest, ok := bytes.Cut(body[:n], []byte{0})
		if !ok || string(key) != GridLayoutKey {
			continue
		}
		// compression flag, method, language tag NUL, translated keyword NUL, text.
		if len(rest) < 2 || rest[0] != 0 {
			return fail("%s chunk: compressed or malformed", GridLayoutKey)
		}
		parts := bytes.SplitN(rest[2:], []byte{0}, 3)
		if len(parts) != 3 {
			return fail("%s chunk: malformed", GridLayoutKey)
		}
		var l GridLayout
		if err := json.Unmarshal(parts[2], &l); err != nil {
			return fail("%s chunk: %v", GridLayoutKey, err)
		}
		return &l, nil
	}
}

// GridImages cuts the cells of layout out of im (the decoded grid), each at its own size: the
// top-left pixel of every scale×scale block, which is the pixel the grid was drawn from.
func GridImages(im rewards.Image, layout GridLayout) ([]rewards.Image, error) {
	if len(layout.Cells) == 0 {
		return nil, errors.New("grid layout: no cells")
	}
	out := make([]rewards.Image, len(layout.Cells))
	for i, c := range layout.Cells {
		if c.W < 1 || c.H < 1 || c.Scale < 1 || c.X < 0 || c.Y < 0 || c.X+c.W*c.Scale > im.W || c.Y+c.H*c.Scale > im.H {
			return nil, fmt.Errorf("grid layout: cell %d (%d×%d ×%d at %d,%d) does not fit the %d×%d image", i, c.W, c.H, c.Scale, c.X, c.Y, im.W, im.H)
		}
		cell := rewards.Image{W: c.W, H: c.H, Pix: make([]float32, 3*c.W*c.H)}
		for y := range c.H {
			for x := range c.W {
				src := ((c.Y+y*c.Scale)*im.W + c.X + x*c.Scale) * 3
				copy(cell.Pix[(y*c.W+x)*3:(y*c.W+x)*3+3], im.Pix[src:src+3])
			}
		}
		out[i] = cell
	}
	return out, nil
}

// writeGridPNG writes img as a PNG carrying layout, atomically.
func writeGridPNG(path string, img image.Image, layout GridLayout) error {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return fmt.Errorf("write PNG %s: %w", path, err)
	}
	if err := atomicfile.Write(path, func(w io.Writer) error { return encodeGridPNG(w, &buf, layout) }); err != nil {
		return fmt.Errorf("write PNG: %w", err)
	}
	return nil
}
