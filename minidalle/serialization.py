"""Model folders: `config.json` + `model.safetensors`, written atomically, loaded strictly.

Only JSON and safetensors are ever read from a model folder, so loading one
never unpickles anything. `kind` is recorded in the config so that a folder of
one kind (say, a prior) given where another is expected gets a clear error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError
from .folders import atomic_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def holds_model(kind: str):
    """A predicate: does a folder hold a saved model of `kind` (by its config.json)?"""

    def check(folder: Path) -> bool:
        try:
            return json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8")).get("kind") == kind
        except (OSError, ValueError, AttributeError):
            return False

    return check


def save_model_folder(folder: str | Path, kind: str, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write `config.json` (with `kind`) and `model.safetensors` into `folder`, atomically (`atomic_folder`).

    An existing `folder` is replaced only when it holds a saved model of the same kind."""
    with atomic_folder(folder, holds_model(kind), f"a saved {kind}") as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"kind": kind})
        (tmp / CONFIG_NAME).write_text(json.dumps({"kind": kind, **config}, indent=2, sort_keys=True) + "\n")
    return Path(folder)


def _read_config_json(folder: Path, what: str) -> dict:
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (expected a saved {what})")
    if not config_path.is_file():
        raise UserError(f"{folder}: not a saved {what} (no {CONFIG_NAME})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from None
    return config if isinstance(config, dict) else {}


def read_kind(folder: str | Path, what: str) -> str:
    """The `kind` recorded in `folder/config.json` ('unknown model' when there is none)."""
    return _read_config_json(Path(folder), what).get("kind") or "unknown model"


def read_config(folder: str | Path, kind: str) -> dict:
    """Read `folder/config.json` and check that it describes a model of `kind`."""
    folder = Path(folder)
    config = _read_config_json(folder, kind)
    found = config.pop("kind", None)
    if found != kind:
        raise UserError(f"{folder}: this folder holds a {found or 'unknown model'}, not a {kind}")
    return config


def config_from_dict(config_class, values: dict, what: str):
    """Build a config dataclass, refusing fields it does not know (a typo is an error, not a default).

    Fields in the class's `LEGACY_FIELDS` (written by earlier versions, no longer used) are dropped.
    """
    from dataclasses import fields

    legacy = getattr(config_class, "LEGACY_FIELDS", ())
    values = {k: v for k, v in values.items() if k not in legacy}
    unknown = sorted(set(values) - {f.name for f in fields(config_class)})
    if unknown:
        raise UserError(f"{what} config: unknown field(s) {', '.join(unknown)}")
    return config_class(**values)


def load_config(config_class, folder: str | Path, kind: str):
    """`read_config` + `config_class.from_dict`, with any invalid field reported against the folder."""
    values = read_config(folder, kind)
    try:
        return config_class.from_dict(values)
    except (UserError, TypeError, ValueError) as exc:
        raise UserError(f"{Path(folder)}: invalid {kind} config: {exc}") from None


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read `folder/model.safetensors` with a clear error when it is missing or corrupt."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise UserError(f"{Path(folder)}: missing {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(f"{path}: cannot read weights ({exc})") from None


def load_state_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str | Path) -> None:
    """`load_state_dict(strict=True)` with an error that names the folder and the mismatch."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:6]
        raise UserError(f"{where}: weights do not match the config: {' '.join(first)}") from None


def content_hash(config: dict, state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's config and weight values: identical models share it, any change alters it."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu()
        if tensor.is_floating_point():  # by value: a float16 copy and its float32 load hash alike
            tensor = tensor.float()
        tensor = tensor.contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class SavedModel:
    """`save_pretrained` / `from_pretrained` for an `nn.Module` with a dataclass `config`.

    Subclasses set `KIND` (recorded in config.json and checked on load) and
    `CONFIG_CLASS` (with a `from_dict` that rejects unknown fields).
    """

    KIND: str
    CONFIG_CLASS: type

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `config.json` + `model.safetensors` (atomically)."""
        return save_model_folder(folder, self.KIND, asdict(self.config), self.state_dict())

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu"):
        """Load a saved model strictly; a folder of another kind is a clear `UserError`."""
        model = cls(load_config(cls.CONFIG_CLASS, folder, cls.KIND))
        load_state_strict(model, load_weights(folder), folder)
        return model.to(map_location).eval()

    def content_hash(self) -> str:
        """Identifies these exact weights and config."""
        return content_hash(asdict(self.config), self.state_dict())
