"""Export a Hugging Face Mask2Former instance-segmentation checkpoint as the ONNX detector the Go
`geneval` reward reads, with its class names in GenEval's spelling and a ready `[[reward]]` block.

GenEval (djghosh13/geneval, evaluation/evaluate_images.py) detects objects with mmdet 2.x's
Mask2Former Swin-S trained on COCO instances (mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco). The
same architecture in the transformers layout is `Mask2FormerForUniversalSegmentation` (for
example facebook/mask2former-swin-small-coco-instance: Swin-S, COCO's 80 thing classes; detectron2's
training run, not mmdet's, so its weights differ from GenEval's checkpoint).

    python exporters/geneval/export_detector.py CHECKPOINT OUT [--size 512 512] [--max-detections 100]

The graph is the model followed by mmdet 2.x's instance post-processing
(MaskFormerFusionHead.instance_postprocess, the one GenEval's detector runs):
  scores  = softmax(class logits)[:, :-1]            per query and class, no-object dropped
  top K   = topk over queries × classes (K = max_per_image, 100 in the mmdet config)
  masks   = the chosen queries' mask logits, bilinearly resized to the input (align_corners=False)
  score   = class score × mean sigmoid over the mask's positive (logit > 0) pixels
  box     = mask2bbox: [first column, first row, last column + 1, last row + 1] of the positive
            pixels, zeros for an empty mask

Writes into OUT:
  detector.onnx   pixel_values float32 [N,3,H,W] -> boxes float32 [N,K,4] (xyxy, input pixels),
                  scores float32 [N,K], labels int64 [N,K], masks float32 [N,K,H,W] (sigmoid)
  classes.txt     the checkpoint's id2label in label order, in GenEval's spelling
                  (COCO's "mouse", "remote", "keyboard" are GenEval's "computer mouse", ...)
  reward.toml     a `[[reward]]` block of kind "geneval" with that layout; preprocessing from the
                  image processor (rescale 1/255, ImageNet mean/std), resized to --size

The graph is run in ONNX Runtime against the PyTorch module on random inputs before the export
counts as done.
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clip"))
from export_clip import toml_table  # noqa: E402

# COCO names (detectron2's and transformers' id2label) that GenEval's object_names.txt spells
# differently; everything else is the same word.
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}

# PIL's resampling enums as an image processor config stores them.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def mask_boxes(binary):
    """mmdet's mask2bbox, vectorised: binary [..., H, W] (0/1) -> [..., 4] xyxy, x1/y1 exclusive."""
    cols = binary.amax(dim=-2)  # [..., W]: any positive pixel in the column
    rows = binary.amax(dim=-1)  # [..., H]
    w, h = cols.shape[-1], rows.shape[-1]
    # argmax returns the first maximal index: the first positive column; on the flipped
    # vector, the distance of the last one from the end.
    x0 = cols.argmax(-1)
    x1 = w - cols.flip(-1).argmax(-1)
    y0 = rows.argmax(-1)
    y1 = h - rows.flip(-1).argmax(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1).to(torch.float32)
    return boxes * cols.amax(-1, keepdim=True)


class Detector(torch.nn.Module):
    """Mask2Former plus mmdet's instance post-processing, batched."""

    def __init__(self, model, max_detections):
        super().__init__()
        self.model = model
        self.k = max_detections

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        cls, masks = out.class_queries_logits, out.masks_queries_logits  # [N,Q,C+1], [N,Q,h,w]
        n, q, c1 = cls.shape
        c = c1 - 1
        h, w = pixel_values.shape[-2:]
        masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
        scores = F.softmax(cls, dim=-1)[..., :-1].reshape(n, q * c)
        top, idx = scores.topk(self.k, dim=-1)
        labels = idx % c
        query = idx // c
        chosen = torch.gather(masks, 1, query[:, :, None, None].expand(n, self.k, h, w))
        binary = (chosen > 0).to(torch.float32)
        prob = chosen.sigmoid()
        mask_score = (prob * binary).flatten(2).sum(-1) / (binary.flatten(2).sum(-1) + 1e-6)
        return mask_boxes(binary), top * mask_score, labels, prob


def geneval_classes(id2label, path):
    names = [id2label[i] if i in id2label else id2label[str(i)] for i in range(len(id2label))]
    return [GENEVAL_NAMES.get(n, n) for n in names]


def image_spec(proc, size, path):
    """The `[reward.image]` table of a Mask2FormerImageProcessor config, resized to size."""
    resample = proc.get("resample", 2)
    if resample not in RESAMPLE:
        raise SystemExit(f"{path}: resample {resample}: want one of {sorted(RESAMPLE)} (nearest, bilinear, bicubic)")
    spec = {"size": list(size), "resize": RESAMPLE[resample]}
    f = proc.get("rescale_factor", 1 / 255) if proc.get("do_rescale", True) else 1.0
    if not np.isclose(f * 255, 1):
        spec["range"] = [0.0, 255 * f]
    if proc.get("do_normalize", True):
        spec["mean"] = [float(v) for v in proc["image_mean"]]
        spec["std"] = [float(v) for v in proc["image_std"]]
    return spec


