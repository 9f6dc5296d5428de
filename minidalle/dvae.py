"""Stage 1: the discrete VAE *image* tokenizer (and its VQ-VAE variant).

An image (B, 3, H, W) in [0, 1] becomes a grid of codes (B, h, w) with
h = H / 2**n, and back. Two quantizers share the encoder/decoder and the API:

- `gumbel` (DALL-E's dVAE): the encoder gives logits over K codes per cell;
  training mixes the codebook with a Gumbel-Softmax relaxed one-hot at an
  annealed temperature tau and adds beta * KL(q(z|x) || uniform).
- `vq` (VQ-VAE): the encoder gives a vector per cell, snapped to the nearest
  codebook vector with a straight-through gradient; loss adds
  ||sg[E(x)] - e||^2 (or EMA codebook updates) + beta * ||E(x) - sg[e]||^2.

Loss scale: both terms are per input dimension. The reconstruction loss is a
mean over pixels and channels; the KL is summed over the grid and divided by
the number of pixel values (3 * H * W), exactly the paper's beta / 192 for
256x256 images on a 32x32 grid (and also for 64x64 on 8x8). DALLE-pytorch
sums the KL but averages the MSE, so its `kl_div_loss_weight` means a
different thing at every image size.

Inference is deterministic: `encode` takes the argmax (or nearest) code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .args import UserError
from .serialization import SavedModel, config_from_dict, content_hash

KIND = "minidalle image tokenizer"
LOGIT_LAPLACE_EPS = 0.1


@dataclass
class DVAEConfig:
    """Shape and loss of the image tokenizer. grid = image_size / 2**len(widths)."""

    image_size: int = 64
    channels: int = 3
    num_codes: int = 512  # K
    codebook_dim: int = 256
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # one per down-sampling
    res_blocks: int = 1  # per level that has them
    res_levels: int = -1  # how many levels, counted from the code grid up, have res blocks (-1: all)
    stem: bool = True  # a 3x3 conv to widths[0] at full resolution before the first down-sampling
    quantizer: str = "gumbel"  # gumbel | vq
    recon_loss: str = "mse"  # mse | logit_laplace
    straight_through: bool = False  # gumbel: hard one-hot forward, soft gradient
    vq_ema: bool = False  # vq: EMA codebook updates instead of the codebook loss
    vq_ema_decay: float = 0.99
    vq_restart_dead: bool = False  # vq: re-seed codes unused for a while from encoder outputs

    def __post_init__(self) -> None:
        self.widths = list(self.widths)
        problems = []
        if self.quantizer not in ("gumbel", "vq"):
            problems.append(f"quantizer must be 'gumbel' or 'vq', got {self.quantizer!r}")
        if self.recon_loss not in ("mse", "logit_laplace"):
            problems.append(f"recon_loss must be 'mse' or 'logit_laplace', got {self.recon_loss!r}")
        if not self.widths:
            problems.append("widths needs at least one entry (one per down-sampling)")
        elif self.image_size % (2 ** len(self.widths)):
            problems.append(f"image_size {self.image_size} is not divisible by 2**{len(self.widths)}")
        if not self.stem and self.res_levels < 0 and self.res_blocks:
            problems.append("without a stem, res_levels must leave out the full-resolution level")
        if self.num_codes < 2:
            problems.append("num_codes must be at least 2")
        if problems:
            raise UserError("image tokenizer config: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        return self.image_size // 2 ** len(self.widths)

    @classmethod
    def from_dict(cls, values: dict) -> "DVAEConfig":
        return config_from_dict(cls, values, "image tokenizer")


PRESETS: dict[str, dict] = {
    # trains in seconds: for tests and smoke runs
    "tiny": dict(image_size=32, num_codes=64, codebook_dim=32, widths=[16, 32], res_blocks=0),
    # the shapes default: 8x8 codes, cheap for stage 2
    "small": dict(image_size=64, num_codes=512, codebook_dim=128, widths=[32, 64, 128], res_blocks=1),
    # more capacity for photos/emoji
    "base": dict(image_size=64, num_codes=1024, codebook_dim=256, widths=[64, 128, 256], res_blocks=2),
}


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


def _res_blocks(cfg: DVAEConfig, level: int, width: int) -> list[nn.Module]:
    """Residual blocks at `level` (0: full resolution, len(widths): the code grid)."""
    n = len(cfg.widths)
    if cfg.res_levels >= 0 and level < n + 1 - cfg.res_levels:
        return []
    return [ResBlock(width) for _ in range(cfg.res_blocks)]


class Encoder(nn.Module):
    def __init__(self, cfg: DVAEConfig, out_channels: int) -> None:
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
    def __init__(self, cfg: DVAEConfig, out_channels: int) -> None:
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


@dataclass
class DVAEOutput:
    """What a training forward pass returns. Scalars are 0-d tensors (no host sync)."""

    loss: torch.Tensor
    recon_loss: torch.Tensor
    kl: torch.Tensor  # gumbel: KL(q || uniform) in nats per grid cell; vq: codebook + commitment
    mse: torch.Tensor  # mean squared error on the [0, 1] scale, for PSNR
    reconstruction: torch.Tensor  # (B, 3, H, W) in [0, 1]
    codes: torch.Tensor  # (B, h, w) argmax / nearest codes of this batch


class DiscreteVAE(SavedModel, nn.Module):
    """The image tokenizer. `encode` images -> codes, `decode` codes -> images."""

    KIND = KIND
    CONFIG_CLASS = DVAEConfig

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        self.config = config
        out_ch = 2 * config.channels if config.recon_loss == "logit_laplace" else config.channels
        enc_out = config.num_codes if config.quantizer == "gumbel" else config.codebook_dim
        self.encoder = Encoder(config, enc_out)
        self.decoder = Decoder(config, out_ch)
        self.codebook = nn.Embedding(config.num_codes, config.codebook_dim)
        if config.quantizer == "vq":
            nn.init.uniform_(self.codebook.weight, -1 / config.num_codes, 1 / config.num_codes)
            if config.vq_ema:
                self.codebook.weight.requires_grad_(False)
                self.register_buffer("ema_count", torch.ones(config.num_codes))
                self.register_buffer("ema_sum", self.codebook.weight.detach().clone())

    # ----------------------------------------------------------------- basics
    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @staticmethod
    def _normalize(images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0  # [0, 1] -> [-1, 1]

    def _check_images(self, images: torch.Tensor) -> None:
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] != s or images.shape[3] != s:
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")

    def _decode_output(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image mean in [0, 1] (not yet clamped)."""
        if self.config.recon_loss == "logit_laplace":
            mu = torch.sigmoid(out[:, : self.config.channels].float())
            return (mu - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)
        return out.float() * 0.5 + 0.5

    def _recon_loss(self, out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Per-dimension reconstruction loss (mean over pixels and channels)."""
        if self.config.recon_loss == "mse":
            return F.mse_loss(out.float() * 0.5 + 0.5, images)
        # logit-Laplace (DALL-E, eq. 2) on pixels mapped to [eps, 1 - eps]
        c = self.config.channels
        eps = LOGIT_LAPLACE_EPS
        x = images * (1 - 2 * eps) + eps
        mu, log_b = out[:, :c].float(), out[:, c:].float().clamp(-7.0, 7.0)
        nll = math.log(2.0) + log_b + torch.log(x * (1 - x)) + (torch.logit(x) - mu).abs() * torch.exp(-log_b)
        return nll.mean()

    # --------------------------------------------------------------- encoding
    def encoder_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, h, w): code logits (gumbel) or negative distances (vq)."""
        z = self.encoder(self._normalize(images))
        if self.config.quantizer == "gumbel":
            return z
        return -self._distances(z)

    def _distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances (B, K, h, w) from encoder vectors z (B, D, h, w) to every code."""
        e = self.codebook.weight.float()  # (K, D)
        z = z.float()
        zz = z.pow(2).sum(1, keepdim=True)  # (B, 1, h, w)
        ze = torch.einsum("bdhw,kd->bkhw", z, e)
        return zz - 2 * ze + e.pow(2).sum(1)[None, :, None, None]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> codes (B, h, w), int64, deterministic."""
        self._check_images(images)
        return self.encoder_logits(images).argmax(dim=1)

    @torch.no_grad()
    def get_codebook_indices(self, images: torch.Tensor) -> torch.Tensor:
        """DALLE-pytorch's name: images -> flattened codes (B, h*w)."""
        return self.encode(images).flatten(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) or (B, h*w) -> images (B, 3, H, W) in [0, 1]."""
        g = self.grid_size
        shape = tuple(codes.shape)
        if codes.ndim == 2 and codes.shape[1] == g * g:
            codes = codes.reshape(codes.shape[0], g, g)
        if codes.ndim != 3 or codes.shape[1:] != (g, g):
            raise ValueError(f"expected codes of shape (B, {g}, {g}) or (B, {g * g}), got {shape}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"codes must lie in [0, {self.num_codes})")
        z = self.codebook(codes.long()).permute(0, 3, 1, 2)  # (B, D, h, w); cached codes are int16
        return self._decode_output(self.decoder(z)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The round trip through the codes: decode(encode(images))."""
        return self.decode(self.encode(images))

    # --------------------------------------------------------------- training
    def forward(self, images: torch.Tensor, temperature: float = 1.0, kl_weight: float = 0.0, decoder_only: bool = False) -> DVAEOutput:
        """A training pass. `temperature` is tau (gumbel); `kl_weight` is beta (both quantizers).

        `decoder_only` trains the decoder (and codebook) on the inference path,
        decode(argmax codes), with the encoder frozen: the codes, and so any
        prior trained on them, stay valid (`codes_hash` does not change).
        """
        self._check_images(images)
        if decoder_only:
            return self._decoder_pass(images)
        h = self.encoder(self._normalize(images))
        if self.config.quantizer == "gumbel":
            z, kl, codes = self._gumbel(h, temperature)
            reg = kl
        else:
            z, reg, codes, kl = self._vq(h, kl_weight)
        out = self.decoder(z)
        recon_loss = self._recon_loss(out, images)
        # KL summed over the grid, divided by pixel values per image: the paper's beta / 192
        pixels = self.config.channels * self.config.image_size**2
        cells = self.grid_size**2
        if self.config.quantizer == "gumbel":
            loss = recon_loss + kl_weight * kl * cells / pixels
        else:
            loss = recon_loss + reg
        recon = self._decode_output(out).detach()
        mse = F.mse_loss(recon.clamp(0, 1), images)
        return DVAEOutput(loss, recon_loss.detach(), kl.detach(), mse, recon.clamp(0, 1), codes)

    def _decoder_pass(self, images: torch.Tensor) -> DVAEOutput:
        with torch.no_grad():
            codes = self.encoder_logits(images).argmax(1)  # (B, h, w)
        out = self.decoder(self.codebook(codes).permute(0, 3, 1, 2))
        recon_loss = self._recon_loss(out, images)
        recon = self._decode_output(out).detach().clamp(0, 1)
        zero = recon_loss.new_zeros(())
        return DVAEOutput(recon_loss, recon_loss.detach(), zero, F.mse_loss(recon, images), recon, codes)

    def _gumbel(self, logits: torch.Tensor, temperature: float):
        """Relaxed one-hot over codes -> codebook mixture. Returns z (B, D, h, w), KL per cell, codes."""
        logits = logits.float().permute(0, 2, 3, 1)  # (B, h, w, K): softmax over a contiguous dim
        soft = F.gumbel_softmax(logits, tau=temperature, hard=self.config.straight_through, dim=-1)
        z = torch.matmul(soft.to(self.codebook.weight.dtype), self.codebook.weight)  # (B, h, w, D)
        log_q = F.log_softmax(logits, dim=-1)
        kl = (log_q.exp() * log_q).sum(-1).mean() + math.log(self.num_codes)  # nats per cell
        return z.permute(0, 3, 1, 2), kl, logits.detach().argmax(-1)

    def _vq(self, z: torch.Tensor, beta: float):
        """Nearest code with a straight-through gradient. Returns z_q, loss term, codes, commitment."""
        codes = self._distances(z.detach()).argmin(1)  # (B, h, w)
        e = self.codebook(codes).permute(0, 3, 1, 2)  # (B, D, h, w)
        z = z.float()
        commitment = F.mse_loss(z, e.detach())
        if self.config.vq_ema:
            if self.training:
                self._ema_update(z.detach(), codes)
            loss = beta * commitment
        else:
            loss = F.mse_loss(e, z.detach()) + beta * commitment
        z_q = z + (e - z).detach()  # straight-through
        return z_q, loss, codes, commitment.detach()

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA codebook (van den Oord et al., appendix) with optional dead-code restarts.

        Batch statistics are summed over processes, so every rank keeps the same codebook.
        """
        k, d = self.config.num_codes, self.config.codebook_dim
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        onehot = F.one_hot(codes.reshape(-1), k).float()
        counts, sums = onehot.sum(0), onehot.t() @ flat
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        decay = self.config.vq_ema_decay
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing
        self.codebook.weight.copy_(self.ema_sum / smoothed[:, None])
        if self.config.vq_restart_dead:
            dead = self.ema_count < 1.0  # used by less than one vector per batch, on average (Jukebox)
            if dead.any():
                picks = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
                fresh = flat[picks]
                if distributed:
                    torch.distributed.broadcast(fresh, src=0)
                self.codebook.weight[dead] = fresh
                self.ema_sum[dead] = fresh
                self.ema_count[dead] = 1.0

    def codes_hash(self) -> str:
        """Identifies the map image -> codes (the encoder; for vq also the codebook).

        Stage 2 records it: a prior stays valid for a tokenizer whose decoder
        was fine-tuned (`--train_decoder_only`), and refuses any other tokenizer.
        """
        parts = ("encoder.",) if self.config.quantizer == "gumbel" else ("encoder.", "codebook.")
        state = {k: v for k, v in self.state_dict().items() if k.startswith(parts)}
        shape = {k: getattr(self.config, k) for k in ("image_size", "channels", "num_codes", "quantizer")}
        return content_hash(shape, state)
