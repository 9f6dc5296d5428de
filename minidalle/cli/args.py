"""Command-line parsing shared by every minidalle command and script (the CLI layer: nothing below imports it).

Every command describes its flags as dataclasses and parses them with
`transformers.HfArgumentParser`, so each flag is accepted as `--a_b` and
`--a-b`, and its `help` comes from the field's metadata. `--config FILE`
(JSON or YAML) supplies defaults that flags on the command line override.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from ..errors import UserError
from ..folders import no_empty_folder_left
from ..options import BOUNDS, arg, check_bounds

__all__ = ["UserError", "arg", "command", "load_config_file", "parse_args", "run_main"]


def load_config_file(path: str | Path) -> dict:
    """Read a JSON or YAML file of flag values (keys are flag names, `-` or `_`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config: no such file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as exc:
        raise UserError(f"--config {path}: cannot parse ({exc})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


class _EpilogFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Flag defaults shown, and an epilog's lines kept as written."""


class _Parser(HfArgumentParser):
    """No abbreviations (`--max_step` is not `--max_steps`), and every parse error is one line, not a usage dump."""

    def __init__(self, dataclass_types, **kwargs) -> None:
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field) -> None:
        if any(key in field.metadata for key in BOUNDS):  # ours, not argparse's: `check_bounds` reads them
            field = _without_bounds(field)
        HfArgumentParser._parse_dataclass_field(parser, field)

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")

    def unknown_flags_error(self, remaining: list[str]) -> UserError:
        """The first unknown argument, with the closest known flag when there is one."""
        token = remaining[0]
        flag = token.split("=", 1)[0]
        if not flag.startswith("-"):
            return UserError(f"unexpected argument {token!r} (see {self.prog} --help)")
        close = difflib.get_close_matches(flag, [o for o in self._option_string_actions if o.startswith("--")], n=1)
        hint = f"; did you mean {close[0]}?" if close else f" (see {self.prog} --help)"
        return UserError(f"unknown flag {flag}{hint}")


def _without_bounds(field: dataclasses.Field) -> dataclasses.Field:
    import copy
    import types

    stripped = copy.copy(field)
    stripped.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k not in BOUNDS})
    return stripped


def explicit_flags(parser: HfArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the flags that `argv` gives explicitly (not left at their defaults)."""
    actions = parser._option_string_actions
    return {actions[t.split("=", 1)[0]].dest for t in argv if t.startswith("-") and t.split("=", 1)[0] in actions}


def parse_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    add_arguments: Callable[[HfArgumentParser], None] | None = None,
    with_config: bool = True,
    epilog: str | None = None,
) -> tuple:
    """Parse `argv` into instances of `dataclass_types` (and a namespace of extras).

    `add_arguments` may add positional arguments; their values come back as a
    final `argparse.Namespace`, whose `explicit` holds the names of the fields the
    command line or the `--config` file set. With `with_config`, `--config FILE` sets
    defaults. Flags are never abbreviated; an unknown or malformed one is a `UserError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = dict(epilog=epilog, formatter_class=_EpilogFormatter) if epilog else {}
    parser = _Parser(list(dataclass_types), prog=prog, description=description, **extra)
    if add_arguments is not None:
        add_arguments(parser)
    if with_config:
        parser.add_argument(
            "--config",
            default=None,
            help="A JSON or YAML file of flag values; flags given on the command line win.",
        )
    pre, _ = parser.parse_known_args(argv)
    explicit = explicit_flags(parser, argv)
    if with_config:
        if pre.config:
            values = load_config_file(pre.config)
            known = {a.dest for a in parser._actions}
            unknown = sorted(set(values) - known)
            if unknown:
                raise UserError(f"--config {pre.config}: unknown field(s): {', '.join(unknown)}")
            parser.set_defaults(**values)
            explicit |= set(values)
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        raise parser.unknown_flags_error(remaining)
    outputs = []
    for dtype in dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        values = {k: v for k, v in vars(namespace).items() if k in names}
        for k in names:
            delattr(namespace, k)
        outputs.append(dtype(**values))
        check_bounds(outputs[-1])
    if hasattr(namespace, "config"):
        delattr(namespace, "config")
    namespace.explicit = explicit - {"config"}
    outputs.append(namespace)
    return tuple(outputs)


def command(
    *dataclass_types: type,
    prog: str,
    description: str,
    positional: dict[str, dict] | None = None,
    required: Sequence[str] = (),
    output: str | None = None,
    epilog: Callable[[], str] | None = None,
) -> Callable:
    """Decorator: `run(*parsed)` becomes the command `main(argv=None)`, which parses `argv` first.

    `parsed` holds one instance of each dataclass type, then a namespace with the
    `positional` arguments (name -> `argparse` keywords). `required` names fields of
    the first dataclass that must be given: if one is empty, a `UserError` names them all.
    `output` names the field holding the command's output folder: if the command fails,
    the folders it created for it are removed while still empty. `epilog` makes --help's last lines
    (a function: what it says may depend on what is installed).
    """

    def add_positional(parser: HfArgumentParser) -> None:
        for name, keywords in (positional or {}).items():
            parser.add_argument(name, **keywords)

    def decorate(run: Callable) -> Callable:
        @functools.wraps(run)
        def main(argv: Sequence[str] | None = None):
            parsed = parse_args(
                dataclass_types,
                argv,
                prog=prog,
                description=description,
                add_arguments=add_positional,
                epilog=epilog() if epilog and argv_asks_help(argv) else None,
            )
            if any(not getattr(parsed[0], name) for name in required):
                flags = " and ".join(f"--{name}" for name in required)
                raise UserError(f"{flags} {'is' if len(required) == 1 else 'are'} required")
            folder = next((getattr(p, output) for p in parsed[:-1] if hasattr(p, output)), None) if output else None
            with no_empty_folder_left(folder):
                return run(*parsed)

        main.dataclass_types, main.positional = dataclass_types, dict(positional or {})
        return main

    return decorate


def argv_asks_help(argv: Sequence[str] | None) -> bool:
    return any(a in ("-h", "--help") for a in (sys.argv[1:] if argv is None else argv))


def run_main(main: Callable[[], Any]) -> None:
    """Run a command's `main`, turning `UserError` into one line on stderr and exit code 2.

    A process of a multi-process run (launched by `accelerate launch` or `torchrun`) leaves with
    `os._exit` once its command has returned: its files are written and closed and its process group
    destroyed by then, and what is left, the interpreter's teardown, is where a gloo rank has been seen
    to abort now and then ("terminate called without an active exception", SIGABRT), failing a run
    that had finished and saved everything."""
    try:
        result = main()
        code = result if isinstance(result, int) else 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if one_of_several_processes():
        exit_at_once(code)
    if code:
        raise SystemExit(code)


def one_of_several_processes() -> bool:
    """True in a rank started by a distributed launcher for a run of more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def exit_at_once(code: int) -> None:
    """Flush what the process printed and logged, then leave without the interpreter's teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
