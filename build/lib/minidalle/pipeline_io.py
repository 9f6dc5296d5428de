"""The pipeline folder: what stage 2 writes and generation reads.

    PIPELINE/
      model_index.json     names the parts, their content hashes, the versions
      image_tokenizer/     minidalle.dvae.DiscreteVAE (config.json + model.safetensors)
      text_tokenizer/      the BPE text tokenizer (tokenizer.json, ...)
      prior/               minidalle.prior.Prior (config.json + model.safetensors)

Loading checks that the prior was trained on codes of *this* image tokenizer
(the content hash it recorded) and that the text tokenizer's vocabulary fits.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from . import __version__
from .args import UserError
from .dvae import DiscreteVAE
from .prior import Prior
from .text import load_text_tokenizer

INDEX_NAME = "model_index.json"
PARTS = ("image_tokenizer", "text_tokenizer", "prior")


def save_pipeline(folder: str | Path, image_tokenizer: DiscreteVAE, text_tokenizer: PreTrainedTokenizerFast, prior: Prior) -> Path:
    """Write a complete pipeline folder atomically (temporary sibling, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        image_tokenizer.save_pretrained(tmp / "image_tokenizer")
        text_tokenizer.save_pretrained(str(tmp / "text_tokenizer"))
        prior.save_pretrained(tmp / "prior")
        index = {
            "_class_name": "MiniDallePipeline",
            "minidalle_version": __version__,
            "image_tokenizer_hash": image_tokenizer.codes_hash(),
            "prior_hash": prior.content_hash(),
            "image_size": image_tokenizer.config.image_size,
            "image_grid": image_tokenizer.grid_size,
            "num_image_codes": image_tokenizer.num_codes,
            "text_len": prior.config.text_len,
        }
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def check_compatible(prior: Prior, image_tokenizer: DiscreteVAE, text_tokenizer: PreTrainedTokenizerFast | None, where: str) -> None:
    """A clear error when the prior was not trained with these tokenizers."""
    cfg = prior.config
    if cfg.num_image_codes != image_tokenizer.num_codes or cfg.image_grid != image_tokenizer.grid_size:
        raise UserError(
            f"{where}: the prior expects {cfg.num_image_codes} codes on a {cfg.image_grid}x{cfg.image_grid} grid, "
            f"the image tokenizer has {image_tokenizer.num_codes} on {image_tokenizer.grid_size}x{image_tokenizer.grid_size}"
        )
    found = image_tokenizer.codes_hash()
    if cfg.image_tokenizer_hash and cfg.image_tokenizer_hash != found:
        raise UserError(
            f"{where}: the prior was trained with image tokenizer {cfg.image_tokenizer_hash}, "
            f"but the image tokenizer given is {found}; pair it with the tokenizer it was trained on"
        )
    if text_tokenizer is not None and len(text_tokenizer) > cfg.text_vocab_size:
        raise UserError(f"{where}: the text tokenizer has {len(text_tokenizer)} tokens, the prior only {cfg.text_vocab_size}")


def load_pipeline_parts(folder: str | Path, map_location: str = "cpu") -> tuple[DiscreteVAE, PreTrainedTokenizerFast, Prior]:
    """Load and cross-check the three parts of a pipeline folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such pipeline folder")
    missing = [name for name in (INDEX_NAME, *PARTS) if not (folder / name).exists()]
    if missing:
        raise UserError(f"{folder}: not a complete pipeline folder (missing {', '.join(missing)})")
    image_tokenizer = DiscreteVAE.from_pretrained(folder / "image_tokenizer", map_location)
    text_tokenizer = load_text_tokenizer(folder / "text_tokenizer")
    prior = Prior.from_pretrained(folder / "prior", map_location)
    check_compatible(prior, image_tokenizer, text_tokenizer, str(folder))
    return image_tokenizer, text_tokenizer, prior


def export_pipeline(source: str | Path, target: str | Path, dtype: str = "float16", image_tokenizer: str | Path | None = None) -> Path:
    """Copy a pipeline with its weights stored in `dtype` (e.g. to bundle it small).

    `image_tokenizer` swaps in another image tokenizer with the same codes
    (e.g. after `train_tokenizer.py --train_decoder_only`); the pairing check
    refuses one that encodes differently.

    The image tokenizer's weights are rounded to `dtype` first and the prior
    re-pointed at the rounded tokenizer's content hash, so the exported folder
    passes the pairing check exactly as loaded.
    """
    import torch

    old_tokenizer, text_tokenizer, prior = load_pipeline_parts(source)
    if image_tokenizer is None:
        image_tokenizer = old_tokenizer
    else:
        where = str(image_tokenizer)
        image_tokenizer = DiscreteVAE.from_pretrained(image_tokenizer)
        check_compatible(prior, image_tokenizer, text_tokenizer, where)
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    image_tokenizer.to(torch_dtype).float()
    prior.to(torch_dtype).float()
    prior.config.image_tokenizer_hash = image_tokenizer.codes_hash()
    saved = save_pipeline(target, image_tokenizer.to(torch_dtype), text_tokenizer, prior.to(torch_dtype))
    return saved


def export_pipeline_main(argv: list[str] | None = None) -> None:
    from dataclasses import dataclass

    from .args import arg, parse_args

    @dataclass
    class ExportArguments:
        source: str = arg("", help="The pipeline folder to export (train_prior.py's OUTPUT_DIR/pipeline).")
        out: str = arg("", help="Where to write the exported pipeline.")
        dtype: str = arg("float16", help="float16, bfloat16 or float32.")
        image_tokenizer: str = arg("", help="Swap in this image tokenizer (it must produce the same codes, e.g. a decoder fine-tune).")

    (args, _) = parse_args([ExportArguments], argv, prog="minidalle export-pipeline",
                           description="Copy a pipeline folder with its weights stored in a smaller dtype.")
    if not args.source or not args.out:
        raise UserError("--source and --out are required")
    if args.dtype not in ("float16", "bfloat16", "float32"):
        raise UserError(f"--dtype must be float16, bfloat16 or float32, got {args.dtype!r}")
    out = export_pipeline(args.source, args.out, args.dtype, args.image_tokenizer or None)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
