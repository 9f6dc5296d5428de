"""VQ-VAE's quantizer: each cell's vector snaps to the nearest codebook vector (straight-through gradient).

The loss adds ||sg[E(x)] - e||^2 (`codebook`; or EMA codebook updates, with
optional dead-code restarts) + beta * ||E(x) - sg[e]||^2 (`commitment`), both
means per dimension.

Two remedies for codebook collapse, each a config switch:
- `vq_l2` (ViT-VQGAN, Yu et al. 2021): encoder vectors and codes are l2-normalised
  before the lookup, so the distance is a cosine one and the decoder reads unit
  vectors; with a low `codebook_dim` (8-32) most codes stay in use.
- `vq_kmeans_init` (SoundStream, Jukebox): the codebook starts as k-means centroids
  of the encoder's vectors on the first training batch instead of a random draw
  (codes far from every vector are never picked and never move).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput


class VectorQuantizer(Quantizer):
    def __init__(self, config) -> None:
        super().__init__()
        self.num_codes, self.dim = config.num_codes, config.codebook_dim
        self.ema, self.decay, self.restart_dead = config.vq_ema, config.vq_ema_decay, config.vq_restart_dead
        self.l2, self.kmeans_init = config.vq_l2, config.vq_kmeans_init
        self.term_names = ("commitment",) if self.ema else ("codebook", "commitment")
        self.codebook = nn.Embedding(config.num_codes, config.codebook_dim)
        nn.init.uniform_(self.codebook.weight, -1 / config.num_codes, 1 / config.num_codes)
        if self.ema:
            self.codebook.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(config.num_codes))
            self.register_buffer("ema_sum", self.codebook.weight.detach().clone())
        if self.kmeans_init:  # saved with the model: a loaded or resumed codebook is not initialised again
            self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def encoder_channels(config) -> int:
        return config.codebook_dim

    def _codes_table(self) -> torch.Tensor:
        e = self.codebook.weight.float()  # (K, D)
        return F.normalize(e, dim=1) if self.l2 else e

    def _vectors(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(h.float(), dim=1) if self.l2 else h.float()

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances (B, K, h, w) from encoder vectors z (B, D, h, w) to every code."""
        e = self._codes_table()
        z = self._vectors(z)
        zz = z.pow(2).sum(1, keepdim=True)  # (B, 1, h, w)
        ze = torch.einsum("bdhw,kd->bkhw", z, e)
        return zz - 2 * ze + e.pow(2).sum(1)[None, :, None, None]

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return -self.distances(h)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes.long(), self._codes_table()).permute(0, 3, 1, 2)

    def forward(self, h: torch.Tensor, temperature: float = 1.0) -> QuantizerOutput:
        if self.kmeans_init and self.training and not bool(self.initialised):
            self._kmeans(self._vectors(h.detach()))
        codes = self.distances(h.detach()).argmin(1)  # (B, h, w)
        e = F.embedding(codes, self._codes_table()).permute(0, 3, 1, 2)  # (B, D, h, w)
        z = self._vectors(h)
        terms = {"commitment": F.mse_loss(z, e.detach())}
        if self.ema:
            if self.training:
                self._ema_update(z.detach(), codes)
        else:
            terms = {"codebook": F.mse_loss(e, z.detach()), **terms}
        z_q = z + (e - z).detach()  # straight-through
        return QuantizerOutput(z_q, codes, terms)

    def regularizer(self, terms: dict[str, torch.Tensor], beta: float, cells: int, pixels: int) -> torch.Tensor:
        if self.ema:
            return beta * terms["commitment"]
        return terms["codebook"] + beta * terms["commitment"]

    def code_state(self) -> dict[str, torch.Tensor]:
        return {"codebook.weight": self.codebook.weight}

    @torch.no_grad()
    def _kmeans(self, z: torch.Tensor, iterations: int = 10) -> None:
        """Codebook <- k-means centroids of this batch's vectors (spherical with `vq_l2`); rank 0's everywhere.

        A batch with fewer vectors than codes seeds the surplus codes with jittered copies of its vectors."""
        k = self.num_codes
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        generator = torch.Generator(device="cpu").manual_seed(0)
        picks = torch.randperm(flat.shape[0], generator=generator)[:k]
        if len(picks) < k:
            picks = torch.cat([picks, torch.randint(0, flat.shape[0], (k - len(picks),), generator=generator)])
        centroids = flat[picks.to(flat.device)].clone()
        for _ in range(iterations):
            nearest = torch.cdist(flat, centroids).argmin(1)
            counts = torch.bincount(nearest, minlength=k).float()
            sums = torch.zeros_like(centroids).index_add_(0, nearest, flat)
            used = counts > 0
            centroids[used] = sums[used] / counts[used, None]
            if self.l2:
                centroids = F.normalize(centroids, dim=1)
        jitter = torch.randn(centroids.shape, generator=generator).to(centroids) * 1e-3 * flat.std()
        centroids = centroids + jitter  # duplicated seeds must not stay identical
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(centroids, src=0)
        self.codebook.weight.copy_(centroids)
        if self.ema:
            self.ema_sum.copy_(centroids)
            self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA codebook (van den Oord et al., appendix) with optional dead-code restarts.

        Batch statistics are summed over processes, so every rank keeps the same codebook.
        """
        k, d = self.num_codes, self.dim
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        codes = codes.reshape(-1)  # counts and sums per code without a (cells, K) one-hot matrix
        counts = torch.bincount(codes, minlength=k).float()
        sums = torch.zeros(k, d, device=flat.device, dtype=flat.dtype).index_add_(0, codes, flat)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing
        self.codebook.weight.copy_(self.ema_sum / smoothed[:, None])
        if self.restart_dead:
            dead = self.ema_count < 1.0  # used by less than one vector per batch, on average (Jukebox)
            if dead.any():
                picks = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
                fresh = flat[picks]
                if distributed:
                    torch.distributed.broadcast(fresh, src=0)
                self.codebook.weight[dead] = fresh
                self.ema_sum[dead] = fresh
                self.ema_count[dead] = 1.0
