"""Export a Hugging Face CLIP checkpoint (PickScore is one: CLIP-H in the transformers layout) as
the two ONNX towers and tokenizer files the Go `clip-score` reward reads, plus a ready
`[[reward]]` TOML block.

    python exporters/clip/export_clip.py CHECKPOINT OUT [--processor DIR] [--name pickscore]
        [--scale 0.038461538461538464] [--head HEAD.pth --head-name aesthetic]

Writes into OUT:
  image_tower.onnx   pixel_values float32 [N,3,S,S] -> image_embeds float32 [N,D]
                     (CLIPModel.get_image_features: the projected pooled image embedding)
  text_tower.onnx    input_ids int64 [N,L] -> text_embeds float32 [N,D]
                     (CLIPModel.get_text_features; L = the tokenizer's model_max_length)
  vocab.json, merges.txt   the byte-level BPE of the checkpoint's tokenizer
  reward.toml        a `[[reward]]` block of kind "clip-score": preprocessing from the processor
                     config (resize filter, shortest-edge resize + centre crop, mean/std), the
                     logit scale exp(logit_scale) of the checkpoint, the pad id of the tokenizer
With --head (an aesthetic-style scalar head: Linear layers applied to the L2-normalised image
embedding, as Flow-GRPO's and LAION's aesthetic predictors), also:
  HEAD_NAME.onnx     pixel_values -> score float32 [N]
  and a second block of kind "onnx-scalar" in reward.toml.

Paths in reward.toml are relative to OUT (the Go side resolves them against the directory of the
TOML file that holds the block); --path-prefix prepends a directory for pasting the block into a
config elsewhere.

Every graph is checked against the PyTorch module on random inputs before the export counts as
done (max abs difference <= --atol, relative to the output's scale).
"""

import argparse
import json
import math
import os
import re
import sys

import numpy as np
import torch


# PIL's resampling enums as the processor config stores them.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class ImageTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return image_features(self.model, pixel_values)


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return text_features(self.model, input_ids)


class HeadOnImage(torch.nn.Module):
    """score = head(image_embeds / |image_embeds|), one value per image."""

    def __init__(self, model, head):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, pixel_values):
        e = image_features(self.model, pixel_values)
        e = e / torch.linalg.vector_norm(e, dim=-1, keepdim=True)
        return self.head(e).squeeze(-1)


def _pooled(out):
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding;
    # earlier versions return the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def image_features(model, pixel_values):
    return _pooled(model.get_image_features(pixel_values=pixel_values))


def text_features(model, input_ids):
    return _pooled(model.get_text_features(input_ids=input_ids))


