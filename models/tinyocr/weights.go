package tinyocr

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

// ParamShapes maps checkpoint keys to tensor shapes.
type ParamShapes map[string][]int

func convShapes(out ParamShapes, prefix string, cout, cin, k int) {
	out[prefix+".weight"] = []int{cout, cin, k, k}
	out[prefix+".bias"] = []int{cout}
}

// VAEParamShapes lists every tensor of a VAE with cfg, keyed as the checkpoint names them
// ("encoder.conv_in.weight", ...), with its shape.
func VAEParamShapes(cfg VAEConfig) ParamShapes {
	s := ParamShapes{}
	h := cfg.Hidden
	folded := ImageChannels * Downsample * Downsample
	convShapes(s, "encoder.conv_in", h, folded, 3)
	for i := range cfg.EncoderBlocks {
		convShapes(s, fmt.Sprintf("encoder.mid_block.resnets.%d.conv1", i), h, h, 3)
		convShapes(s, fmt.Sprintf("encoder.mid_block.resnets.%d.conv2", i), h, h, 3)
	}
	convShapes(s, "encoder.conv_out", 2*LatentChannels, h, 3)
	convShapes(s, "decoder.conv_in", h, LatentChannels, 3)
	for i := range cfg.DecoderBlocks {
		convShapes(s, fmt.Sprintf("decoder.mid_block.resnets.%d.conv1", i), h, h, 3)
		convShapes(s, fmt.Sprintf("decoder.mid_block.resnets.%d.conv2", i), h, h, 3)
	}
	convShapes(s, "decoder.conv_out", folded, h, 3)
	return s
}

// NumParams is the total number of scalars.
func (p ParamShapes) NumParams() int {
	n := 0
	for _, s := range p {
		n += numElements(s)
	}
	return n
}

func numElements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// ExportVariables copies the variables of mctx whose keys (VariableKey) are in want into
// safetensors tensors. A wanted key without a variable, or with another shape, is an error.
func ExportVariables(mctx *mlctx.Context, want ParamShapes) (map[string]safetensors.Tensor, error) {
	out := make(map[string]safetensors.Tensor, len(want))
	for v := range mctx.IterVariables() {
		key := VariableKey(v.Scope(), v.Name())
		shape, ok := want[key]
		if !ok {
			continue
		}
		if !slices.Equal(v.Shape().Dimensions, shape) {
			return nil, fmt.Errorf("export variable %q: shape %v, want %v", key, v.Shape().Dimensions, shape)
		}
		value, err := v.Value()
		if err != nil {
			return nil, fmt.Errorf("export variable %q: %w", key, err)
		}
		data, err := tensors.CopyFlatData[float32](value)
		if err != nil {
			return nil, fmt.Errorf("export variable %q: %w", key, err)
		}
		out[key] = safetensors.Tensor{Shape: slices.Clone(shape), Data: data}
	}
	for _, key := range slices.Sorted(maps.Keys(want)) {
		if _, ok := out[key]; !ok {
			return nil, fmt.Errorf("export variables: missing variable %q (want %v)", key, want[key])
		}
	}
	return out, nil
}

// ImportVariables creates (or overwrites) the variables of mctx named by want from ts. A key
// of want missing from ts, a shape mismatch, or a tensor of ts not in want is an error naming
// the tensor. Call it before building graphs that use the variables.
func ImportVariables(mctx *mlctx.Context, ts map[string]safetensors.Tensor, want ParamShapes) error {
	if err := CheckTensors(ts, want); err != nil {
		return err
	}
	for _, key := range slices.Sorted(maps.Keys(want)) {
		t := ts[key]
		scope, name := ScopeOfKey(key)
		value := tensors.FromFlatDataAndDimensions(slices.Clone(t.Data), t.Shape...)
		sc := mctx.InAbsPath(scope).Checked(false)
		if v := sc.GetVariableByScopeAndName(scope, name); v != nil {
			if err := v.SetValue(value); err != nil {
				return fmt.Errorf("tensor %q: %w", key, err)
			}
			continue
		}
		if err := tryPanic(func() { sc.VariableWithValue(name, value) }); err != nil {
			return fmt.Errorf("tensor %q: %w", key, err)
		}
	}
	return nil
}

// ReadTensors reads the tensors of want from f after checking from its header that they are
// all there with their shapes and that the file holds nothing else but the names in extra
// (left unread): a file that does not fit costs no more than its header.
func ReadTensors(f *safetensors.File, want ParamShapes, extra ...string) (map[string]safetensors.Tensor, error) {
	keys := slices.Sorted(maps.Keys(want))
	wants := make([]safetensors.Want, len(keys))
	for i, k := range keys {
		wants[i] = safetensors.Want{Name: k, Shape: want[k]}
	}
	if err := f.Check(wants, extra...); err != nil {
		return nil, err
	}
	out := make(map[string]safetensors.Tensor, len(keys))
	for _, k := range keys {
		t, err := f.Tensor(k)
		if err != nil {
			return nil, err
		}
		out[k] = t
	}
	return out, nil
}

