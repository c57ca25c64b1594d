"""Seeded random projections that never hold a dense p x d matrix they cannot afford.

P is a p x d matrix (a row per gradient coordinate). Both kinds define it row block by row block:
rows [b*R, (b+1)*R) (R = `BLOCK_ROWS`, fewer for a dense P with a large d) come from a Philox
generator seeded with (seed, b, kind), drawn on the CPU with numpy. So every process with the same seed sees the same P,
whatever its shard, device or thread count, and any block can be regenerated on demand.

- `RademacherProjector` (the LESS-identical option, as LESS/TRAK): dense, entries +-1/sqrt(d).
  Block b is `R*d/8` random bytes, R = `dense_block_rows(d)` (= `BLOCK_ROWS` up to d = 65536, then
  halved until a float32 block fits in `MAX_DENSE_BLOCK_BYTES` = 1 GiB, so no dense block ever
  exceeds 1 GiB whatever the projection dimension); each byte gives 8 consecutive row-major
  entries, most significant bit first, 1 -> +1/sqrt(d) and 0 -> -1/sqrt(d). Projecting costs p*d
  entries per call (generated blocks are cached up to 1 GiB, the rest regenerated), so it
  dominates extraction on CPU once p is large (docs/performance.md: about 100x the fwd+bwd floor at
  r=128, seq 128, 20x at seq 512).
- `CountSketchProjector` (the fast option, the default): row i of P has a single nonzero, a
  random sign s(i) in column h(i). Block b draws R buckets (integers in [0, d)) and then R signs (bits, 1 -> +1); a
  last, partial block uses the first rows of those draws.
  O(p) memory (5 bytes per coordinate) and O(p) work per vector. For any two vectors its
  inner-product estimate is unbiased with exactly the same variance as the dense Rademacher one,
  (|x|^2 |y|^2 + <x,y>^2 - 2 sum_i x_i^2 y_i^2) / d; norms and their covariances match too. Its
  error is less concentrated, though: on LoRA gradients (r=8, 32 examples, d=8192) the RMS cosine
  error over 16 seeds was 0.009 (0.005-0.015 per seed) against 0.007 (0.005-0.010) for the dense
  projection. bench/gradients.py measures both against the exact cosines.
- `IdentityProjector`: d = p, no projection; tests and the benchmark use it to see raw gradients.

Every projector maps (B, p) to (B, d) with `project`. Those that can also take a slice of the
coordinates (`project_segment`: out += x[:, offset:offset+n] @ P[offset:offset+n]) let the
gradient engine project layer by layer without ever concatenating a full gradient.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np
import torch

BLOCK_ROWS = 4096
MAX_DENSE_BLOCK_BYTES = 1 << 30  # no dense float32 block larger than this, for any d
DEFAULT_CACHE_BYTES = 1 << 30  # keep generated blocks up to 1 GiB; regenerate beyond


def dense_block_rows(output_dim: int, max_block_bytes: int = MAX_DENSE_BLOCK_BYTES) -> int:
    """Rows per dense block: BLOCK_ROWS, halved until R * d float32 entries fit in max_block_bytes.

    R depends on d alone, so P is the same in every process; for d <= 65536 it is BLOCK_ROWS.
    Raises ValueError when even one row (d float32 entries) exceeds the bound.
    """
    if output_dim * 4 > max_block_bytes:
        raise ValueError(
            f"gradients.projectionDim: a dense projection row of d={output_dim} float32 entries exceeds "
            f"{max_block_bytes} bytes; use a smaller projectionDim or projection 'countsketch'"
        )
    rows = BLOCK_ROWS
    while rows > 1 and rows * output_dim * 4 > max_block_bytes:
        rows //= 2
    return rows


@runtime_checkable
class Projector(Protocol):
    """Maps flattened gradients (B, p) to features (B, d)."""

    input_dim: int
    output_dim: int

    def project(self, vectors: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SegmentProjector(Projector, Protocol):
    """A projector that can project a contiguous slice of the coordinates on its own."""

    def project_segment(self, segment: torch.Tensor, offset: int, out: torch.Tensor, *, consume: bool = False) -> None:
        """out (B, d) += segment (B, n) @ P[offset : offset + n] (float32).

        consume=True lets the projector overwrite `segment` (a scratch buffer) instead of copying it.
        """
        ...


def _block_rng(seed: int, block: int, kind: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, block, kind])))


def _check_dims(input_dim: int, output_dim: int) -> None:
    if input_dim < 1 or output_dim < 1:
        raise ValueError(f"projection dimensions must be positive, got p={input_dim}, d={output_dim}")


class RademacherProjector:
    """Dense Rademacher JL projection, entries +-1/sqrt(d): the reference option (LESS/TRAK)."""

    KIND = 1

    def __init__(
        self, input_dim: int, output_dim: int, seed: int, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_block_bytes: int = MAX_DENSE_BLOCK_BYTES,
    ):
        _check_dims(input_dim, output_dim)
        self.input_dim, self.output_dim, self.seed = input_dim, output_dim, seed
        self.block_rows = dense_block_rows(output_dim, max_block_bytes)
        self.blocks = math.ceil(input_dim / self.block_rows)
        block_bytes = self.block_rows * output_dim * 4
        self._cache_limit = max(0, cache_bytes // block_bytes)
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._last: tuple[tuple[int, torch.device], torch.Tensor] | None = None  # a block straddling segments
        scale = 1.0 / math.sqrt(output_dim)
        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # (256, 8), MSB first
        self._byte_table = torch.from_numpy(np.where(bits == 1, scale, -scale).astype(np.float32))
        self.largest_block_bytes = 0  # the largest dense block this projector has materialized

    def _rows(self, index: int) -> int:
        return min(self.block_rows, self.input_dim - index * self.block_rows)

    def _generate(self, index: int) -> torch.Tensor:
        rows = self._rows(index)
        entries = rows * self.output_dim
        raw = _block_rng(self.seed, index, self.KIND).bytes(math.ceil(entries / 8))
        codes = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        matrix = self._byte_table.index_select(0, codes).reshape(-1)[:entries].reshape(rows, self.output_dim)
        self.largest_block_bytes = max(self.largest_block_bytes, matrix.numel() * 4)
        return matrix

    def block(self, index: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows [index*block_rows, ...) of P as float32 (R, d) on `device`."""
        key = (index, torch.device(device))
        cached = self._cache.get(key)
        if cached is None and self._last is not None and self._last[0] == key:
            cached = self._last[1]
        if cached is not None:
            return cached
        matrix = self._generate(index).to(key[1])
        if len(self._cache) < self._cache_limit:
            self._cache[key] = matrix
        else:
            self._last = (key, matrix)
        return matrix

    def project_segment(self, segment: torch.Tensor, offset: int, out: torch.Tensor, *, consume: bool = False) -> None:
        stop = offset + segment.shape[1]
        if offset < 0 or stop > self.input_dim:
            raise ValueError(f"segment [{offset}, {stop}) is outside the projection's input 0..{self.input_dim}")
        segment = segment.float()
        position = offset
        rows = self.block_rows
        while position < stop:
            index = position // rows
            block = self.block(index, out.device)
            first = position - index * rows
            last = min(stop - index * rows, block.shape[0])
            out.addmm_(segment[:, position - offset : position - offset + last - first], block[first:last])
            position = index * rows + last

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(vectors.shape[0], self.output_dim, dtype=torch.float32, device=vectors.device)
        self.project_segment(vectors, 0, out)
        return out


