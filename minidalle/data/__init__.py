"""Captioned images: loading and validation (`loading`), the imagefolder writer, the packaged exporters
(`exporters`) and the built-in shapes dataset with its judge (`shapes`)."""

from .loading import CaptionedImages, DataArguments, ImageTransform, load_captioned_dataset, load_image_tensor, to_rgb

__all__ = [
    "CaptionedImages",
    "DataArguments",
    "ImageTransform",
    "load_captioned_dataset",
    "load_image_tensor",
    "to_rgb",
]
