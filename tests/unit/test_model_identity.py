"""`model_identity` names what loading reads, so a model changed in place changes the fingerprint."""

from __future__ import annotations

import shutil

import pytest

from selection import models, storage
from selection.contract import StorageLocation
from selection.models import ModelLoadError, model_identity, resolve_model_dir


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return models.build_tiny_model("llama-demo", root / "a", seed=0), models.build_tiny_model("llama-demo", root / "b", seed=1)


def test_local_directory_identity_follows_the_weights(tiny_dirs, tmp_path):
    first, other = tiny_dirs
    model = tmp_path / "model"
    shutil.copytree(first, model)
    before = model_identity(str(model))
    assert before == model_identity(str(model))
    shutil.copy(other / "model.safetensors", model / "model.safetensors")  # same size, new bytes
    assert model_identity(str(model)) != before
    (model / "config.json").write_text((first / "config.json").read_text().replace("\n", " \n"))
    shutil.copy(first / "model.safetensors", model / "model.safetensors")
    assert model_identity(str(model)) != before  # the config counts too


def test_s3_model_is_refetched_when_rewritten(s3_bucket, tiny_dirs, tmp_path):
    server, bucket = s3_bucket
    first, other = tiny_dirs
    store = storage.open_store(f"s3://{bucket}/models/tiny")
    for path in first.iterdir():
        store.put_file(path.name, path)
    source = f"s3://{bucket}/models/tiny"
    options = StorageLocation(uri=source, endpoint=server.endpoint_url)
    before = model_identity(source, s3=options)
    cached = resolve_model_dir(source, tmp_path / "cache", options)
    store.put_file("model.safetensors", other / "model.safetensors")
    assert model_identity(source, s3=options) != before
    refreshed = resolve_model_dir(source, tmp_path / "cache", options)
    assert refreshed != cached
    assert (refreshed / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()


def test_hub_name_is_pinned_to_the_resolved_commit(monkeypatch, tmp_path):
    import huggingface_hub

    commits = iter(["a" * 40, "b" * 40])

    class FakeApi:
        def model_info(self, name, revision=None):
            assert (name, revision) == ("org/model", None)
            return type("Info", (), {"sha": next(commits)})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    models.resolve_hub_commit.cache_clear()
    assert model_identity("org/model") == {"commit": "a" * 40}
    models.resolve_hub_commit.cache_clear()
    assert model_identity("org/model") == {"commit": "b" * 40}  # the branch moved
    assert model_identity("org/model", revision="c" * 40) == {"commit": "c" * 40}
    models.resolve_hub_commit.cache_clear()


def test_hub_name_offline_uses_the_cached_ref_or_refuses(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    class OfflineApi:
        def model_info(self, name, revision=None):
            raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    models.resolve_hub_commit.cache_clear()
    with pytest.raises(ModelLoadError, match="cannot resolve revision 'main' to a commit"):
        model_identity("org/model")
    (tmp_path / "models--org--model" / "refs").mkdir(parents=True)
    (tmp_path / "models--org--model" / "refs" / "main").write_text("d" * 40)
    models.resolve_hub_commit.cache_clear()
    assert model_identity("org/model") == {"commit": "d" * 40}
    models.resolve_hub_commit.cache_clear()
