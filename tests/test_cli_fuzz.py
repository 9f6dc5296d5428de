"""Every command's argv, fuzzed: an unknown flag, a wrong type, a number out of its bounds, a missing path, a file
where a folder is expected, an empty dataset -> exit status 2 and one line naming the flag or the file; never a
traceback, never a half-made output folder. Flags are never abbreviated.

In process (each example costs milliseconds), derandomized for CI. A new command must add its skeleton below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minidalle.cli import COMMANDS, main
from minidalle.cli.args import parse_args
from minidalle.errors import UserError
from minidalle.images import save_png

SHAPES_IMAGES = 16  # the size of the shared `shapes_dir` fixture (conftest.py)
FUZZ = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
PATH_FLAGS = ("data", "model", "image_tokenizer", "source", "init_from", "text_tokenizer", "codes", "eval_data")


@pytest.fixture(scope="module")
def world(shapes_dir, tiny_image_tokenizer_dir, tiny_pipeline_dir, tmp_path_factory) -> dict:
    """The inputs a valid call of each command needs."""
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(tiny_pipeline_dir, root / "pipeline")
    shutil.copytree(tiny_image_tokenizer_dir, root / "tok")
    image = root / "image.png"
    save_png(image, torch.zeros(32, 32, 3, dtype=torch.uint8).numpy())
    (root / "manifest.jsonl").write_text(json.dumps({"prompt": "a red circle", "file": "image.png"}) + "\n")
    empty = root / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "metadata.jsonl").write_text("")
    (root / "a_file.txt").write_text("not a folder\n")
    return {
        "root": root,
        "shapes": shapes_dir,
        "pipeline": root / "pipeline",
        "tok": root / "tok",
        "image": image,
        "manifest": root / "manifest.jsonl",
        "empty": empty,
        "file": root / "a_file.txt",
    }


def skeleton(name: str, w: dict, out: Path) -> list[str]:
    """A valid argv for command `name` (the fuzz then breaks exactly one thing in it)."""
    data = ["--data", str(w["shapes"])]
    tiny = [
        "--preset",
        "tiny",
        "--resolution",
        "32",
        "--max_steps",
        "1",
        "--batch_size",
        "4",
        "--mixed_precision",
        "no",
    ]
    return {
        "make-shapes": ["--out", str(out), "--num", "2", "--workers", "1", "--no_progress"],
        "eval-shapes": [str(w["manifest"])],
        "export-dataset": ["mnist", "--out", str(out), "--limit", "1"],
        "train-tokenizer": [*data, "--output_dir", str(out), *tiny],
        "train-prior": [*data, "--image_tokenizer", str(w["tok"]), "--output_dir", str(out), *tiny],
        "sample": ["a red circle", "--model", str(w["pipeline"]), "--out", str(out), "--num_candidates", "1"],
        "score": [str(w["image"]), "--caption", "a red circle", "--model", str(w["pipeline"])],
        "serve": ["--model", str(w["pipeline"]), "--port", "7860", "--no_compile"],
        "export-pipeline": ["--source", str(w["pipeline"]), "--out", str(out)],
        "encode": ["--image_tokenizer", str(w["tok"]), *data, "--out", str(out)],
        "codebook": ["--image_tokenizer", str(w["tok"]), "--out", str(out / "sheet.png")],
        "reconstruct": ["--image_tokenizer", str(w["tok"]), *data, "--out", str(out)],
        "eval-emoji": [str(w["manifest"])],
        "train-emoji-judges": [*data, "--out", str(out), "--epochs", "1"],
    }[name]


def fields_of(name: str) -> list[dataclasses.Field]:
    module, function = COMMANDS[name][0].rsplit(".", 1)
    entry = getattr(__import__(f"minidalle.cli.{module}", fromlist=[function]), function)
    return [f for t in entry.dataclass_types for f in dataclasses.fields(t)]


def run(argv: list[str]) -> tuple[int, str]:
    """`minidalle ARGV` in process: (exit status, what it wrote to stderr)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as stop:
            return stop.code, err.getvalue()
    return 0, err.getvalue()