def load_head(path):
    """A state dict of Linear layers `PREFIX.I.weight` / `PREFIX.I.bias` in index order
    (Flow-GRPO's and LAION's aesthetic MLP: dropouts between them are identity at eval)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    layers = {}
    for k, v in sd.items():
        m = re.match(r"^(.*?)(\d+)\.(weight|bias)$", k)
        if not m:
            raise SystemExit(f"head {path}: key {k!r}: want PREFIX.INDEX.weight|bias of Linear layers")
        layers.setdefault(int(m.group(2)), {})[m.group(3)] = v
    seq = []
    for i in sorted(layers):
        w, b = layers[i].get("weight"), layers[i].get("bias")
        if w is None or w.ndim != 2:
            raise SystemExit(f"head {path}: layer {i}: want a 2-D weight")
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(w.float())
            if b is not None:
                lin.bias.copy_(b.float())
        seq.append(lin)
    for a, b in zip(seq, seq[1:]):
        if a.out_features != b.in_features:
            raise SystemExit(f"head {path}: layer widths {a.out_features} -> {b.in_features} do not chain")
    if seq[-1].out_features != 1:
        raise SystemExit(f"head {path}: last layer has {seq[-1].out_features} outputs, want 1")
    return torch.nn.Sequential(*seq).eval()


def image_spec(proc_cfg, path):
    """The `[reward.image]` table equivalent to a CLIPImageProcessor config."""
    size, crop = proc_cfg.get("size"), proc_cfg.get("crop_size")
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    spec = {}
    if proc_cfg.get("do_center_crop", True):
        short = size.get("shortest_edge")
        if short is None or crop is None or crop["height"] != short or crop["width"] != short:
            raise SystemExit(f"{path}: size {size} with crop_size {crop}: the Go side resizes the shortest edge to the crop size; want shortest_edge == crop height == crop width")
        spec["size"], spec["crop"] = [crop["height"], crop["width"]], "center"
    else:
        if "height" not in size:
            raise SystemExit(f"{path}: size {size} without a centre crop: want height and width")
        spec["size"], spec["crop"] = [size["height"], size["width"]], "none"
    resample = proc_cfg.get("resample", 3)
    if resample not in RESAMPLE:
        raise SystemExit(f"{path}: resample {resample}: want one of {sorted(RESAMPLE)} (nearest, bilinear, bicubic)")
    spec["resize"] = RESAMPLE[resample]
    if proc_cfg.get("do_rescale", True):
        f = proc_cfg.get("rescale_factor", 1 / 255)
        if not math.isclose(f * 255, 1):
            spec["range"] = [0.0, 255 * f]
    else:
        spec["range"] = [0.0, 255.0]
    if proc_cfg.get("do_normalize", True):
        spec["mean"] = [float(v) for v in proc_cfg["image_mean"]]
        spec["std"] = [float(v) for v in proc_cfg["image_std"]]
    return spec


def write_bpe(tokenizer, out):
    """vocab.json and merges.txt from the tokenizer's byte-level BPE model."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise SystemExit(f"tokenizer: model {model.get('type')} with end_of_word_suffix {model.get('end_of_word_suffix')!r}: want CLIP's byte-level BPE with '</w>'")
    with open(os.path.join(out, "vocab.json"), "w") as f:
        json.dump(model["vocab"], f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        for m in model["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")


def special_tokens(tok):
    """The added special tokens transformers cuts out of a prompt before BPE, beyond
    <|startoftext|> and <|endoftext|> (which the Go tokenizer always treats so)."""
    out = []
    for t in tok.all_special_tokens:
        if t not in ("<|startoftext|>", "<|endoftext|>") and t not in out:
            out.append(t)
    return out


def toml_value(v):
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


def toml_table(name, kv):
    lines = [f"[{name}]"] if name else []
    lines += [f"{k} = {toml_value(v)}" for k, v in kv.items()]
    return "\n".join(lines) + "\n"


def export(module, args, names, out_names, dynamic, path, opset):
    torch.onnx.export(module, args, path, input_names=names, output_names=out_names,
                      dynamic_axes=dynamic, opset_version=opset, dynamo=False)


def check(module, path, feeds, atol):
    """Run the graph in ONNX Runtime and compare with the module on the same inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        want = module(*feeds.values()).numpy()
    diff = float(np.max(np.abs(got - want)))
    scale = max(float(np.max(np.abs(want))), 1.0)
    if got.shape != want.shape or diff > atol * scale:
        raise SystemExit(f"{path}: ONNX Runtime differs from PyTorch: shape {got.shape} vs {want.shape}, max |diff| {diff:.3g} > {atol}·{scale:.3g}")
    return diff


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="Hugging Face CLIPModel directory (config.json + weights)")
    p.add_argument("out", help="output directory")
    p.add_argument("--processor", help="directory of the processor (tokenizer + preprocessor_config.json); default: the checkpoint (PickScore's processor is laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")
    p.add_argument("--name", default="pickscore", help="reward name in the TOML block")
    p.add_argument("--scale", type=float, default=1.0, help="output.scale of the block (Flow-GRPO divides PickScore by 26)")
    p.add_argument("--head", help="state dict of an aesthetic-style head: Linear layers on the normalised image embedding")
    p.add_argument("--head-name", default="aesthetic")
    p.add_argument("--path-prefix", default="", help="prepended to the file names in reward.toml")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--atol", type=float, default=1e-4)
    a = p.parse_args(argv)

    from transformers import AutoProcessor, CLIPModel

    os.makedirs(a.out, exist_ok=True)
    model = CLIPModel.from_pretrained(a.checkpoint).float().eval()
    proc_dir = a.processor or a.checkpoint
    processor = AutoProcessor.from_pretrained(proc_dir)
    tok = processor.tokenizer
    spec = image_spec(processor.image_processor.to_dict(), f"processor {proc_dir}")
    for want in ("<|startoftext|>", "<|endoftext|>"):
        if want not in tok.get_vocab():
            raise SystemExit(f"tokenizer {proc_dir}: no {want} token: want CLIP's tokenizer")
    max_len = int(tok.model_max_length if tok.model_max_length < 10**6 else model.config.text_config.max_position_embeddings)
    s = spec["size"]
    torch.manual_seed(0)
    px = torch.randn(2, 3, s[0], s[1])
    ids = torch.randint(0, len(tok.get_vocab()), (2, max_len))
    ids[:, 0] = tok.bos_token_id
    ids[:, -1] = tok.eos_token_id
    files = {"image_model": "image_tower.onnx", "text_model": "text_tower.onnx"}
    diffs = {}
    with torch.no_grad():
        img, txt = ImageTower(model), TextTower(model)
        path = os.path.join(a.out, files["image_model"])
        export(img, (px,), ["pixel_values"], ["image_embeds"], {"pixel_values": {0: "N"}, "image_embeds": {0: "N"}}, path, a.opset)
        diffs[path] = check(img, path, {"pixel_values": px}, a.atol)
        path = os.path.join(a.out, files["text_model"])
        export(txt, (ids,), ["input_ids"], ["text_embeds"], {"input_ids": {0: "N"}, "text_embeds": {0: "N"}}, path, a.opset)
        diffs[path] = check(txt, path, {"input_ids": ids}, a.atol)
    write_bpe(tok, a.out)
    logit_scale = float(model.logit_scale.exp().item())
    pre = a.path_prefix
    block = toml_table("", {"name": a.name, "kind": "clip-score",
                            "image_model": pre + files["image_model"], "text_model": pre + files["text_model"],
                            "batch_size": a.batch_size})
    block += toml_table("reward.image", {"input": "pixel_values", **spec})
    block += toml_table("reward.text", {"tokenizer": "clip-bpe", "input": "input_ids", "vocab": pre + "vocab.json",
                                        "merges": pre + "merges.txt", "max_length": max_len, "pad_id": int(tok.pad_token_id),
                                        "special": special_tokens(tok)})
    block += toml_table("reward.output", {"image_embeds": "image_embeds", "text_embeds": "text_embeds",
                                          "logit_scale": logit_scale, "scale": a.scale})
    text = "# Written by exporters/clip/export_clip.py from %s (processor %s).\n[[reward]]\n%s" % (
        os.path.basename(os.path.normpath(a.checkpoint)), os.path.basename(os.path.normpath(proc_dir)), block)
    if a.head:
        head = load_head(a.head)
        dim = model.config.projection_dim
        if head[0].in_features != dim:
            raise SystemExit(f"head {a.head}: first layer takes {head[0].in_features} features, the checkpoint's image embedding has {dim}")
        hm = HeadOnImage(model, head).eval()
        path = os.path.join(a.out, a.head_name + ".onnx")
        with torch.no_grad():
            export(hm, (px,), ["pixel_values"], ["score"], {"pixel_values": {0: "N"}, "score": {0: "N"}}, path, a.opset)
        diffs[path] = check(hm, path, {"pixel_values": px}, a.atol)
        hb = toml_table("", {"name": a.head_name, "kind": "onnx-scalar", "model": pre + a.head_name + ".onnx", "batch_size": a.batch_size})
        hb += toml_table("reward.image", {"input": "pixel_values", **spec})
        hb += toml_table("reward.output", {"name": "score"})
        text += "\n[[reward]]\n" + hb
    with open(os.path.join(a.out, "reward.toml"), "w") as f:
        f.write(text)
    for path, d in diffs.items():
        print(f"{path}: ONNX Runtime vs PyTorch max |diff| {d:.2e}")
    print(f"wrote {os.path.join(a.out, 'reward.toml')}")


if __name__ == "__main__":
    sys.exit(main())
