"""`minidalle score`: how likely is an image given a caption, under the prior.

minidalle score IMAGE.png --caption "a small red circle"               # log p, bits/dim and pmi
minidalle score IMAGE.png --candidates "a red circle|a blue circle"     # rank captions (zero-shot)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .args import UserError, arg, command


@dataclass
class ScoreArguments:
    caption: str = arg(
        "",
        help="Score each image under this caption: log p(image codes | caption), bits/dim, and pmi "
        "(log p given the caption minus log p given the empty caption).",
    )
    candidates: str = arg("", help="Rank these captions ('|'-separated) for each image, most likely first.")
    model: str = arg(
        "", help="A pipeline folder or a bundled model's name (shapes); default: the bundled shapes model."
    )
    json: bool = arg(False, help="Print one JSON object per image instead of text.")


def open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: cannot read the image ({exc})") from None


@command(
    ScoreArguments,
    prog="minidalle score",
    description="Likelihood of images given captions under a minidalle prior (bits/dim), or caption ranking.",
    positional={"images": dict(nargs="+", help="Image files to score.")},
)
def score_main(args: ScoreArguments, extra) -> None:
    from ..pipeline import MiniDallePipeline

    candidates = [c.strip() for c in args.candidates.split("|") if c.strip()]
    if bool(args.caption) == bool(candidates):
        raise UserError("give either --caption or --candidates")
    pipe = MiniDallePipeline.from_pretrained(args.model or None)
    for path in extra.images:
        image = open_image(path)
        if candidates:
            ranked = pipe.rank_captions(image, candidates)
            result = {
                "image": path,
                "ranking": [{"rank": r, "caption": c, "log_prob": lp} for r, (c, lp) in enumerate(ranked, 1)],
            }
            text = f"{path}: captions ranked by log p(image codes | caption), most likely first\n" + "\n".join(
                f"  {rank}. log p = {lp:.2f} nats  {c}" for rank, (c, lp) in enumerate(ranked, 1)
            )
        else:
            (scored,) = pipe.score([image], [args.caption])
            result = {"image": path, **scored}
            text = (
                f"{path}: log p = {scored['log_prob']:.2f} nats, {scored['bits_per_dim']:.4f} bits/dim "
                f"given {args.caption!r}; "
                f"pmi = {scored['pmi']:.2f} nats (log p given the caption minus log p given none)"
            )
        print(json.dumps(result) if args.json else text)
