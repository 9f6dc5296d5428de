#!/usr/bin/env python
"""How well can the image tokenizer even represent the zero-shot colour-shape pairs?

    python bench/zeroshot_ceiling.py [--model DIR] [--num 400] [--split zeroshot|train]

Renders scenes of the split (zeroshot: each built around a colour-shape pair held out of
training), round-trips them through the pipeline's image tokenizer (argmax codes -> decode),
and judges the reconstructions against a caption stating every attribute, exactly as
`minidalle eval-shapes` judges samples. This bounds what a prior can reach when it predicts
the codes the encoder would give. Prints one JSON line per split and per held-out pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from minidalle.data.shapes import HELD_OUT, evaluate_manifest, full_caption, generate_scene, render_scene
from minidalle.pipeline import MiniDallePipeline


def judge(pipe, scenes, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    images = pipe.reconstruct([Image.fromarray(render_scene(s)) for s in scenes])
    with open(out / "manifest.jsonl", "w") as f:
        for i, (image, scene) in enumerate(zip(images, scenes)):
            image.save(out / f"{i:04d}.png")
            f.write(json.dumps({"prompt": full_caption(scene.objects), "file": f"{i:04d}.png"}) + "\n")
    return evaluate_manifest(out / "manifest.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the bundled model)")
    parser.add_argument("--num", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--splits", default="zeroshot,train")
    args = parser.parse_args()
    pipe = MiniDallePipeline.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.splits.split(","):
            scenes = [generate_scene(split, args.seed, i) for i in range(args.num)]
            report = judge(pipe, scenes, Path(tmp) / split)
            print(
                json.dumps(
                    {
                        "split": split,
                        "images": report["images"],
                        "all_correct": report["all_correct"],
                        "one_object_all_correct": report["all_correct_one"],
                        "accuracy": report["accuracy"],
                    }
                ),
                flush=True,
            )
            if split != "zeroshot":
                continue
            for colour, shape in sorted(HELD_OUT):  # one-object scenes of each held-out pair
                alone = [
                    s
                    for s in scenes
                    if len(s.objects) == 1 and (s.objects[0].color, s.objects[0].shape) == (colour, shape)
                ]
                if alone:
                    r = judge(pipe, alone, Path(tmp) / f"{colour}-{shape}")
                    print(
                        json.dumps(
                            {
                                "pair": f"{colour} {shape}",
                                "images": r["images"],
                                "all_correct": r["all_correct"],
                                "color": r["accuracy"]["color"],
                                "shape": r["accuracy"]["shape"],
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
