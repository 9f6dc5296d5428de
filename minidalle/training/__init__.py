"""Training: the Accelerate loop over one or more optimizers, schedules, checkpoints, the two trainers
(`tokenizer_trainer`, `prior_trainer`) and the encode-once step between them (`encode`).

Imports accelerate; nothing in `minidalle.pipeline` or below imports this package.
"""

from .checkpoints import TrainState, checkpoint_dirs, restore_state, save_checkpoint
from .loop import TrainPart, endless_batches, train_loader, train_loop
from .runtime import TrainingArguments, make_accelerator, native_bf16, resolve_mixed_precision

__all__ = [
    "TrainPart",
    "TrainState",
    "TrainingArguments",
    "checkpoint_dirs",
    "endless_batches",
    "make_accelerator",
    "native_bf16",
    "resolve_mixed_precision",
    "restore_state",
    "save_checkpoint",
    "train_loader",
    "train_loop",
]
