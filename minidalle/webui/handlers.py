"""The page's request handlers, without Gradio: check the input, run the pipeline, say what happened.

Each handler takes the values of a tab's controls and returns the values of its outputs, the last one a status
line in Markdown. Bad input is a `UserError` with a message a user can act on; `friendly` turns it (and any
other exception, logged with its traceback on the server) into a status line, so the page never shows a trace.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..data.loading import to_rgb
from ..errors import UserError
from ..pipeline import check_prompts
from ..text import MAX_CAPTION_CHARS, encode_captions
from .models import LoadedModel
from .sampling import SamplingSettings

logger = logging.getLogger("minidalle")

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the page's sliders stop here too; the HTTP API is checked the same way)."""

    max_prompts: int = 8
    max_prompt_chars: int = MAX_CAPTION_CHARS
    max_images: int = 16  # per prompt
    max_candidates: int = 16
    max_rows: int = 256  # prompts x images x candidates: what one request samples
    max_guidance: float = 10.0
    max_temperature: float = 2.0
    max_captions: int = 32
    max_upload_megapixels: float = 16.0
    max_upload_bytes: int = 20 * 2**20


def lines_of(text: str | None, what: str, limit: int, max_chars: int) -> list[str]:
    """The non-blank lines of a text box, each at most `max_chars` characters, at most `limit` of them."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        example = "a small red circle in the top left"
        raise UserError(f"Type a {what} first (one per line), for example “{example}”.")
    if len(lines) > limit:
        raise UserError(f"{len(lines)} {what}s given; the page takes at most {limit} at a time.")
    for i, line in enumerate(lines):
        if len(line) > max_chars:
            raise UserError(
                f"{what.capitalize()} {i + 1} has {len(line):,} characters; the limit is {max_chars:,} "
                "(the model reads only the first few dozen text tokens of a caption)."
            )
    return check_prompts(lines)


def _shown(x: float) -> str:
    """A number as a user would type it: 2147483647, 0.5 (not 2.14748e+09)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def number(value, label: str, low: float, high: float, integer: bool = False) -> float | int:
    """A control's value, checked to lie in [low, high] (and to be whole, for `integer`)."""
    bounds = f"between {_shown(low)} and {_shown(high)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{label}: give a number {bounds}.")
    if not low <= value <= high:
        raise UserError(f"{label} must be {bounds}; got {_shown(value)}.")
    if integer:
        if value != int(value):
            raise UserError(f"{label} must be a whole number; got {_shown(value)}.")
        return int(value)
    return float(value)


def seed_from(value) -> int:
    """The seed box: empty draws a fresh seed; otherwise a whole number in [0, 2^31 - 1] (text or a number)."""
    if isinstance(value, str):
        value = value.strip()
        if not value or value.lower() == "random":
            return secrets.randbelow(MAX_SEED)
        try:
            value = int(value)
        except ValueError:
            raise UserError(f"Seed must be a whole number from 0 to {MAX_SEED} (or empty for a random one).") from None
    if value is None:
        return secrets.randbelow(MAX_SEED)
    return number(value, "Seed", 0, MAX_SEED, integer=True)


