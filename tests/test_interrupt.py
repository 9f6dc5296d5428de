"""Ctrl-C and SIGTERM lose nothing: a real training process finishes its step, writes a checkpoint, says how to
resume and exits 130; the resumed run ends with the weights of a run never stopped, and no step is logged twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from tiny_runs import tokenizer_argv

from minidalle.cli.train import train_tokenizer_main
from minidalle.image_tokenizers import DiscreteVAE

ROOT = Path(__file__).resolve().parents[1]
SHAPES_IMAGES = 48  # the size of the shared `shapes_dir` fixture (conftest.py)
STEPS = 40


def argv(shapes_dir: Path, out: Path, *extra: str) -> list[str]:
    return tokenizer_argv(shapes_dir, out, *extra, eval_examples=4, max_steps=STEPS, checkpointing_steps=1000)


def logged(out: Path) -> list[int]:
    rows = []
    for line in (out / "log.jsonl").read_text().splitlines() if (out / "log.jsonl").exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return [r["step"] for r in rows if "loss" in r]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_the_resumed_run_is_exact(sig, shapes_dir, tmp_path):
    full = tmp_path / "full"
    AcceleratorState._reset_state(reset_partial_state=True)
    train_tokenizer_main(argv(shapes_dir, full))

    out = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train_tokenizer.py"), *argv(shapes_dir, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not any(s >= 3 for s in logged(out)):
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    stopped_at = logged(out)[-1]
    assert stopped_at < STEPS, "the run ended before the signal; make it longer"
    assert f"{signal.Signals(sig).name}: stopped after step {stopped_at}" in stderr
    assert "--resume_from_checkpoint latest" in stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{stopped_at:07d}"]

    AcceleratorState._reset_state(reset_partial_state=True)
    train_tokenizer_main(argv(shapes_dir, out, "--resume_from_checkpoint", "latest"))
    assert logged(out) == list(range(1, STEPS + 1))
    a = DiscreteVAE.from_pretrained(full / "image_tokenizer").state_dict()
    b = DiscreteVAE.from_pretrained(out / "image_tokenizer").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"stopped after step {stopped_at}"


def test_a_second_ctrl_c_stops_at_once(shapes_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train_tokenizer.py"), *argv(shapes_dir, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not logged(out):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    checkpoints = out / "checkpoints"
    complete = [p for p in checkpoints.iterdir() if not p.name.startswith(".")] if checkpoints.exists() else []
    assert all((p / "trainer_state.json").is_file() for p in complete)  # none half-written
