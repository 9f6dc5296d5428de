"""`arg()`: how every argument dataclass declares a field, with its help text.

The library's argument dataclasses (`DataArguments`, `TrainingArguments`, ...)
and the commands' own use it; `minidalle.cli.args` turns them into flags with
`transformers.HfArgumentParser`. Nothing here imports a parser.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def arg(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with help text (`aliases=["--old_name"]` adds another spelling of the flag)."""
    metadata = {"help": help, **metadata}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
