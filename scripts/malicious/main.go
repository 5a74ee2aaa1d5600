// Command malicious writes the hand-made hostile files of issue #28 (and a valid file of each
// kind to compare with) into a directory, for scripts/malicious.sh to feed to the pipeline
// binary under /usr/bin/time. Large files are sparse: a few KB on disk.
//
//	go run ./scripts/malicious DIR
//	go run ./scripts/malicious -add-unrelated FILE   (adds a sparse 1 GiB tensor to a safetensors file)
package main

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"sort"

	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/exporters/onnx"
	"github.com/densegrpo/densegrpo/internal/imagefile/imagefiletest"
	"github.com/densegrpo/densegrpo/models/mmdit"
)

func main() {
	var err error
	switch {
	case len(os.Args) == 3 && os.Args[1] == "-add-unrelated":
		err = addUnrelated(os.Args[2])
	case len(os.Args) == 2:
		err = run(os.Args[1])
	default:
		fmt.Fprintln(os.Stderr, "usage: malicious DIR | malicious -add-unrelated FILE")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "malicious:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	steps := []func(string) error{adapters, checkpoints, images, onnxFiles, rewardFiles}
	for _, step := range steps {
		if err := step(dir); err != nil {
			return err
		}
	}
	return nil
}

// entry is one tensor of a hand-written safetensors header.
type entry struct {
	DType   string  `json:"dtype"`
	Shape   []int64 `json:"shape"`
	Offsets [2]any  `json:"data_offsets"`
}

// header is a safetensors header as ordered key/value pairs (so that names may repeat).
type header []struct {
	name string
	e    any
}

func (h header) encode() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, kv := range h {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(kv.name)
		v, _ := json.Marshal(kv.e)
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// writeSafetensors writes the header, then data, then extends the file to dataLen bytes of
// data (sparse) if dataLen is larger.
func writeSafetensors(path string, hdr []byte, data []byte, dataLen int64) error {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(hdr)))
	b.Write(hdr)
	b.Write(data)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return err
	}
	if dataLen > int64(len(data)) {
		return os.Truncate(path, int64(8+len(hdr))+dataLen)
	}
	return nil
}

// readHeader returns the header pairs (sorted by offset) and data of a safetensors file.
func readHeader(path string) (header, []byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	n := binary.LittleEndian.Uint64(raw)
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw[8:8+n], &m); err != nil {
		return nil, nil, err
	}
	var h header
	for k, v := range m {
		if k == "__metadata__" {
			continue
		}
		var e entry
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, nil, err
		}
		h = append(h, struct {
			name string
			e    any
		}{k, e})
	}
	sort.Slice(h, func(i, j int) bool {
		return h[i].e.(entry).Offsets[0].(float64) < h[j].e.(entry).Offsets[0].(float64)
	})
	return h, raw[8+n:], nil
}

func kv(name string, e any) struct {
	name string
	e    any
} {
	return struct {
		name string
		e    any
	}{name, e}
}

// adapters writes LoRA files for the tiny-ocr model (rank 8, alpha 16, default targets).
func adapters(dir string) error {
	cfg, err := mmdit.LoadConfig("models/tinyocr/weights/mmdit.json")
	if err != nil {
		return err
	}
	m, err := mmdit.New(cfg, &mmdit.LoRAConfig{Rank: 8, Alpha: 16})
	if err != nil {
		return err
	}
	ctx := mlctx.New()
	if err := m.InitLoRA(ctx, 1); err != nil {
		return err
	}
	valid := filepath.Join(dir, "lora-valid.safetensors")
	if err := m.SaveLoRA(ctx, valid); err != nil {
		return err
	}
	h, data, err := readHeader(valid)
	if err != nil {
		return err
	}
	if err := writeOverlapped(filepath.Join(dir, "lora-overlap.safetensors"), h, data); err != nil {
		return err
	}
	// The first adapter named twice: the second entry has its own bytes (all 0.5).
	first := h[0].e.(entry)
	size := int(first.Offsets[1].(float64) - first.Offsets[0].(float64))
	extra := bytes.Repeat([]byte{0, 0, 0, 0x3f}, size/4)
	dup := append(append(header{}, h...), kv(h[0].name, entry{first.DType, first.Shape, [2]any{len(data), len(data) + size}}))
	if err := writeSafetensors(filepath.Join(dir, "lora-duplicate.safetensors"), dup.encode(), append(append([]byte{}, data...), extra...), 0); err != nil {
		return err
	}
	// One more tensor whose element count overflows int64 to 0 (2^31·2^31·4 = 2^64).
	ovf := append(append(header{}, h...), kv("zz_overflow", entry{"F32", []int64{1 << 31, 1 << 31, 4}, [2]any{len(data), len(data)}}))
	if err := writeSafetensors(filepath.Join(dir, "lora-overflow.safetensors"), ovf.encode(), data, 0); err != nil {
		return err
	}
	// A 99 MB header: one tensor with a shape of 49.5 million ones.
	var big bytes.Buffer
	big.WriteString(`{"a":{"dtype":"F32","data_offsets":[0,4],"shape":[1`)
	for big.Len() < 99_000_000 {
		big.WriteString(",1")
	}
	big.WriteString("]}}")
	if err := writeSafetensors(filepath.Join(dir, "lora-header-99mb.safetensors"), big.Bytes(), make([]byte, 4), 0); err != nil {
		return err
	}
	// The adapters plus one unrelated 1 GiB tensor (sparse).
	sparse := append(append(header{}, h...), kv("unrelated", entry{"F32", []int64{1 << 28}, [2]any{len(data), len(data) + 1<<30}}))
	if err := writeSafetensors(filepath.Join(dir, "lora-sparse-1gib.safetensors"), sparse.encode(), data, int64(len(data))+1<<30); err != nil {
		return err
	}
	// The committed VAE's metadata with one unrelated 1 GiB tensor (sparse) for weights.
	raw, err := os.ReadFile("models/tinyocr/weights/vae.safetensors")
	if err != nil {
		return err
	}
	var vaeHeader struct {
		Meta map[string]string `json:"__metadata__"`
	}
	if err := json.Unmarshal(raw[8:8+binary.LittleEndian.Uint64(raw)], &vaeHeader); err != nil {
		return err
	}
	vae := header{kv("__metadata__", vaeHeader.Meta), kv("unrelated", entry{"F32", []int64{1 << 28}, [2]any{0, 1 << 30}})}
	return writeSafetensors(filepath.Join(dir, "vae-sparse-1gib.safetensors"), vae.encode(), nil, 1<<30)
}

