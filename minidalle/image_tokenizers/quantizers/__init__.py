"""The quantizers of the autoencoder image tokenizer, by the name a config's `quantizer` field gives."""

from __future__ import annotations

from .base import Quantizer, QuantizerOutput
from .fsq import FSQuantizer, check_levels
from .gumbel import GumbelQuantizer
from .vq import VectorQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str, cls: type[Quantizer]) -> None:
    """Make `cls` available as `DVAEConfig(quantizer=name)` / `train_tokenizer.py --quantizer name`."""
    QUANTIZERS[name] = cls


register_quantizer("gumbel", GumbelQuantizer)
register_quantizer("vq", VectorQuantizer)
register_quantizer("fsq", FSQuantizer)

__all__ = [
    "QUANTIZERS",
    "FSQuantizer",
    "GumbelQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "check_levels",
    "register_quantizer",
]
