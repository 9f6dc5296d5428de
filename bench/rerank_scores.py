#!/usr/bin/env python
"""Which score picks the right image among a prompt's candidates? (the choice behind `num_candidates`)

    python bench/rerank_scores.py [--split zeroshot] [--seed 2002] [--num-prompts 400] [--num-candidates 8]

Samples N candidates per prompt (prompts from the shapes split/seed, one pipe call at
the given guidance and temperature), judges every candidate exactly, and prints the
share of prompts whose pick is right, for each way of picking:
`first` (no re-ranking), `log_prob` / `pmi` of the sampled codes, `log_prob_shown` /
`pmi_shown` of the tokenizer's codes of the decoded picture (`pipe.score`, what
`num_candidates` uses), and `oracle` (right if any candidate is). One JSON line.
The default seed 2002 draws validation prompts, not the ones the README's quality
table reports (1002).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from minidalle.cli.sample import SampleArguments
from minidalle.data.shapes import generate_scene, judge
from minidalle.pipeline import MiniDallePipeline


@torch.inference_mode()
def sampled_code_scores(pipe, prompts: list[str], codes: torch.Tensor, batch_size: int = 64) -> list[dict]:
    """`pipe.score`'s figures (log_prob, pmi, ...) for the codes as sampled, not the decoded picture's."""
    return [
        r
        for start in range(0, len(codes), batch_size)
        for r in pipe._score_codes(codes[start : start + batch_size], prompts[start : start + batch_size], pmi=True)
    ]


def main() -> None:
    defaults = SampleArguments()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the bundled model)")
    parser.add_argument("--split", default="zeroshot", choices=["train", "zeroshot"])
    parser.add_argument("--seed", type=int, default=2002, help="draws the prompts")
    parser.add_argument("--num-prompts", type=int, default=400)
    parser.add_argument("--num-candidates", type=int, default=defaults.num_candidates)
    parser.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    args = parser.parse_args()

    pipe = MiniDallePipeline.from_pretrained(args.model)
    n, k = args.num_prompts, args.num_candidates
    prompts = [generate_scene(args.split, args.seed, i).caption for i in range(n)]
    start = time.perf_counter()
    out = pipe(
        prompts,
        num_images_per_prompt=k,
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        seed=0,
        batch_size=64,
    )
    sampled = time.perf_counter()
    sampled_scores = sampled_code_scores(pipe, out.prompts, out.codes)
    shown = pipe.score(out.images, out.prompts)
    scored = time.perf_counter()
    right = torch.tensor(
        [float(judge(image, prompt)["all_correct"]) for image, prompt in zip(out.images, out.prompts)]
    ).view(n, k)
    picks = {
        "first": torch.zeros(n, dtype=torch.long),
        "log_prob": torch.tensor([s["log_prob"] for s in sampled_scores]).view(n, k).argmax(1),
        "pmi": torch.tensor([s["pmi"] for s in sampled_scores]).view(n, k).argmax(1),
        "log_prob_shown": torch.tensor([s["log_prob"] for s in shown]).view(n, k).argmax(1),
        "pmi_shown": torch.tensor([s["pmi"] for s in shown]).view(n, k).argmax(1),
        "oracle": right.argmax(1),
    }
    row = {
        "split": args.split,
        "seed": args.seed,
        "prompts": n,
        "candidates": k,
        "guidance_scale": args.guidance_scale,
        "temperature": args.temperature,
        "mean_candidate": round(right.mean().item(), 4),
    }
    row.update({name: round(right.gather(1, pick[:, None]).mean().item(), 4) for name, pick in picks.items()})
    row.update({"sampling_s": round(sampled - start, 1), "scoring_s": round(scored - sampled, 1)})
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
