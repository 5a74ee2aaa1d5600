package safetensors

import (
	"fmt"
	"slices"
)

// Want is a tensor a loader needs: its name in the file, the shape its model declares and,
// when the loader knows it (files the project writes itself are F32), the dtype.
type Want struct {
	Name  string
	Shape []int
	// DType is the dtype the file must store the tensor in; "" accepts any dtype Tensor
	// decodes (F32, F64, F16, BF16).
	DType string
}

// Check verifies from the header alone that the file holds every wanted tensor with the
// wanted shape in the wanted dtype (one Tensor can decode), and no other tensor except the
// names in extra (which may also be absent; the caller checks those itself). Nothing is read,
// so a file that does not fit the model costs only its header. Errors name the tensor and
// both shapes: `missing tensor "x" (want [4 4])`, `tensor "x": file has shape [2 4], model
// wants [4 4]`.
func (f *File) Check(want []Want, extra ...string) error {
	wanted := make(map[string]bool, len(want))
	var missing []Want
	for _, w := range want {
		wanted[w.Name] = true
		info, ok := f.infos[w.Name]
		if !ok {
			missing = append(missing, w)
			continue
		}
		if !slices.Equal(info.Shape, w.Shape) {
			return fmt.Errorf("tensor %q: file has shape %v, model wants %v", w.Name, info.Shape, w.Shape)
		}
		if _, ok := dtypeSize[info.DType]; !ok {
			return fmt.Errorf("tensor %q: unsupported dtype %q (want F32, F64, F16 or BF16)", w.Name, info.DType)
		}
		if w.DType != "" && info.DType != w.DType {
			return fmt.Errorf("tensor %q: file has dtype %s, want %s", w.Name, info.DType, w.DType)
		}
	}
	switch len(missing) {
	case 0:
	case 1:
		return fmt.Errorf("missing tensor %q (want %v)", missing[0].Name, missing[0].Shape)
	default:
		return fmt.Errorf("missing tensor %q (want %v) and %d more missing tensors", missing[0].Name, missing[0].Shape, len(missing)-1)
	}
	var unexpected []string
	for _, name := range f.Names() {
		if !wanted[name] && !slices.Contains(extra, name) {
			unexpected = append(unexpected, name)
		}
	}
	if len(unexpected) > 0 {
		return fmt.Errorf("%d tensors not declared by the model config, e.g. %q", len(unexpected), unexpected[:min(len(unexpected), 5)])
	}
	return nil
}

// ReadWanted reads exactly the wanted tensors of the file at path after Check accepted the
// header (no tensor besides them may be in the file), with the file's metadata.
func ReadWanted(path string, want []Want) (map[string]Tensor, map[string]string, error) {
	f, err := Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	out, err := f.ReadWanted(want)
	if err != nil {
		return nil, nil, err
	}
	return out, f.meta, nil
}

// ReadWanted is the package's ReadWanted for an open file.
func (f *File) ReadWanted(want []Want) (map[string]Tensor, error) {
	if err := f.Check(want); err != nil {
		return nil, fmt.Errorf("read safetensors %q: %w", f.path, err)
	}
	out := make(map[string]Tensor, len(want))
	for _, w := range want {
		t, err := f.Tensor(w.Name)
		if err != nil {
			return nil, err
		}
		out[w.Name] = t
	}
	return out, nil
}
