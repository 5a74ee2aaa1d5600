"""The project against what users would run instead: the same model and work in PyTorch.

Runs `bin/pipeline bench parts` (the Go side) as a child process and interleaves its timings with
the same work done here with PyTorch + diffusers + peft (and onnxruntime's Python API for the
OCR reward), so that the noise of a shared machine hits both sides alike:

  velocity   one velocity call at the rollout batch (the policy, adapters on, no gradient)
  lookahead  the ODE look-ahead of one rollout minibatch (every sample from every x_k)
  train      one LoRA update on one rollout minibatch: the KL reference's velocities, forward
             and backward of every trained step, grad-norm clip, AdamW
  reference  of which the KL reference's velocities alone (the model without adapters)
  score      PP-OCRv4 scoring of every image a dense epoch decodes
  epoch      a whole DenseGRPO epoch of the config (rollout, look-ahead, decode, score,
             advantages, update)

Both sides first load the same weights: the committed tiny-ocr transformer into diffusers'
SD3Transformer2DModel, the adapters the Go side trained in its warm-up epoch into a peft LoRA of
the same rank and targets; the bench stops unless both compute the same velocity to 1e-4 on the
same inputs. FLOPs per part are counted by torch.utils.flop_counter on the PyTorch side (matrix
products and attention from the model's shapes) and from the recogniser graph's Conv/MatMul
shapes for the OCR; achieved GFLOP/s are set against an sgemm peak measured in the same run.

Usage (from the repository root, after `just export-models`):
  .venv/bin/python exporters/benchtorch/bench.py --config configs/tiny-ocr.toml \
      [--rounds 3] [--markdown out.md]
"""

import argparse
import concurrent.futures
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, str(THREADS))
# OpenMP threads that spin at barriers wait for a sibling the scheduler has parked whenever the
# machine has more runnable threads than cores: on the shared 2-core machine (load 15–30) seven
# forward passes took 42 s spinning and 0.3–1.2 s passive. Passive waiting is what a shared
# machine needs; on an idle one it costs a thread wake-up per parallel region.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from diffusers import SD3Transformer2DModel  # noqa: E402
from PIL import Image  # noqa: E402
from peft import LoraConfig, set_peft_model_state_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

torch.set_num_threads(THREADS)
PARTS = ["velocity", "lookahead", "train", "reference", "score", "epoch"]
BASELINE_PARTS = ["train", "epoch"]
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- the Go side


