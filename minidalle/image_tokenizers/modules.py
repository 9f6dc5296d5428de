"""The convolutional encoder and decoder of the autoencoder image tokenizer (DALL-E's dVAE shape)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))); no normalisation (as DALL-E's dVAE), cheap on CPU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _res_blocks(cfg, level: int, width: int) -> list[nn.Module]:
    """Residual blocks at `level` (0: full resolution, len(widths): the code grid)."""
    n = len(cfg.widths)
    if cfg.res_levels >= 0 and level < n + 1 - cfg.res_levels:
        return []
    return [ResBlock(width) for _ in range(cfg.res_blocks)]


class Encoder(nn.Module):
    """(B, channels, H, W) in [-1, 1] -> (B, out_channels, H / 2**n, W / 2**n), n = len(widths)."""

    def __init__(self, cfg, out_channels: int) -> None:
        super().__init__()
        w = cfg.widths
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, w[0], 3, padding=1)] if cfg.stem else []
        for i, width in enumerate(w):
            layers += _res_blocks(cfg, i, width)
            nxt = w[min(i + 1, len(w) - 1)]
            first = i == 0 and not cfg.stem  # the raw image goes straight into the first down-sampling
            layers += [] if first else [nn.ReLU()]
            layers += [nn.Conv2d(cfg.channels if first else width, nxt, 4, stride=2, padding=1)]  # halve H, W
        layers += _res_blocks(cfg, len(w), w[-1])
        layers += [nn.ReLU(), nn.Conv2d(w[-1], out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, codebook_dim, h, w) -> (B, out_channels, h * 2**n, w * 2**n)."""

    def __init__(self, cfg, out_channels: int) -> None:
        super().__init__()
        w = cfg.widths[::-1]
        n = len(w)
        layers: list[nn.Module] = [nn.Conv2d(cfg.codebook_dim, w[0], 1)]
        layers += _res_blocks(cfg, n, w[0])
        for i, width in enumerate(w):
            nxt = w[min(i + 1, n - 1)]
            layers += [nn.ReLU(), nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1)]  # double H, W
            layers += _res_blocks(cfg, n - 1 - i, nxt)
        layers += [nn.ReLU(), nn.Conv2d(w[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
