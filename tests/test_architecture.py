"""The layout: imports point down the layers only; the pipeline pulls in neither accelerate nor the training
package; the image-tokenizer interface loads by kind; folders saved before the layout change still load and give
the same codes, samples and scores."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minidalle.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidalle"
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"

# a unit may import its own modules and any unit of a lower rank, nothing else
RANKS = {
    "errors": 0,
    "options": 1,
    "folders": 1,
    "metrics": 1,
    "images": 1,
    "threads": 1,
    "radix": 1,
    "serialization": 2,
    "text": 2,
    "image_tokenizers": 3,
    "prior": 3,
    "data": 3,
    "pipeline": 4,
    "training": 5,
    "webui": 5,  # the web page: the pipeline and below; `minidalle serve` (cli) starts it
    "cli": 6,
}


def imported_units(source: str, module: str) -> list[tuple[int, str]]:
    """(line, unit) for every import of a minidalle module in `source` (module-level or inside functions)."""
    package = module.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "minidalle" and len(parts) > 1 and parts[1] != "__version__":
                found.append((node.lineno, parts[1]))
    return found


def layer_violations(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) < 2:  # minidalle/__init__.py: lazy re-exports only
            continue
        unit = parts[1]
        module = ".".join(parts if path.name != "__init__.py" else parts + ["__init__"])
        if unit not in RANKS:
            problems.append(f"{rel}: unit {unit!r} has no rank in tests/test_architecture.py")
            continue
        for line, other in imported_units(path.read_text(encoding="utf-8"), module):
            if other != unit and RANKS.get(other, 99) >= RANKS[unit]:
                problems.append(
                    f"{rel}.py:{line}: {unit} (rank {RANKS[unit]}) imports {other} (rank {RANKS.get(other)})"
                )
    return problems


def test_imports_point_down_the_layers():
    assert layer_violations() == []


def test_the_layer_check_finds_an_upward_import(tmp_path):
    fake = tmp_path / "minidalle"
    (fake / "prior").mkdir(parents=True)
    (fake / "prior" / "model.py").write_text("from ..training.loop import train_loop\nimport minidalle.errors\n")
    (fake / "errors.py").write_text("def f():\n    from .cli import main\n")
    problems = layer_violations(fake)
    assert len(problems) == 2
    assert "prior (rank 3) imports training (rank 5)" in problems[0] or "prior (rank 3) imports training" in problems[1]
    assert any("errors (rank 0) imports cli" in p for p in problems)


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_pipeline_imports_neither_accelerate_nor_training_nor_the_cli():
    modules = _modules_after_import("import minidalle.pipeline; from minidalle import MiniDallePipeline")
    assert "minidalle.pipeline.pipeline" in modules
    assert not {m for m in modules if m == "accelerate" or m.startswith("accelerate.")}
    assert not {m for m in modules if m.startswith(("minidalle.training", "minidalle.cli"))}


def test_the_models_import_no_parser_and_no_accelerate():
    modules = _modules_after_import("import minidalle.image_tokenizers, minidalle.prior")
    assert not {
        m for m in modules if m.startswith(("accelerate", "minidalle.cli", "minidalle.training", "transformers"))
    }


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)
    with pytest.raises(ValueError):
        from minidalle.image_tokenizers import DVAEConfig

        DVAEConfig(num_codes=1)


def test_public_names_keep_working():
    import minidalle

    for name in (
        "MiniDallePipeline",
        "DiscreteVAE",
        "DVAEConfig",
        "Prior",
        "PriorConfig",
        "UserError",
        "ImageTokenizer",
    ):
        assert getattr(minidalle, name).__name__ == name
    with pytest.raises(AttributeError):
        minidalle.NoSuchThing  # noqa: B018


# --- the image-tokenizer interface ------------------------------------------------------------------------------


def test_load_image_tokenizer_dispatches_on_kind_and_names_a_wrong_folder(tmp_path):
    from minidalle.image_tokenizers import (
        IMAGE_TOKENIZERS,
        DiscreteVAE,
        DVAEConfig,
        ImageTokenizer,
        load_image_tokenizer,
    )
    from minidalle.prior import Prior, PriorConfig

    assert IMAGE_TOKENIZERS["minidalle image tokenizer"] is DiscreteVAE
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig(image_size=16, num_codes=8, codebook_dim=4, widths=[4, 4], res_blocks=0))
    loaded = load_image_tokenizer(model.save_pretrained(tmp_path / "tok"))
    assert isinstance(loaded, ImageTokenizer) and loaded.codes_hash() == model.codes_hash()
    Prior(
        PriorConfig(text_vocab_size=8, text_len=4, num_image_codes=8, image_grid=4, dim=8, layers=1, heads=2)
    ).save_pretrained(tmp_path / "prior")
    with pytest.raises(UserError, match="holds a minidalle prior, not an image tokenizer"):
        load_image_tokenizer(tmp_path / "prior")
    with pytest.raises(UserError, match="no such folder"):
        load_image_tokenizer(tmp_path / "missing")


# --- folders saved before the layout change (tests/fixtures/legacy, written by the code of f5a2c03) --------------
# (its samples were drawn with batch_size=1, where that code already seeded each image alone: seed + i, as now)


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((LEGACY / "expected.json").read_text())


def test_a_pipeline_saved_before_the_change_loads_and_gives_the_same_codes_samples_and_scores(expected):
    from minidalle import MiniDallePipeline

    pipe = MiniDallePipeline.from_pretrained(LEGACY / "pipeline", device="cpu")
    images = torch.tensor(expected["images_16px_area_from_shapes_train_seed0_first4"])
    assert pipe.image_tokenizer.codes_hash() == expected["gumbel_codes_hash"]
    assert pipe.image_tokenizer.encode(images).tolist() == expected["codes"]
    result = pipe(
        ["a red circle", "a blue square"],
        num_images_per_prompt=2,
        seed=3,
        temperature=1.0,
        guidance_scale=2.0,
        num_candidates=2,
    )
    assert result.codes.tolist() == expected["sampled_codes"]
    assert result.scores == pytest.approx(expected["sampled_scores"], abs=1e-4)
    (score,) = pipe.score([pipe.to_pil(images[:1])[0]], ["a red circle"])
    for key, value in expected["score"][0].items():
        assert score[key] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-4)), key


def test_a_vq_ema_tokenizer_saved_before_the_quantizer_became_a_module_loads_with_the_same_codes(expected):
    from minidalle.image_tokenizers import load_image_tokenizer

    tokenizer = load_image_tokenizer(LEGACY / "vq_ema_image_tokenizer")
    images = torch.tensor(expected["images_16px_area_from_shapes_train_seed0_first4"])
    assert tokenizer.encode(images).tolist() == expected["vq_codes"]
    assert tokenizer.codes_hash() == expected["vq_codes_hash"]  # so priors trained on it stay paired
    assert "quantizer.ema_count" in tokenizer.state_dict()


def test_the_bundled_model_loads():
    from minidalle import MiniDallePipeline
    from minidalle.pipeline import DEFAULT_MODEL

    pipe = MiniDallePipeline.from_pretrained(device="cpu")
    index = json.loads((DEFAULT_MODEL / "model_index.json").read_text())
    assert pipe.image_tokenizer.codes_hash() == index["image_tokenizer_hash"]
    assert (pipe.prior.config.image_grid, pipe.image_tokenizer.image_size) == (8, 64)