def open_upload(path: str | None, limits: Limits, resolution: int) -> Image.Image:
    """An uploaded file -> an RGB image, or a `UserError` saying why not (not an image, too large, damaged)."""
    if not path:
        raise UserError("Upload an image first (PNG, JPEG, WebP, GIF or BMP).")
    if os.path.getsize(path) > limits.max_upload_bytes:
        raise UserError(f"The file is larger than {limits.max_upload_bytes // 2**20} MB; upload a smaller image.")
    limit = limits.max_upload_megapixels
    smaller = f"The model sees it at {resolution}×{resolution} pixels, so a smaller copy loses nothing."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only: the size is known before anything is decoded
    except Image.DecompressionBombError:
        raise UserError(f"The image has far more than {limit:g} megapixels, the limit. {smaller}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UserError("That file is not an image this page can read; upload a PNG, JPEG, WebP, GIF or BMP.") from None
    with image:
        w, h = image.size
        if w * h > limit * 1e6:
            raise UserError(
                f"The image is {w:,}×{h:,} pixels ({w * h / 1e6:.1f} megapixels); the limit is {limit:g} "
                f"megapixels. {smaller}"
            )
        try:
            image.load()
            return to_rgb(image).copy()
        except (OSError, ValueError, SyntaxError):
            raise UserError("The image file is damaged or cut short; upload it again or another one.") from None


def friendly(empty: tuple) -> Callable:
    """Decorator: a handler's `UserError` -> `(*empty, "⚠️ message")`; any other exception is logged with its
    traceback and shown as one line, so the page never shows a stack trace."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except UserError as exc:
                return (*empty, f"⚠️ {exc}")
            except Exception as exc:
                logger.exception("request failed")
                problem = type(exc).__name__
                return (*empty, f"⚠️ Something went wrong on the server ({problem}); its log has the details.")

        return run

    return decorate


def _captioned(images, seeds, prompts, several_prompts: bool) -> list[tuple[Image.Image, str]]:
    return [
        (image, f"seed {seed}" + (f" · {prompt}" if several_prompts else ""))
        for image, seed, prompt in zip(images, seeds, prompts)
    ]


class Handlers:
    """The three tabs' handlers over the models loaded at start-up."""

    def __init__(self, models: dict[str, LoadedModel], limits: Limits | None = None) -> None:
        if not models:
            raise UserError("no models to serve")
        self.models = models
        self.limits = limits or Limits()

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise UserError(f"No model named {name!r}; pick one of: {', '.join(self.models)}.")
        return self.models[name]

    def settings(
        self,
        model: LoadedModel,
        num_images,
        guidance,
        temperature,
        top_k,
        top_p,
        candidates,
        images="Images per prompt",
    ):
        """The controls' values as sampling settings (each named as the page labels it when it is out of range)."""
        lim = self.limits
        return SamplingSettings(
            num_images_per_prompt=number(num_images, images, 1, lim.max_images, integer=True),
            guidance_scale=number(guidance, "Guidance", 1, lim.max_guidance),
            temperature=number(temperature, "Temperature", 0, lim.max_temperature),
            top_k=number(top_k, "Top-k", 0, model.pipe.prior.config.num_image_codes, integer=True),
            top_p=number(top_p, "Top-p", 0.01, 1),
            num_candidates=number(candidates, "Candidates per image", 1, lim.max_candidates, integer=True),
        )

    def _check_rows(self, prompts: list[str], settings: SamplingSettings) -> None:
        rows = len(prompts) * settings.num_images_per_prompt * settings.num_candidates
        if rows > self.limits.max_rows:
            raise UserError(
                f"That asks for {rows:,} samples (prompts × images × candidates); the limit is "
                f"{self.limits.max_rows:,} per request: ask for fewer images or candidates."
            )

    def _truncation_note(self, model: LoadedModel, prompts: list[str]) -> str:
        pipe = model.pipe
        _, cut = encode_captions(pipe.text_tokenizer, prompts, pipe.prior.config.text_len, warn=False)
        if not cut:
            return ""
        length = pipe.prior.config.text_len
        return f" {cut} prompt(s) were longer than the model's {length} text tokens: only the beginning was read."

    def generate(self, model_name, prompt_text, num_images, guidance, temperature, top_k, top_p, candidates, seed):
        """Generate tab -> (gallery items [(image, "seed S")], status)."""
        model = self.model(model_name)
        prompts = lines_of(prompt_text, "prompt", self.limits.max_prompts, self.limits.max_prompt_chars)
        settings = self.settings(model, num_images, guidance, temperature, top_k, top_p, candidates)
        self._check_rows(prompts, settings)
        base = seed_from(seed)
        started = time.perf_counter()
        out = model.sampler(prompts, settings, base)
        seconds = time.perf_counter() - started
        status = (
            f"{len(out.images)} image(s) in {seconds:.2f} s · seed {base} (the same seed and settings redraw "
            "them; an image's own seed redraws it alone with 1 candidate)." + self._truncation_note(model, prompts)
        )
        return _captioned(out.images, out.seeds, out.prompts, len(prompts) > 1), status

    def score(self, model_name, image_path, captions_text):
        """Score tab -> (table rows [rank, caption, pmi, log p, bits/dim], what the model sees, status)."""
        model = self.model(model_name)
        captions = lines_of(captions_text, "caption", self.limits.max_captions, self.limits.max_prompt_chars)
        image = open_upload(image_path, self.limits, model.pipe.image_tokenizer.image_size)
        started = time.perf_counter()
        scores = model.pipe.score([image] * len(captions), captions)
        seen = model.pipe.reconstruct(image)[0]
        seconds = time.perf_counter() - started
        ranked = sorted(scores, key=lambda s: -s["pmi"])
        rows = [
            [rank, s["caption"], round(s["pmi"], 2), round(s["log_prob"], 2), round(s["bits_per_dim"], 4)]
            for rank, s in enumerate(ranked, 1)
        ]
        status = (
            f"{len(captions)} caption(s) scored in {seconds:.2f} s. Best: “{ranked[0]['caption']}”. "
            "pmi = log p(image | caption) − log p(image | no caption), in nats: how much the caption explains the "
            "picture (what the Generate tab's candidates are ranked by); bits/dim is the image's cost under the prior."
            + self._truncation_note(model, captions)
        )
        return rows, seen, status

    def complete(
        self, model_name, image_path, prompt_text, keep_rows, num_images, guidance, temperature, candidates, seed
    ):
        """Complete tab -> (the rows kept, gallery items, status): keep the image's top rows of codes, sample the
        rest."""
        model = self.model(model_name)
        grid = model.pipe.prior.config.image_grid
        prompts = lines_of(prompt_text, "prompt", 1, self.limits.max_prompt_chars)
        rows_kept = number(keep_rows, "Rows of codes kept", 0, grid, integer=True)
        settings = self.settings(model, num_images, guidance, temperature, 0, 1.0, candidates, "Completions")
        self._check_rows(prompts, settings)
        image = open_upload(image_path, self.limits, model.pipe.image_tokenizer.image_size)
        base = seed_from(seed)
        started = time.perf_counter()
        out = model.sampler(prompts, settings, base, init_image=image, keep_rows=rows_kept)
        kept = model.pipe.reconstruct(image)[0]
        cell = kept.height // grid
        if rows_kept < grid:  # darken what is not kept: the model sees only the rows above
            dark = kept.crop((0, rows_kept * cell, kept.width, kept.height)).point(lambda v: v // 4)
            kept.paste(dark, (0, rows_kept * cell))
        seconds = time.perf_counter() - started
        status = (
            f"{len(out.images)} completion(s) of the top {rows_kept} of {grid} rows of codes in {seconds:.2f} s · "
            f"seed {base}." + self._truncation_note(model, prompts)
        )
        return kept, _captioned(out.images, out.seeds, out.prompts, False), status
