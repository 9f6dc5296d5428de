"""Test-wide settings: no network, quiet tokenizers, deterministic CPU math."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread, and do not fight a busy machine for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes_dir(request, tmp_path_factory):
    """A shapes export (images/ + metadata.jsonl, seed 0) of the test module's `SHAPES_IMAGES` images (default 64);
    read-only for tests (copy it to change it)."""
    from minidalle.data.shapes import make_shapes

    count = getattr(request.module, "SHAPES_IMAGES", 64)
    out = tmp_path_factory.mktemp("shapes")
    assert make_shapes(out, "train", count, seed=0, workers=1, progress=False) == count
    return out


@pytest.fixture(scope="module")
def tiny_image_tokenizer_dir(tmp_path_factory):
    """A saved tiny image tokenizer (32 px, 16 codes on an 8x8 grid, seed 0)."""
    import torch

    from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig

    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig(image_size=32, num_codes=16, codebook_dim=8, widths=[8, 8], res_blocks=0))
    return model.save_pretrained(tmp_path_factory.mktemp("tok") / "image_tokenizer")


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tiny_image_tokenizer_dir, tmp_path_factory):
    """A saved tiny pipeline around `tiny_image_tokenizer_dir` (text length 8, one block)."""
    from minidalle.image_tokenizers import DiscreteVAE
    from minidalle.pipeline import save_pipeline
    from minidalle.prior import Prior, PriorConfig
    from minidalle.text import train_text_tokenizer

    tokenizer = DiscreteVAE.from_pretrained(tiny_image_tokenizer_dir)
    text = train_text_tokenizer(["a red circle", "a blue square"] * 4, vocab_size=300, min_frequency=1)
    config = PriorConfig(
        text_vocab_size=len(text),
        text_len=8,
        num_image_codes=16,
        image_grid=8,
        dim=16,
        layers=1,
        heads=2,
        image_tokenizer_hash=tokenizer.codes_hash(),
    )
    return save_pipeline(tmp_path_factory.mktemp("pipe") / "pipeline", tokenizer, text, Prior(config))


@pytest.fixture
def cxx_compiler():
    """Skip unless torch.compile can build CPU kernels (inductor needs a C++ compiler)."""
    from minidalle.errors import UserError, require_cpu_compiler

    try:
        require_cpu_compiler("torch.compile")
    except UserError:
        pytest.skip("torch.compile on CPU needs a C++ compiler")


@pytest.fixture
def run_two_cpu_processes():
    """Run a trainer script as 2 CPU processes (`accelerate launch --multi_gpu` with ACCELERATE_USE_CPU=1,
    which `--cpu --num_processes 2` is not: that silently runs one); returns its run_summary.json."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def run(script: str, args: list[str], output_dir: Path) -> dict:
        # PYTHONFAULTHANDLER: a rank that aborts prints where its Python was
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
        env["PYTHONFAULTHANDLER"] = "1"
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(root / script),
            *args,
        ]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads((Path(output_dir) / "run_summary.json").read_text())

    return run
