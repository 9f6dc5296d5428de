"""DALL-E's quantizer: logits over K codes per cell, a Gumbel-Softmax relaxed one-hot at temperature tau.

Training mixes the codebook with the relaxed one-hot (hard one-hot forward with
`straight_through`) and adds beta * KL(q(z|x) || uniform). The KL is in nats
per grid cell; `regularizer` sums it over the grid and divides by the pixel
values per image, exactly the paper's beta / 192 for 256x256 images on a 32x32
grid (and for 64x64 on 8x8). DALLE-pytorch sums the KL but averages the MSE,
so its `kl_div_loss_weight` means a different thing at every image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput


class GumbelQuantizer(Quantizer):
    term_names = ("kl",)

    def __init__(self, config) -> None:
        super().__init__()
        self.num_codes = config.num_codes
        self.straight_through = config.straight_through
        self.codebook = nn.Embedding(config.num_codes, config.codebook_dim)

    @staticmethod
    def encoder_channels(config) -> int:
        return config.num_codes  # the logits

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook(codes.long()).permute(0, 3, 1, 2)  # (B, D, h, w); cached codes are int16

    def forward(self, h: torch.Tensor, temperature: float = 1.0) -> QuantizerOutput:
        logits = h.float().permute(0, 2, 3, 1)  # (B, h, w, K): softmax over a contiguous dim
        soft = F.gumbel_softmax(logits, tau=temperature, hard=self.straight_through, dim=-1)
        z = torch.matmul(soft.to(self.codebook.weight.dtype), self.codebook.weight)  # (B, h, w, D)
        log_q = F.log_softmax(logits, dim=-1)
        kl = (log_q.exp() * log_q).sum(-1).mean() + math.log(self.num_codes)  # nats per cell
        return QuantizerOutput(z.permute(0, 3, 1, 2), logits.detach().argmax(-1), {"kl": kl})

    def regularizer(self, terms: dict[str, torch.Tensor], beta: float, cells: int, pixels: int) -> torch.Tensor:
        # KL summed over the grid, divided by pixel values per image: the paper's beta / 192
        return beta * terms["kl"] * cells / pixels
