"""The BPE *text* tokenizer: trained on captions, lower-cased, byte-level, fixed-length encoding."""

from __future__ import annotations

import logging

import pytest
import torch

from minidalle.errors import UserError
from minidalle.text import (
    MAX_CAPTION_CHARS,
    PAD_TOKEN,
    encode_captions,
    load_text_tokenizer,
    token_lengths,
    train_text_tokenizer,
)

CAPTIONS = [
    "a small red circle in the top left",
    "a big blue square at the bottom right",
    "two green triangles next to a yellow star",
    "a purple hexagon above a small orange circle",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_text_tokenizer(CAPTIONS, vocab_size=320, min_frequency=1)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def warnings_of(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING]


# --- training and the vocabulary ------------------------------------------------------------


def test_bpe_learns_merges_from_the_captions(tokenizer):
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id == 0  # the only special token, first in the vocabulary
    assert 256 < len(tokenizer) <= 320  # the 256 byte symbols + pad + learned merges
    # a frequent caption word becomes one token (prefix space included), not one per byte
    assert len(ids_of(tokenizer, "circle")) == 1
    assert len(ids_of(tokenizer, "a small red circle")) < len("a small red circle") // 2
    assert token_lengths(tokenizer, ["circle", "a small red circle"]) == [
        1,
        len(ids_of(tokenizer, "a small red circle")),
    ]


def test_upper_and_lower_case_encode_the_same(tokenizer):
    assert ids_of(tokenizer, "A SMALL Red CIRCLE") == ids_of(tokenizer, "a small red circle")
    a, _ = encode_captions(tokenizer, ["TWO GREEN TRIANGLES"], 8)
    b, _ = encode_captions(tokenizer, ["two green triangles"], 8)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "text", ["a café with crème brûlée", "a 🎨 and a 🦄 emoji", "zyxwvut qoph", "日本語のキャプション", "ünïcödé"]
)
def test_byte_level_encodes_anything_and_decodes_back(tokenizer, text):
    ids = ids_of(tokenizer, text)
    assert ids and all(0 < i < len(tokenizer) for i in ids)  # never the pad, never out of range
    assert tokenizer.unk_token_id is None  # there is no unknown token at all
    assert tokenizer.decode(ids).strip() == text.lower()


# --- encode_captions ------------------------------------------------------------------------


def test_short_captions_are_padded_to_exactly_length(tokenizer):
    ids, truncated = encode_captions(tokenizer, ["a small red circle", "circle"], 12)
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert truncated == 0
    n = len(ids_of(tokenizer, "a small red circle"))
    assert ids[0, :n].tolist() == ids_of(tokenizer, "a small red circle")
    assert (ids[0, n:] == tokenizer.pad_token_id).all()
    assert ids[1, 0].item() == ids_of(tokenizer, "circle")[0]
    assert (ids[1, 1:] == tokenizer.pad_token_id).all()


def test_empty_caption_is_all_pads(tokenizer):
    ids, truncated = encode_captions(tokenizer, ["", "circle"], 6)
    assert truncated == 0
    assert ids[0].tolist() == [tokenizer.pad_token_id] * 6
    assert ids[1, 0] != tokenizer.pad_token_id


def test_long_captions_are_truncated_counted_and_warned_once(tokenizer, caplog):
    long_a = "a small red circle in the top left next to a big blue square at the bottom right"
    long_b = "two green triangles next to a yellow star above a purple hexagon"
    captions = [long_a, "circle", long_b]
    with caplog.at_level(logging.WARNING, logger="minidalle"):
        ids, truncated = encode_captions(tokenizer, captions, 5)
    assert ids.shape == (3, 5)
    assert truncated == 2
    assert ids[0].tolist() == ids_of(tokenizer, long_a)[:5]  # the head is kept
    assert ids[2].tolist() == ids_of(tokenizer, long_b)[:5]
    assert (ids != tokenizer.pad_token_id).all(dim=1).tolist() == [True, False, True]
    records = warnings_of(caplog)
    assert len(records) == 1  # one warning per call, not one per caption
    assert "2 caption(s)" in records[0].getMessage()


def test_truncation_counts_exactly_the_captions_over_length(tokenizer):
    caption = "a small red circle in the top left"
    n = len(ids_of(tokenizer, caption))
    fits, truncated = encode_captions(tokenizer, [caption], n, warn=False)
    assert truncated == 0 and fits[0].tolist() == ids_of(tokenizer, caption)
    cut, truncated = encode_captions(tokenizer, [caption], n - 1, warn=False)
    assert truncated == 1 and cut[0].tolist() == ids_of(tokenizer, caption)[: n - 1]


def test_no_warning_when_nothing_is_truncated_or_when_silenced(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="minidalle"):
        encode_captions(tokenizer, ["circle", "a small red circle"], 16)
        _, truncated = encode_captions(tokenizer, ["a small red circle in the top left"], 2, warn=False)
    assert truncated == 1
    assert warnings_of(caplog) == []


def test_a_ten_thousand_character_caption_never_raises(tokenizer, caplog):
    huge = ("a small red circle 🎨 " * 600)[:10_000]
    assert len(huge) == 10_000 > MAX_CAPTION_CHARS
    with caplog.at_level(logging.WARNING, logger="minidalle"):
        ids, truncated = encode_captions(tokenizer, [huge, "circle"], 8)
    assert ids.shape == (2, 8)
    assert truncated == 1
    assert ids[0].tolist() == ids_of(tokenizer, huge[:200])[:8]
    assert len(warnings_of(caplog)) == 1
    # over-long in characters but short in tokens after the cut still counts as truncated
    spaces = " " * (MAX_CAPTION_CHARS + 10) + "circle"
    _, truncated = encode_captions(tokenizer, [spaces], 8, warn=False)
    assert truncated == 1


def test_no_captions_gives_an_empty_batch(tokenizer):
    ids, truncated = encode_captions(tokenizer, [], 4)
    assert ids.shape == (0, 4) and truncated == 0


# --- saving and loading ---------------------------------------------------------------------


def test_save_and_load_round_trip_gives_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "text_tokenizer"))
    loaded = load_text_tokenizer(tmp_path / "text_tokenizer")
    assert len(loaded) == len(tokenizer)
    assert loaded.pad_token_id == tokenizer.pad_token_id
    captions = ["A Small RED circle", "café 🎨", "", "two green triangles next to a yellow star above a purple hexagon"]
    a, ta = encode_captions(tokenizer, captions, 10, warn=False)
    b, tb = encode_captions(loaded, captions, 10, warn=False)
    assert torch.equal(a, b) and ta == tb


def test_loading_a_folder_without_tokenizer_json_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="tokenizer.json"):
        load_text_tokenizer(tmp_path)
    with pytest.raises(UserError, match="no-such-folder"):
        load_text_tokenizer(tmp_path / "no-such-folder")


def test_a_corrupt_tokenizer_json_is_a_user_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match=str(tmp_path.name)):
        load_text_tokenizer(tmp_path)
