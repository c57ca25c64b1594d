"""Warmup checkpoints: name-keyed Adam state, mean learning rate, exact resume."""

from __future__ import annotations

import torch

from selection import artifacts
from selection.jobs import warmup as warmup_stage
from selection.contract import JobArgs, StorageLocation
from selection.jobs.context import StageContext
from selection.warmup import load_checkpoint, warmup_indices

from tests.jobs.conftest import DEMO_DIR, demo_resource


def context(resource, store) -> StageContext:
    return StageContext(JobArgs(resource, StorageLocation(str(store)), base_dir=str(DEMO_DIR)))


def test_warmup_subset_is_seeded_and_sized():
    assert warmup_indices(300, 0.2, 0) == warmup_indices(300, 0.2, 0)
    assert warmup_indices(300, 0.2, 0) != warmup_indices(300, 0.2, 1)
    assert len(warmup_indices(300, 0.2, 0)) == 60
    assert len(warmup_indices(10, 0.01, 0)) == 1


def test_checkpoints_hold_name_keyed_adam_state(tmp_path):
    ctx = context(demo_resource(), tmp_path / "store")
    try:
        warmup_stage.run(ctx)
        first = load_checkpoint(ctx.artifacts.fetch(artifacts.WARMUP_CHECKPOINT.prefix(epoch=0)))
        second = load_checkpoint(ctx.artifacts.fetch(artifacts.WARMUP_CHECKPOINT.prefix(epoch=1)))
    finally:
        ctx.close()
    assert first.step == 4 and second.step == 8  # 60 examples / 16 per step, per epoch
    assert all("lora_A" in n or "lora_B" in n for n in first.parameter_order)
    assert set(first.exp_avg) == set(first.exp_avg_sq) == set(first.parameter_order)
    assert all(float(first.exp_avg_sq[n].min()) >= 0 for n in first.parameter_order)
    assert any(float(second.exp_avg[n].abs().max()) > 0 for n in second.parameter_order)
    assert 0 < first.mean_lr <= 1e-3 and 0 < second.mean_lr < first.mean_lr  # linear decay


def test_resumed_warmup_equals_an_uninterrupted_one(tmp_path):
    whole = context(demo_resource(), tmp_path / "whole")
    resumed = context(demo_resource(), tmp_path / "resumed")
    try:
        warmup_stage.run(whole)
        # simulate a crash after epoch 0: copy only that checkpoint into a fresh store
        prefix = artifacts.WARMUP_CHECKPOINT.prefix(epoch=0)
        for key in whole.artifacts.store.list_keys(prefix):
            resumed.artifacts.store.put_bytes(key, whole.artifacts.store.get_bytes(key))
        warmup_stage.run(resumed)
        a = load_checkpoint(whole.artifacts.fetch(artifacts.WARMUP_CHECKPOINT.prefix(epoch=1)))
        b = load_checkpoint(resumed.artifacts.fetch(artifacts.WARMUP_CHECKPOINT.prefix(epoch=1)))
    finally:
        whole.close()
        resumed.close()
    assert a.step == b.step and a.mean_lr == b.mean_lr
    for name in a.parameter_order:
        torch.testing.assert_close(a.adapter[name], b.adapter[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a.exp_avg_sq[name], b.exp_avg_sq[name], rtol=1e-5, atol=1e-12)
