"""The models the page offers: the bundled ones by name, and pipeline folders, each loaded once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..pipeline import MiniDallePipeline
from ..pipeline.io import is_pipeline_folder
from ..pipeline.pipeline import BUNDLED_MODELS, BUNDLED_NAMES, resolve_model
from .sampling import WarmSampler

logger = logging.getLogger("minidalle")


@dataclass(frozen=True)
class PageText:
    examples: tuple[str, ...]  # prompts from its training grammar
    zero_shot_examples: tuple[str, ...] = ()  # prompts that name pairs it never saw in training
    about: str = ""


# what the page shows beside each bundled model (its folder and name: the pipeline's BUNDLED_MODELS)
PAGE_TEXT: dict[str, PageText] = {
    "shapes": PageText(
        examples=(
            "a small red circle in the top left",
            "a large blue square at the bottom",
            "a green circle above a yellow square",
            "a white diamond to the left of a purple triangle",
        ),
        zero_shot_examples=(
            "a small cyan diamond in the center",
            "an orange square below a red triangle",
            "a large purple circle on the right",
            "a green triangle above a white square",
        ),
        about="coloured shapes on black; cyan diamonds, orange squares, purple circles and green triangles "
        "were never seen in training (zero-shot)",
    ),
    "emoji": PageText(
        examples=(
            "a dog face in the noto style",
            "a red apple in the twemoji style",
            "a rocket in the fluent style",
            "a grinning face in the streamline style",
        ),
        zero_shot_examples=(
            "a fox in the emojione style",
            "a candle in the fluent style",
            "a cookie in the fluent-flat style",
            "a bullet train in the streamline style",
        ),
        about="emoji in seven open sets' styles (their licences: ATTRIBUTION.md in the model folder); a tenth of "
        "the concepts were held out of one style each (zero-shot)",
    ),
}
assert set(PAGE_TEXT) == set(BUNDLED_NAMES)


@dataclass
class LoadedModel:
    name: str  # what the model picker shows: a bundled name or the folder as given
    pipe: MiniDallePipeline
    sampler: WarmSampler  # the pipeline's images, with the compiled step warm for a few batch shapes
    examples: tuple[str, ...] = ()
    zero_shot_examples: tuple[str, ...] = ()
    about: str = ""


def resolve_models(names_or_folders: list[str]) -> dict[str, Path]:
    """`--model` values -> {picker name: pipeline folder}; none given: every bundled model.

    A value is a bundled model's name or a pipeline folder, read as `sample.py --model` reads it (a folder
    named like a bundled model is taken when it holds a model); anything else is a `UserError` naming it,
    raised before anything is loaded.
    """
    resolved: dict[str, Path] = {}
    installed = [name for name in BUNDLED_NAMES if is_pipeline_folder(BUNDLED_MODELS[name])]
    for value in names_or_folders or installed:
        try:
            folder = resolve_model(value)
        except UserError as exc:  # neither a folder nor a bundled name: the names are listed
            raise UserError(f"--model {exc}") from None
        if not folder.is_dir() or not is_pipeline_folder(folder):
            raise UserError(f"--model {value}: not a pipeline folder (expected model_index.json and its parts)")
        resolved[value] = folder
    return resolved


def load_models(folders: dict[str, Path], device: str | None = None) -> dict[str, LoadedModel]:
    """Load every pipeline once (the requests share them; sampling keeps no state in the pipeline)."""
    models = {}
    for name, folder in folders.items():
        bundled = page_text(folder)
        pipe = MiniDallePipeline.from_pretrained(folder, device=device or None)
        logger.info("loaded %s from %s (%s)", name, folder, pipe.device)
        models[name] = LoadedModel(
            name,
            pipe,
            WarmSampler(pipe),
            bundled.examples if bundled else (),
            bundled.zero_shot_examples if bundled else (),
            bundled.about if bundled else f"the pipeline in {folder}",
        )
    return models


def page_text(folder: Path) -> PageText | None:
    """The page's examples for a bundled model's folder (whatever name it was asked by); None for others."""
    for name in BUNDLED_NAMES:
        if Path(folder).resolve() == BUNDLED_MODELS[name].resolve():
            return PAGE_TEXT[name]
    return None
