package tinyocr

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

// TestReadTextEncoder: the text encoder is read from the header's shapes; tensors of other
// models in the same file are left alone, anything else under the prefix is an error.
func TestReadTextEncoder(t *testing.T) {
	cfg := TextEncoderConfig{Dim: 8, Hidden: 4, PooledDim: 3}
	ts := map[string]safetensors.Tensor{}
	for k, shape := range TextEncoderParamShapes(cfg, TextEncoderPrefix) {
		ts[k] = safetensors.Tensor{Shape: shape, Data: make([]float32, numElements(shape))}
	}
	ts["other_model.weight"] = safetensors.Tensor{Shape: []int{2}, Data: []float32{1, 2}}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := safetensors.Write(good, ts, nil); err != nil {
		t.Fatal(err)
	}
	got, gotCfg, err := ReadTextEncoder(good, TextEncoderPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if gotCfg != cfg || len(got) != 14 {
		t.Errorf("ReadTextEncoder: config %+v and %d tensors, want %+v and 14", gotCfg, len(got), cfg)
	}
	if _, ok := got["other_model.weight"]; ok {
		t.Error("a tensor outside the prefix was read")
	}

	extra := filepath.Join(dir, "extra.safetensors")
	ts[TextEncoderPrefix+".block.fc3.weight"] = safetensors.Tensor{Shape: []int{1}, Data: []float32{1}}
	if err := safetensors.Write(extra, ts, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadTextEncoder(extra, TextEncoderPrefix); err == nil || !strings.Contains(err.Error(), `"text_encoder.block.fc3.weight"`) {
		t.Errorf("undeclared tensor under the prefix: error %v", err)
	}
	delete(ts, TextEncoderPrefix+".block.fc3.weight")
	ts[TextEncoderPrefix+".block.fc2.bias"] = safetensors.Tensor{Shape: []int{9}, Data: make([]float32, 9)}
	bad := filepath.Join(dir, "bad.safetensors")
	if err := safetensors.Write(bad, ts, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadTextEncoder(bad, TextEncoderPrefix); err == nil || !strings.Contains(err.Error(), `tensor "text_encoder.block.fc2.bias": file has shape [9], model wants [8]`) {
		t.Errorf("wrong shape: error %v", err)
	}
}
