"""Stage 1: the discrete VAE *image* tokenizer (and its VQ-VAE variant).

An image (B, 3, H, W) in [0, 1] becomes a grid of codes (B, h, w) with
h = H / 2**n, and back: a convolutional encoder (`modules.Encoder`), a
quantizer chosen by the config's `quantizer` (`quantizers/`: `gumbel`, DALL-E's
dVAE; `vq`, VQ-VAE, optionally l2-normalised with k-means init; `fsq`, finite
scalar quantization), and a decoder (`modules.Decoder`). The training
objective lives in `losses` (`tokenizer_loss`): `forward` returns what it needs.

Inference is deterministic: `encode` takes the argmax (or nearest) code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..serialization import config_from_dict, content_hash
from .base import ImageTokenizer, register_image_tokenizer
from .losses import RECON_LOSSES, output_channels, output_to_image
from .modules import Decoder, Encoder
from .quantizers import QUANTIZERS, check_levels

KIND = "minidalle image tokenizer"

# the state-dict names of the quantizer's tensors before it became a submodule (folders saved until 2026-12)
_LEGACY_KEYS = {
    "codebook.weight": "quantizer.codebook.weight",
    "ema_count": "quantizer.ema_count",
    "ema_sum": "quantizer.ema_sum",
}


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
    quantizer: str = "gumbel"  # a name in quantizers.QUANTIZERS: gumbel | vq | fsq
    recon_loss: str = "mse"  # mse | l1 | logit_laplace
    straight_through: bool = False  # gumbel: hard one-hot forward, soft gradient
    vq_ema: bool = False  # vq: EMA codebook updates instead of the codebook loss
    vq_ema_decay: float = 0.99
    vq_restart_dead: bool = False  # vq: re-seed codes unused for a while from encoder outputs
    vq_l2: bool = False  # vq: l2-normalised vectors and codes (cosine lookup; ViT-VQGAN)
    vq_kmeans_init: bool = False  # vq: codebook <- k-means of the first training batch's encoder vectors
    fsq_levels: list[int] = field(default_factory=list)  # fsq: values per channel; K = prod, codebook_dim = len

    def __post_init__(self) -> None:
        self.widths = list(self.widths)
        self.fsq_levels = [int(v) for v in self.fsq_levels]
        problems = []
        if self.quantizer == "fsq":
            problems += check_levels(self.fsq_levels)
            if not problems:  # FSQ's codebook follows from its levels
                self.num_codes, self.codebook_dim = math.prod(self.fsq_levels), len(self.fsq_levels)
        if self.quantizer not in QUANTIZERS:
            names = " or ".join(repr(n) for n in QUANTIZERS)
            problems.append(f"quantizer must be {names}, got {self.quantizer!r}")
        if self.recon_loss not in RECON_LOSSES:
            problems.append(f"recon_loss must be {' or '.join(map(repr, RECON_LOSSES))}, got {self.recon_loss!r}")
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
    def from_dict(cls, values: dict) -> DVAEConfig:
        return config_from_dict(cls, values, "image tokenizer")


PRESETS: dict[str, dict] = {
    # trains in seconds: for tests and smoke runs
    "tiny": dict(image_size=32, num_codes=64, codebook_dim=32, widths=[16, 32], res_blocks=0),
    # the shapes default: 8x8 codes, cheap for stage 2
    "small": dict(image_size=64, num_codes=512, codebook_dim=128, widths=[32, 64, 128], res_blocks=1),
    # more capacity for photos/emoji
    "base": dict(image_size=64, num_codes=1024, codebook_dim=256, widths=[64, 128, 256], res_blocks=2),
}


@dataclass
class DVAEOutput:
    """What a training forward pass returns; `losses.tokenizer_loss` turns it into the objective."""

    decoded: torch.Tensor  # (B, C', H, W): the decoder's raw output (what the reconstruction loss reads)
    reconstruction: torch.Tensor  # (B, 3, H, W) in [0, 1], detached
    mse: torch.Tensor  # mean squared error of `reconstruction` on the [0, 1] scale, for PSNR
    codes: torch.Tensor  # (B, h, w) argmax / nearest codes of this batch
    terms: dict[str, torch.Tensor]  # the quantizer's loss terms by name ({} for the decoder-only pass)


@register_image_tokenizer
class DiscreteVAE(ImageTokenizer):
    """The autoencoder image tokenizer. `encode` images -> codes, `decode` codes -> images."""

    KIND = KIND
    CONFIG_CLASS = DVAEConfig

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        self.config = config
        quantizer = QUANTIZERS[config.quantizer]
        self.encoder = Encoder(config, quantizer.encoder_channels(config))
        self.decoder = Decoder(config, output_channels(config.recon_loss, config.channels))
        self.quantizer = quantizer(config)
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)

    # ----------------------------------------------------------------- basics
    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @property
    def codebook(self) -> torch.nn.Embedding:
        """The code vectors (DALLE-pytorch's `dvae.codebook`)."""
        return self.quantizer.codebook  # fsq has none: its codes are fixed points

    @staticmethod
    def _normalize(images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0  # [0, 1] -> [-1, 1]

    def _check_images(self, images: torch.Tensor) -> None:
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] != s or images.shape[3] != s:
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")

    def _to_image(self, out: torch.Tensor) -> torch.Tensor:
        return output_to_image(out, self.config.recon_loss, self.config.channels)

    # --------------------------------------------------------------- encoding
    def encoder_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, h, w): code logits (gumbel), negative distances (vq), one-hot (fsq)."""
        return self.quantizer.scores(self.encoder(self._normalize(images)))

    def _codes(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes(self.encoder(self._normalize(images)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self._codes(images)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
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
        return self._to_image(self.decoder(self.quantizer.embed(codes))).clamp(0, 1)

    # --------------------------------------------------------------- training
    def forward(self, images: torch.Tensor, temperature: float = 1.0, decoder_only: bool = False) -> DVAEOutput:
        """A training pass. `temperature` is the Gumbel-Softmax tau (gumbel only).

        `decoder_only` trains the decoder (and codebook) on the inference path,
        decode(argmax codes), with the encoder frozen: the codes, and so any
        prior trained on them, stay valid (`codes_hash` does not change).
        """
        self._check_images(images)
        if decoder_only:
            with torch.no_grad():
                codes = self._codes(images)  # (B, h, w)
            decoded, terms = self.decoder(self.quantizer.embed(codes)), {}
        else:
            quantized = self.quantizer(self.encoder(self._normalize(images)), temperature)
            decoded, codes, terms = self.decoder(quantized.z), quantized.codes, quantized.terms
        recon = self._to_image(decoded).detach().clamp(0, 1)
        return DVAEOutput(decoded, recon, F.mse_loss(recon, images), codes, terms)

    def codes_hash(self) -> str:
        """Identifies the map image -> codes (the encoder, and the quantizer's `code_state`: for vq the codebook).

        Stage 2 records it: a prior stays valid for a tokenizer whose decoder
        was fine-tuned (`--train_decoder_only`), and refuses any other tokenizer.
        """
        state = {k: v for k, v in self.state_dict().items() if k.startswith("encoder.")}
        state.update(self.quantizer.code_state())
        shape = {k: getattr(self.config, k) for k in ("image_size", "channels", "num_codes", "quantizer")}
        # fields that change the map and did not exist before 2026-12 enter only when set (older hashes stay)
        shape.update({k: getattr(self.config, k) for k in ("fsq_levels", "vq_l2") if getattr(self.config, k)})
        return content_hash(shape, state)


def _upgrade_legacy_keys(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: folders and checkpoints saved before the quantizer became a submodule."""
    for old, new in _LEGACY_KEYS.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
