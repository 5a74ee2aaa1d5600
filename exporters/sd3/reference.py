"""Reference outputs of diffusers / transformers / peft on an SD3 snapshot (the tiny fixture).

    python -m exporters.sd3.reference --model-dir SNAPSHOT --out REF [--go-lora FILE]

writes into REF what the Go parity tests compare with, all float32:

- tokens.json: a table of tricky strings and the ids of tokenizer, tokenizer_2 (77, padded
  and truncated as StableDiffusion3Pipeline does) and tokenizer_3 (256, with </s>).
- transformer.safetensors: SD3Transformer2DModel velocities on fixed inputs ("square":
  2 x 16x8x8 latents, 24 text tokens; "wide": 1 x 16x8x12, 7 tokens).
- encode_prompt.safetensors: StableDiffusion3Pipeline.encode_prompt of PROMPTS (the empty
  prompt is CFG's negative): prompt_embeds [N, 77+256, 96], pooled_prompt_embeds [N, 80].
- vae.safetensors: latents (transformer space) and the pipeline's decoded image in [0,1]:
  decode(latents / scaling_factor + shift_factor), then the image processor's post-processing.
- sample.safetensors: a whole StableDiffusion3Pipeline call — 2 prompts, given initial latents,
  8 steps, CFG 4.5 — with the scheduler's sigmas, the final latents and the image.
- lora_diffusers/pytorch_lora_weights.safetensors (StableDiffusion3Pipeline.save_lora_weights)
  and lora_peft/adapter_model.safetensors + adapter_config.json (PeftModel.save_pretrained):
  one random adapter with Flow-GRPO's target modules, r = 32, alpha = 64; lora.safetensors
  holds the transformer's velocity with it on the "square" inputs.
- go_lora_velocity.safetensors (with --go-lora): the velocity on the "square" inputs after
  load_lora_weights of a LoRA file the Go side wrote.

With --go-peft DIR (and --go-lora), DIR is the same Go-made adapter as a PEFT folder
(mmdit.WritePEFTLoRA): PeftModel.from_pretrained must load it and give the velocity of
load_lora_weights, or this fails; nothing is written for it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 7

# Flow-GRPO's LoRA targets for SD3.5 (train_sd3.py), rank and alpha.
FLOW_GRPO_TARGETS = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]
LORA_RANK, LORA_ALPHA = 32, 64

PROMPTS = ['a sign that says "K4RT"', "Café naïve — 3 red cats!", ""]
SAMPLE_PROMPTS = ['a sign that says "K4RT"', "a photo of a cat"]
SAMPLE_STEPS, SAMPLE_GUIDANCE = 8, 4.5

TRICKY = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT",
    "Café naïve résumé über Zürich",
    "  multiple   spaces\tand\ttabs\nnewline  ",
    "it's don't we're they've I'm you'll he'd IT'S",
    'a sign that says "K4RT"',
    "100% $20 #1 @home e-mail 3.5 2026",
    "emoji 🐱🚀 and 中文字符 and ﬁ ligature ① ＡＢＣ",
    "crème brûlée, jalapeño; façade: déjà-vu!",
    "HELLO WORLD!!!",
    "x" * 300,
    " ".join(["word"] * 100),
    " ".join(["painting"] * 300),
    "<|endoftext|> inside <|startoftext|>",
    "<extra_id_3> sentinel </s> end",
    "Ünïcödé ÀÉÎÕÜ ß ﬀ",
    "a\u00a0nbsp\u2009thin\u3000ideographic",
    "quotes “curly” ‘single’ — dash … ellipsis",
    "e\u0301 combining acute vs é",
    "!!!",
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tokens(pipe) -> dict:
    out = {"strings": TRICKY}
    for name, length in [("tokenizer", 77), ("tokenizer_2", 77), ("tokenizer_3", 256)]:
        tok = getattr(pipe, name)
        out[name] = tok(TRICKY, padding="max_length", max_length=length, truncation=True, add_special_tokens=True).input_ids
    return out


def transformer_inputs() -> dict[str, dict[str, torch.Tensor]]:
    g = gen(SEED)
    return {
        "square": {
            "hidden_states": torch.randn((2, 16, 8, 8), generator=g),
            "timestep": torch.tensor([1000.0, 337.5]),
            "encoder_hidden_states": torch.randn((2, 24, 96), generator=g),
            "pooled_projections": torch.randn((2, 80), generator=g),
        },
        "wide": {
            "hidden_states": torch.randn((1, 16, 8, 12), generator=g),
            "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": torch.randn((1, 7, 96), generator=g),
            "pooled_projections": torch.randn((1, 80), generator=g),
        },
    }


def velocity(transformer, inp: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inp, return_dict=False)[0]


def flat(cases: dict[str, dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor], out_name: str) -> dict:
    t = {}
    for case, inp in cases.items():
        for k, v in inp.items():
            t[f"{case}.{k}"] = v.contiguous()
        t[f"{case}.{out_name}"] = outputs[case].contiguous()
    return t


def random_lora(transformer):
    """Adds a PEFT LoRA with Flow-GRPO's targets and fills A and B with seeded noise (B = 0
    would make the adapter the identity and the comparison vacuous)."""
    from peft import LoraConfig

    cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, init_lora_weights="gaussian", target_modules=FLOW_GRPO_TARGETS)
    transformer.add_adapter(cfg)
    g = gen(SEED + 1)
    with torch.no_grad():
        for name, p in sorted(transformer.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return cfg


def write(out: Path, snap: Path, go_lora: Path | None, go_peft: Path | None = None) -> None:
    from diffusers import StableDiffusion3Pipeline

    out.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusion3Pipeline.from_pretrained(snap, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    (out / "tokens.json").write_text(json.dumps(tokens(pipe), ensure_ascii=False) + "\n", encoding="utf-8")

    cases = transformer_inputs()
    vel = {c: velocity(pipe.transformer, inp) for c, inp in cases.items()}
    save_file(flat(cases, vel, "velocity"), out / "transformer.safetensors")

    with torch.no_grad():
        pe, _, pooled, _ = pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False)
    save_file({"prompt_embeds": pe.contiguous(), "pooled_prompt_embeds": pooled.contiguous()}, out / "encode_prompt.safetensors",
              metadata={"prompts": json.dumps(PROMPTS, ensure_ascii=False)})

    vae = pipe.vae
    latents = torch.randn((2, 16, 8, 8), generator=gen(SEED + 2))
    with torch.no_grad():
        z = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = pipe.image_processor.postprocess(vae.decode(z, return_dict=False)[0], output_type="pt")
    save_file({"latents": latents, "image": image.contiguous()}, out / "vae.safetensors")

    init = torch.randn((len(SAMPLE_PROMPTS), 16, 8, 8), generator=gen(SEED + 3))
    common = dict(prompt=SAMPLE_PROMPTS, num_inference_steps=SAMPLE_STEPS, guidance_scale=SAMPLE_GUIDANCE, height=64, width=64)
    with torch.no_grad():
        final = pipe(latents=init.clone(), output_type="latent", **common).images
        sigmas = pipe.scheduler.sigmas.clone()
        image = pipe(latents=init.clone(), output_type="pt", **common).images
    save_file({"latents": init, "sigmas": sigmas.float(), "final_latents": final.contiguous(), "image": image.contiguous()},
              out / "sample.safetensors",
              metadata={"prompts": json.dumps(SAMPLE_PROMPTS), "steps": str(SAMPLE_STEPS), "guidance": str(SAMPLE_GUIDANCE)})

    if go_lora is not None:
        pipe.load_lora_weights(str(go_lora), adapter_name="go")
        v = {c: velocity(pipe.transformer, inp) for c, inp in cases.items()}
        if any(torch.allclose(v[c], vel[c]) for c in cases):
            raise RuntimeError(f"{go_lora}: load_lora_weights left the velocity unchanged (adapter not applied?)")
        save_file(flat(cases, v, "velocity"), out / "go_lora_velocity.safetensors")
        pipe.delete_adapters("go")
        if go_peft is not None:
            check_go_peft(snap, go_peft, cases, v)

    lora_cases(out, snap, cases)


def check_go_peft(snap: Path, go_peft: Path, cases, want) -> None:
    """The Go-written PEFT folder loads with PeftModel.from_pretrained and gives `want`."""
    from diffusers import SD3Transformer2DModel
    from peft import PeftModel

    base = SD3Transformer2DModel.from_pretrained(snap / "transformer", torch_dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, str(go_peft)).eval()
    for c, inp in cases.items():
        got = velocity(model, inp)
        err = (got - want[c]).abs().max().item()
        if not torch.allclose(got, want[c], atol=1e-6, rtol=1e-5):
            raise RuntimeError(f"{go_peft}: PeftModel.from_pretrained gives another velocity ({c}: max abs diff {err:.3g})")
        print(f"go PEFT folder {go_peft}: PeftModel velocity {c} equals load_lora_weights' (max abs diff {err:.3g})")


def lora_cases(out: Path, snap: Path, cases) -> None:
    """The Python-made adapter, saved in both formats, and its velocity."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import get_peft_model, set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    transformer = SD3Transformer2DModel.from_pretrained(snap / "transformer", torch_dtype=torch.float32).eval()
    cfg = random_lora(transformer)
    vel = {c: velocity(transformer, inp) for c, inp in cases.items()}
    save_file(flat(cases, vel, "velocity"), out / "lora.safetensors")
    # PEFT keeps target_modules as a set; written sorted so the files are reproducible.
    meta = cfg.to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])
    StableDiffusion3Pipeline.save_lora_weights(
        out / "lora_diffusers", transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=meta,
    )
    # The same adapter as a PEFT model directory (what peft's save_pretrained writes).
    base = SD3Transformer2DModel.from_pretrained(snap / "transformer", torch_dtype=torch.float32).eval()
    peft_model = get_peft_model(base, cfg)
    state = {"base_model.model." + k: v for k, v in get_peft_model_state_dict(transformer).items()}
    result = set_peft_model_state_dict(peft_model, state)
    if result.unexpected_keys:
        raise RuntimeError(f"PEFT model rejects {result.unexpected_keys[:3]}")
    peft_model.save_pretrained(out / "lora_peft")
    (out / "lora_peft" / "README.md").unlink(missing_ok=True)
    cfg_path = out / "lora_peft" / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
    check = velocity(peft_model, cases["square"])
    if not torch.allclose(check, vel["square"], atol=1e-6):
        raise RuntimeError("PEFT model and diffusers adapter disagree")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--go-lora", type=Path, help="a LoRA file written by the Go side, to load with load_lora_weights")
    ap.add_argument("--go-peft", type=Path, help="the same adapter as a PEFT folder written by the Go side, to load with PeftModel.from_pretrained")
    args = ap.parse_args()
    torch.set_num_threads(1)
    write(args.out, args.model_dir, args.go_lora, args.go_peft)
    print(f"wrote references {args.out}")


if __name__ == "__main__":
    main()
