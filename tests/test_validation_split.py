"""A fair validation split: an explicit --eval_split (of --data) or --eval_data is honoured, else the hold-out is a
seeded shuffle (not the last files), recorded in the run's train_config.json and the same after resume; validation
figures reach the trackers through accelerator.log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from minidalle.cli.train import train_prior_main, train_tokenizer_main
from minidalle.data.loading import seeded_holdout
from minidalle.data.shapes import make_shapes
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig

SHAPES_IMAGES = 60  # the size of the shared `shapes_dir` fixture (conftest.py)


def run(main, argv: list[str]) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    main(argv)


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory) -> Path:
    """DATA/train and DATA/test imagefolders, as the exporters write them (load_dataset reads two splits)."""
    root = tmp_path_factory.mktemp("splits")
    make_shapes(root / "train", "train", 40, seed=1, workers=1, progress=False)
    make_shapes(root / "test", "zeroshot", 7, seed=2, workers=1, progress=False)
    return root


TOKENIZER = [
    "--preset",
    "tiny",
    "--resolution",
    "32",
    "--batch_size",
    "8",
    "--max_steps",
    "2",
    "--logging_steps",
    "1",
    "--image_steps",
    "0",
    "--mixed_precision",
    "no",
    "--checkpointing_steps",
    "0",
]


def test_eval_split_alone_means_that_split_of_data(two_splits, tmp_path):
    out = tmp_path / "tok"
    run(train_tokenizer_main, ["--data", str(two_splits), "--eval_split", "test", "--output_dir", str(out), *TOKENIZER])
    assert json.loads((out / "eval.json").read_text())["eval_codebook_usage"] >= 0
    config = json.loads((out / "train_config.json").read_text())
    assert config["holdout"] == {"data": str(two_splits), "split": "test"}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("loss" in r for r in log)  # the 40 training images were all trained on (no hold-out taken)


def test_the_holdout_is_a_seeded_shuffle_recorded_and_kept_on_resume(shapes_dir, tmp_path):
    out = tmp_path / "tok"
    args = ["--data", str(shapes_dir), "--output_dir", str(out), "--eval_examples", "6", *TOKENIZER]
    run(train_tokenizer_main, [*args, "--checkpointing_steps", "1"])
    held = json.loads((out / "train_config.json").read_text())["holdout"]
    assert held == {"seed": 0, "indices": seeded_holdout(SHAPES_IMAGES, 6, 0)}
    assert held["indices"] != list(range(SHAPES_IMAGES - 6, SHAPES_IMAGES))  # not the last files
    assert seeded_holdout(SHAPES_IMAGES, 6, 1) != held["indices"]  # the seed chooses them
    shutil.rmtree(out / "checkpoints" / "step-0000002")
    run(train_tokenizer_main, [*args, "--resume_from_checkpoint", "latest"])
    assert json.loads((out / "train_config.json").read_text())["holdout"] == held


def test_the_priors_validation_split_and_trackers(two_splits, tmp_path, monkeypatch):
    logged = []
    real = Accelerator.log

    def recording(self, values, step=None, log_kwargs=None):
        logged.append(dict(values))
        return real(self, values, step=step, log_kwargs=log_kwargs or {})

    monkeypatch.setattr(Accelerator, "log", recording)
    tokenizer = DiscreteVAE(DVAEConfig(image_size=32, num_codes=16, codebook_dim=8, widths=[8, 8], res_blocks=0))
    tokenizer_dir = tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    out = tmp_path / "prior"
    run(
        train_prior_main,
        [
            "--data",
            str(two_splits),
            "--eval_split",
            "test",
            "--image_tokenizer",
            str(tokenizer_dir),
            "--output_dir",
            str(out),
            "--preset",
            "tiny",
            "--text_len",
            "16",
            "--text_vocab_size",
            "300",
            "--batch_size",
            "8",
            "--max_steps",
            "2",
            "--eval_steps",
            "1",
            "--logging_steps",
            "1",
            "--image_steps",
            "0",
            "--mixed_precision",
            "no",
            "--checkpointing_steps",
            "0",
        ],
    )
    assert json.loads((out / "train_config.json").read_text())["holdout"]["split"] == "test"
    assert any("val_bits_per_dim" in values for values in logged)  # validation reached the trackers
    assert json.loads((out / "eval.json").read_text())["val_bits_per_dim"] > 0
