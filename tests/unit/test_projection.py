"""Seeded projections: the definition, segment-wise use, and identical bytes across processes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selection.gradients.projection import (
    BLOCK_ROWS,
    MAX_DENSE_BLOCK_BYTES,
    CountSketchProjector,
    IdentityProjector,
    RademacherProjector,
    dense_block_rows,
    make_projector,
)

from tests.support.models import one_thread  # noqa: F401  (autouse)

P = 2 * BLOCK_ROWS + 123  # three blocks, the last one partial

def sketch_matrix(projector: CountSketchProjector) -> torch.Tensor:
    """The p x d matrix a CountSketch stands for, built from its buckets and signs."""
    matrix = torch.zeros(projector.input_dim, projector.output_dim)
    matrix[torch.arange(projector.input_dim), projector.buckets.long()] = projector.signs.float()
    return matrix


def vectors(rows: int, p: int = P, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, p, generator=torch.Generator().manual_seed(seed))


def test_rademacher_is_the_seeded_dense_definition():
    projector = RademacherProjector(P, 40, seed=3)
    matrix = torch.cat([projector.block(b) for b in range(projector.blocks)])
    assert matrix.shape == (P, 40) and projector.blocks == 3
    scale = float(np.float32(1 / math.sqrt(40)))
    assert set(torch.unique(matrix).tolist()) == {-scale, scale}
    assert abs(float((matrix > 0).float().mean()) - 0.5) < 0.02
    # The documented bit layout: block b is Philox((seed, b, 1)) bytes, MSB first, 1 -> +.
    raw = np.random.Generator(np.random.Philox(np.random.SeedSequence([3, 1, 1]))).bytes(BLOCK_ROWS * 40 // 8)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).reshape(BLOCK_ROWS, 40)
    np.testing.assert_array_equal(bits == 1, projector.block(1).numpy() > 0)
    x = vectors(3)
    torch.testing.assert_close(projector.project(x), x @ matrix, rtol=1e-5, atol=1e-5)


def test_countsketch_has_one_signed_entry_per_coordinate():
    projector = CountSketchProjector(P, 64, seed=3)
    matrix = sketch_matrix(projector)
    assert set(projector.signs.tolist()) == {-1, 1} and abs(float(projector.signs.float().mean())) < 0.05
    assert int(projector.buckets.min()) >= 0 and int(projector.buckets.max()) < 64
    assert len(torch.unique(projector.buckets)) == 64
    x = vectors(3)
    torch.testing.assert_close(projector.project(x), x @ matrix, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rademacher", "countsketch"])
def test_segments_add_up_to_the_whole_projection(kind):
    projector = make_projector(kind, P, 48, seed=1)
    x = vectors(4)
    whole = projector.project(x)
    out = torch.zeros(4, 48)
    cuts = [0, 7, BLOCK_ROWS - 1, BLOCK_ROWS + 5, 2 * BLOCK_ROWS, P]  # straddling block edges
    for start, stop in zip(cuts, cuts[1:]):
        segment = x[:, start:stop].clone()
        projector.project_segment(segment, start, out, consume=True)
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        projector.project_segment(x[:, :10], P - 5, out)


@pytest.mark.parametrize("kind", ["rademacher", "countsketch"])
def test_seeds_and_sizes(kind):
    x = vectors(2)
    a = make_projector(kind, P, 32, seed=0).project(x)
    assert torch.equal(a, make_projector(kind, P, 32, seed=0).project(x))
    assert not torch.allclose(a, make_projector(kind, P, 32, seed=1).project(x))
    # A projector for a longer input agrees on the shared coordinates: blocks depend on
    # (seed, block index) only, never on p, the shard, or the process.
    longer = make_projector(kind, P + 5000, 32, seed=0)
    padded = torch.cat([x, torch.zeros(2, 5000)], dim=1)
    torch.testing.assert_close(longer.project(padded), a, rtol=1e-5, atol=1e-5)


def test_rademacher_cache_limit_regenerates_identically():
    cached = RademacherProjector(P, 16, seed=9)
    uncached = RademacherProjector(P, 16, seed=9, cache_bytes=0)
    x = vectors(2)
    assert torch.equal(cached.project(x), uncached.project(x))
    assert uncached.largest_block_bytes == BLOCK_ROWS * 16 * 4


@pytest.mark.parametrize("d", [1, 40, 8192, 65536, 65537, 100_000, 1_000_000, 2**28])
def test_dense_blocks_stay_within_one_gib_for_any_dimension(d):
    rows = dense_block_rows(d)
    assert rows * d * 4 <= MAX_DENSE_BLOCK_BYTES and rows >= 1
    assert rows == BLOCK_ROWS if d <= 65536 else rows * 2 * d * 4 > MAX_DENSE_BLOCK_BYTES  # as large as allowed
    projector = RademacherProjector(10**6, d, seed=0) if d <= 10**6 else None  # construction draws nothing
    if projector is not None:
        assert projector.block_rows * d * 4 <= MAX_DENSE_BLOCK_BYTES


def test_rows_too_wide_for_one_block_are_refused():
    with pytest.raises(ValueError, match="gradients.projectionDim"):
        RademacherProjector(10, 2**28 + 1, seed=0)


def test_smaller_blocks_still_define_the_same_kind_of_matrix():
    # A tiny bound stands for a huge d: the blocks shrink, stay under it, and project correctly.
    projector = RademacherProjector(P, 40, seed=3, max_block_bytes=1000 * 40 * 4, cache_bytes=0)
    assert projector.block_rows == 512 and projector.blocks == math.ceil(P / 512)
    matrix = torch.cat([projector.block(b) for b in range(projector.blocks)])
    assert matrix.shape == (P, 40) and projector.largest_block_bytes <= 1000 * 40 * 4
    x = vectors(3)
    torch.testing.assert_close(projector.project(x), x @ matrix, rtol=1e-5, atol=1e-5)
    raw = np.random.Generator(np.random.Philox(np.random.SeedSequence([3, 2, 1]))).bytes(512 * 40 // 8)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).reshape(512, 40)
    np.testing.assert_array_equal(bits == 1, projector.block(2).numpy() > 0)


SCRIPT = """
import sys
from selection.gradients.projection import make_projector
from tests.unit.test_projection import definition_bytes
sys.stdout.buffer.write(definition_bytes(make_projector("{kind}", {p}, 64, seed=11)))
"""


def definition_bytes(projector) -> bytes:
    """The bytes that define P: every dense block, or every bucket and sign."""
    if isinstance(projector, RademacherProjector):
        return b"".join(projector.block(b).numpy().tobytes() for b in range(projector.blocks))
    return projector.buckets.numpy().tobytes() + projector.signs.numpy().tobytes()


@pytest.mark.parametrize("kind", ["rademacher", "countsketch"])
def test_projection_is_identical_in_another_process(kind):
    child = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(p=P, kind=kind)],
        capture_output=True, check=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )
    expected = definition_bytes(make_projector(kind, P, 64, seed=11))
    assert len(expected) > P and child.stdout == expected


@pytest.mark.parametrize("kind", ["rademacher", "countsketch"])
def test_cosines_are_preserved(kind):
    # Correlated vectors, like gradients: a shared direction plus noise.
    generator = torch.Generator().manual_seed(2)
    shared = torch.randn(1, P, generator=generator)
    x = shared + 1.5 * torch.randn(12, P, generator=generator)
    exact = torch.nn.functional.normalize(x, dim=1)
    projected = torch.nn.functional.normalize(make_projector(kind, P, 2048, seed=0).project(x), dim=1)
    error = (projected @ projected.T - exact @ exact.T).abs().max()
    assert float(error) < 6 / math.sqrt(2048)  # about 6 standard deviations of a JL estimate


def test_identity_and_unknown_kinds():
    x = vectors(2, p=10)
    assert torch.equal(IdentityProjector(10).project(x), x)
    with pytest.raises(ValueError, match="gradients.projection: unknown projection 'gaussian'"):
        make_projector("gaussian", 10, 4, seed=0)
