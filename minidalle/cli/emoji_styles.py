"""Commands of the emoji-styles dataset: export it, judge generated images against it, train its judges.

- `minidalle export-dataset emoji-styles --out DIR [--resolution 64] [--styles a,b] [--include-share-alike]
  [--source DIR] [--seed 0] [--workers N] [--force]` -> `export_emoji_styles_main` (argv: what follows `emoji-styles`)
- `minidalle eval-emoji MANIFEST.jsonl [--json]` -> `eval_emoji_main`
- `minidalle train-emoji-judges --data DIR [--out DIR]` -> `train_emoji_judges_main`
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .args import arg, command


@dataclass
class ExportEmojiStylesArgs:
    """Flags of `minidalle export-dataset emoji-styles`."""

    out: str = arg(help="Output folder; gets train/, test/, zeroshot/ imagefolders, ATTRIBUTION.md, emoji-styles.json.")
    resolution: int = arg(
        64, help="Image side in pixels (rendered from the vector sources, so exact at any size).", minimum=8
    )
    styles: str | None = arg(
        None,
        help="Comma-separated styles (default: every set but the share-alike one): "
        "noto,fluent-flat,fluent,twemoji,emojione,streamline,fxemoji,openmoji.",
    )
    include_share_alike: bool = arg(
        False, help="Also export OpenMoji (CC-BY-SA-4.0); ATTRIBUTION.md says what share-alike asks of derived work."
    )
    include_skin_tones: bool = arg(
        False, help="Also export the skin-tone variants (U+1F3FB-1F3FF), each as its own concept; left out by default."
    )
    source: str | None = arg(
        None,
        help="Read the npm tarballs (as `npm pack` names them) from this folder instead of fetching them with npm.",
    )
    cache: str | None = arg(None, help="Where `npm pack` puts the tarballs (default ~/.cache/minidalle/npm).")
    seed: int = arg(0, help="Seed of the zeroshot and test splits.")
    workers: int | None = arg(None, help="Rendering processes (default: one per CPU core).", minimum=1)
    force: bool = arg(
        False, help="Render again even onto a complete export with these settings (kept as it is by default)."
    )
    no_progress: bool = arg(False, help="No progress bar.")


@command(
    ExportEmojiStylesArgs,
    prog="minidalle export-dataset emoji-styles",
    description="Render open emoji sets (Iconify JSON packages on npm) as a captioned imagefolder dataset "
    "with train, test and zero-shot (held-out concept x style) splits.",
    output="out",
)
def export_emoji_styles_main(args: ExportEmojiStylesArgs, _) -> None:
    """`minidalle export-dataset emoji-styles --out DIR ...` (argv: everything after `emoji-styles`)."""
    from ..data.emoji_styles.export import export_emoji_styles

    styles = None if args.styles is None else args.styles.split(",")
    export_emoji_styles(
        args.out,
        resolution=args.resolution,
        styles=styles,
        include_share_alike=args.include_share_alike,
        source=args.source,
        cache=args.cache,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
        skin_tones=args.include_skin_tones,
        force=args.force,
    )


@dataclass
class EvalEmojiArgs:
    """Flags of `minidalle eval-emoji`."""

    json: bool = arg(False, help="Print the report as one JSON object instead of a table.")
    judges: str | None = arg(None, help="A folder of judges from train-emoji-judges (default: the shipped ones).")


@command(
    EvalEmojiArgs,
    prog="minidalle eval-emoji",
    description="Judge generated emoji images against their prompts: style and Unicode-subgroup accuracy.",
    positional={
        "manifest": dict(
            help='A JSONL file, one {"prompt": ..., "file": ...} per line (files relative '
            'to its folder); prompts like "a dog face in the noto style".'
        )
    },
)
def eval_emoji_main(args: EvalEmojiArgs, extra) -> None:
    """`minidalle eval-emoji MANIFEST.jsonl [--json]`."""
    from ..data.emoji_styles.judge import evaluate_manifest, format_report

    report = evaluate_manifest(extra.manifest, judges=args.judges)
    print(json.dumps(report) if args.json else format_report(report))


@dataclass
class TrainEmojiJudgesArgs:
    """Flags of `minidalle train-emoji-judges`."""

    data: str = arg("", help="An emoji-styles export (the folder holding train/, test/, zeroshot/).")
    out: str | None = arg(None, help="Where to write the judges (default: replace the shipped ones in the package).")
    epochs: int = arg(12, help="Passes over the train split.", minimum=1)
    batch_size: int = arg(64, help="Images per step.", minimum=1)
    lr: float = arg(2e-3, help="Peak learning rate (AdamW, one-cycle).", minimum=0)
    seed: int = arg(0, help="Seed of initialisation, shuffling and augmentation.")
    threads: int = arg(1, help="torch CPU threads.", minimum=1)
    degrade_p: float = arg(
        0.5,
        help="Share of training images degraded by noise, JPEG, blur or resampling (what decoded images look "
        "like), so the judges read what is drawn rather than exact pixels; 0 turns it off.",
        minimum=0,
        maximum=1,
    )
    round_trip_model: str | None = arg(
        None,
        help="A bundled model's name or a pipeline / image-tokenizer folder: its tokenizer's round trips of the "
        "images are reported as a ceiling, and used in training with --round_trip_p.",
    )
    round_trip_p: float = arg(
        0.25,
        help="Share of training images replaced by their round trip (with --round_trip_model).",
        minimum=0,
        maximum=1,
    )
    no_progress: bool = arg(False, help="No progress bar.")


@command(
    TrainEmojiJudgesArgs,
    prog="minidalle train-emoji-judges",
    description="Train the emoji-styles judges (one small CNN, a style head and a Unicode-subgroup head) on "
    "an export's train split; reports accuracy on its test and zeroshot splits.",
    required=("data",),
    output="out",
)
def train_emoji_judges_main(args: TrainEmojiJudgesArgs, _) -> None:
    """`minidalle train-emoji-judges --data DIR [--out DIR]`: train the style + subgroup judges on `train`."""
    from ..data.emoji_styles.judge import train_judges

    tokenizer = None if args.round_trip_model is None else load_round_trip_tokenizer(args.round_trip_model)
    train_judges(
        args.data,
        out_dir=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
        degrade_p=args.degrade_p,
        round_trip_model=args.round_trip_model,
        round_trip_p=args.round_trip_p,
        round_trip_tokenizer=tokenizer,
    )


def load_round_trip_tokenizer(model: str):
    """The image tokenizer of `model`: a bundled model's name, a pipeline folder or an image-tokenizer folder."""
    from ..image_tokenizers import load_image_tokenizer
    from ..pipeline.pipeline import resolve_model

    folder = resolve_model(str(model))
    if (folder / "image_tokenizer").is_dir():
        folder = folder / "image_tokenizer"
    return load_image_tokenizer(folder).eval()
