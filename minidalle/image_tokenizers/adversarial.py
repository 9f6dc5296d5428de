"""The adversarial half of the VQ-GAN objective (Esser et al. 2021, taming-transformers): a patch
discriminator, hinge losses, and the adaptive weight that balances the GAN term against reconstruction.

    generator:      L = L_rec + w_p * L_perceptual + regulariser + lambda * (-mean D(x_hat))
    discriminator:  L_D = 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
    lambda = disc_weight * ||grad_last L_nll|| / (||grad_last L_gan|| + 1e-4), clamped to [0, 1e4]
    (taming's L1 + LPIPS, hinge loss and lambda; our perceptual network is `perceptual.PerceptualDistance`)

where grad_last is the gradient at the decoder's last layer and L_nll = L_rec + w_p * L_perceptual.
The discriminator is training-only: it lives in checkpoints, never in a saved image tokenizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ADAPTIVE_EPS = 1e-4
ADAPTIVE_MAX = 1e4


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN, as taming's `NLayerDiscriminator`: a logit per overlapping patch.

    GroupNorm instead of BatchNorm: per image, so a batch split over processes gives the same
    logits as the whole batch on one (BatchNorm's statistics would differ per process)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(min(32, width * mult // 4), width * mult),
                nn.LeakyReLU(0.2),
            ]
        # No bias on the last layer: while no logit is past the hinge margin its gradient cancels exactly,
        # so it is rounding noise, which Adam scales up to full steps of random sign (a second process then
        # drifts from the first). An offset shared by all logits is nothing a discriminator needs.
        seq += [nn.Conv2d(width * mult, 1, 4, stride=1, padding=1, bias=False)]
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, 1, h, w) patch logits."""
        return self.net(images * 2.0 - 1.0)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def frozen_call(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """`module(*inputs)` with its parameters detached: gradients reach the inputs only (the generator's
    GAN term must not train the discriminator). Buffers are used as they are."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, inputs)


def adaptive_weight(
    nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = ADAPTIVE_MAX
) -> torch.Tensor:
    """||d nll / d last_layer|| / (||d gan / d last_layer|| + 1e-4), clamped to [0, max_weight], detached.

    The plain form (taming's `calculate_adaptive_weight`); training uses `balanced_generator_loss`."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return _weight_from(nll_grad, gan_grad, max_weight)


def _weight_from(nll_grad: torch.Tensor, gan_grad: torch.Tensor, max_weight: float) -> torch.Tensor:
    """With several processes both gradients are averaged first: the weight the whole batch gives."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        both = torch.stack([nll_grad, gan_grad])
        torch.distributed.all_reduce(both)
        nll_grad, gan_grad = both / torch.distributed.get_world_size()
    weight = nll_grad.norm() / (gan_grad.norm() + ADAPTIVE_EPS)
    return weight.clamp(0.0, max_weight).detach()


def balanced_generator_loss(
    nll_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    decoded: torch.Tensor,
    last_layer: torch.Tensor,
    disc_weight: float,
    max_weight: float = ADAPTIVE_MAX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """nll + disc_weight * lambda * gan, with lambda = `adaptive_weight`, for the decoder output `decoded`
    (which `last_layer`, a weight, produces). Returns (loss, disc_weight * lambda).

    Same value and the same gradients as the plain form, at about half the cost: the plain form runs
    the perceptual network's and the discriminator's backward passes twice (once for lambda, once for
    the step). Here each runs once, to d/d decoded; the gradients at the last layer follow from those
    through that one layer, and the returned loss hands the combined gradient to the decoder."""
    nll_out = torch.autograd.grad(nll_loss, decoded, retain_graph=True)[0]
    gan_out = torch.autograd.grad(gan_loss, decoded, retain_graph=True)[0]
    nll_grad = torch.autograd.grad(decoded, last_layer, nll_out, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(decoded, last_layer, gan_out, retain_graph=True)[0]
    weight = disc_weight * _weight_from(nll_grad, gan_grad, max_weight)
    direction = (nll_out + weight * gan_out).detach()
    surrogate = (decoded * direction).sum()
    value = (nll_loss + weight * gan_loss).detach()
    return surrogate - surrogate.detach() + value, weight
