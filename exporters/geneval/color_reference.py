"""Reference of GenEval's colour classification (djghosh13/geneval evaluation/evaluate_images.py,
as yifan123/reward-server's gen_eval.py copies it) on the tiny CLIP of rewards/testdata/clip-tiny,
for rewards/geneval_color_test.go:

- ImageCrops: Image.composite(image, Image.new("RGB", size, "#999"), mask) when the object has a
  mask, then image.crop(box) (PIL rounds the box);
- transform: open_clip's for a CLIP of input size S: Resize(S, bicubic) on the shortest edge,
  CenterCrop(S), ToTensor, Normalize(OpenAI mean/std);
- zero_shot_classifier (clip_benchmark): per colour, the three templates' text embeddings,
  each L2-normalised, averaged, normalised again; logits = 100 · normalise(image) @ classifier.

The towers are run from the exported ONNX files (proven equal to transformers by
make_tiny_fixture.py), so this checks GenEval's own steps: mask, crop, resize, templates, mean.

    python exporters/geneval/color_reference.py rewards/testdata/clip-tiny rewards/testdata/geneval-color
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def transform(im, size):
    # torchvision Resize(size) on a PIL image: shortest edge to size, the other int(size·long/short).
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    im = im.resize((nw, nh), Image.BICUBIC)
    # CenterCrop: torchvision rounds the offset.
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, np.float32) / 255
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def scenes(rng):
    """64×64 images of coloured rectangles with their detections (box, optional mask, class)."""
    out = []
    palette = {"red": (220, 30, 30), "blue": (30, 40, 210), "green": (40, 180, 60), "yellow": (230, 220, 40), "white": (245, 245, 245)}
    names = list(palette)
    for k in range(4):
        px = (rng.random((64, 64, 3)) * 80 + 60).astype(np.uint8)
        dets = []
        for j in range(3):
            color = names[(k + j) % len(names)]
            x0, y0 = int(rng.integers(0, 40)), int(rng.integers(0, 40))
            w, h = int(rng.integers(10, 24)), int(rng.integers(10, 24))
            px[y0:y0 + h, x0:x0 + w] = palette[color]
            mask = None
            if j != 1:  # two with masks (an ellipse inside the box), one box only
                yy, xx = np.mgrid[0:64, 0:64]
                cx, cy = x0 + w / 2, y0 + h / 2
                mask = (((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1)
            # Half-pixel box edges exercise PIL's rounding (round half to even).
            box = [x0 - 0.5, y0 + 0.5, x0 + w + 0.5, y0 + h - 0.5] if j == 0 else [x0, y0, x0 + w, y0 + h]
            dets.append({"class": ["car", "dog", "cup"][j], "box": box, "mask": mask})
        out.append((Image.fromarray(px, "RGB"), dets))
    return out


class ClipColors:
    """GenEval's color_classification on the ONNX towers of a CLIP fixture directory."""

    def __init__(self, fixture):
        from transformers import CLIPTokenizer

        vocab = json.load(open(os.path.join(fixture, "vocab.json")))
        merges = [tuple(l.split()) for l in open(os.path.join(fixture, "merges.txt")).read().splitlines()[1:] if l]
        self.tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
        self.img = ort.InferenceSession(os.path.join(fixture, "image_tower.onnx"), providers=["CPUExecutionProvider"])
        self.txt = ort.InferenceSession(os.path.join(fixture, "text_tower.onnx"), providers=["CPUExecutionProvider"])
        self.size = self.img.get_inputs()[0].shape[2]
        self.classifiers = {}

    def classifier(self, classname):
        if classname not in self.classifiers:
            templates = [f"a photo of a {{c}} {classname}", f"a photo of a {{c}}-colored {classname}", f"a photo of a {{c}} object"]
            w = []
            for c in COLORS:
                ids = self.tok([t.format(c=c) for t in templates], padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
                e = norm(self.txt.run(["text_embeds"], {"input_ids": ids.astype(np.int64)})[0]).mean(0)
                w.append(e / np.linalg.norm(e))
            self.classifiers[classname] = np.stack(w, 1)  # [D, 10]
        return self.classifiers[classname]

    def logits(self, im, box, mask, classname):
        """100·cos of the object's crop (mask composited on #999 first) with each colour."""
        src = im
        if mask is not None:
            src = Image.composite(im, Image.new("RGB", im.size, color="#999"), Image.fromarray(mask))
        crop = src.crop(tuple(box[:4]))
        feat = norm(self.img.run(["image_embeds"], {"pixel_values": transform(crop, self.size)[None]})[0])[0]
        return 100 * feat @ self.classifier(classname)


def norm(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def main(fixture, out):
    os.makedirs(out, exist_ok=True)
    clip = ClipColors(fixture)
    ref = []
    for k, (im, dets) in enumerate(scenes(np.random.default_rng(0))):
        name = f"scene{k}.png"
        im.save(os.path.join(out, name))
        entries = []
        for j, d in enumerate(dets):
            mask_name = None
            if d["mask"] is not None:
                mask_name = f"scene{k}-mask{j}.png"
                Image.fromarray(d["mask"].astype(np.uint8) * 255).save(os.path.join(out, mask_name))
            logits = clip.logits(im, d["box"], d["mask"], d["class"])
            entries.append({"class": d["class"], "box": d["box"], "mask": mask_name,
                            "logits": logits.tolist(), "color": COLORS[int(np.argmax(logits))]})
        ref.append({"image": name, "objects": entries})
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print("colours:", [[e["color"] for e in s["objects"]] for s in ref])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
