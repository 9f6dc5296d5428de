"""Fuzzing with hypothesis: random strings through sample.py's prompt handling and the caption encoder.
The contract: a valid image set (one PNG per prompt, in the manifest) or a `UserError`; never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from minidalle.cli.sample import main as sample_main
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig
from minidalle.pipeline import check_prompts
from minidalle.pipeline.io import save_pipeline
from minidalle.prior import Prior, PriorConfig
from minidalle.text import MAX_CAPTION_CHARS, encode_captions, train_text_tokenizer

SIZE, L = 16, 8
# any Unicode text, including control characters, surrogate-free emoji, combining marks and long runs
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)
LONG_TEXT = st.one_of(TEXT, st.text(min_size=MAX_CAPTION_CHARS - 5, max_size=MAX_CAPTION_CHARS + 50))
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_text_tokenizer(
        ["a small red circle in the top left", "a big blue square"] * 4, vocab_size=300, min_frequency=1
    )


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    image_tokenizer = DiscreteVAE(
        DVAEConfig(image_size=SIZE, num_codes=16, codebook_dim=8, widths=[8, 8], res_blocks=0)
    )
    prior = Prior(
        PriorConfig(
            text_vocab_size=len(tokenizer),
            text_len=L,
            num_image_codes=16,
            image_grid=4,
            dim=16,
            layers=1,
            heads=2,
            image_tokenizer_hash=image_tokenizer.codes_hash(),
        )
    )
    return save_pipeline(tmp_path_factory.mktemp("model") / "pipeline", image_tokenizer, tokenizer, prior)


@FUZZ
@given(st.lists(LONG_TEXT, max_size=4))
def test_check_prompts_returns_clean_prompts_or_a_user_error(prompts):
    try:
        checked = check_prompts(prompts)
    except UserError as error:
        assert "prompt" in str(error)
        return
    assert len(checked) == len(prompts)
    for prompt in checked:
        assert prompt and prompt == prompt.strip() and "\x00" not in prompt and len(prompt) <= MAX_CAPTION_CHARS


@FUZZ
@given(st.lists(LONG_TEXT, min_size=1, max_size=4))
def test_the_caption_encoder_gives_ids_in_the_vocabulary_for_any_text(tokenizer, captions):
    ids, truncated = encode_captions(tokenizer, captions, L, warn=False)
    assert ids.shape == (len(captions), L) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < len(tokenizer)
    assert 0 <= truncated <= len(captions)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(LONG_TEXT, min_size=1, max_size=3))
def test_sample_py_gives_an_image_per_prompt_or_a_user_error(model_dir, tmp_path_factory, prompts):
    folder = tmp_path_factory.mktemp("fuzz")
    prompts_file = folder / "prompts.txt"
    prompts_file.write_text("\n".join(prompts), encoding="utf-8", errors="surrogatepass")
    out = folder / "out"
    try:
        sample_main(
            ["--prompts_file", str(prompts_file), "--model", str(model_dir), "--out", str(out), "--num_images", "1"]
        )
    except UserError as error:
        assert "prompt" in str(error)
        return
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and len(rows) == len(
        [line for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    )
    for row in rows:
        with Image.open(out / row["file"]) as image:
            assert image.size == (SIZE, SIZE)
