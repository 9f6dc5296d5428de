"""Exporters of captioned image sets that ship inside installed packages (no network): `emoji`, `mnist`."""

from .emoji import export_emoji
from .mnist import export_mnist

EXPORTERS = {"emoji": export_emoji, "mnist": export_mnist}

__all__ = ["EXPORTERS", "export_emoji", "export_mnist"]
