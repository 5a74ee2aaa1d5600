"""The PickScore parity fixture: a tiny random CLIPModel with PickScore's config keys (and a
processor with its preprocessing keys), exported by export_clip.py, and what transformers
computes on the same images and prompts. The Go test (rewards/clip_parity_test.go) scores the
committed images with the exported block and compares; it never runs Python.

    python exporters/clip/make_tiny_fixture.py rewards/testdata/clip-tiny

Writes OUT/{image_tower,text_tower,aesthetic}.onnx, vocab.json, merges.txt, reward.toml,
images/*.png and reference.json:
  {"prompts": [...], "images": [...], "input_ids": [[...]],
   "logit_scale": s, "clip": [s·cos(image_i, text_i)], "aesthetic": [head(image_i)],
   "clip_from_pixels": [...]}
clip and aesthetic are transformers' results through CLIPProcessor (PIL resize, centre crop,
uint8 → float), the way Flow-GRPO's PickScoreScorer and AestheticScorer call them.
"""

import collections
import json
import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import export_clip  # noqa: E402

PROMPTS = [
    "a photo of a cat",
    "A Sign that says \"K4RT\"!",
    "two dogs, playing   in the snow",
    "Caf\u00e9 at night",
    "cafe\u0301 at night",  # decomposed: NFC makes it the line above
    "a painting of the old harbour at dawn with fishing boats, gulls, nets, ropes, crates, "
    "barrels, lanterns, sailors, a lighthouse, clouds, waves and a dog sleeping on the pier "
    "while the town wakes up behind it",  # longer than 77 tokens: truncated
]
# (width, height): the first three are the model's size (no resampling), the others are
# resized (shortest edge) and centre-cropped.
SIZES = [(32, 32), (32, 32), (32, 32), (48, 40), (40, 64), (97, 33)]


def byte_unicode():
    """GPT-2/CLIP's byte → unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_bpe(corpus, merges_wanted=80):
    """A small byte-level BPE learnt on corpus: every byte (alone and word-final) plus the most
    frequent merges, so any text tokenizes without unknowns."""
    enc = byte_unicode()
    vocab = ["<|startoftext|>", "<|endoftext|>"]
    base = [enc[b] for b in range(256)]
    vocab += base + [c + "</w>" for c in base]
    import regex

    pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    words = collections.Counter()
    for line in corpus:
        for w in pat.findall(line.lower()):
            sym = [enc[b] for b in w.encode()]
            sym[-1] += "</w>"
            words[tuple(sym)] += 1
    merges = []
    for _ in range(merges_wanted):
        pairs = collections.Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        new = collections.Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += n
        words = new
    return {t: i for i, t in enumerate(dict.fromkeys(vocab))}, merges


def images(rng):
    out = []
    for i, (w, h) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), ((xx + yy) % 7) / 6], -1)
        noise = rng.random((h, w, 3))
        px = (255 * (0.6 * base + 0.4 * noise)).round().clip(0, 255).astype(np.uint8)
        out.append(Image.fromarray(px, "RGB"))
    return out


def main(out):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    corpus = PROMPTS + ["a photo of a dog", "a sign that says", "the quick brown fox jumps over the lazy dog"]
    vocab, merges = tiny_bpe(corpus)
    torch.manual_seed(0)
    # PickScore's config keys (CLIP-H: vision width 1280, 32 layers, patch 14, 224 px; text 1024,
    # 24 layers; projection 1024), scaled down; the tokenizer pads with "!" as laion's does.
    eos = vocab["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=vocab["!"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=16, logit_scale_init_value=4.6052)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.0)  # exp(4) = 54.6, not CLIP's default 100, so the scale is read
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], pad_token="!", model_max_length=77)
        ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=3,
                                image_mean=[0.48145466, 0.4578275, 0.40821073],
                                image_std=[0.26862954, 0.26130258, 0.27577711])
        processor = CLIPProcessor(image_processor=ip, tokenizer=tok)
        model.save_pretrained(ckpt)
        processor.save_pretrained(ckpt)
        head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 1))
        torch.save({"layers.0.weight": head[0].weight.detach(), "layers.0.bias": head[0].bias.detach(),
                    "layers.2.weight": head[1].weight.detach(), "layers.2.bias": head[1].bias.detach()},
                   os.path.join(tmp, "head.pth"))
        export_clip.main([ckpt, out, "--name", "pickscore", "--scale", str(1 / 26),
                          "--head", os.path.join(tmp, "head.pth"), "--head-name", "aesthetic", "--batch-size", "4"])
        model = CLIPModel.from_pretrained(ckpt).eval()
        processor = CLIPProcessor.from_pretrained(ckpt)

    ims = images(np.random.default_rng(0))
    names = []
    for i, im in enumerate(ims):
        names.append(f"images/{i}.png")
        im.save(os.path.join(out, names[-1]))
    with torch.no_grad():
        # As Flow-GRPO's PickScoreScorer: processor, features, normalise, logit_scale · dot.
        inp = processor(images=ims, text=PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        ie = export_clip.image_features(model, inp["pixel_values"])
        te = export_clip.text_features(model, inp["input_ids"])
        ie, te = ie / ie.norm(dim=-1, keepdim=True), te / te.norm(dim=-1, keepdim=True)
        ls = model.logit_scale.exp()
        clip = (ls * (ie * te).sum(-1)).tolist()
        aest = head(ie).squeeze(-1).tolist()
    ref = {"prompts": PROMPTS, "images": names, "input_ids": inp["input_ids"].tolist(),
           "logit_scale": float(ls), "clip": clip, "aesthetic": aest}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    print(f"wrote {out}: clip {np.round(clip, 4).tolist()}, aesthetic {np.round(aest, 4).tolist()}")


if __name__ == "__main__":
    main(sys.argv[1])
