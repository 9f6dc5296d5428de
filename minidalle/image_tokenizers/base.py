"""The image-tokenizer interface stage 2 and the pipeline rely on, and loading by the config's `kind`.

An image tokenizer turns images (B, C, H, W) in [0, 1] into a grid of integer
codes (B, g, g) and back. The prior only sees `num_codes`, `grid_size` and
`codes_hash()` (which identifies the map image -> codes, so a prior refuses a
tokenizer whose codes mean something else). A saved tokenizer is a folder
(`config.json` with its `kind` + `model.safetensors`); `load_image_tokenizer`
picks the class registered for that kind.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..serialization import SavedModel, read_kind


class ImageTokenizer(SavedModel, nn.Module):
    """Base class: subclasses set `KIND` and `CONFIG_CLASS` (with `image_size` and `channels`)
    and implement `num_codes`, `grid_size`, `encode`, `decode` and `codes_hash`."""

    @property
    def num_codes(self) -> int:
        raise NotImplementedError

    @property
    def grid_size(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> codes (B, g, g), int64, deterministic."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, g, g) or (B, g*g) -> images (B, C, H, W) in [0, 1]."""
        raise NotImplementedError

    def codes_hash(self) -> str:
        """A short hash of everything that decides which codes an image gets."""
        raise NotImplementedError

    @torch.no_grad()
    def get_codebook_indices(self, images: torch.Tensor) -> torch.Tensor:
        """DALLE-pytorch's name: images -> flattened codes (B, g*g)."""
        return self.encode(images).flatten(1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The round trip through the codes: decode(encode(images))."""
        return self.decode(self.encode(images))


IMAGE_TOKENIZERS: dict[str, type[ImageTokenizer]] = {}


def register_image_tokenizer(cls: type[ImageTokenizer]) -> type[ImageTokenizer]:
    """Class decorator: folders whose config says `kind = cls.KIND` load as `cls`."""
    IMAGE_TOKENIZERS[cls.KIND] = cls
    return cls


def load_image_tokenizer(folder: str | Path, map_location: str | torch.device = "cpu") -> ImageTokenizer:
    """Load a saved image tokenizer of any registered kind; a folder of another kind is a clear `UserError`."""
    kind = read_kind(folder, "image tokenizer")
    if kind not in IMAGE_TOKENIZERS:
        raise UserError(f"{Path(folder)}: this folder holds a {kind}, not an image tokenizer")
    return IMAGE_TOKENIZERS[kind].from_pretrained(folder, map_location)
