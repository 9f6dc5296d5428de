"""train_tokenizer.py end to end, on tiny configs: loss falls, resume is exact, two processes agree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from tiny_runs import tokenizer_argv

from minidalle.cli.train import train_tokenizer_main as train_main
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE

SHAPES_IMAGES = 96  # the size of the shared `shapes_dir` fixture (conftest.py)


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return tokenizer_argv(data, out, *extra, logging_steps=5, eval_examples=16)


def run(argv: list[str]) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    train_main(argv)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_outputs_are_written(shapes_dir, tmp_path):
    out = tmp_path / "run"
    run(tiny_args(shapes_dir, out, "--max_steps", "40", "--checkpointing_steps", "20", "--image_steps", "20"))
    log = [r for r in read_log(out) if "loss" in r]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    for key in (
        "recon",
        "kl",
        "temperature",
        "kl_weight",
        "lr",
        "psnr",
        "codebook_usage",
        "codebook_perplexity",
        "dead_codes",
    ):
        assert key in log[0]
    assert log[-1]["temperature"] < log[0]["temperature"]  # annealed
    assert (out / "samples" / "recon-step-0000020.png").is_file()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000020", "step-0000040"]
    model = DiscreteVAE.from_pretrained(out / "image_tokenizer")
    assert model.config.image_size == 32
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["eval_psnr"] > log[0]["psnr"]


def test_resume_continues_at_the_saved_step_exactly(shapes_dir, tmp_path):
    full = tmp_path / "full"
    run(
        tiny_args(
            shapes_dir, full, "--max_steps", "20", "--checkpointing_steps", "10", "--checkpoints_total_limit", "5"
        )
    )
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000010", resumed / "checkpoints" / "step-0000010")
    run(
        tiny_args(
            shapes_dir,
            resumed,
            "--max_steps",
            "20",
            "--checkpointing_steps",
            "10",
            "--resume_from_checkpoint",
            "latest",
        )
    )
    steps = [r["step"] for r in read_log(resumed) if "loss" in r]
    assert steps[0] == 15  # continued after step 10, did not restart
    a = {r["step"]: r["loss"] for r in read_log(full) if "loss" in r}
    b = {r["step"]: r["loss"] for r in read_log(resumed) if "loss" in r}
    assert a[20] == pytest.approx(b[20], rel=1e-6)
    wa = DiscreteVAE.from_pretrained(full / "image_tokenizer").state_dict()
    wb = DiscreteVAE.from_pretrained(resumed / "image_tokenizer").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_torch_compile_matches_eager_and_its_checkpoints_resume_eagerly(shapes_dir, tmp_path, cxx_compiler):
    # vq: no sampling noise, so the compiled run must follow the eager run's losses
    flags = (
        "--max_steps",
        "10",
        "--quantizer",
        "vq",
        "--kl_weight",
        "0.25",
        "--logging_steps",
        "1",
        "--checkpointing_steps",
        "5",
        "--checkpoints_total_limit",
        "5",
    )
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run(tiny_args(shapes_dir, eager, *flags))
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    run(tiny_args(shapes_dir, compiled, *flags, "--torch_compile"))
    assert counters["stats"]["unique_graphs"] > graphs  # the forward did go through torch.compile
    a = [r["loss"] for r in read_log(eager) if "loss" in r]
    b = [r["loss"] for r in read_log(compiled) if "loss" in r]
    assert len(a) == len(b) == 10 and b[-1] < b[0]
    assert b == pytest.approx(a, rel=1e-2)
    # the compiled run's checkpoint has the eager model's keys: an eager run resumes from it
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(compiled / "checkpoints" / "step-0000005", resumed / "checkpoints" / "step-0000005")
    run(tiny_args(shapes_dir, resumed, *flags, "--resume_from_checkpoint", "latest"))
    assert [r["step"] for r in read_log(resumed) if "loss" in r][0] == 6
    wa = DiscreteVAE.from_pretrained(eager / "image_tokenizer").state_dict()
    wb = DiscreteVAE.from_pretrained(resumed / "image_tokenizer").state_dict()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=1e-2, rtol=1e-2)


def test_torch_compile_without_a_cpp_compiler_is_a_user_error(shapes_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(UserError, match="--torch_compile uses torch.compile.*C\\+\\+ compiler"):
        run(tiny_args(shapes_dir, tmp_path / "x", "--max_steps", "2", "--torch_compile"))


def test_resume_from_a_folder_that_is_not_a_checkpoint(shapes_dir, tmp_path):
    with pytest.raises(UserError, match="not a checkpoint"):
        run(tiny_args(shapes_dir, tmp_path / "x", "--max_steps", "2", "--resume_from_checkpoint", str(tmp_path)))


def test_vq_quantizer_trains(shapes_dir, tmp_path):
    out = tmp_path / "vq"
    run(
        tiny_args(
            shapes_dir,
            out,
            "--max_steps",
            "30",
            "--quantizer",
            "vq",
            "--vq_ema",
            "--vq_restart_dead",
            "--kl_weight",
            "0.25",
        )
    )
    log = [r for r in read_log(out) if "loss" in r]
    assert log[-1]["mse"] < log[0]["mse"]
    assert DiscreteVAE.from_pretrained(out / "image_tokenizer").config.quantizer == "vq"


def test_bad_flags_give_clear_errors(shapes_dir, tmp_path):
    with pytest.raises(UserError, match="--preset"):
        run(tiny_args(shapes_dir, tmp_path / "a", "--preset", "huge"))
    with pytest.raises(UserError, match="--widths"):
        run(tiny_args(shapes_dir, tmp_path / "b", "--widths", "8,x"))
    with pytest.raises(UserError, match="fp16"):
        run(tiny_args(shapes_dir, tmp_path / "c", "--mixed_precision", "fp16"))


def test_two_cpu_processes_train_in_sync(shapes_dir, tmp_path, run_two_cpu_processes):
    out = tmp_path / "ddp"
    summary = run_two_cpu_processes(
        "train_tokenizer.py", tiny_args(shapes_dir, out, "--max_steps", "10", "--checkpointing_steps", "0"), out
    )
    assert summary["num_processes"] == 2
    assert summary["ranks_in_sync"] is True
    assert summary["step"] == 10


def test_decoder_only_finetune_keeps_the_codes(shapes_dir, tmp_path):
    first = tmp_path / "first"
    run(tiny_args(shapes_dir, first, "--max_steps", "10"))
    tuned = tmp_path / "tuned"
    run(
        tiny_args(
            shapes_dir,
            tuned,
            "--max_steps",
            "30",
            "--init_from",
            str(first / "image_tokenizer"),
            "--train_decoder_only",
        )
    )
    before = DiscreteVAE.from_pretrained(first / "image_tokenizer")
    after = DiscreteVAE.from_pretrained(tuned / "image_tokenizer")
    assert after.codes_hash() == before.codes_hash()
    assert after.content_hash() != before.content_hash()
    for name, tensor in before.encoder.state_dict().items():
        assert torch.equal(tensor, after.encoder.state_dict()[name])
    log = [r for r in read_log(tuned) if "loss" in r]
    assert log[-1]["mse"] < log[0]["mse"]
    assert all(r["kl"] == 0 for r in log)


def test_init_from_with_another_resolution_is_refused(shapes_dir, tmp_path):
    first = tmp_path / "first"
    run(tiny_args(shapes_dir, first, "--max_steps", "2"))
    with pytest.raises(UserError, match="--resolution 32"):
        run(
            tiny_args(
                shapes_dir,
                tmp_path / "b",
                "--max_steps",
                "2",
                "--init_from",
                str(first / "image_tokenizer"),
                "--resolution",
                "64",
            )
        )
