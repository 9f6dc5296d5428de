"""The two trainers' commands: `train_tokenizer.py` / `minidalle train-tokenizer` (stage 1, the image tokenizer)
and `train_prior.py` / `minidalle train-prior` (stage 2, the prior). Each parses the shared data and training
flags plus its own, then calls the library entry point in `minidalle.training`."""

from __future__ import annotations

from collections.abc import Callable

from ..data import DataArguments
from ..training import prior_trainer, tokenizer_trainer
from ..training.runtime import TrainingArguments
from .args import command


def _trainer_command(prog: str, description: str, arguments: type, train: Callable) -> Callable:
    run = command(DataArguments, TrainingArguments, arguments, prog=prog, description=description, output="output_dir")
    return run(lambda data_args, args, own_args, extra: train(data_args, args, own_args, extra.explicit))


train_tokenizer_main = _trainer_command(
    "train_tokenizer.py",
    "Stage 1: train the dVAE IMAGE tokenizer (images <-> grids of discrete codes) on captioned images.",
    tokenizer_trainer.TokenizerArguments,
    tokenizer_trainer.train,
)
train_prior_main = _trainer_command(
    "train_prior.py",
    "Stage 2: train (or fine-tune with --init_from) the prior over BPE text tokens + image codes.",
    prior_trainer.PriorArguments,
    prior_trainer.train,
)
