"""The fixture of rewards/geneval_detector_test.go: a tiny random Mask2FormerForUniversalSegmentation
(fixed seed, COCO's 80 classes), exported by export_detector.py, and GenEval's scores of fixed
images against metadata of every tag, computed by the Python port (geneval_reference.py) on the
PyTorch model's outputs with colours from the tiny CLIP of rewards/testdata/clip-tiny.

    python exporters/geneval/make_tiny_detector.py rewards/testdata/clip-tiny rewards/testdata/geneval-detector

A random Mask2Former gives every query a flat class distribution (scores ~1/81, all under GenEval's
0.3) and masks covering most of the image. Three weight edits, all on the model's own parameters,
make it behave like a trained detector on the fixture's flat-coloured scenes: the class predictor
×100 (confident classes), the mask embedder's last layer ×200 (sharp masks, so the mean positive
sigmoid nears 1 and some scores pass the counting threshold 0.9), and a bias pair (mask embedder
bias v, mask projection bias −v, |v| = 1) that adds −1 to every mask logit, so masks cover parts of
the image and boxes differ.

Metadata is built from what the PyTorch detector finds in each image, so that every tag has cases
that pass and cases that fail: a detected and an undetected class, counts equal to, above and below
the number found, the colour CLIP names and another one, the relation that holds and its opposite.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_detector  # noqa: E402
import geneval_reference as gr  # noqa: E402
from color_reference import COLORS, ClipColors  # noqa: E402

SIZE = 64
# GenEval's object_names.txt order (COCO's), in COCO's spelling as a transformers checkpoint's
# id2label has it: the exporter maps mouse/remote/keyboard to GenEval's names.
COCO = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def tiny_checkpoint(path):
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    torch.manual_seed(0)
    swin = SwinConfig(image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, mlp_ratio=1.0, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=32, num_queries=16, num_labels=80,
                            id2label=dict(enumerate(COCO)), label2id={c: i for i, c in enumerate(COCO)})
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():
        model.class_predictor.weight.mul_(100)
        model.class_predictor.bias.mul_(100)
        last = [l for l in model.model.transformer_module.decoder.mask_predictor.mask_embedder.modules()
                if isinstance(l, torch.nn.Linear)][-1]
        last.weight.mul_(200)
        v = torch.randn(last.out_features, generator=torch.Generator().manual_seed(1))
        v /= v.norm()
        last.bias.copy_(v)
        model.model.pixel_level_module.decoder.mask_projection.bias.copy_(-v)
    model.save_pretrained(path)
    # mmdet's Normalize for this detector: ImageNet mean/std on 0..255 RGB.
    Mask2FormerImageProcessor(size={"shortest_edge": SIZE}, resample=2, image_mean=[0.485, 0.456, 0.406],
                              image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return model


def scenes(rng, n):
    """Flat backgrounds with three coloured rectangles or ellipses."""
    out = []
    for _ in range(n):
        px = np.zeros((SIZE, SIZE, 3), np.uint8)
        px[:] = rng.integers(0, 256, 3)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        for j in range(3):
            x0, y0 = rng.integers(0, SIZE - 20, 2)
            w, h = rng.integers(10, 28, 2)
            color = rng.integers(0, 256, 3)
            if j == 1:
                cx, cy = x0 + w / 2, y0 + h / 2
                px[((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1] = color
            else:
                px[y0:y0 + h, x0:x0 + w] = color
        out.append(Image.fromarray(px, "RGB"))
    return out


def pixels(im):
    x = np.asarray(im, np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def clause(cls, count=1, **kw):
    return {"class": cls, "count": count, **kw}


def metadata_cases(objs, counting, colors_of, names, o, k):
    """GenEval metadata for every tag from what was found (objs at 0.3, counting at 0.9)."""
    # Classes found once first (GenEval's two_object, colour and position prompts ask for one of
    # each), then by confidence.
    found = sorted(objs, key=lambda c: (len(objs[c]) != 1, -objs[c][0][0][4]))
    absent = [c for c in names if c not in objs]
    miss = absent[(7 * k) % len(absent)]
    md = []

    def add(tag, include, exclude=None):
        words = " and ".join(f"{c['count']} {c.get('color', '')} {c['class']}".replace("  ", " ") for c in include)
        m = {"tag": tag, "include": include, "prompt": f"a photo of {words}"}
        if exclude:
            m["exclude"] = exclude
        md.append(m)

    add("single_object", [clause(miss)])
    if found:
        a = found[0]
        add("single_object", [clause(a)])
        add("two_object", [clause(a), clause(miss)])
        col = colors_of(objs[a][:1], a)[0]
        add("colors", [clause(a, color=col)])
        add("colors", [clause(a, color=COLORS[(COLORS.index(col) + 3) % len(COLORS)])])
    if len(found) >= 2:
        a, b = found[0], found[1]
        add("two_object", [clause(a), clause(b)])
        ca, cb = colors_of(objs[a][:1], a)[0], colors_of(objs[b][:1], b)[0]
        add("color_attr", [clause(a, color=ca), clause(b, color=cb)])
        add("color_attr", [clause(a, color=ca), clause(b, color=COLORS[(COLORS.index(cb) + 5) % len(COLORS)])])
        rels = sorted(gr.relations(objs[b][0], objs[a][0], o)) or ["left of"]
        add("position", [clause(a), clause(b, position=[rels[0], 0])])
        add("position", [clause(a), clause(b, position=[OPPOSITE[rels[0]], 0])])
    if counting:
        c = max(sorted(counting), key=lambda c: len(counting[c]))
        n = len(counting[c])
        for want in sorted({n, n + 1, max(n - 1, 1), 2}):
            add("counting", [clause(c, want)], [clause(c, want + 1)])
    elif found:
        add("counting", [clause(found[0], 2)], [clause(found[0], 3)])
    return md


def main(clip_fixture, out):
    import tempfile

    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(tempfile.mkdtemp(), "tiny-mask2former")
    model = tiny_checkpoint(ckpt)
    export_detector.main([ckpt, out, "--name", "geneval", "--batch-size", "4"])
    # The colour classifier: the tiny CLIP, as the Go test configures it.
    with open(os.path.join(out, "reward.toml"), "a") as f:
        f.write('[reward.color]\nimage_model = "../clip-tiny/image_tower.onnx"\ntext_model = "../clip-tiny/text_tower.onnx"\n'
                'vocab = "../clip-tiny/vocab.json"\nmerges = "../clip-tiny/merges.txt"\npad_id = 35\nspecial = ["!"]\nsize = 32\n')
    names = [l.strip() for l in open(os.path.join(out, "classes.txt"))]
    clip = ClipColors(clip_fixture)
    o = gr.Options()
    cases, margins = [], []
    for k, im in enumerate(scenes(np.random.default_rng(0), 8)):
        name = f"scene{k}.png"
        im.save(os.path.join(out, name))
        with torch.no_grad():
            res = model(pixel_values=pixels(im))
        bbox, segm = gr.mmdet_results(res.class_queries_logits[0], res.masks_queries_logits[0], (SIZE, SIZE))

        def colors_of(found, classname, im=im):
            out = []
            for box, mask in found:
                lg = clip.logits(im, box, mask, classname)
                top2 = np.sort(lg)[-2:]
                margins.append(float(top2[1] - top2[0]))
                out.append(COLORS[int(np.argmax(lg))])
            return out

        objs = gr.select(bbox, segm, names, "single_object", o)
        counting = gr.select(bbox, segm, names, "counting", o)
        for md in metadata_cases(objs, counting, colors_of, names, o, k):
            sel = gr.select(bbox, segm, names, md["tag"], o)
            correct = gr.evaluate(sel, md, colors_of, o)
            strict, score = gr.evaluate_reward(sel, md, colors_of, o)
            cases.append({"image": name, "metadata": md, "correct": bool(correct), "strict": bool(strict), "score": float(score),
                          "found": {c: [[float(v) for v in box] for box, _ in objs_] for c, objs_ in sel.items()}})
    with open(os.path.join(out, "reference.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(c) for c in cases) + "\n]\n")
    by_tag = {}
    for c in cases:
        t = by_tag.setdefault(c["metadata"]["tag"], [0, 0, 0.0])
        t[0] += 1
        t[1] += c["correct"]
        t[2] += c["score"]
    for tag, (n, ok, s) in by_tag.items():
        print(f"{tag:14s} {n:3d} cases, {ok} correct, mean score {s / n:.3f}")
    print(f"smallest colour logit margin {min(margins):.3g} (logits are 100·cos)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
