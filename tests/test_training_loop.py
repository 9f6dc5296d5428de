"""The training loop with two optimizers (the shape a VQ-GAN needs): a real kill -9 mid-run resumes to
bit-identical weights of both models, with gradient accumulation; 2 processes follow 1 process; the log
records both learning rates; fp16 with two optimizers is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "toy_two_optimizers.py"


def run(out: Path, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT), str(out), *extra]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(SCRIPT),
            str(out),
            *extra,
        ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def log_rows(out: Path) -> list[dict]:
    rows = []
    for line in (out / "log.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line the kill cut
            pass
    return rows


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_weights_of_both_models(tmp_path):
    full = tmp_path / "full"
    assert run(full, "--gradient_accumulation_steps", "2", "--batch_size", "4").returncode == 0
    killed = tmp_path / "killed"
    result = run(killed, "--gradient_accumulation_steps", "2", "--batch_size", "4", "--kill_at", "7")
    assert result.returncode == -9, result.stderr[-2000:]  # it really died by SIGKILL
    assert not (killed / "final.safetensors").exists()
    assert max(r["step"] for r in log_rows(killed)) == 7
    result = run(killed, "--gradient_accumulation_steps", "2", "--batch_size", "4", "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr and "step-0000006" in result.stderr
    a, b = load_file(str(full / "final.safetensors")), load_file(str(killed / "final.safetensors"))
    assert {k.split(".")[0] for k in a} == {"generator", "discriminator"}
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_both_parts_learn_with_their_own_learning_rates(tmp_path):
    out = tmp_path / "run"
    assert run(out).returncode == 0
    rows = [r for r in log_rows(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for row in rows:
        assert row["lr_discriminator"] == pytest.approx(row["lr"] / 2, abs=2e-6)  # 5e-3 against 1e-2, same schedule
    assert rows[-1]["d_loss"] < rows[0]["d_loss"]  # the discriminator learned to tell the points apart
    weights = load_file(str(out / "final.safetensors"))
    torch.manual_seed(0)  # the initial weights, as the script makes them
    init_g = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).state_dict()
    init_d = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).state_dict()
    assert not torch.equal(weights["generator.0.weight"], init_g["0.weight"])  # both optimizers stepped
    assert not torch.equal(weights["discriminator.0.weight"], init_d["0.weight"])


def test_two_processes_follow_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(one, "--batch_size", "8").returncode == 0
    result = run(two, "--batch_size", "4", processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    with safe_open(str(two / "final.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta == {"ranks_in_sync": "True", "num_processes": "2"}
    a = {r["step"]: r["loss"] for r in log_rows(one) if "loss" in r}
    b = {r["step"]: r["loss"] for r in log_rows(two) if "loss" in r}
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    wa, wb = load_file(str(one / "final.safetensors")), load_file(str(two / "final.safetensors"))
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5), key


def test_fp16_with_two_optimizers_is_refused():
    from types import SimpleNamespace

    from minidalle.errors import UserError
    from minidalle.training import TrainingArguments, TrainPart, train_loop

    fake = SimpleNamespace(scaler=object())  # what an fp16 Accelerator has
    model = torch.nn.Linear(2, 2)
    parts = [TrainPart(model, torch.optim.SGD(model.parameters(), lr=0.1))] * 2
    with pytest.raises(UserError, match="fp16"):
        train_loop(fake, TrainingArguments(), parts, [], None, None)
