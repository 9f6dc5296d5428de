"""Stage 2: the prior, one causal transformer over [text tokens] ++ [image codes].

Sequence (T = 1 + L + N - 1 = L + N positions; L text tokens, N = g*g codes):

    input : <bos> t_1 ... t_L  c_1 ... c_{N-1}
    target: t_1  ...  t_L  c_1 ... c_N

Vocabulary: text ids [0, V), then one pad id per text position [V, V + L)
(DALL-E 2.2: "a pad token per position"), then <bos>, then the image codes
offset after them. Outputs are masked by position in the cheapest way: text
positions have a head over text ids only, image positions a head over image
codes only, so text positions cannot put probability on image ids or the
reverse (`PriorOutput.logits` assembles the masked joint-vocabulary view).

Factorised image codes (`image_code_levels`, for an FSQ image tokenizer): an FSQ code is the
mixed-radix number of a few digits (`fsq_levels`, e.g. 8·6·6·5·5 = 7,200 codes). With the levels
set, a code is embedded as the sum of one embedding per digit, and the image head predicts each
digit (one softmax per digit; a code's log-probability is the sum of its digits'). A code whose
digit combination never occurs in the training images is then as reachable as any other: with a
head over whole codes it gets ~zero probability, and a finer tokenizer's held-out compositions
need such codes (`bench/unseen_codes.py`). `image_logits` stay (..., K) log-probabilities, so
sampling, guidance and scoring do not change.

Positions: text positions get a learned 1-D embedding; image positions get
learned row + column embeddings of the code they hold (the paper's 2-D
awareness), so a code "knows" where it sits on the grid.

Why our own module and not a `transformers` backbone: the model is a plain
pre-LayerNorm GPT (nanoGPT-style) with fused QKV and PyTorch SDPA attention;
what we need beyond it — two masked heads, per-position pads, row/column
embeddings and a pre-allocated KV cache that decodes one position per step
(`prefill` / `step`, driven by `minidalle.prior.sampling`) — would fight a backbone's cache and mask machinery, and
per-step framework overhead dominates decode time at these sizes (measured in
bench/; a GPT-2 backbone's cached loop was ~1.4x slower than a pre-allocated
cache in our trial). `gradient_checkpointing` is an option here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from ..radix import code_digits
from ..serialization import SavedModel, config_from_dict

KIND = "minidalle prior"


@dataclass
class PriorConfig:
    text_vocab_size: int = 1000  # V: the BPE text tokenizer's vocabulary
    text_len: int = 32  # L
    num_image_codes: int = 512  # K of the image tokenizer
    image_grid: int = 8  # g: codes per side
    dim: int = 256
    layers: int = 4
    heads: int = 8
    mlp_ratio: int = 4
    dropout: float = 0.0  # training only: on the embeddings, the attention weights and both residual branches
    loss_img_weight: float = 7.0  # loss = (L_text + w * L_image) / (1 + w)
    caption_dropout: float = 0.15  # training: caption -> empty caption, for classifier-free guidance
    gradient_checkpointing: bool = False
    image_positions: str = "rowcol"  # rowcol: row + column embeddings (2-D); flat: one learned embedding per position
    # an FSQ tokenizer's levels: codes embedded and predicted digit by digit (module docstring); []: whole codes
    image_code_levels: list[int] = field(default_factory=list)
    # the image tokenizer this prior was trained with (checked when a pipeline is assembled)
    image_tokenizer_hash: str = ""

    # written by earlier versions, never read: dropped on load
    LEGACY_FIELDS: ClassVar[tuple[str, ...]] = ("text_tokenizer_hash",)

    def __post_init__(self) -> None:
        if self.image_positions not in ("rowcol", "flat"):
            raise UserError(f"prior config: image_positions must be 'rowcol' or 'flat', got {self.image_positions!r}")
        if self.dim % self.heads:
            raise UserError(f"prior config: dim {self.dim} is not divisible by heads {self.heads}")
        for name in ("text_vocab_size", "text_len", "num_image_codes", "image_grid", "layers"):
            if getattr(self, name) < 1:
                raise UserError(f"prior config: {name} must be >= 1")
        self.image_code_levels = [int(level) for level in self.image_code_levels]
        if self.image_code_levels and (
            min(self.image_code_levels) < 2 or math.prod(self.image_code_levels) != self.num_image_codes
        ):
            raise UserError(
                f"prior config: image_code_levels {self.image_code_levels} must be levels >= 2 whose product is "
                f"num_image_codes ({self.num_image_codes})"
            )

    @property
    def num_image_tokens(self) -> int:  # N
        return self.image_grid**2

    @property
    def seq_len(self) -> int:  # T
        return self.text_len + self.num_image_tokens

    @property
    def bos_id(self) -> int:
        return self.text_vocab_size + self.text_len

    @property
    def image_offset(self) -> int:
        return self.bos_id + 1

    @property
    def vocab_size(self) -> int:  # the joint vocabulary
        return self.image_offset + self.num_image_codes

    @property
    def factorised(self) -> bool:
        return bool(self.image_code_levels)

    @classmethod
    def from_dict(cls, values: dict) -> PriorConfig:
        return config_from_dict(cls, values, "prior")


PRESETS: dict[str, dict] = {
    "tiny": dict(dim=32, layers=2, heads=2),
    "small": dict(dim=256, layers=4, heads=8),
    "base": dict(dim=512, layers=8, heads=8),
}


@dataclass
class PriorOutput:
    """Training/scoring outputs. Losses are mean nats per token of each part."""

    loss: torch.Tensor | None
    loss_text: torch.Tensor | None
    loss_image: torch.Tensor | None
    text_logits: torch.Tensor  # (B, L, V + L): predicts text ids and per-position pads
    image_logits: torch.Tensor | None  # (B, N, K): predicts image codes (None: a factorised prior's training loss,
    # computed from its digits alone; `compute_loss=False` gives them)

    @property
    def logits(self) -> torch.Tensor:
        """(B, T, joint vocab) with -inf outside each position's own part of the vocabulary."""
        if self.image_logits is None:
            raise ValueError("a factorised prior's training output has no image logits; call with compute_loss=False")
        b, text_len, vt = self.text_logits.shape
        n, k = self.image_logits.shape[1:]
        out = self.text_logits.new_full((b, text_len + n, vt + 1 + k), float("-inf"))
        out[:, :text_len, :vt] = self.text_logits
        out[:, text_len:, vt + 1 :] = self.image_logits
        return out


