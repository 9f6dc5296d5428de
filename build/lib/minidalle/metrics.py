"""Metrics: PSNR, codebook usage / perplexity / dead codes, bits per dimension."""

from __future__ import annotations

import math

import torch


def psnr(mse: torch.Tensor | float) -> torch.Tensor | float:
    """Peak signal-to-noise ratio in dB for images in [0, 1], from a mean squared error."""
    if isinstance(mse, torch.Tensor):
        value = -10.0 * torch.log10(mse.clamp_min(1e-10))
        return value.item() if value.ndim == 0 else value
    return -10.0 * math.log10(max(mse, 1e-10))


def codebook_stats(histogram: torch.Tensor) -> dict:
    """From counts of each code (K,): the share of codes used, the perplexity of their use, dead codes.

    Perplexity is exp(entropy) of the empirical code distribution: K when all
    codes are used equally, 1 when one code is used for everything.
    """
    counts = histogram.double().cpu()
    total = counts.sum()
    used = int((counts > 0).sum())
    if total == 0:
        return {"codebook_usage": 0.0, "codebook_perplexity": 0.0, "dead_codes": len(counts)}
    p = counts[counts > 0] / total
    return {
        "codebook_usage": used / len(counts),
        "codebook_perplexity": float(torch.exp(-(p * p.log()).sum())),
        "dead_codes": len(counts) - used,
    }


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Negative log-likelihood in nats (of a whole image) -> bits per dimension."""
    return nll_nats / (num_dims * math.log(2.0))
