"""Seeded random projections that never hold a dense p x d matrix they cannot afford.

The matrix is defined block by block: rows [b*R, (b+1)*R) of P (p x d) come from a generator
seeded with (seed, b, kind), so every process with the same seed sees the same P whatever its
shard, and a block can be regenerated on demand instead of kept.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

BLOCK_ROWS = 4096
DEFAULT_CACHE_BYTES = 1 << 30  # keep generated blocks up to 1 GiB; regenerate beyond


class Projector(Protocol):
    """Maps flattened gradients (B, p) to features (B, d)."""

    input_dim: int
    output_dim: int

    def project(self, vectors: torch.Tensor) -> torch.Tensor: ...


def _block_rng(seed: int, block: int, kind: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, block, kind])))


class RademacherProjector:
    """Dense Rademacher JL projection, entries +-1/sqrt(d): the reference option (LESS/TRAK)."""

    KIND = 1

    def __init__(self, input_dim: int, output_dim: int, seed: int, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.input_dim, self.output_dim, self.seed = input_dim, output_dim, seed
        self.blocks = math.ceil(input_dim / BLOCK_ROWS)
        block_bytes = BLOCK_ROWS * output_dim * 4
        self._cache_limit = max(0, cache_bytes // block_bytes)
        self._cache: dict[int, torch.Tensor] = {}

    def block(self, index: int) -> torch.Tensor:
        """Rows [index*BLOCK_ROWS, ...) of P as float32 (R, d)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        rows = min(BLOCK_ROWS, self.input_dim - index * BLOCK_ROWS)
        bits = _block_rng(self.seed, index, self.KIND).integers(0, 2, size=(rows, self.output_dim), dtype=np.int8)
        matrix = torch.from_numpy((bits.astype(np.float32) * 2 - 1) / math.sqrt(self.output_dim))
        if len(self._cache) < self._cache_limit:
            self._cache[index] = matrix
        return matrix

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.float()
        out = torch.zeros(vectors.shape[0], self.output_dim, dtype=torch.float32, device=vectors.device)
        for index in range(self.blocks):
            start = index * BLOCK_ROWS
            block = self.block(index).to(vectors.device)
            out += vectors[:, start : start + block.shape[0]] @ block
        return out


class CountSketchProjector:
    """Sparse JL: coordinate i goes to bucket h(i) with sign s(i). O(p) per vector, O(p) memory."""

    KIND = 2

    def __init__(self, input_dim: int, output_dim: int, seed: int):
        self.input_dim, self.output_dim, self.seed = input_dim, output_dim, seed
        buckets, signs = [], []
        for index in range(math.ceil(input_dim / BLOCK_ROWS)):
            rows = min(BLOCK_ROWS, input_dim - index * BLOCK_ROWS)
            rng = _block_rng(seed, index, self.KIND)
            buckets.append(rng.integers(0, output_dim, size=rows, dtype=np.int64))
            signs.append(rng.integers(0, 2, size=rows, dtype=np.int8).astype(np.float32) * 2 - 1)
        self.buckets = torch.from_numpy(np.concatenate(buckets))
        self.signs = torch.from_numpy(np.concatenate(signs))

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.float()
        signed = vectors * self.signs.to(vectors.device)
        out = torch.zeros(vectors.shape[0], self.output_dim, dtype=torch.float32, device=vectors.device)
        index = self.buckets.to(vectors.device).expand(vectors.shape[0], -1)
        return out.scatter_add_(1, index, signed)


def make_projector(kind: str, input_dim: int, output_dim: int, seed: int) -> Projector:
    if kind == "rademacher":
        return RademacherProjector(input_dim, output_dim, seed)
    if kind == "countsketch":
        return CountSketchProjector(input_dim, output_dim, seed)
    raise ValueError(f"gradients.projection: unknown projection '{kind}'")
