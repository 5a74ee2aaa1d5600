package onnx

import (
	"fmt"
	"io"
)

// ExternalThreshold is the size, in bytes, from which ExternalWriter moves a tensor's data out
// of the model: onnx's convert_model_to_external_data default (size_threshold = 1024).
const ExternalThreshold = 1024

// ExternalWriter lays tensors' data out in one external-data file as onnx's
// save_model(save_as_external_data=True) does: each tensor's bytes appended at the file's end,
// the tensor keeping its name, type and shape and pointing at them by location, offset and
// length. It writes to w from the file's start; the caller creates the file (e.g. with
// internal/atomicfile) beside the model, under Location. Building a model through it keeps
// only one tensor's bytes in memory at a time, which is how a model past protobuf's 2 GiB is
// written.
type ExternalWriter struct {
	w io.Writer
	// Location is the data file's path relative to the model's folder.
	Location string
	off      int64
}

// NewExternalWriter writes the data of tensors placed with Add to w, the file at location.
func NewExternalWriter(w io.Writer, location string) *ExternalWriter {
	return &ExternalWriter{w: w, Location: location}
}

// Add writes t's data to the file and returns t pointing at it (Raw dropped). A tensor of
// fewer than ExternalThreshold bytes, or one already external, is returned as it is.
func (e *ExternalWriter) Add(t Tensor) (Tensor, error) {
	if t.External != nil || len(t.Raw) < ExternalThreshold {
		return t, nil
	}
	if want := t.NumElements() * int64(t.DType.Size()); int64(len(t.Raw)) != want {
		return Tensor{}, fmt.Errorf("write tensor %q to %s: %d bytes of data for %s %v, want %d", t.Name, e.Location, len(t.Raw), t.DType, t.Shape, want)
	}
	n, err := e.w.Write(t.Raw)
	if err != nil {
		return Tensor{}, fmt.Errorf("write tensor %q to %s: %w", t.Name, e.Location, err)
	}
	t.External = &ExternalData{Location: e.Location, Offset: e.off, Length: int64(n)}
	t.Raw = nil
	e.off += int64(n)
	return t, nil
}

// Size is the number of bytes written so far.
func (e *ExternalWriter) Size() int64 { return e.off }
