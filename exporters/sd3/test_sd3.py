"""pytest for the SD3 exporter and fixture (python -m pytest exporters/sd3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from . import export, fixture

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "testdata" / "sd3-tiny" / "snapshot"
EXPORT = ROOT / "testdata" / "sd3-tiny" / "export"


def copy_snapshot(tmp_path: Path) -> Path:
    dst = tmp_path / "snap"
    shutil.copytree(SNAPSHOT, dst)
    return dst


def test_missing_component_names_it(tmp_path):
    snap = copy_snapshot(tmp_path)
    shutil.rmtree(snap / "text_encoder_2")
    with pytest.raises(export.ExportError, match=r"snap/text_encoder_2: directory missing"):
        export.export(snap, tmp_path / "out", log=lambda *_: None)


def test_component_of_another_class(tmp_path):
    snap = copy_snapshot(tmp_path)
    index = json.loads((snap / "model_index.json").read_text())
    index["text_encoder_3"] = ["transformers", "T5Model"]
    (snap / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(export.ExportError, match=r"model_index.json: component 'text_encoder_3' is transformers.T5Model"):
        export.export(snap, tmp_path / "out", log=lambda *_: None)


def test_not_a_snapshot(tmp_path):
    with pytest.raises(export.ExportError, match=r"model_index.json: not found"):
        export.export(tmp_path, tmp_path / "out", log=lambda *_: None)


def test_dynamic_shifting_is_refused(tmp_path):
    snap = copy_snapshot(tmp_path)
    path = snap / "scheduler" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    cfg["use_dynamic_shifting"] = True
    path.write_text(json.dumps(cfg))
    with pytest.raises(export.ExportError, match=r"scheduler_config.json: use_dynamic_shifting"):
        export.export(snap, tmp_path / "out", log=lambda *_: None)


def test_clip_vocabulary_layout():
    """CLIP's layout: 256 byte symbols, the same with </w>, one token per merge, then the two
    special tokens; every merge's result is the token at its rank."""
    vocab = json.loads((SNAPSHOT / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    merges = (SNAPSHOT / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    byte_syms = list(fixture.bytes_to_unicode().values())
    by_id = {i: t for t, i in vocab.items()}
    assert [by_id[i] for i in range(256)] == byte_syms
    assert [by_id[256 + i] for i in range(256)] == [s + "</w>" for s in byte_syms]
    for rank, line in enumerate(merges):
        a, b = line.split(" ")
        assert by_id[512 + rank] == a + b
    assert by_id[len(vocab) - 2] == "<|startoftext|>" and by_id[len(vocab) - 1] == "<|endoftext|>"


def test_export_of_the_fixture(tmp_path):
    """Exporting the committed snapshot gives graphs that compute what the committed export
    computes, and a manifest with SD3.5's VAE factors and the scheduler's shift."""
    import onnxruntime as ort

    manifest = export.export(SNAPSHOT, tmp_path, log=lambda *_: None)
    assert manifest["vae"]["scaling_factor"] == pytest.approx(1.5305)
    assert manifest["vae"]["shift_factor"] == pytest.approx(0.0609)
    assert manifest["scheduler"]["shift"] == 3.0
    assert [e["kind"] for e in manifest["text_encoders"]] == ["clip", "clip", "t5"]
    assert (tmp_path / "text_encoder_3.onnx.data").is_file()
    ids = np.random.default_rng(1).integers(0, 400, size=(2, 77), dtype=np.int64)
    for name in ["text_encoder.onnx", "text_encoder_2.onnx", "text_encoder_3.onnx"]:
        a = ort.InferenceSession(str(tmp_path / name)).run(None, {"input_ids": ids})
        b = ort.InferenceSession(str(EXPORT / name)).run(None, {"input_ids": ids})
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
