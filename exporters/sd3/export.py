"""Export a diffusers SD3 / SD3.5 snapshot to what the Go side runs.

    python -m exporters.sd3.export --model-dir SNAPSHOT --out OUT [--t5-dtype float16]

SNAPSHOT is a diffusers StableDiffusion3Pipeline directory (model_index.json, transformer/,
vae/, text_encoder/, text_encoder_2/, text_encoder_3/, tokenizer/, tokenizer_2/, tokenizer_3/,
scheduler/). OUT receives:

- text_encoder.onnx, text_encoder_2.onnx (CLIP-L / CLIP-G with projection): input input_ids
  int64 [batch, 77]; outputs hidden_states float32 [batch, 77, width] — the penultimate layer's
  states, which SD3 uses (hidden_states[-2]) — and text_embeds float32 [batch, projection].
- text_encoder_3.onnx (+ text_encoder_3.onnx.data, ONNX external data: the T5-XXL encoder is
  far past protobuf's 2 GiB): input input_ids int64 [batch, seq]; output last_hidden_state
  float32 [batch, seq, d_model]. --t5-dtype float16 stores the weights in float16 (inputs and
  outputs stay as stated).
- vae_decoder.onnx: input latent float32 [batch, 16, h, w] in the VAE's own latent space (the
  Go side applies latents / scaling_factor + shift_factor first, as the pipeline does); output
  image float32 [batch, 3, 8h, 8w] = decode(latent) / 2 + 0.5 (the pipeline's post-processing
  without the clamp, which Go applies).
- tokenizer/, tokenizer_2/, tokenizer_3/: tokenizer.json (the snapshot's, or the one the
  tokenizer library builds from vocab.json + merges.txt) and the snapshot's
  tokenizer_config.json / special_tokens_map.json.
- manifest.json: every file, shape and factor the Go side needs; the transformer stays where it
  is (its safetensors are loaded directly by Go), referenced by a path relative to OUT.

Each graph is run in ONNX Runtime against its PyTorch module on the same inputs before the
export reports success; a difference beyond the tolerance is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MANIFEST_FORMAT = "densegrpo-sd3-export"
MANIFEST_VERSION = 1
OPSET = 18
CLIP_LENGTH = 77
T5_LENGTH = 256

# Components a snapshot must have and the classes the exporter knows how to export.
COMPONENTS = {
    "transformer": ("diffusers", {"SD3Transformer2DModel"}),
    "vae": ("diffusers", {"AutoencoderKL"}),
    "text_encoder": ("transformers", {"CLIPTextModelWithProjection"}),
    "text_encoder_2": ("transformers", {"CLIPTextModelWithProjection"}),
    "text_encoder_3": ("transformers", {"T5EncoderModel"}),
    "tokenizer": ("transformers", {"CLIPTokenizer", "CLIPTokenizerFast"}),
    "tokenizer_2": ("transformers", {"CLIPTokenizer", "CLIPTokenizerFast"}),
    "tokenizer_3": ("transformers", {"T5Tokenizer", "T5TokenizerFast"}),
    "scheduler": ("diffusers", {"FlowMatchEulerDiscreteScheduler"}),
}


class ExportError(Exception):
    """A one-line error naming the file and what was expected."""


def check_snapshot(snap: Path) -> dict:
    """Reads model_index.json and checks every component is there with a known class."""
    index_path = snap / "model_index.json"
    if not index_path.is_file():
        raise ExportError(f"{index_path}: not found (want a diffusers StableDiffusion3Pipeline snapshot)")
    index = json.loads(index_path.read_text())
    if index.get("_class_name") != "StableDiffusion3Pipeline":
        raise ExportError(f"{index_path}: _class_name {index.get('_class_name')!r}, want 'StableDiffusion3Pipeline'")
    for name, (lib, classes) in COMPONENTS.items():
        entry = index.get(name)
        if not entry or entry[1] is None:
            raise ExportError(f"{index_path}: component {name!r} is missing, want {lib} {sorted(classes)[0]}")
        if entry[1] not in classes:
            raise ExportError(f"{index_path}: component {name!r} is {entry[0]}.{entry[1]}, want one of {sorted(classes)}")
        if not (snap / name).is_dir():
            raise ExportError(f"{snap / name}: directory missing (model_index.json lists {name}: {entry[1]})")
    return index


class ClipPenultimate(torch.nn.Module):
    """CLIPTextModelWithProjection as SD3 reads it: hidden_states[-2] and text_embeds."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds


class T5Encoder(torch.nn.Module):
    """T5EncoderModel without attention mask (SD3 passes none), float32 out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids).last_hidden_state.float()


class VAEDecoder(torch.nn.Module):
    """AutoencoderKL.decode followed by the pipeline's [-1,1] -> [0,1] map (unclamped)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent.to(self.vae.dtype)).sample.float() * 0.5 + 0.5


