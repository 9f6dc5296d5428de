"""What every quantizer of the autoencoder image tokenizer provides.

A quantizer sits between the encoder and the decoder. It owns its parameters
(a codebook, EMA statistics, or none), names the loss terms it contributes
(`terms`: for what they hold, e.g. `kl` or `commitment`) and how they weigh in
the training objective (`regularizer`), and defines which of its tensors take
part in the map image -> codes (`code_state`, for `codes_hash`).

Adding a quantizer is one module with a `Quantizer` subclass plus its
`register_quantizer` line in `minidalle.image_tokenizers.quantizers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    """A training pass through the quantizer."""

    z: torch.Tensor  # (B, D, h, w): what the decoder reads
    codes: torch.Tensor  # (B, h, w): the argmax / nearest code of each cell
    terms: dict[str, torch.Tensor]  # the quantizer's loss terms (0-d tensors), weighed by `regularizer`


class Quantizer(nn.Module):
    """Encoder features (B, `encoder_channels(config)`, h, w) <-> codes (B, h, w) and decoder input (B, D, h, w)."""

    # the names of `QuantizerOutput.terms`, in a fixed order (log columns)
    term_names: tuple[str, ...] = ()

    @staticmethod
    def encoder_channels(config) -> int:
        """Channels the encoder must output per grid cell."""
        raise NotImplementedError

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) encoder features -> (B, K, h, w) scores whose argmax over K is each cell's code."""
        raise NotImplementedError

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) encoder features -> (B, h, w) codes: the argmax of `scores` (a quantizer may be cheaper)."""
        return self.scores(h).argmax(1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) integer codes -> (B, D, h, w) decoder input."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, temperature: float = 1.0) -> QuantizerOutput:
        raise NotImplementedError

    def regularizer(self, terms: dict[str, torch.Tensor], beta: float, cells: int, pixels: int) -> torch.Tensor:
        """The quantizer's part of the training loss, per input dimension, at weight `beta`
        (`cells` grid cells and `pixels` values per image)."""
        raise NotImplementedError

    def code_state(self) -> dict[str, torch.Tensor]:
        """The tensors besides the encoder's that decide which code a cell gets, by stable names."""
        return {}
