#!/usr/bin/env python
"""The README's picture: samples of the bundled model (sample.py's defaults), one row per prompt.

python bench/readme_samples.py [--model DIR] [--out docs/samples.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw

from minidalle.cli.sample import SampleArguments
from minidalle.pipeline import MiniDallePipeline

PROMPTS = [
    "a small red circle in the top left",
    "a large blue square at the bottom",
    "a green circle above a yellow square",
    "a white diamond to the left of a purple triangle",
    "a small cyan diamond in the center",  # zero-shot: cyan diamonds were never seen in training
    "an orange square below a red triangle",  # zero-shot: orange squares were never seen in training
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="docs/samples.png")
    parser.add_argument("--per-prompt", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-candidates", type=int, default=SampleArguments().num_candidates)
    args = parser.parse_args()
    pipe = MiniDallePipeline.from_pretrained(args.model)
    out = pipe(PROMPTS, num_images_per_prompt=args.per_prompt, seed=args.seed, num_candidates=args.num_candidates)
    size, label, gap = out.images[0].width * 2, 300, 4
    sheet = Image.new("RGB", (label + (size + gap) * args.per_prompt, (size + gap) * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, prompt in enumerate(PROMPTS):
        draw.text((6, i * (size + gap) + size // 2 - 6), prompt, fill="black")
        for j in range(args.per_prompt):
            image = out.images[i * args.per_prompt + j].resize((size, size), Image.NEAREST)
            sheet.paste(image, (label + j * (size + gap), i * (size + gap)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
