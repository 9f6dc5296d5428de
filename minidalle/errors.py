"""Errors a user can act on. Imports nothing of minidalle's, so every layer can raise them."""

from __future__ import annotations

import os
import shutil


class UserError(ValueError):
    """A problem with the user's input (a flag, a file, a folder, a prompt).

    The commands print it as one line and exit with status 2, no traceback. It is
    a `ValueError`, so library callers can catch bad input the usual way.
    """


def require_cpu_compiler(flag: str) -> None:
    """`torch.compile` on a CPU builds C++ kernels: say so up front, not deep inside inductor."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        raise UserError(
            f"{flag} uses torch.compile, which on a CPU needs a C++ compiler (g++ or clang++, or set CXX); "
            f"install one (e.g. apt install g++) or leave out {flag}"
        )
