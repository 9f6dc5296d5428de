"""What the image-tokenizer trainer tells a user beyond its figures: what to change when the codebook
collapses, and the grid a preset gives at another resolution than it was sized for."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ..image_tokenizers import PRESETS, DVAEConfig

if TYPE_CHECKING:
    from .runtime import TrainingArguments
    from .tokenizer_trainer import TokenizerArguments

logger = logging.getLogger("minidalle")


def collapse_advice(
    tok_args: TokenizerArguments, args: TrainingArguments, tau: float, beta: float, tau_steps: int
) -> str:
    """What to change when few codes are in use, for this quantizer (the flags already set are left out)."""
    fsq = "or --quantizer fsq --fsq_levels 8,5,5,5 (no codebook to collapse)"
    lr = f"a lower --learning_rate (now {args.learning_rate:g})"
    if tok_args.quantizer == "gumbel":
        return (
            f"at this step beta = {beta:.3g} and tau = {tau:.3g}: try a lower --kl_weight "
            f"(now {tok_args.kl_weight:g}), a longer --temperature_steps (now {tau_steps}) "
            f"or --kl_warmup_steps, {lr}, {fsq}"
        )
    if tok_args.quantizer == "vq":
        flags = [
            name
            for name, on in (
                ("--vq_l2 --codebook_dim 16", tok_args.vq_l2),
                ("--vq_kmeans_init", tok_args.vq_kmeans_init),
                ("--vq_restart_dead", tok_args.vq_restart_dead),
            )
            if not on
        ]
        return f"try {', '.join(flags + [lr])}, {fsq}"
    return (
        "every fsq code is reachable, so the encoder's outputs span few values (or saturate the bound): try "
        f"{lr}, or fewer values per channel in --fsq_levels"
    )


def say_the_grid(preset: str, config: DVAEConfig, widths_given: bool) -> None:
    """A preset is sized for one resolution; at another its grid, and so the prior's sequence, changes size."""
    sized_for = PRESETS[preset]["image_size"]
    if widths_given or config.image_size == sized_for:
        return
    widths = list(PRESETS[preset]["widths"])
    g, g0 = config.grid_size, sized_for // 2 ** len(widths)
    ratio = config.image_size / sized_for
    levels = round(math.log2(ratio)) if ratio > 1 else 0
    hint = (
        f"; --widths {','.join(str(w) for w in widths + [widths[-1] * 2**i for i in range(1, levels + 1)])} keeps "
        f"{g0}x{g0}"
        if levels and ratio == 2**levels
        else ""
    )
    others = {name: config.image_size // 2 ** len(p["widths"]) for name, p in PRESETS.items()}
    logger.warning(
        "--preset %s is sized for %d px images (grid %dx%d); at --resolution %d it gives a %dx%d grid: %d image "
        "tokens per image for the prior (%s)%s",
        preset,
        sized_for,
        g0,
        g0,
        config.image_size,
        g,
        g,
        g * g,
        ", ".join(f"--preset {name}: {n}x{n}" for name, n in others.items()),
        hint,
    )