// CheckTensors reports the first difference between ts and want: a missing tensor, a shape
// mismatch, a tensor whose data length does not match its shape, or unexpected tensors.
func CheckTensors(ts map[string]safetensors.Tensor, want ParamShapes) error {
	for _, key := range slices.Sorted(maps.Keys(want)) {
		t, ok := ts[key]
		if !ok {
			return fmt.Errorf("missing tensor %q (want %v)", key, want[key])
		}
		if !slices.Equal(t.Shape, want[key]) {
			return fmt.Errorf("tensor %q: shape %v, want %v", key, t.Shape, want[key])
		}
		if len(t.Data) != numElements(t.Shape) {
			return fmt.Errorf("tensor %q: %d values for shape %v", key, len(t.Data), t.Shape)
		}
	}
	var unknown []string
	for key := range ts {
		if _, ok := want[key]; !ok {
			unknown = append(unknown, key)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("unexpected tensors %q", unknown)
	}
	return nil
}

// VAE weight file metadata keys (diffusers' AutoencoderKL config names where one exists).
const (
	metaFormat        = "format"
	metaScalingFactor = "scaling_factor"
	metaShiftFactor   = "shift_factor"
	metaConfig        = "config"
	vaeFormat         = "densegrpo-tinyocr-vae-v1"
)

// vaeConfigJSON is the JSON of the "config" metadata entry.
type vaeConfigJSON struct {
	Hidden         int     `json:"hidden"`
	EncoderBlocks  int     `json:"encoder_blocks"`
	DecoderBlocks  int     `json:"decoder_blocks"`
	LatentChannels int     `json:"latent_channels"`
	SampleSize     [2]int  `json:"sample_size"`
	Downsample     int     `json:"downsample"`
	ScalingFactor  float32 `json:"scaling_factor"`
	ShiftFactor    float32 `json:"shift_factor"`
}

// SaveVAE writes the VAE variables of mctx ("encoder.*", "decoder.*" at mctx's root) with
// cfg and scaling as metadata, atomically.
func SaveVAE(path string, mctx *mlctx.Context, cfg VAEConfig, scaling VAEScaling) error {
	ts, err := ExportVariables(mctx, VAEParamShapes(cfg))
	if err != nil {
		return fmt.Errorf("save VAE %s: %w", path, err)
	}
	cj, err := json.Marshal(vaeConfigJSON{
		Hidden: cfg.Hidden, EncoderBlocks: cfg.EncoderBlocks, DecoderBlocks: cfg.DecoderBlocks,
		LatentChannels: LatentChannels, SampleSize: [2]int{ImageHeight, ImageWidth}, Downsample: Downsample,
		ScalingFactor: scaling.ScalingFactor, ShiftFactor: scaling.ShiftFactor,
	})
	if err != nil {
		return fmt.Errorf("save VAE %s: %w", path, err)
	}
	meta := map[string]string{
		metaFormat:        vaeFormat,
		metaScalingFactor: strconv.FormatFloat(float64(scaling.ScalingFactor), 'g', -1, 32),
		metaShiftFactor:   strconv.FormatFloat(float64(scaling.ShiftFactor), 'g', -1, 32),
		metaConfig:        string(cj),
	}
	return safetensors.Write(path, ts, meta)
}

// VAEWeights is a loaded VAE weight file.
type VAEWeights struct {
	Config  VAEConfig
	Scaling VAEScaling
	Tensors map[string]safetensors.Tensor
}

// ReadVAE reads and validates a VAE weight file written by SaveVAE: the metadata and the
// header's names and shapes are checked before any tensor is read.
func ReadVAE(path string) (*VAEWeights, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read VAE: %w", err)
	}
	defer f.Close()
	meta := f.Metadata()
	if meta[metaFormat] != vaeFormat {
		return nil, fmt.Errorf("read VAE %s: metadata format %q, want %q", path, meta[metaFormat], vaeFormat)
	}
	var cj vaeConfigJSON
	dec := json.NewDecoder(strings.NewReader(meta[metaConfig]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cj); err != nil {
		return nil, fmt.Errorf("read VAE %s: metadata config: %w", path, err)
	}
	if cj.LatentChannels != LatentChannels || cj.SampleSize != [2]int{ImageHeight, ImageWidth} || cj.Downsample != Downsample {
		return nil, fmt.Errorf("read VAE %s: geometry latent_channels %d, sample_size %v, downsample %d; want %d, [%d %d], %d",
			path, cj.LatentChannels, cj.SampleSize, cj.Downsample, LatentChannels, ImageHeight, ImageWidth, Downsample)
	}
	w := &VAEWeights{
		Config:  VAEConfig{Hidden: cj.Hidden, EncoderBlocks: cj.EncoderBlocks, DecoderBlocks: cj.DecoderBlocks},
		Scaling: VAEScaling{ScalingFactor: cj.ScalingFactor, ShiftFactor: cj.ShiftFactor},
	}
	if err := w.Config.Validate(); err != nil {
		return nil, fmt.Errorf("read VAE %s: %w", path, err)
	}
	if !(w.Scaling.ScalingFactor > 0) {
		return nil, fmt.Errorf("read VAE %s: scaling_factor %g, want > 0", path, w.Scaling.ScalingFactor)
	}
	if w.Tensors, err = ReadTensors(f, VAEParamShapes(w.Config)); err != nil {
		return nil, fmt.Errorf("read VAE %s: %w", path, err)
	}
	return w, nil
}
