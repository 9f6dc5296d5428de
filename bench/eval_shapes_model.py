#!/usr/bin/env python
"""Quality of a shapes pipeline, judged exactly by `minidalle eval-shapes`' judge.

    python bench/eval_shapes_model.py [--model DIR] [--num-prompts 400] [--out runs/eval-model]

Samples one image per prompt with sample.py's defaults (re-ranking included:
--num-candidates 1 turns it off) for prompts drawn from
the train grammar and from the zeroshot split (held-out colour-shape pairs),
at the default guidance and with guidance off (1.0), judges them, and checks
zero-shot classification: `rank_captions` among the 8 colour variants of a
held-out image's caption. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minidalle.cli.sample import SampleArguments
from minidalle.data.shapes import PALETTE, PHRASINGS, evaluate_manifest, generate_scene, render_scene, rephrase
from minidalle.pipeline import MiniDallePipeline


def prompts_for(split: str, n: int, seed: int, phrasing: str = "default") -> list[str]:
    return [rephrase(generate_scene(split, seed, i).caption, phrasing) for i in range(n)]


def sample_and_judge(
    pipe, prompts: list[str], out: Path, guidance: float, seed: int, batch_size: int, phrasing="default", **sampling
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = pipe(
        prompts, num_images_per_prompt=1, guidance_scale=guidance, seed=seed, batch_size=batch_size, **sampling
    )
    with open(out / "manifest.jsonl", "w") as f:
        for i, (image, prompt) in enumerate(zip(result.images, result.prompts)):
            image.save(out / f"{i:04d}.png")
            f.write(json.dumps({"prompt": prompt, "file": f"{i:04d}.png"}) + "\n")
    return evaluate_manifest(out / "manifest.jsonl", phrasing=phrasing)


def rank_colour_accuracy(pipe, n: int, seed: int) -> float:
    """Share of held-out one-object images whose true colour wins among the 8 colour variants of its caption."""
    right = total = i = 0
    while total < n:
        scene = generate_scene("train", seed, i)
        i += 1
        if len(scene.objects) != 1:
            continue
        colour = scene.objects[0].color
        words = scene.caption.split()
        at = words.index(colour)
        variants = []
        for c in PALETTE:
            w = words.copy()
            w[at] = c
            if at > 0 and w[at - 1] in ("a", "an"):
                w[at - 1] = "an" if c[0] in "aeiou" else "a"
            variants.append(" ".join(w))
        ranked = pipe.rank_captions(render_scene(scene), variants)
        right += ranked[0][0] == variants[list(PALETTE).index(colour)]
        total += 1
    return right / total


def main() -> None:
    defaults = SampleArguments()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the bundled model)")
    parser.add_argument("--num-prompts", type=int, default=400)
    parser.add_argument("--num-rank", type=int, default=200)
    parser.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument(
        "--num-candidates", type=int, default=defaults.num_candidates, help="re-ranked candidates per image (1: none)"
    )
    parser.add_argument("--skip-rank", action="store_true", help="skip the rank_captions check")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default="runs/eval-model")
    parser.add_argument("--only", choices=["train_grammar", "zeroshot"], help="judge one prompt set only")
    parser.add_argument(
        "--zeroshot-seed",
        type=int,
        default=1002,
        help="another seed draws other zero-shot prompts (a sweep's validation set)",
    )
    parser.add_argument("--no-guidance-off", action="store_true", help="skip the guidance 1 comparison")
    parser.add_argument(
        "--write-prompts",
        metavar="DIR",
        help="only write the prompt sets to DIR/<set>.txt (for sample.py --prompts_file)",
    )
    parser.add_argument(
        "--phrasing",
        default="default",
        choices=list(PHRASINGS),
        help="word the prompts so (make-shapes --phrasing): a fine-tune on new words is judged with casual",
    )
    args = parser.parse_args()

    sets = {
        "train_grammar": prompts_for("train", args.num_prompts, 1001, args.phrasing),
        "zeroshot": prompts_for("zeroshot", args.num_prompts, args.zeroshot_seed, args.phrasing),
    }
    if args.only:
        sets = {args.only: sets[args.only]}
    if args.write_prompts:
        Path(args.write_prompts).mkdir(parents=True, exist_ok=True)
        for name, prompts in sets.items():
            (Path(args.write_prompts) / f"{name}.txt").write_text("\n".join(prompts) + "\n")
        print(f"wrote {', '.join(f'{args.write_prompts}/{name}.txt' for name in sets)}")
        return
    pipe = MiniDallePipeline.from_pretrained(args.model)
    out = Path(args.out)
    for guidance in sorted({args.guidance_scale} if args.no_guidance_off else {1.0, args.guidance_scale}):
        for name, prompts in sets.items():
            start = time.perf_counter()
            report = sample_and_judge(
                pipe,
                prompts,
                out / f"{name}-g{guidance:g}",
                guidance,
                args.seed,
                args.batch_size,
                phrasing=args.phrasing,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                num_candidates=args.num_candidates,
            )
            row = {
                "set": name,
                "phrasing": args.phrasing,
                "guidance_scale": guidance,
                "temperature": args.temperature,
                "top_k": args.top_k,
                "top_p": args.top_p,
                "num_candidates": args.num_candidates,
                "images": report["images"],
                "one_object_all_correct": report["all_correct_one"],
                "two_object_all_correct": report["all_correct_two"],
                "relation_correct": report["accuracy"].get("relation"),
                "all_correct": report["all_correct"],
                "accuracy": report["accuracy"],
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(row), flush=True)
    if args.skip_rank:
        return
    start = time.perf_counter()
    accuracy = rank_colour_accuracy(pipe, args.num_rank, seed=1003)
    print(
        json.dumps(
            {
                "metric": "rank_captions_colour_accuracy",
                "value": accuracy,
                "images": args.num_rank,
                "seconds": round(time.perf_counter() - start, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
