"""Regenerate the SD3 fixture, its export and its references, and compare with the committed ones.

    python -m exporters.sd3.interop [--committed testdata/sd3-tiny] [--go-lora FILE [--go-peft DIR]] [--update]

Builds, in a temporary directory, snapshot/ (exporters.sd3.fixture), export/
(exporters.sd3.export) and reference/ (exporters.sd3.reference, loading the Go-written LoRA
FILE when given), then compares each file with the committed copy:

- weights, LoRA files and tokenizer files must be identical (tensor by tensor / byte by byte);
- JSON files must be equal, except the float error figures an export records;
- ONNX graphs are run side by side in ONNX Runtime on the same inputs (<= 1e-5 relative);
- reference tensors must agree to 1e-5 relative (float32 kernels may round differently on
  another CPU), token ids exactly.

Any difference fails with a line naming the file. --update replaces the committed copy with the
regenerated one instead (how the committed fixture was made).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import export, fixture, reference

REL_TOL = 1e-5


class Mismatch(Exception):
    pass


def load_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def strip_checks(v):
    if isinstance(v, dict):
        return {k: strip_checks(x) for k, x in v.items() if k != "check"}
    if isinstance(v, list):
        return [strip_checks(x) for x in v]
    return v


def compare_tensors(name: str, got: dict, want: dict, exact: bool) -> float:
    if sorted(got) != sorted(want):
        raise Mismatch(f"{name}: tensors {sorted(set(got) ^ set(want))[:4]} differ in presence")
    worst = 0.0
    for k in want:
        g, w = got[k], want[k]
        if g.shape != w.shape or g.dtype != w.dtype:
            raise Mismatch(f"{name}: tensor {k}: {g.dtype}{list(g.shape)}, committed {w.dtype}{list(w.shape)}")
        if exact:
            if not np.array_equal(g, w):
                raise Mismatch(f"{name}: tensor {k} differs")
            continue
        scale = max(1.0, float(np.abs(w).max()) if w.size else 0.0)
        d = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) / scale if w.size else 0.0
        if d > REL_TOL:
            raise Mismatch(f"{name}: tensor {k} differs by {d:.3g} relative, tolerance {REL_TOL}")
        worst = max(worst, d)
    return worst


def compare_onnx(name: str, got: Path, want: Path) -> float:
    import onnxruntime as ort

    s_got = ort.InferenceSession(str(got), providers=["CPUExecutionProvider"])
    s_want = ort.InferenceSession(str(want), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in s_want.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        if "int64" in i.type:
            shape = [2, 77] if "text_encoder_3" not in name else [2, 64]
            feeds[i.name] = rng.integers(0, 300, size=shape, dtype=np.int64)
        else:
            shape = [2, 16, 8, 8]
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    g, w = s_got.run(None, feeds), s_want.run(None, feeds)
    return compare_tensors(name, {str(i): x for i, x in enumerate(g)}, {str(i): x for i, x in enumerate(w)}, exact=False)


def compare_dirs(new: Path, old: Path, part: str, report: list) -> None:
    new_files = sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    old_files = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file())
    if new_files != old_files:
        raise Mismatch(f"{old}: files differ: {sorted(set(map(str, new_files)) ^ set(map(str, old_files)))}")
    for rel in new_files:
        a, b = new / rel, old / rel
        name = str(old / rel)
        if rel.suffix == ".onnx":
            report.append((name, "ONNX Runtime outputs", compare_onnx(name, a, b)))
        elif rel.name.endswith(".onnx.data"):
            continue  # compared through the graph that uses it
        elif rel.suffix == ".safetensors":
            ta, ma = load_tensors(a)
            tb, mb = load_tensors(b)
            # Weights are made from seeds: identical. Computed outputs: within REL_TOL.
            exact = part == "snapshot" or rel.parts[0] in ("lora_diffusers", "lora_peft") or rel.name == "go_lora.safetensors"
            if ma != mb:
                raise Mismatch(f"{name}: metadata differs")
            report.append((name, "tensors" + (" (exact)" if exact else ""), compare_tensors(name, ta, tb, exact)))
        elif rel.suffix == ".json":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            if strip_checks(ja) != strip_checks(jb):
                raise Mismatch(f"{name}: JSON differs")
            report.append((name, "JSON", 0.0))
        else:
            if a.read_bytes() != b.read_bytes():
                raise Mismatch(f"{name}: bytes differ")
            report.append((name, "bytes", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--committed", type=Path, default=Path("testdata/sd3-tiny"))
    ap.add_argument("--go-lora", type=Path, help="LoRA file the Go side wrote (go test ./models/mmdit -run TestSD3GoLoRAFile)")
    ap.add_argument("--go-peft", type=Path, help="the same adapter as a PEFT folder the Go side wrote (checked with PeftModel.from_pretrained)")
    ap.add_argument("--update", action="store_true", help="replace the committed files with the regenerated ones")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # as reference.main: the same kernels as the committed run
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fixture.build(work / "snapshot")
        export.export(work / "snapshot", work / "export", log=lambda *_: None)
        go_lora = None
        if args.go_lora is not None:
            go_lora = work / "reference_go_lora.safetensors"
            shutil.copy(args.go_lora, go_lora)
        reference.write(work / "reference", work / "snapshot", go_lora, args.go_peft)
        if go_lora is not None:
            shutil.copy(go_lora, work / "reference" / "go_lora.safetensors")
        if args.update:
            for part in ["snapshot", "export", "reference"]:
                dst = args.committed / part
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(work / part, dst)
            print(f"updated {args.committed}")
            return
        report: list = []
        try:
            for part in ["snapshot", "export", "reference"]:
                compare_dirs(work / part, args.committed / part, part, report)
        except Mismatch as e:
            print(f"interop: {e}", file=sys.stderr)
            sys.exit(1)
        for name, how, d in report:
            print(f"same  {name}  ({how}{'' if d == 0 else f', max rel diff {d:.2g}'})")
        print(f"interop: {len(report)} files reproduce the committed fixture")


if __name__ == "__main__":
    main()
