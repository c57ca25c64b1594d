"""The whole pipeline on the demo: `dsel run`, determinism across shard layouts, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from selection import artifacts, storage
from selection.cli import main
from selection.local import run_selection

from tests.jobs.conftest import DEMO_DIR, demo_resource

pytestmark = pytest.mark.slow
TRAIN_LINES = (DEMO_DIR / "train.jsonl").read_text().splitlines()


def write_spec(tmp_path: Path, mutate=None, name: str = "spec.yaml") -> Path:
    """The demo spec, copied next to the demo data paths it names (absolute), after `mutate`."""
    document = yaml.safe_load((DEMO_DIR / "dataselection.yaml").read_text())
    data = document["spec"]["data"]
    data["train"] = str(DEMO_DIR / data["train"])
    for entry in data["validation"]:
        entry["uri"] = str(DEMO_DIR / entry["uri"])
    if mutate:
        mutate(document)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def three_shard_run(tmp_path_factory):
    """`dsel run` of the demo (3 shards), through the CLI as a newcomer runs it."""
    root = tmp_path_factory.mktemp("demo3")
    output = root / "out" / "selection.json"
    code = main(["run", str(write_spec(root)), "--quiet", "--storage", str(root / "store"), "--output", str(output)])
    assert code == 0
    return root, json.loads(output.read_text())


def test_demo_selects_the_budget(three_shard_run, capsys):
    root, document = three_shard_run
    indices = document["indices"]
    assert document["method"] == "bids" and document["budget"] == 45  # floor(0.15 * 300)
    assert len(indices) == 45 and len(set(indices)) == 45
    assert all(0 <= i < 300 for i in indices)
    assert sum(document["composition"].values()) == 45
    assert set(document["composition"]) == {"arithmetic", "reverse", "sort", "copy", "yesno"}
    subset = (root / "store" / "selection" / "selected.jsonl").read_text().splitlines()
    assert subset == [TRAIN_LINES[i] for i in indices]
    manifest = storage.read_manifest(storage.open_store(str(root / "store")), artifacts.SELECTION_PREFIX)
    assert set(manifest.files) == {"selection.json", "selected.jsonl"}


def test_one_shard_gives_the_same_selection(three_shard_run, tmp_path):
    """A fresh run with another shard layout reproduces the selection exactly."""
    _, three = three_shard_run
    one = run_selection(
        demo_resource(**{"gradients.shards": 1}), storage_uri=str(tmp_path / "store"),
        base_dir=DEMO_DIR, progress=False,
    )
    assert one["indices"] == three["indices"]
    assert one["composition"] == three["composition"]


def test_rerun_reuses_everything_and_changed_budget_only_reduces(three_shard_run, tmp_path):
    root, first = three_shard_run
    store = storage.open_store(str(root / "store"))
    before = {k: store.get_bytes(k) for k in store.list_keys("features") if k.endswith("MANIFEST.json")}
    again = run_selection(demo_resource(), storage_uri=str(root / "store"), base_dir=DEMO_DIR, progress=False)
    assert again["indices"] == first["indices"]
    smaller = run_selection(
        demo_resource(**{"selection.budget": 10, "selection.fraction": None}), storage_uri=str(root / "store"),
        base_dir=DEMO_DIR, progress=False,
    )
    assert len(smaller["indices"]) == 10
    after = {k: store.get_bytes(k) for k in store.list_keys("features") if k.endswith("MANIFEST.json")}
    assert after == before  # no feature was recomputed


def test_changed_gradients_section_is_refused_not_mixed(three_shard_run):
    root, _ = three_shard_run
    with pytest.raises(artifacts.StaleArtifactError, match="produced by a different spec"):
        run_selection(
            demo_resource(**{"gradients.projectionDim": 256}), storage_uri=str(root / "store"),
            base_dir=DEMO_DIR, progress=False,
        )


def test_killed_run_resumes_without_recomputing_finished_shards(three_shard_run, tmp_path):
    _, reference = three_shard_run
    spec = write_spec(tmp_path)
    store_dir = tmp_path / "store"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "selection.cli", "run", str(spec), "--quiet", "--storage", str(store_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    store = storage.open_store(str(store_dir))
    first_shard = artifacts.TRAIN_FEATURES.prefix(epoch=0, shard=0, shards=3)
    deadline = time.monotonic() + 240
    try:
        while not storage.is_committed(store, first_shard):
            assert process.poll() is None, "dsel run ended before it could be interrupted"
            assert time.monotonic() < deadline, "extraction never committed its first shard"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = {
        k: store.get_bytes(k) for k in store.list_keys("features/train") if k.endswith("MANIFEST.json")
    }
    assert storage.read_manifest(store, artifacts.SELECTION_PREFIX) is None
    assert main(["run", str(spec), "--quiet", "--storage", str(store_dir)]) == 0
    for key, manifest in finished.items():
        assert store.get_bytes(key) == manifest, f"{key} was recomputed"
    resumed = json.loads(store.get_bytes("selection/selection.json"))
    assert resumed["indices"] == reference["indices"]


# --- bad input: a clear message, exit 2, and nothing committed ------------------------------


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def assert_nothing_committed(store_dir: Path) -> None:
    if store_dir.exists():
        assert not list(store_dir.rglob("MANIFEST.json")), "a failed run committed an artifact"


def test_malformed_training_line(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join(TRAIN_LINES[:5] + ['{"messages": [}'] + TRAIN_LINES[5:]) + "\n")
    spec = write_spec(tmp_path, lambda d: d["spec"]["data"].update(train=str(bad)))
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and f"{bad} line 6: not valid JSON" in err
    assert_nothing_committed(tmp_path / "s")


def test_unknown_task_in_a_validation_file(tmp_path, capsys):
    wrong = tmp_path / "sort.jsonl"
    lines = (DEMO_DIR / "validation" / "sort.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["task"] = "poetry"
    wrong.write_text("\n".join([lines[0], json.dumps(record)] + lines[2:]) + "\n")
    spec = write_spec(tmp_path, lambda d: d["spec"]["data"]["validation"][2].update(uri=str(wrong)))
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and f"{wrong} line 2: unknown task 'poetry'" in err
    assert_nothing_committed(tmp_path / "s")


@pytest.mark.parametrize(("budget", "message"), [
    (0, "spec.selection.budget: must be a fraction in (0, 1] or a positive count"),
    (301, "spec.selection.budget: budget 301 must be a fraction in (0, 1] or a count in [1, N=300]"),
])
def test_budget_out_of_range(tmp_path, capsys, budget, message):
    spec = write_spec(tmp_path, lambda d: d["spec"]["selection"].update(budget=budget, fraction=None))
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and message in err
    assert_nothing_committed(tmp_path / "s")


def test_unreadable_model_path(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    spec = write_spec(tmp_path, lambda d: d["spec"]["model"].update(source=str(missing)))
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and f"model.source '{missing}': no such model directory" in err
    assert_nothing_committed(tmp_path / "s")


def test_unreachable_s3_endpoint(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    spec = write_spec(tmp_path, lambda d: d["spec"].setdefault("storage", {}).update(
        uri="s3://dsel-runs/demo", endpoint=f"http://127.0.0.1:{port}"))
    code, err = run_cli(["run", str(spec), "-q"], capsys)
    assert code == 2 and f"cannot reach S3 endpoint http://127.0.0.1:{port}" in err


def test_storage_path_escaping_its_root(tmp_path, capsys):
    spec = write_spec(tmp_path, lambda d: d["spec"].setdefault("storage", {}).update(uri="s3://dsel-runs/runs/../../etc"))
    code, err = run_cli(["run", str(spec), "-q"], capsys)
    assert code == 2 and "escapes the store root" in err


def test_job_entrypoint_reports_bad_arguments(tmp_path):
    """What a Kubernetes pod runs: exit 2 and one line naming the problem."""
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"resource": {"apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection",
                                             "metadata": {"name": "x"}, "spec": {}}}))
    result = subprocess.run([sys.executable, "-m", "selection.jobs", "warmup", str(args)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "spec.model: Field required" in result.stderr


def test_s3_end_to_end_with_model_from_s3(s3_bucket, tmp_path, three_shard_run):
    """Data, model and artifacts all in S3 (SeaweedFS): the real-model loading path."""
    from selection.models import build_tiny_model

    _, reference = three_shard_run
    server, bucket = s3_bucket
    store = storage.open_store(f"s3://{bucket}")
    model_dir = build_tiny_model("llama-demo", tmp_path / "model")
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            store.put_file(f"models/tiny/{path.relative_to(model_dir).as_posix()}", path)
    store.put_file("data/train.jsonl", DEMO_DIR / "train.jsonl")
    for task in ("arithmetic", "reverse", "sort", "copy", "yesno"):
        store.put_file(f"data/validation/{task}.jsonl", DEMO_DIR / "validation" / f"{task}.jsonl")

    def to_s3(document):
        spec = document["spec"]
        spec["model"]["source"] = f"s3://{bucket}/models/tiny"
        spec["data"]["train"] = f"s3://{bucket}/data/train.jsonl"
        for entry in spec["data"]["validation"]:
            entry["uri"] = f"s3://{bucket}/data/validation/{entry['task']}.jsonl"
        spec["storage"] = {"uri": f"s3://{bucket}/runs/demo", "endpoint": server.endpoint_url}

    spec = write_spec(tmp_path, to_s3)
    output = tmp_path / "selection.json"
    assert main(["run", str(spec), "-q", "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]) == 0
    document = json.loads(output.read_text())
    assert document["indices"] == reference["indices"]  # the same tiny model, wherever it loads from
    assert document["subsetUri"] == f"s3://{bucket}/runs/demo/selection/selected.jsonl"
    assert (tmp_path / "cache" / "s3").is_dir()