def number_type(f: dataclasses.Field) -> str | None:
    """'int' or 'float' for a numeric field, `int | None` included. The annotation is a string until
    HfArgumentParser resolves it in place (to the class), so both forms are read."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", None) or repr(f.type)
    match = re.match(r"(?:typing\.Optional\[)?(int|float)\b", kind)
    return match.group(1) if match else None


KINDS = ("unknown", "type", "bounds", "missing", "file", "folder", "empty")


def slots(name: str, argv: list[str], w: dict) -> dict[str, list]:
    """What a skeleton offers to break: numeric fields, bounded ones, folder paths, file paths, --data."""
    fields = fields_of(name)
    numbers = [f for f in fields if number_type(f)]
    return {
        "numbers": numbers,
        "bounded": [f for f in numbers if "minimum" in f.metadata or "maximum" in f.metadata],
        "folders": [i + 1 for i, a in enumerate(argv[:-1]) if a.lstrip("-") in PATH_FLAGS],
        "files": [i for i, a in enumerate(argv) if a in (str(w["image"]), str(w["manifest"]))],
    }


def kinds_for(name: str) -> list[str]:
    fake = {k: Path("/world") / k for k in ("root", "shapes", "pipeline", "tok", "image", "manifest", "empty", "file")}
    argv = skeleton(name, fake, Path("/world/out"))
    s = slots(name, argv, fake)
    usable = {
        "unknown": True,
        "type": s["numbers"],
        "bounds": s["bounded"],
        "missing": s["folders"],
        "file": s["folders"],
        "folder": s["files"],
        "empty": "--data" in argv,
    }
    return [k for k in KINDS if usable[k]]


@st.composite
def broken_calls(draw, world: dict, out: Path, name: str, kind: str):
    argv = skeleton(name, world, out)
    s = slots(name, argv, world)
    if kind == "unknown":
        known = {f.name for f in fields_of(name)}
        flag = draw(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(lambda x: x not in known))
        return name, argv + [f"--{flag}", "1"], f"--{flag}"
    if kind == "type":
        f = draw(st.sampled_from(s["numbers"]))
        return name, argv + [f"--{f.name}", draw(st.sampled_from(["abc", "1.5.2", "", "1e"]))], f"--{f.name}"
    if kind == "bounds":
        f = draw(st.sampled_from(s["bounded"]))
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        step = 1 if number_type(f) == "int" else 0.5
        value = low - step if low is not None and (high is None or draw(st.booleans())) else high + step
        value = int(value) if number_type(f) == "int" else value
        return name, argv + [f"--{f.name}", str(value)], f"--{f.name}"
    if kind == "empty":
        i, bad = argv.index("--data") + 1, str(world["empty"])
    elif kind == "folder":  # a folder where a file is expected
        i, bad = draw(st.sampled_from(s["files"])), str(world["root"])
    else:
        i = draw(st.sampled_from(s["folders"]))
        bad = str(world["root"] / "no-such-thing") if kind == "missing" else str(world["file"])
    return name, argv[:i] + [bad] + argv[i + 1 :], bad


@pytest.mark.parametrize("name, kind", [(n, k) for n in sorted(COMMANDS) for k in kinds_for(n)])
@FUZZ
@given(data=st.data())
def test_a_broken_call_of_any_command_exits_2_with_one_line_naming_what_is_wrong(world, name, kind, data):
    out = world["root"] / "out"
    shutil.rmtree(out, ignore_errors=True)
    name, argv, culprit = data.draw(broken_calls(world, out, name, kind))
    status, err = run([name, *argv])
    where = f"minidalle {name} {' '.join(argv)}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"{where}: exit {status}\n{err[-2000:]}"
    assert lines and lines[-1].startswith("error: "), f"{where}: {err[-2000:]}"
    assert "Traceback" not in err, where
    assert culprit in lines[-1], f"{where}: {lines[-1]!r} does not name {culprit!r}"
    assert not out.exists(), f"{where}: left {sorted(p.name for p in out.iterdir())}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_fuzz_skeleton_that_is_valid(name, world, tmp_path):
    argv = skeleton(name, world, tmp_path / "out")  # a KeyError here: add the new command's skeleton
    module, function = COMMANDS[name][0].rsplit(".", 1)
    entry = getattr(__import__(f"minidalle.cli.{module}", fromlist=[function]), function)
    parsed = parse_args(
        entry.dataclass_types,
        argv,
        add_arguments=lambda p: [p.add_argument(n, **k) for n, k in entry.positional.items()],
    )
    flags = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    assert parsed[-1].explicit == {f.replace("-", "_").removeprefix("no_") for f in flags}  # it parses, as given


def test_flags_are_never_abbreviated_and_a_near_miss_is_named(world, tmp_path):
    status, err = run(
        ["train-tokenizer", "--data", str(world["shapes"]), "--output_dir", str(tmp_path / "o"), "--max_step", "7"]
    )
    assert status == 2
    assert err.strip().splitlines()[-1] == "error: unknown flag --max_step; did you mean --max_steps?"
    assert not (tmp_path / "o").exists()


def test_a_wrong_type_is_one_line_not_a_usage_dump(world):
    status, err = run(["sample", "a red circle", "--num_images", "two"])
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "--num_images" in err and "invalid int value: 'two'" in err


def test_parse_args_records_the_flags_given_explicitly(tmp_path):
    from minidalle.training.runtime import TrainingArguments

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"learning_rate": 0.5}))
    args, extra = parse_args([TrainingArguments], ["--max-steps", "3", "--seed=4", "--config", str(config)])
    assert (args.max_steps, args.seed, args.learning_rate) == (3, 4, 0.5)
    assert extra.explicit == {"max_steps", "seed", "learning_rate"}
    with pytest.raises(UserError, match="--batch_size must be >= 1, got 0"):
        parse_args([TrainingArguments], ["--batch_size", "0"])
