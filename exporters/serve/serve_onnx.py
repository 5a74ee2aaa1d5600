"""Serve an ONNX scorer with NVIDIA Triton (started by PyTriton, from PyPI) on 127.0.0.1, over
the KServe v2 / Open Inference Protocol — what the Go `remote` reward kind talks to.

    .venv-serve/bin/python exporters/serve/serve_onnx.py MODEL.onnx --name mean --http-port 8000

The model's inputs and outputs (names, element types, shapes without the batch dimension) are
read from the graph; each request batch is run in ONNX Runtime on the CPU. Triton serves HTTP
(and gRPC) on 127.0.0.1 only, metrics off. The server runs until SIGINT/SIGTERM.

PyTriton binds Python callables through Triton's Python backend, so Triton's own onnxruntime
backend (not in the PyTriton wheel) is not what runs the graph here; the HTTP surface, batching
and error answers are Triton's. On a GPU machine with a full Triton install, the same ONNX file
in a model repository served by the onnxruntime backend speaks the same protocol.
"""

import argparse
import logging
import signal
import sys
import threading

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="ONNX file with a dynamic batch dimension")
    p.add_argument("--name", required=True, help="served model name")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    a = p.parse_args(argv)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    inputs = [(i.name, NP[i.type], tuple(-1 if not isinstance(d, int) else d for d in i.shape[1:])) for i in sess.get_inputs()]
    outputs = [(o.name, NP[o.type], tuple(-1 if not isinstance(d, int) else d for d in o.shape[1:])) for o in sess.get_outputs()]
    out_names = [o[0] for o in outputs]
    lock = threading.Lock()

    @batch
    def infer(**feeds):
        with lock:
            res = sess.run(out_names, feeds)
        return {n: (r.reshape(-1, 1) if r.ndim == 1 else r) for n, r in zip(out_names, res)}

    cfg = TritonConfig(http_address="127.0.0.1", http_port=a.http_port, grpc_address="127.0.0.1", grpc_port=a.grpc_port,
                       allow_metrics=False, allow_gpu_metrics=False, allow_cpu_metrics=False)
    with Triton(config=cfg) as triton:
        triton.bind(
            model_name=a.name,
            infer_func=infer,
            inputs=[Tensor(name=n, dtype=t, shape=s) for n, t, s in inputs],
            # Triton wants at least one non-batch dimension: a score per image is served as
            # [N, 1], which the Go side reads as column 0 (output.index = 0).
            outputs=[Tensor(name=n, dtype=t, shape=s if s != () else (1,)) for n, t, s in outputs],
            config=ModelConfig(max_batch_size=a.max_batch_size),
            strict=True,
        )
        print(f"serving {a.model} as {a.name!r} on http://127.0.0.1:{a.http_port}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        triton.serve()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
