"""Command lines for tiny trainer runs, shared by the test files that start trainers (in process or as real
processes). A flag set to None is left out, so that a --config file or the run's saved configuration decides it."""

from __future__ import annotations

from pathlib import Path

TOKENIZER = dict(
    preset="tiny",
    resolution=32,
    batch_size=8,
    learning_rate=3e-3,
    warmup_steps=2,
    logging_steps=1,
    image_steps=0,
    eval_examples=8,
    mixed_precision="no",
)
PRIOR = dict(
    preset="tiny",
    text_len=16,
    text_vocab_size=300,
    batch_size=8,
    learning_rate=3e-3,
    warmup_steps=2,
    logging_steps=1,
    image_steps=0,
    eval_steps=0,
    mixed_precision="no",
)


def _flags(values: dict) -> list[str]:
    return [part for name, value in values.items() if value is not None for part in (f"--{name}", str(value))]


def tokenizer_argv(data: Path, out: Path, *extra: str, **flags) -> list[str]:
    """train_tokenizer.py's argv for a tiny run on `data` into `out`; `flags` override `TOKENIZER`."""
    return ["--data", str(data), "--output_dir", str(out), *_flags({**TOKENIZER, **flags}), *extra]


def prior_argv(data: Path, out: Path, image_tokenizer: Path | None, *extra: str, **flags) -> list[str]:
    """train_prior.py's argv for a tiny run; `flags` override `PRIOR`; --image_tokenizer goes last."""
    tokenizer = ["--image_tokenizer", str(image_tokenizer)] if image_tokenizer else []
    return ["--data", str(data), "--output_dir", str(out), *_flags({**PRIOR, **flags}), *extra, *tokenizer]
