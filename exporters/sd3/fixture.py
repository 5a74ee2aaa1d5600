"""A tiny random-weight Stable Diffusion 3.5 snapshot of the real classes, from fixed seeds.

    python -m exporters.sd3.fixture OUT_DIR

writes a diffusers snapshot directory (model_index.json, transformer/, vae/, text_encoder/,
text_encoder_2/, text_encoder_3/, tokenizer/, tokenizer_2/, tokenizer_3/, scheduler/) laid out
as stabilityai/stable-diffusion-3.5-medium is, with every size shrunk:

- transformer: SD3Transformer2DModel, 3 layers of 2 heads x 16, dual attention (MMDiT-X) in
  layers 0 and 1 as SD3.5-M has in its first 13, RMS QK-norm, pos_embed_max_size 16.
- text_encoder / text_encoder_2: CLIPTextModelWithProjection (quick_gelu like CLIP-L, gelu like
  CLIP-G), 3 layers, widths 32 and 48, eos_token_id 2 as in the real configs (pooling by argmax).
- text_encoder_3: T5EncoderModel (gated-gelu, relative buckets), d_model 96 — wider than the
  two CLIP widths together (80), so SD3's zero padding of the CLIP states is exercised.
- vae: AutoencoderKL with 16 latent channels, 4 blocks (8x down), SD3.5's scaling_factor
  1.5305 and shift_factor 0.0609, no quant convs.
- tokenizer / tokenizer_2: CLIP byte-level BPE files (vocab.json, merges.txt, configs) trained
  here on a fixed corpus; the vocabulary is laid out as CLIP's (256 bytes, 256 bytes + "</w>",
  one token per merge, <|startoftext|>, <|endoftext|>). tokenizer pads with <|endoftext|>,
  tokenizer_2 with "!", as the real snapshot does.
- tokenizer_3: a SentencePiece unigram model (nmt_nfkc normalization, pad 0 / eos 1 / unk 2,
  100 sentinel ids) and the tokenizer.json the T5 tokenizer converts it to.

Norm weights are perturbed away from 1 (and biases from 0) so that a swapped or missing norm
cannot go unnoticed by the parity tests. Everything is deterministic for the pinned versions.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import tempfile
import unicodedata
from pathlib import Path

import regex
import sentencepiece as spm
import torch

SEED = 20261207
# SentencePiece pieces of the tiny T5 vocabulary (T5 adds 100 sentinel ids after them).
T5_PIECES = 384

# Words for the tokenizer corpus: prompt vocabulary plus accents, digits and punctuation so the
# tokenizers' tricky-string table exercises learned merges, not only single bytes.
WORDS = """
a an the of and with on in under over near beside photo painting drawing sketch render portrait
landscape close-up of cat dog bird horse fox owl robot astronaut castle city street forest river
mountain lake ocean beach desert sky cloud sun moon star night day morning evening sunset sunrise
red green blue yellow orange purple pink black white gray golden silver brown colorful bright
dark soft sharp detailed realistic cinematic lighting shadow reflection glass metal wood stone
sign that says text word letter poster book cover label neon banner board written reads shows
holding wearing sitting standing running flying sleeping reading painting two three four five
small large tiny huge old young happy sad beautiful strange cute scary famous quiet busy
café naïve résumé über zürich señor façade jalapeño crème brûlée garçon fiancée déjà vu
hello world k4rt x9 2026 3.5 42 100% $20 #1 @home e-mail it's don't we're they've i'm you'll he'd
""".split()


def corpus(n: int = 4000, seed: int = SEED) -> list[str]:
    """Fixed pseudo-sentences over WORDS (Python's random.Random is stable across versions)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.append(rng.choice([".", "!", "?", ",", ":", '"']))
        lines.append(" ".join(words))
    return lines


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable unicode table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def train_clip_bpe(lines: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-layout BPE: words split as CLIP splits them, byte-encoded, last symbol + "</w>";
    the most frequent adjacent pair is merged until num_merges merges (ties: smallest pair)."""
    enc = bytes_to_unicode()
    freq: dict[tuple[str, ...], int] = {}
    for line in lines:
        text = " ".join(unicodedata.normalize("NFC", line).split()).lower()
        for piece in CLIP_PATTERN.findall(text):
            sym = [enc[b] for b in piece.encode("utf-8")]
            sym[-1] += "</w>"
            freq[tuple(sym)] = freq.get(tuple(sym), 0) + 1
    vocab_list = list(enc.values())
    vocab_list += [v + "</w>" for v in vocab_list]
    known = set(vocab_list)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: dict[tuple[str, str], int] = {}
        for word, n in freq.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged_sym = best[0] + best[1]
        if merged_sym in known:
            raise RuntimeError(f"merge {best} repeats token {merged_sym!r}")
        known.add(merged_sym)
        merges.append(best)
        vocab_list.append(merged_sym)
        new_freq: dict[tuple[str, ...], int] = {}
        for word, n in freq.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged_sym)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_freq[tuple(out)] = new_freq.get(tuple(out), 0) + n
        freq = new_freq
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def clip_special_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_clip_tokenizer(out: Path, vocab: dict[str, int], merges: list[tuple[str, str]], pad: str) -> None:
    """The four files of a real SD3 CLIP tokenizer folder."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {
        "bos_token": clip_special_token("<|startoftext|>"),
        "eos_token": clip_special_token("<|endoftext|>"),
        "pad_token": clip_special_token(pad) if pad != "!" else "!",
        "unk_token": clip_special_token("<|endoftext|>"),
    }
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    decoder = {
        str(vocab["<|startoftext|>"]): dict(clip_special_token("<|startoftext|>"), special=True),
        str(vocab["<|endoftext|>"]): dict(clip_special_token("<|endoftext|>"), special=True),
    }
    if pad == "!":
        decoder[str(vocab["!"])] = dict(clip_special_token("!"), special=True)
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": dict(sorted(decoder.items(), key=lambda kv: int(kv[0]))),
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def train_t5_spm(lines: list[str], vocab_size: int) -> bytes:
    """A SentencePiece unigram model with T5's special ids and normalization."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        normalization_rule_name="nmt_nfkc",
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def write_t5_tokenizer(out: Path, model: bytes) -> None:
    """spiece.model plus the tokenizer.json and tokenizer_config.json transformers' T5 tokenizer
    converts it to (100 sentinel ids), and the special_tokens_map.json of the real folder."""
    from transformers import T5TokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    (out / "spiece.model").write_bytes(model)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(out / "spiece.model", Path(tmp) / "spiece.model")
        tok = T5TokenizerFast.from_pretrained(tmp, extra_ids=100, model_max_length=512, legacy=True)
        if len(tok) != T5_PIECES + 100:
            raise RuntimeError(f"T5 tokenizer conversion gave {len(tok)} tokens, want {T5_PIECES + 100}")
        tok.save_pretrained(Path(tmp) / "saved")
        for name in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(Path(tmp) / "saved" / name, out / name)
    specials = {
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def perturb_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm scales 1 + 0.1·N(0,1), norm biases 0.1·N(0,1): the parity tests must see them."""
    with torch.no_grad():
        for module in model.modules():
            if "Norm" not in type(module).__name__:
                continue
            for name, p in module.named_parameters(recurse=False):
                noise = 0.1 * torch.randn(p.shape, generator=gen)
                p.copy_(1 + noise if name == "weight" else noise)


def build(out: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    lines = corpus()
    vocab, merges = train_clip_bpe(lines, num_merges=400)
    spm_model = train_t5_spm(lines, vocab_size=T5_PIECES)

    def clip(width: int, act: str, seed: int) -> CLIPTextModelWithProjection:
        torch.manual_seed(seed)
        cfg = CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=width, hidden_act=act,
            layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        )
        return CLIPTextModelWithProjection(cfg).eval()

    text_encoder = clip(32, "quick_gelu", SEED + 1)
    text_encoder_2 = clip(48, "gelu", SEED + 2)
    torch.manual_seed(SEED + 3)
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=512, d_model=96, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, dropout_rate=0.1, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )).eval()
    torch.manual_seed(SEED + 4)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=80, out_channels=16,
        pos_embed_max_size=16, dual_attention_layers=(0, 1), qk_norm="rms_norm",
    ).eval()
    torch.manual_seed(SEED + 5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 16, 16], layers_per_block=1,
        act_fn="silu", latent_channels=16, norm_num_groups=4, sample_size=64, scaling_factor=1.5305,
        shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)

    gen = torch.Generator().manual_seed(SEED + 6)
    for m in [text_encoder, text_encoder_2, text_encoder_3, transformer, vae]:
        perturb_norms(m, gen)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_clip_tokenizer(tmp / "tokenizer", vocab, merges, pad="<|endoftext|>")
        write_clip_tokenizer(tmp / "tokenizer_2", vocab, merges, pad="!")
        write_t5_tokenizer(tmp / "tokenizer_3", spm_model)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae,
            text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tmp / "tokenizer"),
            text_encoder_2=text_encoder_2, tokenizer_2=CLIPTokenizer.from_pretrained(tmp / "tokenizer_2"),
            text_encoder_3=text_encoder_3, tokenizer_3=T5TokenizerFast.from_pretrained(tmp / "tokenizer_3"),
        )
        if out.exists():
            shutil.rmtree(out)
        pipe.save_pretrained(out, safe_serialization=True)
        # The real snapshot's tokenizer folders hold the files written above, not what
        # save_pretrained of this transformers version would write.
        for name in ["tokenizer", "tokenizer_2", "tokenizer_3"]:
            shutil.rmtree(out / name)
            shutil.copytree(tmp / name, out / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="snapshot directory to (re)create")
    args = ap.parse_args()
    build(args.out)
    print(f"wrote tiny SD3.5 snapshot {args.out}")


if __name__ == "__main__":
    main()
