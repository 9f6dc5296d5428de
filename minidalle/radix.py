"""Mixed-radix numbers: an FSQ code and its digits.

A code of levels (L_0, ..., L_{D-1}) is sum_i digit_i * prod_{j<i} L_j (digit 0 least significant), so
prod(L) codes. The FSQ quantizer builds codes from digits this way, and the prior over factorised codes
predicts the digits back: one definition for both.
"""

from __future__ import annotations

import torch


def radix_basis(levels: torch.Tensor) -> torch.Tensor:
    """The place value of each digit of the mixed radix `levels` (digit 0 least significant)."""
    return torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)


def code_digits(codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Codes (...) -> their digits (..., len(levels)), each in [0, L_i)."""
    return (codes[..., None] // radix_basis(levels)) % levels