// addUnrelated rewrites a safetensors file (a checkpoint's group written by a run) with one
// more tensor, "unrelated", of 1 GiB (sparse) after its data.
func addUnrelated(path string) error {
	h, data, err := readHeader(path)
	if err != nil {
		return err
	}
	h = append(h, kv("unrelated", entry{"F32", []int64{1 << 28}, [2]any{len(data), len(data) + 1<<30}}))
	return writeSafetensors(path, h.encode(), data, int64(len(data))+1<<30)
}

// checkpoints writes base-weight files of the tiny-ocr transformer.
func checkpoints(dir string) error {
	h, data, err := readHeader("models/tinyocr/weights/transformer.safetensors")
	if err != nil {
		return err
	}
	return writeOverlapped(filepath.Join(dir, "checkpoint-overlap.safetensors"), h, data)
}

// writeOverlapped writes the tensors of h with every one pointed at the start of the data
// (names, dtypes and shapes kept, so only the offsets are wrong).
func writeOverlapped(path string, h header, data []byte) error {
	var over header
	maxEnd := 0.0
	for _, p := range h {
		e := p.e.(entry)
		size := e.Offsets[1].(float64) - e.Offsets[0].(float64)
		maxEnd = max(maxEnd, size)
		over = append(over, kv(p.name, entry{e.DType, e.Shape, [2]any{0, size}}))
	}
	return writeSafetensors(path, over.encode(), data[:int(maxEnd)], 0)
}