@dataclass
class Check:
    max_abs: float
    max_ref: float
    tolerance: float


def compare(name: str, got: np.ndarray, want: np.ndarray, rel_tol: float) -> Check:
    """Max abs difference against rel_tol·max(1, max|want|)."""
    if got.shape != want.shape:
        raise ExportError(f"{name}: ONNX output shape {got.shape}, PyTorch {want.shape}")
    max_ref = float(np.abs(want).max()) if want.size else 0.0
    tol = rel_tol * max(1.0, max_ref)
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if want.size else 0.0
    if not np.isfinite(diff) or diff > tol:
        raise ExportError(f"{name}: ONNX Runtime differs from PyTorch by {diff:.3g} (max |ref| {max_ref:.3g}), tolerance {tol:.3g}")
    return Check(diff, max_ref, tol)


def onnx_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def export_graph(module, args, path: Path, input_names, output_names, dynamic_shapes, external: bool) -> None:
    """torch.onnx.export (dynamo) to path; external data in path + ".data" when asked."""
    for p in [path, path.with_name(path.name + ".data")]:
        if p.exists():
            p.unlink()
    prog = torch.onnx.export(
        module, args, dynamo=True, opset_version=OPSET, input_names=input_names, output_names=output_names,
        dynamic_shapes=dynamic_shapes, external_data=external, optimize=True, verbose=False,
    )
    # The exporter annotates every node with its PyTorch call stack (most of a small graph's
    # bytes); the graphs are shipped without it.
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(prog.model.graph):
        node.metadata_props.clear()
        node.doc_string = None
    prog.save(str(path), external_data=external)


