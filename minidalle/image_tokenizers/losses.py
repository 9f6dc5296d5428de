"""The image tokenizer's training objective and its pixel likelihoods.

    loss = reconstruction + the quantizer's regulariser at weight beta

Both terms are per input dimension: the reconstruction loss is a mean over
pixels and channels, and each quantizer scales its own terms to match (the
Gumbel KL as the paper's beta / 192, see `quantizers.gumbel`).

Reconstruction losses (`recon_loss` in the config):
- `mse`: the decoder outputs the image in [-1, 1]; mean squared error on [0, 1].
- `l1`: the same output; mean absolute error on [0, 1] (taming's VQ-GAN; sharper edges than MSE).
- `logit_laplace` (DALL-E, eq. 2): the decoder outputs a location and a log-scale
  per channel; pixels are mapped to [eps, 1 - eps] with eps = 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RECON_LOSSES = ("mse", "l1", "logit_laplace")
LOGIT_LAPLACE_EPS = 0.1


def output_channels(recon_loss: str, channels: int) -> int:
    """How many channels the decoder outputs for this reconstruction loss."""
    return 2 * channels if recon_loss == "logit_laplace" else channels


def output_to_image(out: torch.Tensor, recon_loss: str, channels: int) -> torch.Tensor:
    """Decoder output -> image mean in [0, 1] (not yet clamped)."""
    if recon_loss == "logit_laplace":
        mu = torch.sigmoid(out[:, :channels].float())
        return (mu - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)
    return out.float() * 0.5 + 0.5


def output_bias_for(mean_rgb: torch.Tensor, recon_loss: str, channels: int) -> torch.Tensor:
    """The decoder's last-layer bias that makes its output the colour `mean_rgb` (C,) in [0, 1]
    (the inverse of `output_to_image` for a constant image; the log-scales of `logit_laplace` start at 0)."""
    mean_rgb = mean_rgb.float().clamp(0.02, 0.98)
    if recon_loss == "logit_laplace":
        mu = torch.logit(mean_rgb * (1 - 2 * LOGIT_LAPLACE_EPS) + LOGIT_LAPLACE_EPS)
        return torch.cat([mu, torch.zeros(channels)])
    return mean_rgb * 2.0 - 1.0


def reconstruction_loss(out: torch.Tensor, images: torch.Tensor, recon_loss: str, channels: int) -> torch.Tensor:
    """Per-dimension reconstruction loss (mean over pixels and channels) of decoder output `out`."""
    if recon_loss == "mse":
        return F.mse_loss(out.float() * 0.5 + 0.5, images)
    if recon_loss == "l1":
        return F.l1_loss(out.float() * 0.5 + 0.5, images)
    eps = LOGIT_LAPLACE_EPS
    x = images * (1 - 2 * eps) + eps
    mu, log_b = out[:, :channels].float(), out[:, channels:].float().clamp(-7.0, 7.0)
    nll = math.log(2.0) + log_b + torch.log(x * (1 - x)) + (torch.logit(x) - mu).abs() * torch.exp(-log_b)
    return nll.mean()


@dataclass
class TokenizerLoss:
    """The objective of one training batch. Scalars are 0-d tensors (no host sync)."""

    loss: torch.Tensor  # what is minimised
    recon_term: torch.Tensor  # the reconstruction part of `loss`, not detached (for the adaptive GAN weight)
    regularizer: torch.Tensor  # the quantizer's part of `loss`, not detached (0 when it has none)
    recon_loss: torch.Tensor  # detached
    terms: dict[str, torch.Tensor]  # the quantizer's terms, detached, by name (e.g. kl, commitment)


def tokenizer_loss(model, output, images: torch.Tensor, kl_weight: float = 0.0) -> TokenizerLoss:
    """Reconstruction + the quantizer's regulariser at weight `kl_weight` (beta) for a `DiscreteVAE` forward."""
    cfg = model.config
    recon = reconstruction_loss(output.decoded, images, cfg.recon_loss, cfg.channels)
    if output.terms:
        pixels, cells = cfg.channels * cfg.image_size**2, model.grid_size**2
        regularizer = model.quantizer.regularizer(output.terms, kl_weight, cells, pixels)
        terms = {k: v.detach() for k, v in output.terms.items()}
    else:  # no terms (fsq), or the decoder-only pass: reconstruction alone
        regularizer = recon.new_zeros(())
        terms = {k: recon.new_zeros(()) for k in model.quantizer.term_names}
    return TokenizerLoss(recon + regularizer, recon, regularizer, recon.detach(), terms)
