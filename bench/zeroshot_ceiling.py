#!/usr/bin/env python
"""How well can the image tokenizer even represent the zero-shot colour-shape pairs?

    python bench/zeroshot_ceiling.py [--model DIR | --image_tokenizer DIR] [--num 400] [--splits zeroshot,train]

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


class TokenizerOnly:
    """The one pipeline method `judge` needs, from an image tokenizer folder."""

    def __init__(self, folder: str) -> None:
        from minidalle.image_tokenizers import load_image_tokenizer

        self.tokenizer = load_image_tokenizer(folder).eval()

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        import numpy as np
        import torch

        pixels = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
        out = torch.cat([self.tokenizer.reconstruct(chunk.float() / 255) for chunk in pixels.split(128)])
        arrays = (out.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a) for a in arrays]


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
    parser.add_argument("--image_tokenizer", default=None, help="an image tokenizer folder instead of a pipeline")
    parser.add_argument("--num", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--splits", default="zeroshot,train")
    args = parser.parse_args()
    pipe = (
        TokenizerOnly(args.image_tokenizer) if args.image_tokenizer else MiniDallePipeline.from_pretrained(args.model)
    )
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
