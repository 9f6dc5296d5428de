"""Reliability: a run killed with SIGKILL (even mid-save) resumes to the same weights, non-finite steps are
skipped and then stop the run, 2 processes follow 1 process's loss curve, a full disk is found before training,
and nothing untrusted is unpickled. Trainers run on tiny configs, as real subprocesses where a kill is needed."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import load as accelerate_load
from tiny_runs import prior_argv, tokenizer_argv

import minidalle.training.checkpoints as checkpointing
import minidalle.training.runtime as runtime
from minidalle.cli.train import train_prior_main as prior_main
from minidalle.cli.train import train_tokenizer_main as tokenizer_main
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig
from minidalle.prior import Prior

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


SHAPES_IMAGES = 64  # the size of the shared `shapes_dir` fixture (conftest.py)


@pytest.fixture(scope="module")
def image_tokenizer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig(image_size=32, num_codes=32, codebook_dim=8, widths=[8, 8, 8], res_blocks=0)).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("tok") / "image_tokenizer")


def tokenizer_args(data: Path, out: Path, *extra: str) -> list[str]:
    return tokenizer_argv(data, out, *extra, max_steps=STEPS, checkpointing_steps=3, checkpoints_total_limit=2)


def prior_args(data: Path, out: Path, image_tokenizer: Path, *extra: str) -> list[str]:
    return prior_argv(
        data,
        out,
        None,
        "--image_tokenizer",
        str(image_tokenizer),
        *extra,
        max_steps=STEPS,
        checkpointing_steps=3,
        checkpoints_total_limit=2,
    )


TRAINERS = {
    "tokenizer": (
        "train_tokenizer.py",
        tokenizer_args,
        lambda out: DiscreteVAE.from_pretrained(out / "image_tokenizer"),
    ),
    "prior": ("train_prior.py", prior_args, lambda out: Prior.from_pretrained(out / "pipeline" / "prior")),
}


def trainer_argv(name: str, shapes_dir: Path, image_tokenizer_dir: Path, out: Path, *extra: str) -> list[str]:
    _, make_args, _ = TRAINERS[name]
    if name == "prior":
        return make_args(shapes_dir, out, image_tokenizer_dir, *extra)
    return make_args(shapes_dir, out, *extra)


def run_in_process(name: str, argv: list[str]) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    (tokenizer_main if name == "tokenizer" else prior_main)(argv)


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}


def logged_steps(out: Path) -> list[int]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by the kill
            pass
    return [r["step"] for r in rows if "loss" in r]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- kill -9 at a random step, then resume ------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_shapes_dir(shapes_dir, tmp_path_factory) -> Path:
    """The shapes images padded to 64x96, so that a random crop has room to move."""
    from PIL import Image

    out = tmp_path_factory.mktemp("wide")
    shutil.copytree(shapes_dir, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".minidalle-codes"))
    for path in (out / "images").glob("*.png"):
        wide = Image.new("RGB", (96, 64))
        wide.paste(Image.open(path), (16, 0))
        wide.save(path)
    return out


@pytest.mark.parametrize("name", ["tokenizer", "tokenizer-random-crop", "prior"])
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(
    name, shapes_dir, wide_shapes_dir, image_tokenizer_dir, tmp_path
):
    crop = name.endswith("random-crop")
    name, data, extra = ("tokenizer", wide_shapes_dir, ["--random_crop"]) if crop else (name, shapes_dir, [])
    script, _, load = TRAINERS[name]
    full = tmp_path / "full"
    run_in_process(name, trainer_argv(name, data, image_tokenizer_dir, full, *extra))

    seed = random.randrange(10**6)
    kill_after = random.Random(seed).randint(4, STEPS - 2)  # past the first checkpoint (step 3), before the end
    where = f"{name}, kill after step {kill_after} (seed {seed})"
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / script), *trainer_argv(name, data, image_tokenizer_dir, killed, *extra)]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            steps = logged_steps(killed)
            if steps and steps[-1] >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"{where}: the run ended first: {(tmp_path / 'stderr.txt').read_text()[-2000:]}"
    )
    checkpoints = checkpointing.checkpoint_dirs(killed)
    assert checkpoints, f"{where}: no checkpoint survived the kill"
    saved_step = int(checkpoints[-1].name.split("-")[1])
    assert 3 <= saved_step <= logged_steps(killed)[-1] < STEPS, where

    run_in_process(
        name, trainer_argv(name, data, image_tokenizer_dir, killed, *extra, "--resume_from_checkpoint", "latest")
    )
    assert logged_steps(killed) == list(range(1, STEPS + 1))  # every step once
    assert same_weights(load(full), load(killed)), f"{where}: resumed from step {saved_step}"


SAVE_THEN_DIE = """
import os, signal, sys, runpy
import accelerate
original = accelerate.Accelerator.save_state
calls = [0]
def save_state(self, output_dir=None, **kwargs):
    calls[0] += 1
    result = original(self, output_dir, **kwargs)
    if calls[0] == 2:  # the second checkpoint: files half written, not yet renamed into place
        biggest = max((p for p in os.scandir(output_dir) if p.is_file()), key=lambda p: p.stat().st_size)
        with open(biggest.path, "r+b") as f:
            f.truncate(biggest.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return result
accelerate.Accelerator.save_state = save_state
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_and_resume_is_exact(
    shapes_dir, image_tokenizer_dir, tmp_path
):
    full = tmp_path / "full"
    run_in_process("tokenizer", tokenizer_args(shapes_dir, full))
    out = tmp_path / "killed"
    wrapper = tmp_path / "save_then_die.py"
    wrapper.write_text(SAVE_THEN_DIE)
    result = subprocess.run(
        [sys.executable, str(wrapper), str(ROOT / "train_tokenizer.py"), *tokenizer_args(shapes_dir, out)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    root = out / checkpointing.CHECKPOINTS_DIR
    assert sorted(p.name for p in root.iterdir()) == [
        ".tmp-step-0000006",
        "step-0000003",
    ]  # the partial save is not a checkpoint
    assert checkpointing.resolve_checkpoint(out, "latest").name == "step-0000003"

    run_in_process("tokenizer", tokenizer_args(shapes_dir, out, "--resume_from_checkpoint", "latest"))
    assert logged_steps(out)[0] == 1 and logged_steps(out)[-1] == STEPS
    assert same_weights(
        DiscreteVAE.from_pretrained(full / "image_tokenizer"), DiscreteVAE.from_pretrained(out / "image_tokenizer")
    )
    assert not (root / ".tmp-step-0000006").exists()  # the next save at step 6 replaced the leftover


# --- non-finite losses --------------------------------------------------------------------------------


def poison_tokenizer_loss(monkeypatch, bad_calls: set[int], value: float) -> None:
    """Make the tokenizer's training loss `value` (NaN or inf) on the given forward calls (0-based)."""
    original = DiscreteVAE.forward
    calls = [0]

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training and calls[0] in bad_calls:
            out.decoded = out.decoded * value  # so the reconstruction loss, and the objective, are non-finite
        calls[0] += 1
        return out

    monkeypatch.setattr(DiscreteVAE, "forward", forward)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_step_is_skipped_counted_and_training_goes_on(value, shapes_dir, tmp_path, monkeypatch, caplog):
    poison_tokenizer_loss(monkeypatch, {4}, value)
    out = tmp_path / "run"
    run_in_process("tokenizer", tokenizer_args(shapes_dir, out))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in rows if "lr" in r}
    assert sorted(by_step) == list(
        range(1, STEPS + 1)
    )  # the skipped step still counts: schedules and data stay in step
    assert (
        by_step[4]["skipped_steps"] == 0 and by_step[5]["skipped_steps"] == 1 and by_step[STEPS]["skipped_steps"] == 1
    )
    assert "loss" not in by_step[5]  # the bad step's metrics are dropped, not averaged in
    assert "non-finite" in caplog.text
    weights = DiscreteVAE.from_pretrained(out / "image_tokenizer").state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_skipped_step_keeps_the_good_steps_of_its_logging_window(shapes_dir, tmp_path, monkeypatch):
    poison_tokenizer_loss(monkeypatch, {4}, float("nan"))  # step 5, in the window of steps 4-6
    out = tmp_path / "run"
    run_in_process("tokenizer", tokenizer_args(shapes_dir, out, "--logging_steps", "3"))
    rows = {
        r["step"]: r for r in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()) if "lr" in r
    }
    assert sorted(rows) == [3, 6, 9, 12]
    assert math.isfinite(rows[6]["loss"]) and "psnr" in rows[6] and rows[6]["skipped_steps"] == 1


def test_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(shapes_dir, tmp_path, monkeypatch):
    poison_tokenizer_loss(monkeypatch, set(range(4, 100)), float("nan"))
    out = tmp_path / "run"
    with pytest.raises(UserError, match="non-finite") as error:
        run_in_process("tokenizer", tokenizer_args(shapes_dir, out, "--max_nonfinite_steps", "2"))
    assert "step 6" in str(error.value) and str(out / checkpointing.CHECKPOINTS_DIR) in str(error.value)
    assert [p.name for p in checkpointing.checkpoint_dirs(out)] == ["step-0000003"]
    assert not (out / "image_tokenizer").exists()  # no final model from a diverged run
    monkeypatch.undo()
    run_in_process(
        "tokenizer", tokenizer_args(shapes_dir, out, "--resume_from_checkpoint", "latest")
    )  # loads and finishes
    assert logged_steps(out)[-1] == STEPS


# --- two processes = one process with the same global batch ---------------------------------------------


@pytest.mark.parametrize("name", ["tokenizer", "prior"])
def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(
    name, shapes_dir, image_tokenizer_dir, tmp_path, run_two_cpu_processes
):
    # No sampling noise (VQ tokenizer, no caption dropout), so the runs differ only in summation order (the all-reduce).
    common = [
        "--checkpointing_steps",
        "0",
        *(["--quantizer", "vq"] if name == "tokenizer" else ["--caption_dropout", "0"]),
    ]
    one = tmp_path / "one"
    run_in_process(name, trainer_argv(name, shapes_dir, image_tokenizer_dir, one, *common, "--batch_size", "8"))
    two = tmp_path / "two"
    argv = trainer_argv(name, shapes_dir, image_tokenizer_dir, two, *common, "--batch_size", "4")
    if name == "prior":  # the same BPE and codes for both runs
        argv += ["--text_tokenizer", str(one / "text_tokenizer")]
    summary = run_two_cpu_processes(TRAINERS[name][0], argv, two)
    assert summary["num_processes"] == 2 and summary["ranks_in_sync"] is True

    def curve(out: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    a, b = curve(one), curve(two)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert a[STEPS] < 0.9 * a[1]  # it learned, so agreement is not trivial
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-3), f"step {step}: 1 process {a[step]}, 2 processes {b[step]}"


def test_each_process_draws_its_own_noise_from_the_same_initial_weights(
    shapes_dir, image_tokenizer_dir, tmp_path, run_two_cpu_processes
):
    # Dropout masks come from the global RNG; every process is seeded alike so that they build the same weights,
    # then each reseeds with seed + rank (restore_state): the ranks' saved RNG states differ, the weights do not.
    out = tmp_path / "two"
    argv = trainer_argv("prior", shapes_dir, image_tokenizer_dir, out, "--dropout", "0.5", "--batch_size", "4")
    summary = run_two_cpu_processes(TRAINERS["prior"][0], argv, out)
    assert summary["num_processes"] == 2 and summary["ranks_in_sync"] is True
    last = checkpointing.checkpoint_dirs(out)[-1]
    # read as a resume reads them (weights_only; the pickles' bytes differ even for equal states)
    rank0, rank1 = (accelerate_load(last / f"random_states_{r}.pkl") for r in (0, 1))
    assert not torch.equal(rank0["torch_manual_seed"], rank1["torch_manual_seed"])


# --- the disk ------------------------------------------------------------------------------------------


def test_a_full_disk_is_found_before_the_first_step(shapes_dir, tmp_path, monkeypatch):
    real = runtime.shutil.disk_usage
    monkeypatch.setattr(runtime.shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    out = tmp_path / "run"
    with pytest.raises(UserError, match="MiB free"):
        run_in_process("tokenizer", tokenizer_args(shapes_dir, out))
    assert not (out / "log.jsonl").exists()


def test_an_output_folder_that_cannot_be_created_is_a_user_error(shapes_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not writable"):
        run_in_process("tokenizer", tokenizer_args(shapes_dir, blocker / "run"))


# --- safe loading --------------------------------------------------------------------------------------


class Exploit:
    """A pickle that, if ever unpickled, leaves a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_a_pickle_in_a_model_folder_is_never_unpickled(image_tokenizer_dir, tmp_path, file_name):
    marker = tmp_path / "executed"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((image_tokenizer_dir / "config.json").read_text())
    (folder / file_name).write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UserError, match="evil"):
        DiscreteVAE.from_pretrained(folder)
    assert not marker.exists()


def test_the_package_never_calls_torch_load_unsafely():
    for path in (ROOT / "minidalle").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}:{number}: torch.load without weights_only=True"


def test_checkpoints_hold_no_pickled_custom_objects(shapes_dir, tmp_path):
    out = tmp_path / "run"
    run_in_process("tokenizer", tokenizer_args(shapes_dir, out, "--max_steps", "6"))
    checkpoint = out / checkpointing.CHECKPOINTS_DIR / "step-0000003"
    assert not list(checkpoint.glob("custom_checkpoint_*.pkl"))  # the step lives in trainer_state.json
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 3


# --- precision ---------------------------------------------------------------------------------------


def test_auto_precision_picks_bf16_only_where_it_is_native(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "native_bf16", lambda cpu: False)
    assert runtime.resolve_mixed_precision("auto", cpu=True) == "no"
    assert runtime.resolve_mixed_precision("bf16", cpu=True) == "bf16"  # asked for: kept, with a warning
    assert "emulated" in caplog.text
    monkeypatch.setattr(runtime, "native_bf16", lambda cpu: True)
    assert runtime.resolve_mixed_precision("auto", cpu=True) == "bf16"
    assert runtime.resolve_mixed_precision("no", cpu=True) == "no"
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        runtime.resolve_mixed_precision("fp16", cpu=True)
    with pytest.raises(UserError, match="auto, no, bf16 or fp16"):
        runtime.resolve_mixed_precision("fp8", cpu=True)


def test_a_checkpoint_from_before_trainer_state_held_the_step_resumes_without_unpickling(shapes_dir, tmp_path):
    out = tmp_path / "run"
    run_in_process("tokenizer", tokenizer_args(shapes_dir, out, "--max_steps", "6"))
    old = out / checkpointing.CHECKPOINTS_DIR / "step-0000003"
    marker = tmp_path / "executed"
    (old / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Exploit(marker)))  # where the step used to be pickled
    for later in checkpointing.checkpoint_dirs(out)[1:]:
        shutil.rmtree(later)
    (out / "log.jsonl").unlink()
    run_in_process(
        "tokenizer", tokenizer_args(shapes_dir, out, "--max_steps", "6", "--resume_from_checkpoint", "latest")
    )
    assert logged_steps(out) == [4, 5, 6]
    assert not marker.exists()


def test_native_bf16_on_x86_needs_the_bf16_instructions_not_just_avx512(monkeypatch):
    class FakeMkldnn:
        @staticmethod
        def _is_mkldnn_bf16_supported():
            return True

    monkeypatch.setattr(torch.ops, "mkldnn", FakeMkldnn())
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert runtime.native_bf16(cpu=True) is False  # AVX512 without AVX512-BF16: oneDNN would emulate
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert runtime.native_bf16(cpu=True) is True
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"fp", "asimd", "bf16"})  # an ARM CPU: oneDNN decides
    assert runtime.native_bf16(cpu=True) is True


EXIT_PROBE = """
import atexit, logging, sys
from minidalle.cli.args import run_main
from minidalle.errors import UserError
logging.basicConfig(filename=sys.argv[2], level=logging.INFO)
atexit.register(lambda: print("teardown ran", flush=True))
def main():
    print("printed, not yet flushed", end="")
    logging.getLogger("probe").info("logged")
    if sys.argv[1] == "error":
        raise UserError("bad flag")
    return int(sys.argv[1])
run_main(main)
"""


@pytest.mark.parametrize("outcome, code", [("0", 0), ("3", 3), ("error", 2)])
@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_rank_of_a_multi_process_run_exits_without_the_teardown_keeping_its_output(
    outcome, code, world_size, tmp_path
):
    # A rank of several skips the interpreter's teardown (where gloo ranks have aborted after a finished
    # run), but what it printed and logged still comes out, with the command's exit code.
    log = tmp_path / "run.log"
    result = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, outcome, str(log)],
        env={**env(), "WORLD_SIZE": world_size},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code, result.stderr
    assert result.stdout.startswith("printed, not yet flushed")
    assert ("teardown ran" in result.stdout) == (world_size == "1")
    assert "logged" in log.read_text()
    assert ("error: bad flag" in result.stderr) == (outcome == "error")