KVCache = tuple[torch.Tensor, torch.Tensor]  # keys and values of one block, each (B, H, T, Dh)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)).

    `forward` runs a chunk of positions from the sequence's start (training, or the
    prompt pass that fills a KV cache); `step` runs one new position against the cache.
    """

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.fc = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim, bias=False)
        self.config = cfg  # its Prior's: dropout is read from it, so a fine-tune that sets it reaches every block

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, t, C) -> q, k, v stacked: (3, B, H, t, Dh)."""
        b, t, c = x.shape
        return self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)

    def _residuals(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attention output y (B, H, t, Dh) -> the block's output: both residual branches."""
        b, t, c = x.shape
        p = self.config.dropout if self.training else 0.0  # nanoGPT's resid_dropout; none when sampling
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)), p)
        return x + F.dropout(self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh")), p)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Causal self-attention over x (B, t, C) from position 0; with `cache`, its keys and values
        are also written into the cache's first t positions."""
        q, k, v = self._qkv(x)
        if cache is not None:
            t = x.shape[1]
            cache[0][:, :, :t] = k
            cache[1][:, :, :t] = v
        p = self.config.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        return self._residuals(x, y)

    def step(self, x: torch.Tensor, cache: KVCache, pos: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """One new position x (B, 1, C) at `pos` (a 0-d tensor): static shapes, so `torch.compile` makes one graph.

        Its key and value go into the full-length cache (zero-initialised); attention
        reads every cached position, with `visible` (1, T) masking those after `pos`.
        """
        q, k, v = self._qkv(x)
        k_cache, v_cache = cache
        k_cache.index_copy_(2, pos.view(1), k)
        v_cache.index_copy_(2, pos.view(1), v)
        if torch.compiler.is_compiling():
            # one query: inductor fuses the scale, mask and softmax around two small matmuls, which
            # measured 8-23% faster per step than calling SDPA's CPU kernel from the graph (batch 1-16)
            scores = (q @ k_cache.transpose(-1, -2)) * q.shape[-1] ** -0.5
            y = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v_cache
        else:
            y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible)
        return self._residuals(x, y)


class Prior(SavedModel, nn.Module):
    """p(image codes | caption) as one GPT over text ++ image tokens."""

    KIND = KIND
    CONFIG_CLASS = PriorConfig

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        # factorised codes have digit embeddings instead of a row per code (no joint id is looked up past <bos>)
        self.token_emb = nn.Embedding(c.image_offset if c.factorised else c.vocab_size, c.dim)
        if c.factorised:
            self.digit_emb = nn.Embedding(sum(c.image_code_levels), c.dim)
        self.text_pos = nn.Embedding(c.text_len + 1, c.dim)  # <bos> + L text positions
        if c.image_positions == "rowcol":
            self.row_emb = nn.Embedding(c.image_grid, c.dim)
            self.col_emb = nn.Embedding(c.image_grid, c.dim)
        else:
            self.image_pos = nn.Embedding(c.num_image_tokens, c.dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.dim)
        self.text_head = nn.Linear(c.dim, c.text_vocab_size + c.text_len, bias=False)
        self.image_head = nn.Linear(c.dim, sum(c.image_code_levels) if c.factorised else c.num_image_codes, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of residual projections
            nn.init.normal_(block.proj.weight, std=0.02 / (2 * c.layers) ** 0.5)
            nn.init.normal_(block.out.weight, std=0.02 / (2 * c.layers) ** 0.5)
        idx = torch.arange(c.num_image_tokens)
        self.register_buffer("image_rows", idx // c.image_grid, persistent=False)
        self.register_buffer("image_cols", idx % c.image_grid, persistent=False)
        if c.factorised:  # digit i of code k (FSQ's mixed radix, digit 0 least significant), and where each
            # digit's rows start in digit_emb
            levels = torch.tensor(c.image_code_levels)
            self.register_buffer("code_digits", code_digits(torch.arange(c.num_image_codes), levels), False)
            self.register_buffer("digit_offsets", torch.cumsum(levels, 0) - levels, persistent=False)  # (D,)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    # ------------------------------------------------------------ inputs
    def text_tokens(self, text_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """Text ids (B, L) with `pad_id` -> joint ids with a distinct pad id per position."""
        positions = torch.arange(text_ids.shape[1], device=text_ids.device)
        return torch.where(text_ids == pad_id, self.config.text_vocab_size + positions, text_ids)

    def embed_prefix(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) joint text tokens -> (B, L + 1, C) embeddings of <bos> + text."""
        bos = torch.full_like(text_tokens[:, :1], self.config.bos_id)
        tokens = torch.cat([bos, text_tokens], dim=1)
        return self.token_emb(tokens) + self.text_pos.weight[: tokens.shape[1]]

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n) image codes -> (B, n, C): their rows of the joint embedding, or the sum of their digits'."""
        if self.config.factorised:
            return self.digit_emb(self.code_digits[codes] + self.digit_offsets).sum(-2)
        return self.token_emb(codes + self.config.image_offset)

    def embed_image(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, n) image codes at grid positions start..start+n-1 -> (B, n, C)."""
        n = codes.shape[1]
        tokens = self.embed_codes(codes)
        if self.config.image_positions == "flat":
            return tokens + self.image_pos.weight[start : start + n]
        rows, cols = self.image_rows[start : start + n], self.image_cols[start : start + n]
        return tokens + self.row_emb(rows) + self.col_emb(cols)

    def embed_image_at(self, codes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, 1) codes at grid position `index` (a 0-d tensor) -> (B, 1, C); `embed_image` without Python ints."""
        tokens = self.embed_codes(codes)
        if self.config.image_positions == "flat":
            return tokens + self.image_pos(index)
        g = self.config.image_grid
        return tokens + self.row_emb(index // g) + self.col_emb(index % g)

    def empty_text_tokens(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The empty caption (every position its pad) as joint text tokens (batch, L): the unconditional prompt."""
        return (self.config.text_vocab_size + torch.arange(self.config.text_len, device=device)).expand(batch, -1)

    def drop_captions(
        self, text_tokens: torch.Tensor, p: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Replace each caption by the empty caption (all per-position pads) with probability p."""
        drop = torch.rand(text_tokens.shape[0], device=text_tokens.device, generator=generator) < p
        return torch.where(drop[:, None], self.empty_text_tokens(1, text_tokens.device), text_tokens)

    def with_text_len(self, text_len: int) -> Prior:
        """This prior with `text_len` text positions (more than it has: a fine-tune on longer captions).

        Every learned row keeps its meaning: text ids, the old pads, <bos> and the image codes keep their
        embeddings (at their new joint ids), every image position its embedding. Each new position starts
        as a copy of the last one (its pad's embedding, its position embedding and its pad's output row),
        so a caption that fitted before looks to the model like one with a longer run of trailing pads.
        """
        c = self.config
        if text_len == c.text_len:
            return self
        if text_len < c.text_len:
            raise UserError(
                f"--text_len {text_len}: the prior has {c.text_len} text positions; a fine-tune can add "
                "positions, not remove them"
            )
        old = self.state_dict()
        grown = Prior(replace(c, text_len=text_len)).to(device=old["token_emb.weight"].device)
        state = grown.state_dict()
        v, n, extra = c.text_vocab_size, c.text_len, text_len - c.text_len
        for key, value in old.items():
            if key == "token_emb.weight":  # [text ids | pads | <bos> | image codes]
                state[key] = torch.cat([value[: v + n], value[v + n - 1 : v + n].expand(extra, -1), value[v + n :]])
            elif key in ("text_head.weight", "text_pos.weight"):  # [text ids | pads], [<bos> | L text positions]
                state[key] = torch.cat([value, value[-1:].expand(extra, -1)])
            else:
                state[key] = value
        grown.load_state_dict(state)
        return grown.to(dtype=old["token_emb.weight"].dtype).train(self.training)

    # ------------------------------------------------------------ forward
    def forward(self, text_tokens: torch.Tensor, image_codes: torch.Tensor, compute_loss: bool = True) -> PriorOutput:
        """text_tokens (B, L) joint ids (see `text_tokens`), image_codes (B, N) in [0, K)."""
        c = self.config
        if text_tokens.shape[1] != c.text_len or image_codes.shape[1] != c.num_image_tokens:
            raise ValueError(
                f"expected text (B, {c.text_len}) and codes (B, {c.num_image_tokens}), "
                f"got {tuple(text_tokens.shape)} and {tuple(image_codes.shape)}"
            )
        if self.training and c.caption_dropout > 0:
            text_tokens = self.drop_captions(text_tokens, c.caption_dropout)
        x = torch.cat([self.embed_prefix(text_tokens), self.embed_image(image_codes[:, :-1])], dim=1)  # (B, T, C)
        x = F.dropout(x, c.dropout if self.training else 0.0)
        for block in self.blocks:
            if c.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_f(x)
        text_logits = self.text_head(x[:, : c.text_len])  # (B, L, V + L)
        if not compute_loss:
            return PriorOutput(None, None, None, text_logits, self.image_logits(x[:, c.text_len :]))
        loss_text = F.cross_entropy(text_logits.float().flatten(0, 1), text_tokens.flatten())
        if c.factorised:  # the sum of the digits' cross-entropies, without the (B, N, K) joint logits
            digit_logits = self.image_head(x[:, c.text_len :]).float().split(c.image_code_levels, -1)
            digits = self.code_digits[image_codes]  # (B, N, D)
            loss_image = sum(
                F.cross_entropy(part.flatten(0, 1), digits[..., i].flatten()) for i, part in enumerate(digit_logits)
            )
            image_logits = None
        else:
            image_logits = self.image_logits(x[:, c.text_len :])  # (B, N, K)
            loss_image = F.cross_entropy(image_logits.float().flatten(0, 1), image_codes.flatten())
        w = c.loss_img_weight
        loss = (loss_text + w * loss_image) / (1 + w)
        return PriorOutput(loss, loss_text.detach(), loss_image.detach(), text_logits, image_logits)

    @torch.no_grad()
    def image_nll(self, text_tokens: torch.Tensor, image_codes: torch.Tensor) -> torch.Tensor:
        """-log p(codes | caption) in nats, summed over the N codes: (B,)."""
        out = self.forward(text_tokens, image_codes, compute_loss=False)
        logp = F.log_softmax(out.image_logits.float(), dim=-1)
        return -logp.gather(-1, image_codes.long()[..., None]).squeeze(-1).sum(-1)

    # ------------------------------------------------------------ decoding with a KV cache
    def new_cache(self, batch: int, device: torch.device | str | None = None) -> list[KVCache]:
        """Full-length key/value buffers for `batch` sequences, one pair per block.

        Zeros, not empty: a `step` reads every position (masked), and 0 * garbage may be NaN.
        """
        c = self.config
        dtype = next(self.parameters()).dtype
        shape = (batch, c.heads, c.seq_len, c.dim // c.heads)
        return [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in self.blocks
        ]

    def prefill(
        self, text_tokens: torch.Tensor, image_codes: torch.Tensor | None = None, cache: list[KVCache] | None = None
    ) -> torch.Tensor:
        """<bos> + the caption (B, L) + the first n image codes (B, n), from position 0 -> logits (B, K)
        of image code n. With `cache` (see `new_cache`), every position's keys and values are written into it."""
        x = self.embed_prefix(text_tokens)
        if image_codes is not None and image_codes.shape[1]:
            x = torch.cat([x, self.embed_image(image_codes, 0)], dim=1)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self._next_logits(x)

    def step(self, codes: torch.Tensor, pos: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """The image code (B, 1) at sequence position `pos` (a 0-d tensor; every earlier position is in
        `cache`) -> logits (B, K) of the next code. Static shapes: one `torch.compile` graph serves every step."""
        c = self.config
        x = self.embed_image_at(codes, pos - (c.text_len + 1))
        visible = (torch.arange(c.seq_len, device=pos.device) <= pos)[None]
        for block, block_cache in zip(self.blocks, cache):
            x = block.step(x, block_cache, pos, visible)
        return self._next_logits(x)

    def _next_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks' output (B, t, C) -> logits (B, K) of the image code after its last position."""
        return self.image_logits(self.ln_f(x[:, -1])).float()

    def image_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The final hidden states (..., C) of image positions -> logits (..., K) over image codes; factorised:
        the codes' log-probabilities, each the sum of its digits' (one log-softmax per digit)."""
        logits = self.image_head(h)
        if not self.config.factorised:
            return logits
        parts = logits.float().split(self.config.image_code_levels, -1)
        return sum(part.log_softmax(-1)[..., self.code_digits[:, i]] for i, part in enumerate(parts)).to(logits.dtype)

    # ------------------------------------------------------------ parameters
    def embedding_modules(self) -> list[nn.Module]:
        """The token and position embeddings (what `--freeze_embeddings` and `num_parameters(False)` leave out)."""
        names = ("token_emb", "digit_emb", "text_pos", "row_emb", "col_emb", "image_pos")
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def num_parameters(self, embeddings: bool = True) -> int:
        skip = {id(p) for m in self.embedding_modules() for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if embeddings or id(p) not in skip)
