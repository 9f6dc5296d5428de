#!/usr/bin/env python
"""One picture of several models' samples for the same prompts: a labelled row per sample folder.

    python bench/sample_rows.py OUT.png LABEL=FOLDER [LABEL=FOLDER ...] [--num 12] [--scale 2]

Each FOLDER holds a `manifest.jsonl` of {"prompt", "file"} lines (sample.py's, or bench/eval_shapes_model.py's
sample folders); its first `--num` images make one row, so folders sampled from the same prompt list line up.
`--scale` enlarges every picture (nearest neighbour: each pixel stays a square of its colour).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from minidalle.images import save_image_grid


def first_images(folder: Path, num: int, scale: int = 1) -> tuple[torch.Tensor, list[str]]:
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()[:num]]
    images = [Image.open(folder / row["file"]).convert("RGB") for row in rows]
    pixels = np.stack([np.asarray(im.resize((im.width * scale, im.height * scale), Image.NEAREST)) for im in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, [row["prompt"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("rows", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--num", type=int, default=12)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()
    labels, images, prompts = [], [], None
    for spec in args.rows:
        label, _, folder = spec.partition("=")
        row, row_prompts = first_images(Path(folder), args.num, args.scale)
        if prompts is not None and row_prompts != prompts:
            sys.exit(f"{folder}: its prompts differ from the first row's")
        labels.append(label)
        images.append(row)
        prompts = row_prompts
    save_image_grid(images, args.out, labels=labels)
    print(f"wrote {args.out}; columns: " + " | ".join(prompts))


if __name__ == "__main__":
    main()
