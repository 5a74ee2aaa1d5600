package kservetest

import (
	"context"

	"github.com/densegrpo/densegrpo/models/onnxrt"
	"github.com/densegrpo/densegrpo/rewards/kserve"
)

// ONNXModel serves an ONNX file as Triton's onnxruntime backend would: metadata from the
// graph, FP32 or INT64 tensors in, the graph's FP32 outputs out, run in ONNX Runtime (one
// intra-op thread). closeFn releases the session once the server is closed.
func ONNXModel(path string) (m Model, closeFn func() error, err error) {
	sess, err := onnxrt.Open(path, onnxrt.Config{IntraOpThreads: 1})
	if err != nil {
		return Model{}, nil, err
	}
	meta := func(infos []onnxrt.TensorInfo) []kserve.TensorMeta {
		var out []kserve.TensorMeta
		for _, ti := range infos {
			out = append(out, kserve.TensorMeta{Name: ti.Name, Datatype: map[string]string{"float32": "FP32", "int64": "INT64"}[ti.Type], Shape: ti.Dims})
		}
		return out
	}
	var names []string
	for _, o := range sess.Outputs() {
		names = append(names, o.Name)
	}
	m = Model{Inputs: meta(sess.Inputs()), Outputs: meta(sess.Outputs()),
		Infer: func(in map[string]kserve.Tensor) (map[string]kserve.Tensor, error) {
			feeds := map[string]onnxrt.Tensor{}
			for k, v := range in {
				feeds[k] = onnxrt.Tensor{Shape: v.Shape, Float32: v.F32, Int64: v.I64}
			}
			res, err := sess.Run(context.Background(), feeds, names...)
			if err != nil {
				return nil, err
			}
			out := map[string]kserve.Tensor{}
			for k, v := range res {
				out[k] = kserve.Tensor{Name: k, Datatype: "FP32", Shape: v.Shape, F32: v.Float32}
			}
			return out, nil
		}}
	return m, sess.Close, nil
}