def sample_ids(tokenizer, length: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Two real prompts (padded as the pipeline pads them) and one row of random ids."""
    prompts = ['a sign that says "K4RT"', ""]
    ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    rand = torch.randint(0, vocab, (1, length), generator=gen)
    return torch.cat([ids, rand], 0)


def export_clip(name: str, snap: Path, out: Path, gen: torch.Generator, log) -> dict:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    model = CLIPTextModelWithProjection.from_pretrained(snap / name, torch_dtype=torch.float32).eval()
    tok_name = name.replace("text_encoder", "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(snap / tok_name)
    length = tokenizer.model_max_length
    if length != CLIP_LENGTH:
        raise ExportError(f"{snap / tok_name / 'tokenizer_config.json'}: model_max_length {length}, want {CLIP_LENGTH}")
    ids = sample_ids(tokenizer, length, model.config.vocab_size, gen)
    wrapper = ClipPenultimate(model).eval()
    path = out / f"{name}.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    t0 = time.time()
    with torch.no_grad():
        export_graph(wrapper, (ids,), path, ["input_ids"], ["hidden_states", "text_embeds"], {"input_ids": {0: batch}}, False)
        want = [t.numpy() for t in wrapper(ids)]
    got = onnx_run(path, {"input_ids": ids.numpy()})
    checks = {o: compare(f"{path} output {o}", g, w, 1e-4).__dict__ for o, g, w in zip(["hidden_states", "text_embeds"], got, want)}
    log(f"exported {path} in {time.time() - t0:.1f}s; {checks}")
    return {
        "name": name, "kind": "clip", "model": path.name, "tokenizer": tok_name, "max_length": length,
        "hidden_size": model.config.hidden_size, "projection_dim": model.config.projection_dim, "check": checks,
    }


def export_t5(snap: Path, out: Path, dtype: str, gen: torch.Generator, log) -> dict:
    from transformers import T5EncoderModel, T5TokenizerFast

    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    model = T5EncoderModel.from_pretrained(snap / "text_encoder_3", torch_dtype=torch_dtype).eval()
    tokenizer = T5TokenizerFast.from_pretrained(snap / "tokenizer_3")
    ids = sample_ids(tokenizer, T5_LENGTH, len(tokenizer), gen)
    wrapper = T5Encoder(model).eval()
    path = out / "text_encoder_3.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=4096)
    t0 = time.time()
    with torch.no_grad():
        export_graph(wrapper, (ids,), path, ["input_ids"], ["last_hidden_state"], {"input_ids": {0: batch, 1: seq}}, True)
        # The check runs the float32 module: with --t5-dtype float16 it measures the export's
        # total error, float16 rounding included.
        ref_model = model if dtype == "float32" else T5EncoderModel.from_pretrained(snap / "text_encoder_3", torch_dtype=torch.float32).eval()
        want = T5Encoder(ref_model)(ids).numpy()
        short = ids[:, :40]
        want_short = T5Encoder(ref_model)(short).numpy()
    tol = 1e-4 if dtype == "float32" else 5e-2
    checks = {
        "last_hidden_state": compare(f"{path} output last_hidden_state", onnx_run(path, {"input_ids": ids.numpy()})[0], want, tol).__dict__,
        "last_hidden_state_seq40": compare(f"{path} output last_hidden_state (40 tokens)", onnx_run(path, {"input_ids": short.numpy()})[0], want_short, tol).__dict__,
    }
    log(f"exported {path} in {time.time() - t0:.1f}s; {checks}")
    return {
        "name": "text_encoder_3", "kind": "t5", "model": path.name, "tokenizer": "tokenizer_3", "max_length": T5_LENGTH,
        "hidden_size": model.config.d_model, "dtype": dtype, "check": checks,
    }


def export_vae(snap: Path, out: Path, gen: torch.Generator, log) -> dict:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(snap / "vae", torch_dtype=torch.float32).eval()
    cfg = vae.config
    scale = 2 ** (len(cfg.block_out_channels) - 1)
    latent = torch.randn((2, cfg.latent_channels, 8, 8), generator=gen)
    wrapper = VAEDecoder(vae).eval()
    path = out / "vae_decoder.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    h = torch.export.Dim("h", min=2, max=512)
    w = torch.export.Dim("w", min=2, max=512)
    t0 = time.time()
    with torch.no_grad():
        export_graph(wrapper, (latent,), path, ["latent"], ["image"], {"latent": {0: batch, 2: h, 3: w}}, False)
        want = wrapper(latent).numpy()
        wide = torch.randn((1, cfg.latent_channels, 4, 6), generator=gen)
        want_wide = wrapper(wide).numpy()
    checks = {
        "image": compare(f"{path} output image", onnx_run(path, {"latent": latent.numpy()})[0], want, 1e-4).__dict__,
        "image_4x6": compare(f"{path} output image (4x6 latent)", onnx_run(path, {"latent": wide.numpy()})[0], want_wide, 1e-4).__dict__,
    }
    log(f"exported {path} in {time.time() - t0:.1f}s; {checks}")
    return {
        "decoder": path.name, "latent_channels": cfg.latent_channels, "scale_factor": scale,
        "scaling_factor": cfg.scaling_factor, "shift_factor": cfg.shift_factor if cfg.shift_factor is not None else 0.0,
        "check": checks,
    }


def copy_tokenizer(snap: Path, out: Path, name: str, cls_name: str) -> None:
    """The tokenizer as one tokenizer.json (the snapshot's, or the one the tokenizer library
    builds from vocab.json + merges.txt) with the snapshot's tokenizer_config.json and
    special_tokens_map.json, which name the pad token and the maximum length."""
    import transformers

    src, dst = snap / name, out / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in ["tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]:
        if (src / f).is_file():
            shutil.copy(src / f, dst / f)
    if not (dst / "tokenizer.json").exists():
        tok = getattr(transformers, cls_name).from_pretrained(src)
        tok.backend_tokenizer.save(str(dst / "tokenizer.json"))


def transformer_entry(snap: Path, out: Path) -> dict:
    from diffusers import SD3Transformer2DModel  # noqa: F401  (the class the config must load into)

    tdir = snap / "transformer"
    cfg_path = tdir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{cfg_path}: not found")
    weights = sorted(p.name for p in tdir.glob("*.safetensors"))
    if not weights:
        raise ExportError(f"{tdir}: no *.safetensors weights")
    return {"dir": os.path.relpath(tdir, out), "config": "config.json"}


def export(snap: Path, out: Path, t5_dtype: str = "float32", log=print) -> dict:
    index = check_snapshot(snap)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    sched = json.loads((snap / "scheduler" / "scheduler_config.json").read_text())
    if sched.get("use_dynamic_shifting"):
        raise ExportError(f"{snap / 'scheduler' / 'scheduler_config.json'}: use_dynamic_shifting is true; the Go sampler implements SD3's static shift only")
    text_encoders = [export_clip("text_encoder", snap, out, gen, log), export_clip("text_encoder_2", snap, out, gen, log), export_t5(snap, out, t5_dtype, gen, log)]
    for name, cls in [("tokenizer", "CLIPTokenizer"), ("tokenizer_2", "CLIPTokenizer"), ("tokenizer_3", "T5TokenizerFast")]:
        copy_tokenizer(snap, out, name, cls)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "pipeline": index["_class_name"],
        "transformer": transformer_entry(snap, out),
        "text_encoders": text_encoders,
        "vae": export_vae(snap, out, gen, log),
        "scheduler": {
            "class": "FlowMatchEulerDiscreteScheduler",
            "shift": float(sched.get("shift", 1.0)),
            "num_train_timesteps": int(sched.get("num_train_timesteps", 1000)),
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out / 'manifest.json'}")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, type=Path, help="diffusers SD3/SD3.5 snapshot directory")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--t5-dtype", default="float32", choices=["float32", "float16"], help="T5 encoder weight type")
    args = ap.parse_args()
    try:
        export(args.model_dir, args.out, args.t5_dtype)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