class GoSide:
    """bin/pipeline bench parts, driven over its stdin/stdout."""

    def __init__(self, binary, config, sets, dump, log):
        args = [binary, "bench", "parts", "--config", config, "--dump", dump]
        for s in sets:
            args += ["--set", s]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self._read()  # {"ready": true} once the warm-up epoch and the dump are done

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: the Go side exited (code {self.proc.wait()}); see its log")
        return json.loads(line)

    def run(self, part, reps):
        self.proc.stdin.write(f"{part} {reps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait()


# ---------------------------------------------------------------- the PyTorch side


def token_ids(prompt, length=48):
    """models/tinyocr.Tokenize: one id per rune, padded with 0."""
    punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    ids = []
    for ch in prompt[:length]:
        if "A" <= ch <= "Z":
            ids.append(1 + ord(ch) - ord("A"))
        elif "0" <= ch <= "9":
            ids.append(27 + ord(ch) - ord("0"))
        elif "a" <= ch <= "z":
            ids.append(37 + ord(ch) - ord("a"))
        elif ch == " ":
            ids.append(63)
        elif ch in punct:
            ids.append(64 + punct.index(ch))
        else:
            ids.append(96)
    return ids + [0] * (length - len(ids))


def load_transformer(root, lora, rank, alpha):
    """The committed tiny-ocr transformer in diffusers' class, with a peft LoRA."""
    with open(os.path.join(root, "models/tinyocr/weights/mmdit.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    model = SD3Transformer2DModel(**cfg)
    state = load_file(os.path.join(root, "models/tinyocr/weights/transformer.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # pos_embed.pos_embed is a buffer diffusers rebuilds from the config at construction.
    if unexpected or set(missing) - {"pos_embed.pos_embed"}:
        raise SystemExit(f"bench: transformer weights: missing {missing}, unexpected {unexpected}")
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights="gaussian"))
    res = set_peft_model_state_dict(model, lora, adapter_name="default")
    if getattr(res, "unexpected_keys", None):
        raise SystemExit(f"bench: LoRA weights: unexpected keys {res.unexpected_keys}")
    n_lora = sum(v.numel() for v in lora.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable != n_lora:
        raise SystemExit(f"bench: peft LoRA has {trainable} trainable parameters, the Go adapters {n_lora}")
    return model


class Torch:
    """The same work in PyTorch."""

    def __init__(self, root, data_path, cfg_onnx, inference_threads=0):
        tensors = load_file(data_path)
        with safe_open(data_path, "pt") as f:
            self.meta = json.loads(f.metadata()["bench"])
        m = self.meta
        if not inference_threads:
            ort_threads = m.get("onnx_intra_op_threads") or THREADS
            inference_threads = ort_threads if m.get("inference_engine") == "onnx" else THREADS
        self.inference_threads = inference_threads
        lora = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
        self.model = load_transformer(root, lora, m["lora_rank"], m["lora_alpha"])
        self.x = tensors["x"]  # [T+1, B, C, H, W]
        self.v = tensors["v"]  # [T, B, C, H, W]
        self.logp = tensors["logp"]
        self.s = tensors["s"].tolist()
        self.sigmas = tensors["sigmas"].tolist()
        self.emb, self.pooled = tensors["prompt_embeds"], tensors["pooled"]
        self.check = (tensors["check_x"], tensors["check_timestep"], tensors["check_velocity"])
        self.images = tensors["images"].numpy()
        self.image_prompts = m["image_prompts"]
        self.go_scores = tensors["scores"].numpy()
        self.need = m["trained_steps"]
        self.steps = len(self.s)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                     lr=m["learning_rate"], weight_decay=m["weight_decay"], eps=1e-8)
        self.ocr = OCR(cfg_onnx["rec"], cfg_onnx["keys"])
        self.text_enc = ort_session(cfg_onnx["text_encoder"], THREADS)
        self.vae = ort_session(cfg_onnx["vae"], THREADS)
        self.vae_path = cfg_onnx["vae"]
        with open(cfg_onnx["train_prompts"]) as f:
            self.train_prompts = [line.strip() for line in f if line.strip()]
        self.rng = random.Random(1)

    # -- the model

    def velocity(self, x, sigma, emb, pooled):
        t = torch.full((x.shape[0],), 1000.0) * sigma if not torch.is_tensor(sigma) else 1000.0 * sigma
        return self.model(hidden_states=x, timestep=t, encoder_hidden_states=emb, pooled_projections=pooled).sample

    def check_velocity(self):
        x, t, want = self.check
        with torch.no_grad():
            got = self.model(hidden_states=x, timestep=t, encoder_hidden_states=self.emb, pooled_projections=self.pooled).sample
        return float((got - want).abs().max())

    # -- the parts

    def part_velocity(self):
        k = self.meta["check_step"]
        with torch_threads(self.inference_threads), torch.no_grad():
            self.velocity(self.x[k], self.sigmas[k], self.emb, self.pooled)

    def lookahead(self, x, v, emb, pooled):
        """ODE from every x_k (k = 0 … need, capped at T−1) to σ = 0, one batch per k; the first
        Euler step uses the rollout's velocity, as rl.LookaheadPaths does."""
        out = []
        with torch.no_grad():
            for k in range(min(self.need, self.steps - 1) + 1):
                y = x[k] + v[k] * (self.sigmas[k + 1] - self.sigmas[k])
                for j in range(k + 1, self.steps):
                    y = y + self.velocity(y, self.sigmas[j], emb, pooled) * (self.sigmas[j + 1] - self.sigmas[j])
                out.append(y)
        return out

    def part_lookahead(self):
        with torch_threads(self.inference_threads):
            self.lookahead(self.x, self.v, self.emb, self.pooled)

    def step_mean(self, x, v, k):
        """The mean of x_{k+1} and the standard deviation of the step (rl/steps.go)."""
        sigma, sigma_next, s = self.sigmas[k], self.sigmas[k + 1], self.s[k]
        if self.meta["kind"] == "cps":
            x0 = x - sigma * v
            x1 = x + (1 - sigma) * v
            return (1 - sigma_next) * x0 + math.sqrt(max(sigma_next**2 - s**2, 0.0)) * x1, s
        dt = sigma_next - sigma
        mean = x * (1 + s * s / (2 * sigma) * dt) + v * (1 + s * s * (1 - sigma) / (2 * sigma)) * dt
        return mean, s * math.sqrt(-dt)

    def log_prob(self, nxt, mean, std):
        """CPS: −mean((next − mean)²); SDE: the Gaussian log-density, averaged over elements."""
        sq = (nxt - mean) ** 2
        if self.meta["kind"] == "cps":
            return -sq.mean(dim=(1, 2, 3))
        return (-sq / (2 * std * std) - math.log(std) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3))

    def train_minibatch(self, x, logp_old, adv, emb, pooled, samples):
        """One update: every trained step's loss (clipped ratio + β·KL to the model without
        adapters), gradients accumulated over the steps, then clip and AdamW (rl.Trainer)."""
        m = self.meta
        eps, beta = m["clip_range"], m["beta"]
        for k in range(self.need):
            xs, nxt, e, p = x[k][samples], x[k + 1][samples], emb[samples], pooled[samples]
            with torch.no_grad():
                self.model.disable_adapters()
                ref_mean, _ = self.step_mean(xs, self.velocity(xs, self.sigmas[k], e, p), k)
                self.model.enable_adapters()
            mean, std = self.step_mean(xs, self.velocity(xs, self.sigmas[k], e, p), k)
            ratio = torch.exp(self.log_prob(nxt, mean, std) - logp_old[k][samples])
            a = adv[k][samples]
            policy = torch.maximum(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps)).mean()
            kl = ((mean - ref_mean) ** 2).mean()
            if self.meta["kind"] != "cps":
                kl = kl / (2 * self.s[k] ** 2)
            ((policy + beta * kl) / self.need).backward()
        torch.nn.utils.clip_grad_norm_([q for q in self.model.parameters() if q.requires_grad], m["grad_clip"])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def part_train(self):
        b = self.x.shape[1]
        adv = torch.tensor([[float(i % 3 - 1) for i in range(b)]] * self.need)
        self.train_minibatch(self.x, self.logp, adv, self.emb, self.pooled, torch.arange(b))

    def part_reference(self):
        with torch.no_grad():
            self.model.disable_adapters()
            for k in range(self.need):
                self.velocity(self.x[k], self.sigmas[k], self.emb, self.pooled)
            self.model.enable_adapters()

    def part_score(self):
        return self.ocr.score(self.images, self.image_prompts)

    # -- a whole epoch

    def rollout(self, emb, pooled, gen):
        """Rollout of the policy (no gradient): states, log-probs and velocities."""
        b = emb.shape[0]
        x = torch.randn((b,) + tuple(self.x.shape[2:]), generator=gen)
        xs, vs, logps = [x], [], []
        with torch.no_grad():
            for k in range(self.steps):
                v = self.velocity(x, self.sigmas[k], emb, pooled)
                mean, std = self.step_mean(x, v, k)
                x = mean + std * torch.randn(x.shape, generator=gen)
                logps.append(self.log_prob(x, mean, std))
                xs.append(x)
                vs.append(v)
        return torch.stack(xs), torch.stack(vs), torch.stack(logps)

    def part_epoch(self):
        m = self.meta
        per_epoch, group, batch = m["prompts_per_epoch"], m["group_size"], m["rollout_batch"]
        prompts = [self.rng.choice(self.train_prompts) for _ in range(per_epoch)]
        ids = np.array([token_ids(p) for p in prompts], dtype=np.int64)
        emb_p, pooled_p = self.text_enc.run(["prompt_embeds", "pooled_prompt_embeds"], {"input_ids": ids})
        emb_all = torch.from_numpy(emb_p).repeat_interleave(group, 0)
        pooled_all = torch.from_numpy(pooled_p).repeat_interleave(group, 0)
        n = emb_all.shape[0]
        gen = torch.Generator().manual_seed(self.rng.getrandbits(32))
        rewards = np.full((n, self.steps + 1), np.nan)
        xs, logps = [], []
        for lo in range(0, n, batch):
            e, p = emb_all[lo:lo + batch], pooled_all[lo:lo + batch]
            x, v, logp = self.rollout(e, p, gen)
            clean = self.lookahead(x, v, e, p) + [x[self.steps]]
            lat = torch.cat(clean).numpy()
            (imgs,) = self.vae.run(["image"], {"latent": lat})
            imgs = np.clip(imgs, 0, 1).transpose(0, 2, 3, 1)
            bsz = x.shape[1]
            img_prompts = [prompts[(lo + i) // group] for _ in clean for i in range(bsz)]
            scores = self.ocr.score(imgs, img_prompts)
            cols = list(range(len(clean) - 1)) + [self.steps]
            for j, k in enumerate(cols):
                rewards[lo:lo + bsz, k] = scores[j * bsz:(j + 1) * bsz]
            xs.append(x)
            logps.append(logp)
        # Dense advantages: ΔR_k normalised per step over the prompt group, global std.
        delta = rewards[:, 1:self.need + 1] - rewards[:, :self.need]
        adv = np.zeros_like(delta)
        groups = np.arange(n) // group
        for k in range(self.need):
            std = delta[:, k].std() + 1e-4
            for g in np.unique(groups):
                sel = groups == g
                adv[sel, k] = (delta[sel, k] - delta[sel, k].mean()) / std
        adv = np.clip(adv, -5, 5)
        keep = [i for i in range(n) if np.any(adv[i] != 0)]
        x_all, logp_all = torch.cat(xs, dim=1), torch.cat(logps, dim=1)
        adv_t = torch.from_numpy(adv.T.copy()).float()
        mb = m["minibatch"]
        for lo in range(0, len(keep), mb):
            self.train_minibatch(x_all, logp_all, adv_t, emb_all, pooled_all, torch.tensor(keep[lo:lo + mb]))

    # -- FLOPs of the parts (matrix products and attention, from the shapes), by running them once

    def flops(self):
        out = {}
        for part in ["velocity", "lookahead", "train", "reference"]:
            counter = FlopCounterMode(display=False)
            with counter:
                getattr(self, "part_" + part)()
            out[part] = counter.get_total_flops()
        b = self.x.shape[1]
        per_rollout = out["velocity"] * self.steps + out["lookahead"] + out["velocity"] * self.need  # + reference
        batches = self.meta["prompts_per_epoch"] * self.meta["group_size"] / b
        out["score"] = self.ocr.flops(len(self.images))
        out["decode"] = onnx_flops(self.vae_path, [len(self.images)] + list(self.x.shape[2:]))
        out["epoch"] = batches * (per_rollout + out["train"]) + out["decode"] + out["score"]
        return out


class torch_threads:
    """Runs a block with torch on n intra-op threads."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)


def ort_session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class OCR:
    """The project's OCR reward through onnxruntime's Python API: the PP-OCRv4 recogniser on the
    whole image (no detector, as tiny-ocr.toml), PaddleOCR's resize_norm_img, greedy CTC, and
    Flow-GRPO's score; two single-thread sessions side by side (tiny-ocr.toml's concurrency)."""

    def __init__(self, rec, keys, sessions=2, batch=8):
        self.sessions = [ort_session(rec, 1) for _ in range(sessions)]
        with open(keys, encoding="utf-8") as f:
            self.keys = [line.rstrip("\n") for line in f] + [" "]
        self.batch = batch
        self.rec = rec
        self.pool = concurrent.futures.ThreadPoolExecutor(sessions)

    def prepare(self, images):
        n, h, w, _ = images.shape
        cw = min(math.ceil(48 * w / h), 960)
        width = min(max(math.ceil(48 * max(320 / 48, w / h)), cw), 960)
        out = np.zeros((n, 3, 48, width), np.float32)
        for i in range(n):
            for c in range(3):  # PIL's bilinear on float planes, as rewards/preprocess.Resize
                plane = Image.fromarray(np.ascontiguousarray(images[i, :, :, c]), mode="F").resize((cw, 48), Image.BILINEAR)
                out[i, 2 - c, :, :cw] = (np.asarray(plane) - 0.5) / 0.5  # RGB → BGR
        return out

    def read(self, si, data):
        (probs,) = self.sessions[si].run(None, {"x": data})
        texts = []
        for row in probs.argmax(-1):
            prev, chars = -1, []
            for c in row:
                if c != 0 and c != prev:
                    chars.append(self.keys[c - 1])
                prev = c
            texts.append("".join(chars))
        return texts

    def score(self, images, prompts):
        chunks = [(i, images[i:i + self.batch]) for i in range(0, len(images), self.batch)]
        futures = [self.pool.submit(lambda a: self.read(a[0] % len(self.sessions), self.prepare(a[1][1])), (j, c))
                   for j, c in enumerate(chunks)]
        texts = [t for f in futures for t in f.result()]
        return np.array([flow_grpo_score(t, p.split('"')[1] if '"' in p else p) for t, p in zip(texts, prompts)])

    def flops(self, n_images):
        """FLOPs of the recogniser at the batches score() runs."""
        return onnx_flops(self.rec, [self.batch, 3, 48, 320]) * n_images / self.batch


def onnx_flops(path, input_shape):
    """Conv, MatMul and Gemm FLOPs (2 per multiply-add) of an ONNX graph whose first input has
    input_shape, from the shapes ONNX's shape inference gives every tensor."""
    model = onnx.load(path)
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim, input_shape):
        d.ClearField("dim_param")
        d.dim_value = v
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w and out:
                total += 2 * math.prod(out) * math.prod(w[1:])
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            if a and out:
                total += 2 * math.prod(out) * a[-1]
    return total


def flow_grpo_score(read, target):
    r, t = read.replace(" ", "").lower(), target.replace(" ", "").lower()
    if not t or t in r:
        return 1.0
    prev = list(range(len(t) + 1))
    for i in range(1, len(r) + 1):
        cur = [i] + [0] * len(t)
        for j in range(1, len(t) + 1):
            cur[j] = min(prev[j - 1] + (r[i - 1] != t[j - 1]), prev[j] + 1, cur[j - 1] + 1)
        prev = cur
    return 1 - min(prev[len(t)], len(t)) / len(t)


# ---------------------------------------------------------------- sgemm peak


def sgemm_peak(n=2048, reps=5):
    """Best of reps n×n float32 products: numpy (OpenBLAS) and torch, THREADS threads."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = {}
    for name, mm in [("numpy", lambda: a @ a), ("torch", lambda: torch.mm(ta, ta))]:
        ta = torch.from_numpy(a)
        mm()
        t = min(timed(mm) for _ in range(reps))
        best[name] = 2 * n**3 / t / 1e9
    return best


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--binary", default="bin/pipeline")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (Go, PyTorch) per part")
    ap.add_argument("--reps", type=json.loads,
                    default={"velocity": 20, "lookahead": 2, "train": 2, "reference": 2, "score": 2, "epoch": 1},
                    help="repetitions per round of each part (JSON)")
    ap.add_argument("--inference-threads", type=int, default=0,
                    help="torch threads of the velocity and look-ahead parts; 0: as many as the project's engine "
                         "uses (ONNX Runtime: onnx.intra_op_threads; GoMLX: all)")
    ap.add_argument("--baseline", action="append", default=[],
                    help="also time the project's train and epoch parts with this --set (repeatable), "
                         "e.g. run.backend=go for the SimpleGo backend the project trained with before XLA")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    root = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="benchtorch-")
    dump = os.path.join(tmp, "bench-data.safetensors")
    log_path = os.path.join(tmp, "go.log")
    print(f"bench: Go side log {log_path}", file=sys.stderr)
    base = None
    with open(log_path, "w") as log:
        go = GoSide(args.binary, args.config, args.sets, dump, log)
        if args.baseline:
            base = GoSide(args.binary, args.config, args.sets + args.baseline, os.path.join(tmp, "baseline.safetensors"), log)
        try:
            onnx_dir = os.path.join(root, "models/tinyocr/onnx")
            th = Torch(root, dump, {
                "rec": os.path.join(onnx_dir, "ch_PP-OCRv4_rec_infer.onnx"),
                "keys": os.path.join(onnx_dir, "ppocr_keys_v1.txt"),
                "text_encoder": os.path.join(onnx_dir, "text_encoder.onnx"),
                "vae": os.path.join(onnx_dir, "vae_decoder.onnx"),
                "train_prompts": os.path.join(root, "datasets/ocr-tiny/train.txt"),
            }, args.inference_threads)
            diff = th.check_velocity()
            print(f"bench: velocity, diffusers vs the project: max |Δ| = {diff:.2e}", file=sys.stderr)
            if not diff <= 1e-4:
                raise SystemExit(f"bench: the two sides compute different velocities (max |Δ| {diff:.2e} > 1e-4)")
            got = th.part_score()
            agree = float(np.mean(np.abs(got - th.go_scores) < 1e-6))  # Go scores stored as float32
            print(f"bench: OCR scores equal to the Go reward's on {agree:.1%} of the {len(got)} images", file=sys.stderr)
            peak0 = sgemm_peak()
            flops = th.flops()
            for part in PARTS:  # warm-up of both sides (graph shapes the warm-up epoch did not compile)
                go.run(part, 1)
                if base and part in BASELINE_PARTS:
                    base.run(part, 1)
                getattr(th, "part_" + part)()
            times = {p: {"go": [], "torch": [], "go_cpu": [], "torch_cpu": [], "base": []} for p in PARTS}
            for r in range(args.rounds):
                for part in PARTS:
                    reps = args.reps.get(part, 1)
                    res = go.run(part, reps)
                    times[part]["go"] += res["seconds"]
                    times[part]["go_cpu"] += res["cpu_seconds"]
                    if base and part in BASELINE_PARTS:
                        times[part]["base"] += base.run(part, reps)["seconds"]
                    for _ in range(reps):
                        c0, t0 = cpu_seconds(), time.perf_counter()
                        getattr(th, "part_" + part)()
                        times[part]["torch"].append(time.perf_counter() - t0)
                        times[part]["torch_cpu"].append(cpu_seconds() - c0)
                    print(f"bench: round {r + 1}: {part}: Go {statistics.median(res['seconds']):.4f} s, "
                          f"PyTorch {statistics.median(times[part]['torch'][-reps:]):.4f} s", file=sys.stderr)
            peak1 = sgemm_peak()
        finally:
            go.close()
            if base:
                base.close()
    peak = {k: max(peak0[k], peak1[k]) for k in peak0}
    args.inference_threads = th.inference_threads
    table = render(times, flops, peak, diff, agree, len(th.images), args)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


def render(times, flops, peak, diff, agree, n_images, args):
    best_peak = max(peak.values())
    names = {
        "velocity": "(a) velocity call, rollout batch",
        "lookahead": "(b) ODE look-ahead of a rollout minibatch",
        "train": "(c) LoRA update of a minibatch, KL reference incl.",
        "reference": "(c′) of which the KL reference's velocities",
        "score": f"(d) PP-OCRv4 scoring, {n_images} images",
        "epoch": "DenseGRPO epoch",
    }
    lines = [
        "| part | GFLOP | project s | PyTorch s | project / PyTorch | CPU-s, project / PyTorch | project GFLOP/s (of peak) | PyTorch GFLOP/s (of peak) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in PARTS:
        go, th = statistics.median(times[p]["go"]), statistics.median(times[p]["torch"])
        g = flops[p] / 1e9
        cpu = statistics.median(times[p]["go_cpu"]) / max(statistics.median(times[p]["torch_cpu"]), 1e-9)
        lines.append(f"| {names[p]} | {g:.3g} | {go:.4g} | {th:.4g} | **{go / th:.2f}** | {cpu:.2f} | "
                     f"{g / go:.3g} ({g / go / best_peak:.0%}) | {g / th:.3g} ({g / th / best_peak:.0%}) |")
    if args.baseline:
        lines.append("")
        for p in BASELINE_PARTS:
            b, go = statistics.median(times[p]["base"]), statistics.median(times[p]["go"])
            lines.append(f"- {names[p]} with {' '.join(args.baseline)} (before): {b:.4g} s; "
                         f"project now / before: **{go / b:.2f}**; before / PyTorch: {b / statistics.median(times[p]['torch']):.2f}")
    lines.append("")
    lines.append(f"sgemm peak on {THREADS} threads, same run (best of 2048² products before and after): "
                 + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
                 + f"; velocity agreement max |Δ| = {diff:.1e}; OCR scores equal on {agree:.0%} of the images; "
                 + f"medians of {args.rounds} interleaved rounds; PyTorch on {THREADS} threads "
                 + f"({args.inference_threads} for (a) and (b)); config {args.config} {' '.join('--set ' + s for s in args.sets)}")
    lines.append(f"(peak used for the fractions: {best_peak:.0f} GFLOP/s)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