func images(dir string) error {
	img := image.NewNRGBA(image.Rect(0, 0, 128, 64))
	for y := range 64 {
		for x := range 128 {
			img.Set(x, y, color.NRGBA{uint8(2 * x), uint8(4 * y), 128, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "image-valid.png"), b.Bytes(), 0o644); err != nil {
		return err
	}
	b.Reset()
	if err := jpeg.Encode(&b, img, nil); err != nil {
		return err
	}
	valid := append([]byte{}, b.Bytes()...)
	if err := os.WriteFile(filepath.Join(dir, "image-valid.jpg"), valid, 0o644); err != nil {
		return err
	}
	// SOF0 rewritten to 65535×65535.
	if i := bytes.Index(valid, []byte{0xff, 0xc0}); i >= 0 {
		binary.BigEndian.PutUint16(valid[i+5:], 65535)
		binary.BigEndian.PutUint16(valid[i+7:], 65535)
	}
	if err := os.WriteFile(filepath.Join(dir, "image-65535x65535.jpg"), valid, 0o644); err != nil {
		return err
	}
	// 100000×100000 RGBA declared, one compressed byte of pixels.
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write([]byte{0})
	zw.Close()
	if err := os.WriteFile(filepath.Join(dir, "image-100000x100000.png"), imagefiletest.PNG(100000, 100000, 8, 6, z.Bytes()), 0o644); err != nil {
		return err
	}
	// A 1-bit 100000×100000 image of zeros: 1.25 GB of rows compressed to about 1.2 MB.
	z.Reset()
	zw, _ = zlib.NewWriterLevel(&z, zlib.BestCompression)
	row := make([]byte, 1+100000/8)
	for range 100000 {
		zw.Write(row)
	}
	zw.Close()
	if err := os.WriteFile(filepath.Join(dir, "image-1bit-bomb.png"), imagefiletest.PNG(100000, 100000, 1, 0, z.Bytes()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "image.gif"), []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"), 0o644)
}

func onnxFiles(dir string) error {
	sub := filepath.Join(dir, "onnx")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return err
	}
	secret := filepath.Join(dir, "outside.bin")
	w := make([]byte, 16)
	if err := os.WriteFile(secret, w, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(sub, "w.bin"), w, 0o644); err != nil {
		return err
	}
	os.Remove(filepath.Join(sub, "link.bin"))
	if err := os.Symlink(secret, filepath.Join(sub, "link.bin")); err != nil {
		return err
	}
	model := func(name, location string, n int64) error {
		g := onnx.NewGraph("add")
		x := g.Input("x", onnx.Float32, onnx.Fixed(n)...)
		w := g.Initializer(onnx.Tensor{Name: "w", DType: onnx.Float32, Shape: []int64{n}, External: &onnx.ExternalData{Location: location, Length: 4 * n}})
		g.Node("Add", []string{x, w}, []string{"y"})
		g.Output("y", onnx.Float32, onnx.Fixed(n)...)
		return (&onnx.Model{Graph: g}).WriteFile(filepath.Join(sub, name))
	}
	for name, loc := range map[string]string{
		"external-valid.onnx": "w.bin", "external-parent.onnx": "../outside.bin",
		"external-absolute.onnx": secret, "external-symlink.onnx": "link.bin",
	} {
		if err := model(name, loc, 4); err != nil {
			return err
		}
	}
	// A 4.5 GiB initializer in external data beside the model (sparse).
	const huge = 9 << 29
	if err := model("external-huge.onnx", "huge.bin", huge/4); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(sub, "huge.bin"), w, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(filepath.Join(sub, "huge.bin"), huge); err != nil {
		return err
	}
	// A 3 GiB .onnx: a valid model followed by zeros (sparse).
	big := filepath.Join(sub, "sparse-3gib.onnx")
	if err := model("sparse-3gib.onnx", "w.bin", 4); err != nil {
		return err
	}
	return os.Truncate(big, 3<<30)
}

// rewardFiles writes an onnx-scalar reward, score = mean(pixels) + sum(w), whose weight w is
// 1 GiB of external data (sparse) that ONNX Runtime reads when it opens the model, with two
// reward configs: one that fits it ([reward.image] size = [64, 64]) and one whose declared
// input does not ([224, 224]). A third config asks the PP-OCRv4 recogniser of the setup cache
// (x [N,3,48,W]) for 224×224 images.
func rewardFiles(dir string) error {
	sub := filepath.Join(dir, "onnx")
	const n = 1 << 28
	g := onnx.NewGraph("big_reward")
	x := g.Input("pixel_values", onnx.Float32, onnx.Sym("batch"), onnx.Fixed(3)[0], onnx.Fixed(64)[0], onnx.Fixed(64)[0])
	w := g.Initializer(onnx.Tensor{Name: "w", DType: onnx.Float32, Shape: []int64{n}, External: &onnx.ExternalData{Location: "reward-1gib.bin", Length: 4 * n}})
	m := g.Op("ReduceMean", []string{x}, onnx.AttrInts("axes", 1, 2, 3), onnx.AttrInt("keepdims", 0))
	sum := g.Op("ReduceSum", []string{w}, onnx.AttrInt("keepdims", 0))
	g.Node("Add", []string{m, sum}, []string{"score"})
	g.Output("score", onnx.Float32, onnx.Sym("batch"))
	if err := (&onnx.Model{Graph: g}).WriteFile(filepath.Join(sub, "reward-1gib.onnx")); err != nil {
		return err
	}
	bin := filepath.Join(sub, "reward-1gib.bin")
	if err := os.WriteFile(bin, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(bin, 4*n); err != nil {
		return err
	}
	reward := func(name, model, input string, size int) error {
		doc := fmt.Sprintf("[[reward]]\nname = \"scalar\"\nkind = \"onnx-scalar\"\nmodel = %q\n"+
			"[reward.image]\ninput = %q\nsize = [%d, %d]\n", model, input, size, size)
		return os.WriteFile(filepath.Join(dir, name), []byte(doc), 0o644)
	}
	if err := reward("reward-1gib-valid.toml", "onnx/reward-1gib.onnx", "pixel_values", 64); err != nil {
		return err
	}
	if err := reward("reward-1gib-mismatch.toml", "onnx/reward-1gib.onnx", "pixel_values", 224); err != nil {
		return err
	}
	rec, err := filepath.Abs(".cache/ocr/ch_PP-OCRv4_rec_infer.onnx")
	if err != nil {
		return err
	}
	return reward("reward-ocr-mismatch.toml", rec, "x", 224)
}
