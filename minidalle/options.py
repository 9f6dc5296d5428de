"""`arg()`: how every argument dataclass declares a field, with its help text.

The library's argument dataclasses (`DataArguments`, `TrainingArguments`, ...)
and the commands' own use it; `minidalle.cli.args` turns them into flags with
`transformers.HfArgumentParser`. Nothing here imports a parser; `check_bounds` validates the numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import UserError

BOUNDS = ("minimum", "maximum")


def arg(
    default: Any = dataclasses.MISSING,
    help: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    **metadata: Any,
) -> Any:
    """A dataclass field with help text (`aliases=["--old_name"]` adds another spelling of the flag).

    `minimum` / `maximum` bound a number (inclusive); `check_bounds` enforces them.
    """
    metadata = {"help": help, **metadata}
    metadata.update({k: v for k, v in (("minimum", minimum), ("maximum", maximum)) if v is not None})
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_bounds(arguments: Any) -> None:
    """Raise a `UserError` naming the flag when a field of the dataclass `arguments` is out of its bounds."""
    for f in dataclasses.fields(arguments):
        value = getattr(arguments, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(
                p for p in (low is not None and f">= {low:g}", high is not None and f"<= {high:g}") if p
            )
            raise UserError(f"--{f.name} must be {bounds}, got {value:g}")
