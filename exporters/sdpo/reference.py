"""Reference of SDPO's latent-similarity reward prediction (github.com/ZiyiZhang27/sdpo at
fcee34d) for rl/queries_test.go. The two blocks marked "SDPO" are the repository's own lines:

- sdpo_pytorch/diffusers_patch/pipeline_with_logprob_sdpo.py, after the denoising loop: the
  cosine similarity of every step's predicted clean latent (all_ori_latents [B,T,C,H,W],
  flattened) to the first and last step's, the anchor step argmin(sim_first + sim_last), and the
  similarity of every step to the anchor;
- scripts/train_sdpo.py, "compute dense rewards for the first trajectory": the similarity-
  weighted average of the three queried rewards (first, anchor, last, in that column order),
  the queried steps then overwritten with their own rewards.

Latents are random (float64, so the comparison checks the formula, not float16 rounding), drawn
so that the early steps are far from the last and some cosines are negative while every sum of
weights stays positive (where SDPO's division is defined).

    .venv/bin/python exporters/sdpo/reference.py rl/testdata/sdpo_reference.json
"""

import json
import sys

import torch


def sdpo(all_ori_latents, rewards1):
    num_inference_steps = all_ori_latents.shape[1]
    # SDPO: pipeline_with_logprob_sdpo.py
    sim_first = torch.cosine_similarity(
        all_ori_latents.flatten(2, 4),
        all_ori_latents[:, 0:1].repeat(1, num_inference_steps, 1, 1, 1).flatten(2, 4), dim=2
    )
    sim_last = torch.cosine_similarity(
        all_ori_latents.flatten(2, 4),
        all_ori_latents[:, -1:].repeat(1, num_inference_steps, 1, 1, 1).flatten(2, 4), dim=2
    )

    anchor_steps = (sim_first + sim_last).argmin(dim=1)
    ori_latents = all_ori_latents[torch.arange(len(anchor_steps)), anchor_steps]
    sim_anchor = torch.cosine_similarity(
        all_ori_latents.flatten(2, 4),
        ori_latents.unsqueeze(1).repeat(1, num_inference_steps, 1, 1, 1).flatten(2, 4), dim=2
    )
    # SDPO: train_sdpo.py (sample["..."] renamed to locals)
    dense = (
        rewards1[:, 0:1].repeat(1, num_inference_steps) * sim_first
        + rewards1[:, 1:-1].repeat(1, num_inference_steps) * sim_anchor
        + rewards1[:, -1:].repeat(1, num_inference_steps) * sim_last
    ) / (sim_first + sim_anchor + sim_last)
    index = anchor_steps
    dense[:, 0], dense[:, -1] = rewards1[:, 0], rewards1[:, -1]
    dense[torch.arange(len(index)), index] = rewards1[:, 1]
    return anchor_steps, sim_first, sim_anchor, sim_last, dense


def main(out):
    g = torch.Generator().manual_seed(27)
    B, T, shape = 6, 9, (4, 3, 3)
    final = torch.randn((B, 1) + shape, generator=g, dtype=torch.float64)
    noise = torch.randn((B, T) + shape, generator=g, dtype=torch.float64)
    # Step k moves from noise towards the final latent; trajectory b at its own pace.
    pace = torch.linspace(0.6, 1.6, B, dtype=torch.float64).view(B, 1)
    t = torch.linspace(0, 1, T, dtype=torch.float64).view(1, T) ** pace
    w = t.view(B, T, 1, 1, 1)
    latents = w * final + (1 - w) * (noise + 0.5 * noise[:, :1])  # early steps share some noise
    rewards1 = torch.rand((B, 3), generator=g, dtype=torch.float64)
    anchor, s_first, s_anchor, s_last, dense = sdpo(latents, rewards1)
    den = s_first + s_anchor + s_last
    assert (den > 0).all(), "a sum of weights is not positive: SDPO's average is undefined there"
    assert ((anchor > 0) & (anchor < T - 1)).all(), "an anchor is the first or last step"
    assert (torch.stack([s_first, s_anchor, s_last]) < 0).any(), "no negative cosine: raw vs clipped untested"
    json.dump({
        "source": "github.com/ZiyiZhang27/sdpo@fcee34d, exporters/sdpo/reference.py",
        "latents": latents.flatten(2, 4).tolist(),  # [B][T][C·H·W]
        "rewards": rewards1.tolist(),  # [B][first, anchor, last]
        "anchor": anchor.tolist(),
        "dense": dense.tolist(),  # [B][T]
    }, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
