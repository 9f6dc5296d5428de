"""The pipeline folder: what stage 2 writes and generation reads.

    PIPELINE/
      model_index.json     the pipeline's class, each part's [library, class] (as diffusers' model_index),
                           the image tokenizer's codes hash, the shapes, the version that wrote it
      image_tokenizer/     an image tokenizer, e.g. minidalle's DiscreteVAE (config.json + model.safetensors)
      text_tokenizer/      the BPE text tokenizer (tokenizer.json, ...)
      prior/               minidalle.prior.Prior (config.json + model.safetensors)
      ATTRIBUTION.md       (when the training data had one, e.g. an emoji-styles export) whose art the model
                           learned from: the sets, authors and licences; carried on by fine-tunes and exports
      training_info.json   (from train_prior.py) which step the weights are and why: the best validation or the
                           last step; for people, never read when loading

Loading checks the index names a MiniDallePipeline, that the prior was trained
on codes of *this* image tokenizer (the content hash it recorded) and that the
text tokenizer's vocabulary fits. The image tokenizer loads by the `kind` in its
own config.json. Folders written before the index named its parts still load.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from .. import __version__
from ..errors import UserError
from ..folders import atomic_folder, check_replaceable
from ..image_tokenizers import ImageTokenizer, load_image_tokenizer
from ..prior import Prior
from ..text import load_text_tokenizer

INDEX_NAME = "model_index.json"
ATTRIBUTION_NAME = "ATTRIBUTION.md"
# the index's optional "sampling_defaults": how this model samples best (chosen on prompts that are not the ones
# reported; `MiniDallePipeline.sampling_defaults`); the type and the least value of each
SAMPLING_KEYS = {
    "guidance_scale": (float, 0.0),
    "temperature": (float, 0.0),
    "top_k": (int, 0),
    "top_p": (float, 1e-6),
    "num_candidates": (int, 1),
}
PARTS = ("image_tokenizer", "text_tokenizer", "prior")
PIPELINE_CLASS = "MiniDallePipeline"


def save_pipeline(
    folder: str | Path,
    image_tokenizer: ImageTokenizer,
    text_tokenizer: PreTrainedTokenizerFast,
    prior: Prior,
    sampling_defaults: dict | None = None,
    attribution: str | None = None,
) -> Path:
    """Write a complete pipeline folder atomically (`atomic_folder`); an existing folder is replaced only
    when it holds a minidalle pipeline. `sampling_defaults` go into the index (checked first),
    `attribution` into ATTRIBUTION.md."""
    if sampling_defaults:
        sampling_defaults = check_sampling_defaults(sampling_defaults, "sampling_defaults")
    with atomic_folder(folder, is_pipeline_folder, "a minidalle pipeline") as tmp:
        image_tokenizer.save_pretrained(tmp / "image_tokenizer")
        text_tokenizer.save_pretrained(str(tmp / "text_tokenizer"))
        prior.save_pretrained(tmp / "prior")
        index = {
            "_class_name": PIPELINE_CLASS,
            "minidalle_version": __version__,
            "image_tokenizer": ["minidalle", type(image_tokenizer).__name__],
            "text_tokenizer": ["transformers", type(text_tokenizer).__name__],
            "prior": ["minidalle", type(prior).__name__],
            "image_tokenizer_hash": image_tokenizer.codes_hash(),
            "image_size": image_tokenizer.image_size,
            "image_grid": image_tokenizer.grid_size,
            "num_image_codes": image_tokenizer.num_codes,
            "text_len": prior.config.text_len,
        }
        if sampling_defaults:
            index["sampling_defaults"] = sampling_defaults
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if attribution:
            (tmp / ATTRIBUTION_NAME).write_text(attribution, encoding="utf-8")
    return Path(folder)


def check_sampling_defaults(values, where: str) -> dict:
    """Sampling settings by name (SAMPLING_KEYS), each of its type and in range; anything else a `UserError`."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected an object of sampling settings ({', '.join(SAMPLING_KEYS)})")
    unknown = sorted(set(values) - set(SAMPLING_KEYS))
    if unknown:
        known = ", ".join(SAMPLING_KEYS)
        raise UserError(f"{where}: unknown sampling setting(s) {', '.join(unknown)} (known: {known})")
    checked = {}
    for key, value in values.items():
        kind, least = SAMPLING_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise UserError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if value < least or (key == "top_p" and value > 1):
            raise UserError(f"{where}: {key} = {value} is out of range")
        checked[key] = kind(value)
    return checked


