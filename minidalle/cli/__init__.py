"""The `minidalle` console script: one entry point, one subcommand per job.

Each subcommand is a function `main(argv) -> int | None` in a module of this
package (the CLI layer: it parses flags and calls the library); it raises
`minidalle.errors.UserError` for bad input.
"""

from __future__ import annotations

import importlib
import sys

from .args import run_main

# name -> (module.function inside minidalle.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-shapes": ("datasets.make_shapes_main", "write the built-in shapes dataset (imagefolder)"),
    "eval-shapes": ("datasets.eval_shapes_main", "judge generated shapes images against their prompts"),
    "export-dataset": ("datasets.export_dataset_main", "export a captioned image set (emoji-styles, emoji, mnist)"),
    "train-tokenizer": ("train.train_tokenizer_main", "stage 1: train the dVAE image tokenizer"),
    "sample": ("sample.main", "prompts -> PNG images (bundled model by default)"),
    "score": ("score.score_main", "log p(image | caption) in bits/dim, or rank captions for an image"),
    "serve": ("serve.serve_main", "the web page: generate, score and complete in a browser (the ui extra)"),
    "train-prior": ("train.train_prior_main", "stage 2: train or fine-tune the prior over text + image codes"),
    "export-pipeline": ("export_pipeline.export_pipeline_main", "copy a pipeline folder with float16/bfloat16 weights"),
    "encode": ("codes.encode_main", "encode a dataset once into image-tokenizer codes"),
    "codebook": ("codes.codebook_main", "draw every code of an image tokenizer as a sheet"),
    "reconstruct": ("codes.reconstruct_main", "round-trip images through an image tokenizer; PSNR + manifest"),
    "eval-emoji": ("emoji_styles.eval_emoji_main", "judge generated emoji-styles images: style and subgroup accuracy"),
    "train-emoji-judges": ("emoji_styles.train_emoji_judges_main", "train the emoji-styles judges on an export"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: minidalle COMMAND [flags]   (minidalle COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name = argv[0].replace("_", "-")
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module, function = COMMANDS[name][0].rsplit(".", 1)
    entry = getattr(importlib.import_module(f"minidalle.cli.{module}"), function)
    run_main(lambda: entry(argv[1:]))


if __name__ == "__main__":
    main()
