"""Finite Scalar Quantization (Mentzer et al. 2023, "FSQ: VQ-VAE Made Simple"): no codebook to learn.

Each cell's encoder output has one channel per entry of `levels`; channel i is
bounded to L_i values with a shifted tanh, rounded (straight-through gradient)
and scaled to [-1, 1]. The code of a cell is the mixed-radix number of its
digits (digit i in [0, L_i)), so K = prod(levels) codes, every one reachable,
and no commitment or codebook loss: nothing can collapse for lack of use.

The encoder's output is normalised per image (GroupNorm with one group, learned scale and shift)
before the bound: our encoders have no normalisation (DALL-E's shape), and without it their output
grew to ~1e3 within 40 steps at lr 2e-3 on emoji, saturating every tanh: one code for every cell,
and no gradient left to leave it (measured, issue 16). The norm's parameters decide codes, so
they are part of `code_state`.
Levels from the paper: [8, 8, 8] = 512, [8, 5, 5, 5] = 1,000, [7, 5, 5, 5, 5] = 4,375.
"""

from __future__ import annotations

import torch
from torch import nn

from ...radix import code_digits, radix_basis
from .base import Quantizer, QuantizerOutput

EPS = 1e-3  # keeps tanh's bound inside the outermost rounding interval


def check_levels(levels: list[int]) -> list[str]:
    """Problems with an FSQ level list, as config messages ([] when it is usable)."""
    if not levels:
        return ["quantizer 'fsq' needs fsq_levels, e.g. [8, 5, 5, 5] (1,000 codes)"]
    if any(int(level) < 3 for level in levels):
        # 2 levels: the even-level offset (0.5) exceeds the bound's half-width (1 - EPS) / 2, so the shift's
        # atanh is NaN and every code came out as garbage
        return [f"every FSQ level must be at least 3, got {list(levels)}"]
    return []


class FSQuantizer(Quantizer):
    term_names = ()

    def __init__(self, config) -> None:
        super().__init__()
        levels = torch.tensor([int(v) for v in config.fsq_levels], dtype=torch.long)
        self.num_codes = int(levels.prod())
        # buffers, not parameters, and not persistent: they follow from the config
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("basis", radix_basis(levels), persistent=False)
        self.norm = nn.GroupNorm(1, len(levels))

    @staticmethod
    def encoder_channels(config) -> int:
        return len(config.fsq_levels)

    def _half_width(self) -> torch.Tensor:
        return (self.levels // 2).float()[None, :, None, None]

    def bound(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) -> values in (-L/2, L/2) whose rounding gives L integers per channel."""
        levels = self.levels.float()[None, :, None, None]
        half = (levels - 1) * (1 - EPS) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).float()[None, :, None, None]
        shift = torch.atanh(offset / half)
        return torch.tanh(self.norm(h.float()) + shift) * half - offset

    def digits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) encoder output -> (B, d, h, w) integer digits in [0, L_i)."""
        return self._digits_of(torch.round(self.bound(h)))

    def _digits_of(self, rounded: torch.Tensor) -> torch.Tensor:
        """Rounded bounded values (integers in [-L/2, L/2)) -> digits in [0, L_i)."""
        return rounded.detach().long() + (self.levels // 2)[None, :, None, None]

    def _code_of(self, digits: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) digits -> (B, h, w) codes: the mixed-radix number (`radix.code_digits` inverts it)."""
        return (digits * self.basis[None, :, None, None]).sum(1)

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        return self._code_of(self.digits(h))

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """One-hot scores over all K codes (the argmax is `codes`); `codes` is the cheap path."""
        return nn.functional.one_hot(self.codes(h), self.num_codes).permute(0, 3, 1, 2).float()

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        digits = code_digits(codes.long(), self.levels).permute(0, 3, 1, 2)  # (B, d, h, w)
        return (digits - self.levels[None, :, None, None] // 2).float() / self._half_width()

    def forward(self, h: torch.Tensor, temperature: float = 1.0) -> QuantizerOutput:
        bounded = self.bound(h)
        rounded = torch.round(bounded)
        quantized = bounded + (rounded - bounded).detach()  # straight-through
        return QuantizerOutput(quantized / self._half_width(), self._code_of(self._digits_of(rounded)), {})

    def code_state(self) -> dict[str, torch.Tensor]:
        return {"norm.weight": self.norm.weight, "norm.bias": self.norm.bias}

    def regularizer(self, terms: dict[str, torch.Tensor], beta: float, cells: int, pixels: int) -> torch.Tensor:
        return torch.zeros(())
