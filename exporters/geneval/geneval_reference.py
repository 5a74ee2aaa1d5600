"""GenEval's scoring, ported from djghosh13/geneval evaluation/evaluate_images.py (GenEval's
accuracy) and yifan123/reward-server reward_server/gen_eval.py (Flow-GRPO's partial score and strict
accuracy), with the detector's raw outputs turned into mmdet 2.x results as Mask2Former's
`simple_test` does. It is the Python side of rewards/geneval_detector_test.go: the same steps,
written independently of the Go code, so the two can disagree.

Steps, each as the reference does it:
- mmdet_results: MaskFormerFusionHead.instance_postprocess (softmax without no-object, top
  max_per_image over queries × classes, mask logits > 0, score × mean positive sigmoid,
  mask2bbox) on mask logits resized to the image, then bbox2result: per class an array
  [n, 5] (x0, y0, x1, y1, score) and its masks.
- select: evaluate_image's per-class filtering: score > threshold (counting: > counting
  threshold), most confident first, at most max_objects, NMS at max_overlap (1 disables it).
- evaluate: GenEval's accuracy (at-least counts on the top `count` objects; colour on the top
  `count`; position of every object against every object of the target group; exclude clauses).
- evaluate_reward: Flow-GRPO's per-clause partial score and strict (exact-count) accuracy.
- colours come from a callback (CLIP zero-shot in make_tiny_detector.py, as GenEval's
  color_classification).
"""

import numpy as np
import torch
import torch.nn.functional as F

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]


class Options:
    def __init__(self, threshold=0.3, counting_threshold=0.9, max_objects=16, max_overlap=1.0, position_threshold=0.1):
        self.threshold = threshold
        self.counting_threshold = counting_threshold
        self.max_objects = max_objects
        self.max_overlap = max_overlap
        self.position_threshold = position_threshold


def mask2bbox(masks):
    """mmdet's loop: per mask, the first and last positive column and row (exclusive end)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        xs = np.nonzero(m.any(axis=0))[0]
        ys = np.nonzero(m.any(axis=1))[0]
        if len(xs) and len(ys):
            boxes[i] = [xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]
    return boxes


def mmdet_results(class_logits, mask_logits, size, max_per_image=100):
    """One image's Mask2Former outputs ([Q, C+1], [Q, h, w] tensors) as mmdet's
    (bbox_results, mask_results): per class, float32 [n, 5] and a list of bool [H, W]."""
    num_classes = class_logits.shape[-1] - 1
    masks = F.interpolate(mask_logits[None], size=size, mode="bilinear", align_corners=False)[0]
    scores = F.softmax(class_logits, dim=-1)[:, :-1].flatten()
    top, index = scores.topk(max_per_image)
    labels = (index % num_classes).numpy()
    chosen = masks[index // num_classes]
    binary = chosen > 0
    frac = (chosen.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    det = (top * frac).numpy().astype(np.float32)
    binary = binary.numpy()
    boxes = mask2bbox(binary)
    bbox = [np.zeros((0, 5), np.float32) for _ in range(num_classes)]
    segm = [[] for _ in range(num_classes)]
    for j, label in enumerate(labels):
        bbox[label] = np.concatenate([bbox[label], np.append(boxes[j], det[j])[None].astype(np.float32)])
        segm[label].append(binary[j])
    return bbox, segm


def iou(a, b):
    def area(x0, y0, x1, y1):
        return max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0


def select(bbox, segm, classnames, tag, o):
    """{class: [(box5, mask), ...]} most confident first, as evaluate_image keeps them."""
    threshold = o.counting_threshold if tag == "counting" else o.threshold
    out = {}
    for k, name in enumerate(classnames):
        order = np.argsort(bbox[k][:, 4])[::-1]
        order = [int(i) for i in order if bbox[k][i, 4] > threshold][: o.max_objects]
        kept = []
        while order:
            best = order.pop(0)
            kept.append((bbox[k][best], segm[k][best] if segm is not None else None))
            order = [i for i in order if o.max_overlap == 1 or iou(bbox[k][best], bbox[k][i]) < o.max_overlap]
        if kept:
            out[name] = kept
    return out


def relations(a, b, o):
    """The relations of object a to object b (boxes in float32, as mmdet's arrays)."""
    boxes = np.array([a[0], b[0]])[:, :4].reshape(2, 2, 2)
    ca, cb = boxes.mean(axis=-2)
    da, db = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    off = ca - cb
    rev = np.maximum(np.abs(off) - o.position_threshold * (da + db), 0) * np.sign(off)
    if np.all(np.abs(rev) < 1e-3):
        return set()
    dx, dy = rev / np.linalg.norm(off)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def _position_holds(found, target, rel, o):
    return all(rel in relations(a, b, o) for a in found for b in target)


def evaluate(objects, md, colors_of, o):
    """GenEval's accuracy."""
    correct = True
    groups = []
    for req in md.get("include", []):
        found = objects.get(req["class"], [])[: req["count"]]
        matched = len(found) >= req["count"]
        if matched and "color" in req:
            matched = colors_of(found, req["class"]).count(req["color"]) >= req["count"]
        if matched and "position" in req:
            rel, group = req["position"]
            matched = groups[group] is not None and _position_holds(found, groups[group], rel, o)
        groups.append(found if matched else None)
        correct = correct and matched
    for req in md.get("exclude", []):
        if len(objects.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def evaluate_reward(objects, md, colors_of, o):
    """Flow-GRPO's (strict, score): terms per include clause, exclude clauses ignored."""
    strict = True
    terms = []
    groups = []
    for req in md.get("include", []):
        n = req["count"]
        found = objects.get(req["class"], [])
        matched = True
        terms.append(1 - abs(n - len(found)) / n)
        if len(found) != n:
            matched = False
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                k = colors_of(found, req["class"]).count(req["color"])
                terms.append(1 - abs(n - k) / n)
                matched = k == n
            if "position" in req and matched:
                rel, group = req["position"]
                if groups[group] is None:
                    matched = False
                    terms.append(0.0)
                else:
                    # The reference breaks out of its pair loop on the first failing pair after
                    # appending 0, then appends 1 whatever happened.
                    if not _position_holds(found, groups[group], rel, o):
                        matched = False
                        terms.append(0.0)
                    terms.append(1.0)
        groups.append(found if matched else None)
        strict = strict and matched
    return strict, (sum(terms) / len(terms) if terms else 0)
