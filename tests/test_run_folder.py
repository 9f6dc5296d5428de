"""The run folder is the source of truth: a finished run is not overwritten by accident, a resume uses the saved
configuration (differing flags are named), --overwrite_output_dir removes only the run's own files, and the log
never holds a step twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from tiny_runs import tokenizer_argv

from minidalle.cli.train import train_tokenizer_main
from minidalle.errors import UserError

SHAPES_IMAGES = 48  # the size of the shared `shapes_dir` fixture (conftest.py)


def run(argv: list[str]) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    train_tokenizer_main(argv)


def config_file(tmp_path: Path) -> Path:
    """A recipe, as users pass with --config: values that differ from the flags' defaults."""
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"batch_size": 8, "learning_rate": 2e-3, "kl_weight": 0.02, "max_steps": 6}))
    return path


def base(shapes_dir: Path, out: Path) -> list[str]:
    """Leaves --batch_size and --learning_rate to the recipe (--config) or the run's saved configuration."""
    return tokenizer_argv(
        shapes_dir, out, batch_size=None, learning_rate=None, warmup_steps=1, eval_examples=4, checkpointing_steps=3
    )


def steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]


@pytest.fixture
def finished(shapes_dir, tmp_path) -> Path:
    out = tmp_path / "run"
    run([*base(shapes_dir, out), "--config", str(config_file(tmp_path))])
    return out


def test_a_finished_run_is_not_overwritten_without_asking(finished, shapes_dir):
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    with pytest.raises(
        UserError,
        match=r"already holds a run \(step 6 of 6\).*--resume_from_checkpoint latest.*"
        r"--overwrite_output_dir",
    ):
        run([*base(shapes_dir, finished), "--max_steps", "3"])
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def test_overwrite_output_dir_removes_the_runs_own_files_only(finished, shapes_dir, tmp_path):
    (finished / "NOTES.txt").write_text("mine\n")
    run(
        [
            *base(shapes_dir, finished),
            "--config",
            str(config_file(tmp_path)),
            "--max_steps",
            "3",
            "--overwrite_output_dir",
        ]
    )
    assert steps(finished) == [1, 2, 3]
    assert [p.name for p in (finished / "checkpoints").iterdir()] == ["step-0000003"]  # step 6 is gone
    assert (finished / "NOTES.txt").read_text() == "mine\n"


def test_a_folder_that_is_no_run_is_refused(shapes_dir, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\begin{document}")
    with pytest.raises(UserError, match="holds files that are not a minidalle run"):
        run(base(shapes_dir, folder))
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]


def test_resume_uses_the_saved_configuration_and_names_flags_that_differ(finished, shapes_dir, tmp_path):
    saved = json.loads((finished / "train_config.json").read_text())
    resume = [*base(shapes_dir, finished), "--resume_from_checkpoint", "latest"]
    with pytest.raises(UserError, match=r"--learning_rate 0\.5 \(the run was started with 0\.002\)"):
        run([*resume, "--learning_rate", "0.5", "--max_steps", "9"])
    # no --config: batch 8, lr 2e-3, kl 0.02 come from the run, not the defaults; `auto` precision, resolved when
    # the run started, is the run's own choice again (the same command line resumes)
    run([*resume, "--max_steps", "9", "--mixed_precision", "auto"])
    after = json.loads((finished / "train_config.json").read_text())
    for section in ("data", "tokenizer", "model"):
        assert after[section] == saved[section], section
    training = {k: v for k, v in after["training"].items() if k not in ("max_steps", "resume_from_checkpoint")}
    assert training == {k: v for k, v in saved["training"].items() if k not in ("max_steps", "resume_from_checkpoint")}
    assert (after["training"]["batch_size"], after["training"]["max_steps"]) == (8, 9)
    assert steps(finished) == list(range(1, 10))  # each step once, though the run went back to its checkpoint


def test_override_saved_config_lets_a_resume_change_a_flag(finished, shapes_dir):
    run(
        [
            *base(shapes_dir, finished),
            "--resume_from_checkpoint",
            "latest",
            "--max_steps",
            "8",
            "--learning_rate",
            "1e-4",
            "--override_saved_config",
        ]
    )
    assert json.loads((finished / "train_config.json").read_text())["training"]["learning_rate"] == 1e-4


def test_resume_from_an_earlier_checkpoint_cuts_the_log_back(finished, shapes_dir):
    assert steps(finished) == [1, 2, 3, 4, 5, 6]
    shutil.rmtree(finished / "checkpoints" / "step-0000006")  # as if killed after step 6 was logged, before saving
    run([*base(shapes_dir, finished), "--resume_from_checkpoint", "latest"])
    assert steps(finished) == [1, 2, 3, 4, 5, 6]