def export(module, example, path):
    """Export with torch.export (the TorchScript exporter bakes input-dependent values of the
    deformable attention into the graph: 2e-4 off on inputs other than the example), as one file."""
    import onnx

    tmp = path + ".tmp"
    torch.onnx.export(module, (example,), tmp, input_names=["pixel_values"],
                      output_names=["boxes", "scores", "labels", "masks"],
                      dynamic_shapes={"pixel_values": {0: torch.export.Dim("N", min=1, max=4096)}},
                      dynamo=True, verbose=False)
    model = onnx.load(tmp, load_external_data=True)
    # torch.export annotates every node with its Python stack and module path: two thirds of the
    # file, and local paths. The graph does not need them.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, path, save_as_external_data=False)
    for f in (tmp, tmp + ".data"):
        if os.path.exists(f):
            os.remove(f)


def check(module, path, batches, atol):
    """ONNX Runtime against PyTorch. Scores and masks within atol; labels and boxes equal except
    for detections whose mask has a logit so close to 0 that float rounding may flip a pixel."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst, ambiguous = 0.0, 0
    for x in batches:
        got = sess.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            want = [t.numpy() for t in module(x)]
        for name, g, w in zip(("boxes", "scores", "labels", "masks"), got, want):
            if g.shape != w.shape:
                raise SystemExit(f"{path}: output {name}: ONNX Runtime shape {g.shape}, PyTorch {w.shape}")
        for name, g, w in ((n, got[i], want[i]) for i, n in ((1, "scores"), (3, "masks"))):
            d = float(np.max(np.abs(g - w)))
            worst = max(worst, d)
            if d > atol:
                raise SystemExit(f"{path}: output {name}: ONNX Runtime differs from PyTorch by {d:.3g} > {atol}")
        edge = (np.abs(want[3] - 0.5) < 1e-4).any(axis=(-2, -1))
        ok = (got[2] == want[2]) & (got[0] == want[0]).all(-1)
        if (~ok & ~edge).any():
            raise SystemExit(f"{path}: labels or boxes differ from PyTorch on {int((~ok & ~edge).sum())} detections")
        ambiguous += int((~ok & edge).sum())
    return worst, ambiguous


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="Hugging Face Mask2FormerForUniversalSegmentation directory (config.json, weights, preprocessor_config.json)")
    p.add_argument("out", help="output directory")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="detector input [height, width] (default: the processor's shortest_edge, square)")
    p.add_argument("--max-detections", type=int, default=100, help="K, mmdet's max_per_image")
    p.add_argument("--name", default="geneval", help="reward name in the TOML block")
    p.add_argument("--path-prefix", default="", help="prepended to the file names in reward.toml")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--atol", type=float, default=1e-4)
    a = p.parse_args(argv)

    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.image_processing_base import ImageProcessingMixin

    os.makedirs(a.out, exist_ok=True)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(a.checkpoint).float().eval()
    proc, _ = ImageProcessingMixin.get_image_processor_dict(a.checkpoint)
    size = a.size
    if size is None:
        s = proc.get("size", {})
        short = s.get("shortest_edge") if isinstance(s, dict) else s
        if not short:
            raise SystemExit(f"{a.checkpoint}: processor size {s!r}: pass --size H W")
        size = [short, short]
    if size[0] % 32 or size[1] % 32:
        raise SystemExit(f"--size {size}: want multiples of 32 (Swin's four stages and the pixel decoder halve it five times)")
    classes = geneval_classes(model.config.id2label, a.checkpoint)
    q, c = model.config.num_queries, len(classes)
    if a.max_detections > q * c:
        raise SystemExit(f"--max-detections {a.max_detections}: the checkpoint has {q} queries × {c} classes = {q * c} candidates")
    det = Detector(model, a.max_detections).eval()
    torch.manual_seed(0)
    path = os.path.join(a.out, "detector.onnx")
    with torch.no_grad():
        export(det, torch.randn(2, 3, *size), path)
    worst, ambiguous = check(det, path, [torch.randn(1, 3, *size), torch.randn(3, 3, *size)], a.atol)
    with open(os.path.join(a.out, "classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    pre = a.path_prefix
    block = toml_table("", {"name": a.name, "kind": "geneval", "model": pre + "detector.onnx",
                            "classes": pre + "classes.txt", "batch_size": a.batch_size})
    block += toml_table("reward.image", {"input": "pixel_values", **image_spec(proc, size, a.checkpoint)})
    block += toml_table("reward.output", {"boxes": "boxes", "scores": "scores", "labels": "labels", "masks": "masks",
                                          "box_format": "xyxy", "mask_threshold": 0.5})
    with open(os.path.join(a.out, "reward.toml"), "w") as f:
        f.write("# Written by exporters/geneval/export_detector.py from %s.\n[[reward]]\n%s" % (
            os.path.basename(os.path.normpath(a.checkpoint)), block))
    print(f"{path}: ONNX Runtime vs PyTorch max |diff| {worst:.2e} (scores, masks); {ambiguous} detections with a mask logit within 1e-4 of 0")
    print(f"wrote {os.path.join(a.out, 'reward.toml')}")


if __name__ == "__main__":
    sys.exit(main())
