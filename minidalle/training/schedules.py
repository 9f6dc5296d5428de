"""Schedules as pure functions of the optimizer step.

Because nothing here keeps state, a run resumed at step s sees exactly the
temperature, KL weight and learning rate an uninterrupted run saw at step s
(DALLE-pytorch multiplies the temperature in place every step, so its value
after a resume depends on how often the run was restarted).
"""

from __future__ import annotations

import math


def _progress(step: int, start: int, length: int) -> float:
    """Fraction in [0, 1] of the way through a phase of `length` steps beginning at `start`."""
    if length <= 0:
        return 1.0
    return min(max((step - start) / length, 0.0), 1.0)


def temperature(step: int, start: float = 1.0, end: float = 1 / 16, steps: int = 10_000, kind: str = "exp") -> float:
    """Gumbel-Softmax temperature tau: `start` -> `end` over `steps`, then held.

    `exp` interpolates geometrically (tau = start * (end/start)**p, DALL-E's
    1 -> 1/16 decay); `cosine` follows half a cosine from start to end.
    """
    p = _progress(step, 0, steps)
    if kind == "exp":
        return start * (end / start) ** p
    if kind == "cosine":
        return end + 0.5 * (start - end) * (1 + math.cos(math.pi * p))
    raise ValueError(f"temperature schedule must be 'exp' or 'cosine', got {kind!r}")


def kl_weight(step: int, beta: float, warmup_steps: int = 0) -> float:
    """KL weight beta: linear warm-up 0 -> beta over `warmup_steps`, then constant."""
    return beta * _progress(step, 0, warmup_steps)


def learning_rate(step: int, peak: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up 0 -> peak over `warmup_steps`, then cosine to `min_ratio * peak` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    p = _progress(step, warmup_steps, total_steps - warmup_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