class CountSketchProjector:
    """Sparse JL: coordinate i goes to bucket h(i) with sign s(i). O(p) per vector, O(p) memory."""

    KIND = 2

    def __init__(self, input_dim: int, output_dim: int, seed: int):
        _check_dims(input_dim, output_dim)
        if output_dim > np.iinfo(np.int32).max:
            raise ValueError(f"countsketch: d={output_dim} does not fit 32-bit bucket indices")
        self.input_dim, self.output_dim, self.seed = input_dim, output_dim, seed
        # 5 bytes per coordinate (int32 bucket, int8 sign); widened per segment when used.
        self.buckets = torch.empty(input_dim, dtype=torch.int32)
        self.signs = torch.empty(input_dim, dtype=torch.int8)
        for index in range(math.ceil(input_dim / BLOCK_ROWS)):
            start = index * BLOCK_ROWS
            rows = min(BLOCK_ROWS, input_dim - start)
            rng = _block_rng(seed, index, self.KIND)  # always a full block's draws: rows never depend on p
            buckets = rng.integers(0, output_dim, size=BLOCK_ROWS, dtype=np.int64)[:rows]
            signs = rng.integers(0, 2, size=BLOCK_ROWS, dtype=np.int8)[:rows] * 2 - 1
            self.buckets[start : start + rows] = torch.from_numpy(buckets.astype(np.int32))
            self.signs[start : start + rows] = torch.from_numpy(signs)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._buffers: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.largest_block_bytes = 0  # never materializes a dense block

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tables = self._on_device.get(device)
        if tables is None:
            tables = (self.buckets.to(device), self.signs.to(device))
            self._on_device[device] = tables
        return tables

    def project_segment(self, segment: torch.Tensor, offset: int, out: torch.Tensor, *, consume: bool = False) -> None:
        stop = offset + segment.shape[1]
        if offset < 0 or stop > self.input_dim:
            raise ValueError(f"segment [{offset}, {stop}) is outside the projection's input 0..{self.input_dim}")
        buckets, signs = self._tables(out.device)
        n = stop - offset
        index, sign = self._scratch(out.device, n)
        index.copy_(buckets[offset:stop])
        sign.copy_(signs[offset:stop])
        if consume and segment.dtype == torch.float32:
            signed = segment.mul_(sign)
        else:
            signed = segment.float() * sign
        # scatter_add_ with a broadcast index: measured ~10x faster on CPU than index_add_ along dim 1.
        out.scatter_add_(1, index.expand(segment.shape[0], -1), signed)

    def _scratch(self, device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reused int64 index and float32 sign buffers (fresh large CPU allocations page-fault)."""
        buffers = self._buffers.get(device)
        if buffers is None or buffers[0].numel() < n:
            buffers = (torch.empty(n, dtype=torch.int64, device=device), torch.empty(n, dtype=torch.float32, device=device))
            self._buffers[device] = buffers
        index, sign = buffers
        return index[:n], sign[:n]

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(vectors.shape[0], self.output_dim, dtype=torch.float32, device=vectors.device)
        self.project_segment(vectors, 0, out)
        return out


class IdentityProjector:
    """No projection (d = p): exposes raw per-example gradients to tests and benchmarks."""

    largest_block_bytes = 0

    def __init__(self, input_dim: int):
        _check_dims(input_dim, input_dim)
        self.input_dim = self.output_dim = input_dim

    def project_segment(self, segment: torch.Tensor, offset: int, out: torch.Tensor, *, consume: bool = False) -> None:
        out[:, offset : offset + segment.shape[1]] += segment.float()

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors.float().clone()


PROJECTIONS = ("rademacher", "countsketch")


def make_projector(kind: str, input_dim: int, output_dim: int, seed: int) -> Projector:
    if kind == "rademacher":
        return RademacherProjector(input_dim, output_dim, seed)
    if kind == "countsketch":
        return CountSketchProjector(input_dim, output_dim, seed)
    raise ValueError(f"gradients.projection: unknown projection '{kind}' (known: {', '.join(PROJECTIONS)})")
