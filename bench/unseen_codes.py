#!/usr/bin/env python
"""Which codes of zero-shot scenes did the prior never see as a target in training?

    python bench/unseen_codes.py [--model DIR | --image_tokenizer DIR] [--num-train 40000 | --codes DIR] [--num 400]

A prior trained on the codes of the training images gives ~zero probability to a code that never
occurs there, whatever the prompt: it cannot draw a picture that needs one. This encodes
`--num-train` scenes of the train split (the recipes' `make-shapes --seed 0` images, in order; or reads
the prior's training codes from `--codes`, a `minidalle encode` folder made with this tokenizer) and
`--num` scenes of the zeroshot split (each built around a held-out colour-shape pair) and another
`--num` of the train split (seed 7, a control for the sample size), and prints, per split, the share
of cells whose code never occurs in the training encodings and the share of scenes with at least
one such cell (and the same for codes rarer than `--rare` occurrences); per held-out pair, the same on
its one-object scenes. One JSON line each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from minidalle.data.shapes import HELD_OUT, generate_scene, render_scene


def encode_scenes(tokenizer, scenes, batch_size: int = 256) -> torch.Tensor:
    """(N, g*g) int64 codes of the rendered scenes."""
    codes = []
    for start in range(0, len(scenes), batch_size):
        pixels = np.stack([render_scene(s) for s in scenes[start : start + batch_size]])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            codes.append(tokenizer.encode(images).flatten(1))
    return torch.cat(codes)


def unseen_share(codes: torch.Tensor, counts: torch.Tensor, rare: int) -> dict:
    """Share of cells, and of images with at least one cell, whose code occurs never / fewer than `rare`
    times in training (`counts`: occurrences per code)."""
    unseen = counts[codes] == 0  # (N, g*g)
    scarce = counts[codes] < rare
    return {
        "images": len(codes),
        "cells_unseen": round(unseen.float().mean().item(), 4),
        "images_with_unseen": round(unseen.any(dim=1).float().mean().item(), 4),
        "distinct_unseen_codes": int(codes[unseen].unique().numel()),
        f"images_with_rarer_than_{rare}": round(scarce.any(dim=1).float().mean().item(), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder or bundled name (default: the bundled model)")
    parser.add_argument("--image_tokenizer", default=None, help="an image tokenizer folder instead of a pipeline")
    parser.add_argument("--num-train", type=int, default=40000, help="training scenes (make-shapes --seed 0 order)")
    parser.add_argument("--codes", default=None, help="the training codes: a `minidalle encode` folder instead")
    parser.add_argument("--num", type=int, default=400, help="zero-shot (and control) scenes")
    parser.add_argument("--seed", type=int, default=7, help="seed of the zero-shot and control scenes")
    parser.add_argument("--rare", type=int, default=10, help="also count codes seen fewer times than this")
    args = parser.parse_args()
    if args.image_tokenizer:
        from minidalle.image_tokenizers import load_image_tokenizer

        tokenizer = load_image_tokenizer(args.image_tokenizer).eval()
    else:
        from minidalle.pipeline import MiniDallePipeline

        tokenizer = MiniDallePipeline.from_pretrained(args.model).image_tokenizer
    if args.codes:
        from minidalle.training.encode import load_codes

        codes_ds = load_codes(args.codes, expected_hash=tokenizer.codes_hash())[0]
        train = torch.as_tensor(codes_ds.with_format("numpy")[:]["codes"]).long()
    else:
        train = encode_scenes(tokenizer, [generate_scene("train", 0, i) for i in range(args.num_train)])
    counts = torch.bincount(train.flatten(), minlength=tokenizer.num_codes)
    print(
        json.dumps(
            {
                "train_images": len(train),
                "grid": tokenizer.grid_size,
                "num_codes": tokenizer.num_codes,
                "codes_in_train": int((counts > 0).sum()),
            }
        ),
        flush=True,
    )
    for split in ("train", "zeroshot"):
        scenes = [generate_scene(split, args.seed, i) for i in range(args.num)]
        codes = encode_scenes(tokenizer, scenes)
        print(json.dumps({"split": split, **unseen_share(codes, counts, args.rare)}), flush=True)
        if split != "zeroshot":
            continue
        for colour, shape in sorted(HELD_OUT):
            alone = [
                i
                for i, s in enumerate(scenes)
                if len(s.objects) == 1 and (s.objects[0].color, s.objects[0].shape) == (colour, shape)
            ]
            if alone:
                print(
                    json.dumps({"pair": f"{colour} {shape}", **unseen_share(codes[alone], counts, args.rare)}),
                    flush=True,
                )


if __name__ == "__main__":
    main()
