#!/usr/bin/env python
"""Guidance away from the caption without its style: does stressing the style phrase draw the style?

    python bench/style_guidance.py [--model emoji] [--data data/emoji-styles] [--scales 0,0.5,1,2]

The emoji model samples with classifier-free guidance (its defaults: guidance 3, temperature 0.7). Here each
sample is also guided away from its caption with the style phrase left out ("a dog face in the noto style" ->
"a dog face"), with the scale s: logits + s (cond - neg), `sample_codes(negative_text_tokens=...)` (composable
guidance with a negative, Liu et al. 2022). The prompts are `--num-prompts` train captions that
bench/eval_emoji_model.py never reports (its tune prompts: the seed-0 shuffle's captions after the first 400),
each drawn `--seeds` times with one candidate; every sample is judged by the shipped emoji-styles judges. For
each scale: style and subgroup accuracy, and the paired difference from s = 0 (per prompt, over its seeds) with
its standard error.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval_emoji_model import distinct_captions, judge_prompts, mean_and_se, read_rows

from minidalle.data.emoji_styles.export import parse_caption
from minidalle.data.emoji_styles.judge import load_judges
from minidalle.pipeline import MiniDallePipeline
from minidalle.prior.sampling import sample_codes


def concept_only(prompt: str) -> str:
    """The caption without its style phrase: "a dog face in the noto style" -> "a dog face"."""
    concept, _ = parse_caption(prompt)
    return "a " + concept.replace("-", " ")


@torch.inference_mode()
def draw(pipe, prompts: list[str], scale: float, seed: int, sampling: dict, batch_size: int) -> list:
    """One image per prompt, row i seeded `seed + i`, guided away from its concept-only caption by `scale`."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        negatives = [pipe._text_tokens([concept_only(p) for p in chunk])] if scale else []
        codes = sample_codes(
            pipe.prior,
            pipe._text_tokens(chunk),
            guidance_scale=sampling["guidance_scale"],
            temperature=sampling["temperature"],
            top_k=sampling["top_k"],
            top_p=sampling["top_p"],
            generator=[torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))],
            negative_text_tokens=negatives,
            negative_scales=[scale] if scale else [],
        )
        images += pipe.decode(codes)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--data", default="data/emoji-styles")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--scales", default="0,0.5,1,2")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()

    pipe = MiniDallePipeline.from_pretrained(args.model)
    judges = load_judges()
    captions = distinct_captions(read_rows(Path(args.data), "train"))
    random.Random(0).shuffle(captions)
    prompts = captions[400 : 400 + args.num_prompts]
    sampling = dict(pipe.sampling_defaults)
    per_prompt = {}
    for scale in [float(s) for s in args.scales.split(",")]:
        start = time.perf_counter()
        right = [
            judge_prompts(draw(pipe, prompts, scale, 1000 * k, sampling, args.batch_size), prompts, judges)
            for k in range(args.seeds)
        ]
        # per prompt, the share of its seeds right: (style, subgroup)
        per_prompt[scale] = [
            tuple(sum(bool(r[i][j]) for r in right) / args.seeds for j in (0, 1)) for i in range(len(prompts))
        ]
        row = {"scale": scale, "prompts": len(prompts), "seeds": args.seeds, "sampling": sampling}
        for j, name in enumerate(("style", "subgroup")):
            row[name] = sum(p[j] for p in per_prompt[scale]) / len(prompts)
            if scale and 0.0 in per_prompt:
                mean, se = mean_and_se([p[j] - q[j] for p, q in zip(per_prompt[scale], per_prompt[0.0])])
                row[f"{name}_minus_scale_0"] = {"mean": mean, "se": se}
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
