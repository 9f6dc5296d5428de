"""Stage 1, the *image* tokenizer: images <-> grids of discrete codes.

`ImageTokenizer` (base) is the interface; `load_image_tokenizer` loads any saved
kind. `DiscreteVAE` is the autoencoder tokenizer with a pluggable quantizer.
"""

from .base import IMAGE_TOKENIZERS, ImageTokenizer, load_image_tokenizer, register_image_tokenizer
from .dvae import PRESETS, DiscreteVAE, DVAEConfig, DVAEOutput
from .losses import TokenizerLoss, tokenizer_loss
from .quantizers import QUANTIZERS, Quantizer, QuantizerOutput, register_quantizer

__all__ = [
    "IMAGE_TOKENIZERS",
    "PRESETS",
    "QUANTIZERS",
    "DVAEConfig",
    "DVAEOutput",
    "DiscreteVAE",
    "ImageTokenizer",
    "Quantizer",
    "QuantizerOutput",
    "TokenizerLoss",
    "load_image_tokenizer",
    "register_image_tokenizer",
    "register_quantizer",
    "tokenizer_loss",
]