def read_sampling_defaults(folder: str | Path) -> dict:
    """The sampling settings a pipeline folder's index stores for itself ({} when it stores none)."""
    folder = Path(folder)
    return check_sampling_defaults(read_index(folder).get("sampling_defaults", {}), str(folder / INDEX_NAME))


def read_attribution(*folders: str | Path | None) -> str | None:
    """The ATTRIBUTION.md texts of these folders (a dataset, a pipeline, an image tokenizer), each once, joined;
    None when none has one. What a model trained or fine-tuned on them carries."""
    texts: list[str] = []
    for folder in folders:
        if not folder:
            continue
        path = Path(folder) / ATTRIBUTION_NAME
        text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
        if text and text not in texts:
            texts.append(text)
    return "\n\n".join(texts) + "\n" if texts else None


def is_pipeline_folder(folder: Path) -> bool:
    """Whether `folder` holds a minidalle pipeline (its model_index.json names the class)."""
    try:
        return json.loads((Path(folder) / INDEX_NAME).read_text(encoding="utf-8")).get("_class_name") == PIPELINE_CLASS
    except (OSError, ValueError, AttributeError):
        return False


def read_index(folder: Path) -> dict:
    """`model_index.json`, checked to describe a minidalle pipeline."""
    path = folder / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable pipeline index ({exc})") from None
    if not isinstance(index, dict) or index.get("_class_name", PIPELINE_CLASS) != PIPELINE_CLASS:
        found = index.get("_class_name") if isinstance(index, dict) else None
        raise UserError(f"{folder}: {INDEX_NAME} describes a {found or 'non-pipeline'}, not a {PIPELINE_CLASS}")
    return index


def check_compatible(
    prior: Prior, image_tokenizer: ImageTokenizer, text_tokenizer: PreTrainedTokenizerFast | None, where: str
) -> None:
    """A clear error when the prior was not trained with these tokenizers."""
    cfg = prior.config
    if cfg.num_image_codes != image_tokenizer.num_codes or cfg.image_grid != image_tokenizer.grid_size:
        raise UserError(
            f"{where}: the prior expects {cfg.num_image_codes} codes on a {cfg.image_grid}x{cfg.image_grid} grid, "
            f"the image tokenizer has {image_tokenizer.num_codes} on "
            f"{image_tokenizer.grid_size}x{image_tokenizer.grid_size}"
        )
    levels = list(getattr(image_tokenizer.config, "fsq_levels", None) or [])
    if cfg.image_code_levels and cfg.image_code_levels != levels:
        raise UserError(
            f"{where}: the prior predicts codes as digits of FSQ levels {cfg.image_code_levels}, the image tokenizer's "
            f"levels are {levels or 'none (it is not an FSQ tokenizer)'}"
        )
    found = image_tokenizer.codes_hash()
    if cfg.image_tokenizer_hash and cfg.image_tokenizer_hash != found:
        raise UserError(
            f"{where}: the prior was trained with image tokenizer {cfg.image_tokenizer_hash}, "
            f"but the image tokenizer given is {found}; pair it with the tokenizer it was trained on"
        )
    if text_tokenizer is not None and len(text_tokenizer) > cfg.text_vocab_size:
        raise UserError(
            f"{where}: the text tokenizer has {len(text_tokenizer)} tokens, the prior only {cfg.text_vocab_size}"
        )


