"""The operator/job contract: the arguments document, the storage location, the stage table."""

from __future__ import annotations

import json

import pytest

from selection import contract, spec
from selection.contract import JobArgs, JobArgumentError, StorageLocation

from tests.unit.test_spec import demo_document


def demo_resource(**storage) -> spec.DataSelection:
    document = demo_document()
    document["spec"]["gradients"]["shards"] = 3
    document["spec"]["storage"] = storage
    return spec.parse_selection(document)


def test_storage_location_round_trips_without_its_secret():
    location = StorageLocation("s3://b/art", "http://s3:9000", "eu", credentials_secret="creds")
    section = location.to_document()
    assert section == {"uri": "s3://b/art", "endpoint": "http://s3:9000", "region": "eu"}
    assert StorageLocation.from_document(section) == StorageLocation("s3://b/art", "http://s3:9000", "eu")
    assert StorageLocation.from_document(section, credentials_secret="creds") == location


def test_storage_fields_left_empty_come_from_the_default():
    default = StorageLocation.from_spec(demo_resource(uri="s3://spec/root", region="r").spec.storage)
    read = StorageLocation.from_document({"endpoint": "http://e"}, default=default)
    assert read == StorageLocation("s3://spec/root", "http://e", "r")
    assert StorageLocation.from_document(None) == StorageLocation("")
    with pytest.raises(JobArgumentError, match="storage: expected an object"):
        StorageLocation.from_document(["s3://b"])


def test_arguments_document_round_trips(monkeypatch):
    monkeypatch.delenv(contract.SHARD_INDEX_ENV, raising=False)
    args = JobArgs(demo_resource(), StorageLocation("s3://b/art", "http://e"), base_dir="/data", shard=2)
    again = JobArgs.from_document(json.loads(json.dumps(args.to_document())))
    assert again == args
    assert contract.read_job_args(json.dumps(args.to_document())) == args


def test_the_shard_comes_from_the_indexed_job_and_is_checked(monkeypatch):
    document = JobArgs(demo_resource(), StorageLocation("/tmp/art")).to_document()
    monkeypatch.setenv(contract.SHARD_INDEX_ENV, "1")
    assert JobArgs.from_document(document).required_shard("shard") == 1
    monkeypatch.setenv(contract.SHARD_INDEX_ENV, "3")
    with pytest.raises(JobArgumentError, match=r"shard: 3 is outside 0\.\.2"):
        JobArgs.from_document(document)
    monkeypatch.delenv(contract.SHARD_INDEX_ENV)
    with pytest.raises(JobArgumentError, match="score needs a shard"):
        JobArgs.from_document(document).required_shard("score")


def test_a_document_without_any_artifact_location_is_refused():
    document = {"resource": demo_resource().to_manifest(), "storage": {"endpoint": "http://e"}}
    with pytest.raises(JobArgumentError, match="storage.uri: no artifact location"):
        JobArgs.from_document(document, source="args.json")


def test_the_stage_table():
    assert contract.STAGE_NAMES == ("warmup", "extract", "reduce")
    extract = contract.stage_named("extract")
    assert (extract.phase, extract.entrypoint, extract.indexed) == ("Extracting", "shard", True)
    assert (extract.failure_action, extract.retry_limit_field, extract.completions(4)) == (
        "FailIndex", "backoffLimitPerIndex", 4)
    reduce = contract.stage_named("reduce")
    assert (reduce.failure_action, reduce.retry_limit_field, reduce.completions(4)) == ("FailJob", "backoffLimit", 1)
    assert all(stage.entrypoint in contract.ENTRYPOINTS for stage in contract.STAGES)
    with pytest.raises(ValueError, match="unknown stage 'score'; expected one of warmup, extract, reduce"):
        contract.stage_named("score")


def test_every_entrypoint_has_a_main():
    from selection.jobs.__main__ import MAINS

    assert tuple(MAINS) == contract.ENTRYPOINTS


@pytest.mark.parametrize("pool, batch, shards", [(10, 4, 3), (300, 8, 4), (5, 8, 2)])
def test_shards_cover_the_pool_in_whole_batches(pool, batch, shards):
    ranges = [contract.shard_range(pool, batch, k, shards) for k in range(shards)]
    assert ranges[0].start == 0 and ranges[-1].stop == pool
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
    assert all(r.start % batch == 0 for r in ranges)
