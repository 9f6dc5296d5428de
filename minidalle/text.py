"""The BPE *text* tokenizer (stage 2's captions; the *image* tokenizer is `minidalle.image_tokenizers`).

A byte-level BPE trained with 🤗 `tokenizers` on the training captions
(lower-cased, NFKC-normalised), wrapped as a `transformers.PreTrainedTokenizerFast`
so it saves and loads with the usual `save_pretrained` / `from_pretrained`.
Byte-level means any string encodes (emoji, accents, unseen words): nothing is
ever "unknown".

`encode_captions` gives a fixed length L: captions longer than L are truncated
(and counted, with one warning per call, never an error); shorter ones are
filled with the pad id, which the prior turns into a different pad token per
position (DALL-E, section 2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .errors import UserError

logger = logging.getLogger("minidalle")

PAD_TOKEN = "<pad>"
MAX_CAPTION_CHARS = 2000  # longer captions are cut before BPE (their tail would be truncated anyway)


def train_text_tokenizer(
    captions: Iterable[str], vocab_size: int = 1000, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a lower-cased byte-level BPE on `captions`; returns a `PreTrainedTokenizerFast`."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((c[:MAX_CAPTION_CHARS] for c in captions if isinstance(c, str)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, model_max_length=10**9)


def load_text_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a text tokenizer saved with `save_pretrained`; a clear error for anything else."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder}: not a saved text tokenizer (no tokenizer.json)")
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{folder}: cannot load the text tokenizer ({exc})") from None
    if tok.pad_token_id is None:
        raise UserError(f"{folder}: the text tokenizer has no {PAD_TOKEN} token")
    return tok


def encode_captions(
    tokenizer: PreTrainedTokenizerFast, captions: Sequence[str], length: int, warn: bool = True
) -> tuple[torch.Tensor, int]:
    """Captions -> ids (B, length) int64, padded with `pad_token_id`; returns (ids, number truncated)."""
    pad = tokenizer.pad_token_id
    texts = [(c if isinstance(c, str) else "")[:MAX_CAPTION_CHARS] for c in captions]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = torch.full((len(texts), length), pad, dtype=torch.long)
    truncated = 0
    for i, ids in enumerate(encoded):
        if len(ids) > length or len(captions[i] or "") > MAX_CAPTION_CHARS:
            truncated += 1
        ids = ids[:length]
        if ids:
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    if truncated and warn:
        logger.warning("%d caption(s) longer than %d text tokens were truncated", truncated, length)
    return out, truncated


def token_lengths(tokenizer: PreTrainedTokenizerFast, captions: Sequence[str]) -> list[int]:
    """How many BPE tokens each caption takes (to choose a text length)."""
    return [
        len(ids) for ids in tokenizer([c[:MAX_CAPTION_CHARS] for c in captions], add_special_tokens=False)["input_ids"]
    ]