def load_pipeline_parts(
    folder: str | Path, map_location: str = "cpu"
) -> tuple[ImageTokenizer, PreTrainedTokenizerFast, Prior]:
    """Load and cross-check the three parts of a pipeline folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such pipeline folder")
    missing = [name for name in (INDEX_NAME, *PARTS) if not (folder / name).exists()]
    if missing and is_pipeline_folder(folder / "pipeline"):
        raise UserError(
            f"{folder}: a training run's folder, not a pipeline; the pipeline it wrote is {folder / 'pipeline'}"
        )
    if missing:
        raise UserError(f"{folder}: not a complete pipeline folder (missing {', '.join(missing)})")
    read_index(folder)
    image_tokenizer = load_image_tokenizer(folder / "image_tokenizer", map_location)
    text_tokenizer = load_text_tokenizer(folder / "text_tokenizer")
    prior = Prior.from_pretrained(folder / "prior", map_location)
    check_compatible(prior, image_tokenizer, text_tokenizer, str(folder))
    return image_tokenizer, text_tokenizer, prior


WEIGHT_DTYPES = ("float16", "bfloat16", "float32")


def check_weight_dtype(dtype: str, what: str = "--dtype") -> None:
    """A clear error, naming the flag `what`, for a dtype that is not one of WEIGHT_DTYPES."""
    if dtype not in WEIGHT_DTYPES:
        raise UserError(f"{what} must be {', '.join(WEIGHT_DTYPES[:-1])} or {WEIGHT_DTYPES[-1]}, got {dtype!r}")


def round_weights(module, dtype: str, what: str = "--dtype"):
    """Round `module`'s float weights to `dtype` (one of WEIGHT_DTYPES) and back to float32, in place: what an export
    to `dtype` stores, so the rounded module computes what the exported one will. Returns the torch dtype."""
    import torch

    check_weight_dtype(dtype, what)
    torch_dtype = getattr(torch, dtype)
    module.to(torch_dtype).float()
    return torch_dtype


def export_pipeline(
    source: str | Path,
    target: str | Path,
    dtype: str = "float16",
    image_tokenizer: str | Path | None = None,
    sampling_defaults: dict | None = None,
) -> Path:
    """Copy a pipeline with its weights stored in `dtype` (e.g. to bundle it small).

    `image_tokenizer` swaps in another image tokenizer with the same codes
    (e.g. after `train_tokenizer.py --train_decoder_only`); the pairing check
    refuses one that encodes differently.

    The source's sampling defaults and ATTRIBUTION.md are kept; `sampling_defaults` replaces the former.

    The image tokenizer's weights are rounded to `dtype` first and the prior
    re-pointed at the rounded tokenizer's content hash, so the exported folder
    passes the pairing check exactly as loaded.
    """
    check_replaceable(target, is_pipeline_folder, "a minidalle pipeline")  # before any work
    if sampling_defaults is not None:
        sampling_defaults = check_sampling_defaults(sampling_defaults, "sampling defaults")
    old_tokenizer, text_tokenizer, prior = load_pipeline_parts(source)
    if sampling_defaults is None:
        sampling_defaults = read_sampling_defaults(source)
    if image_tokenizer is None:
        image_tokenizer = old_tokenizer
    else:
        where = str(image_tokenizer)
        image_tokenizer = load_image_tokenizer(image_tokenizer)
        check_compatible(prior, image_tokenizer, text_tokenizer, where)
    torch_dtype = round_weights(image_tokenizer, dtype)
    round_weights(prior, dtype)
    prior.config.image_tokenizer_hash = image_tokenizer.codes_hash()
    saved = save_pipeline(
        target,
        image_tokenizer.to(torch_dtype),
        text_tokenizer,
        prior.to(torch_dtype),
        sampling_defaults,
        read_attribution(source),
    )
    return saved
