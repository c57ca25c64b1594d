"""Bad input through `dsel validate --check-data` and `dsel run`: the same refusal from both, exit 2,
nothing committed; a model changed in place is refused; corrupt results are recomputed or explained."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from selection import artifacts, storage
from selection.artifacts import TRAIN_FEATURES, WARMUP_CHECKPOINT
from selection.models import build_tiny_model

from tests.jobs.test_pipeline import DEMO_DIR, TRAIN_LINES, assert_nothing_committed, run_cli, write_spec

pytestmark = pytest.mark.slow


def check_both(tmp_path: Path, spec: Path, capsys, expected: str) -> None:
    """validate --check-data and run refuse the same way, and neither writes an artifact."""
    code, err = run_cli(["validate", "--check-data", str(spec)], capsys)
    assert code == 2 and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and expected in err, err
    assert "Traceback" not in err
    assert_nothing_committed(tmp_path / "s")


def _spec(**values):
    def mutate(document):
        for dotted, value in values.items():
            node = document["spec"]
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
    return mutate


@pytest.mark.parametrize(("mutate", "expected"), [
    (_spec(**{"selection.budget": 1000, "selection.fraction": None}),
     "spec.selection.budget: budget 1000 must be a fraction in (0, 1] or a count in [1, N=300]"),
    (_spec(**{"selection.budget": 1e-9, "selection.fraction": None}),
     "spec.selection.budget: budget 1e-09 of N=300 selects floor(1e-09 x 300) = 0"),
    (_spec(**{"model.source": "tiny:llama-huge"}), "model.source 'tiny:llama-huge': unknown tiny preset"),
    (_spec(**{"model.source": "/no/such/model"}), "model.source '/no/such/model': no such model directory"),
    (_spec(**{"warmup.lora.targetModules": ["q_proj", "attn"]}),
     "spec.warmup.lora.targetModules[1]: 'attn' matches no linear layer of the model (it has: down_proj"),
    (_spec(**{"warmup.lora.r": 1_000_000_000}),
     "spec.warmup.lora.r: 1000000000 exceeds the narrowest adapted layer (32 features)"),
    (_spec(**{"gradients.projectionDim": 10**12}),
     "spec.gradients.projectionDim: 1000000000000 exceeds the 7168 LoRA parameters"),
])
def test_validate_and_run_share_one_preflight(tmp_path, capsys, mutate, expected):
    spec = write_spec(tmp_path, mutate)
    check_both(tmp_path, spec, capsys, expected)
    if expected.startswith("spec."):
        _, err = run_cli(["validate", "--check-data", str(spec)], capsys)
        assert f"{spec}: {expected}" in err  # the spec file is named too


@pytest.mark.parametrize(("line", "expected"), [
    ('{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "c"}]}',
     "line 4: messages[0].content: character 1 is a lone UTF-16 surrogate"),
    ('{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}]}',
     "line 4: messages[0].role: the conversation opens with an assistant turn"),
    ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "line 4: JSON nested too deeply"),
])
def test_hostile_training_lines(tmp_path, capsys, line, expected):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(TRAIN_LINES[:3] + [line] + TRAIN_LINES[3:]) + "\n")
    spec = write_spec(tmp_path, _spec(**{"data.train": str(train)}))
    check_both(tmp_path, spec, capsys, f"{train} {expected}")


def test_pickled_weights_are_refused_without_running_them(tmp_path, capsys):
    import torch

    model = build_tiny_model("llama-demo", tmp_path / "model")
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Payload()}, model / "pytorch_model.bin")
    spec = write_spec(tmp_path, _spec(**{"model.source": str(model)}))
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"model.source '{model}': refused to load pickled weights that could run code" in err
    assert not marker.exists()
    assert_nothing_committed(tmp_path / "s")


# --- a finished run with a local model and some answers truncated away ---------------------------

LONG_PROMPT_LINES = (7, 130, 299)


@pytest.fixture(scope="module")
def local_model_run(tmp_path_factory):
    """`dsel run` with a local model directory; three pool lines lose their answer to maxLength."""
    root = tmp_path_factory.mktemp("local-model")
    model = build_tiny_model("llama-demo", root / "model", seed=0)
    lines = list(TRAIN_LINES)
    for number in LONG_PROMPT_LINES:
        record = json.loads(lines[number])
        record["messages"][0]["content"] = "pad " * 200 + record["messages"][0]["content"]
        lines[number] = json.dumps(record)
    train = root / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    spec = write_spec(root, _spec(**{"model.source": str(model), "data.train": str(train), "gradients.shards": 2,
                                     "warmup.epochs": 1}))
    code = main_run(spec, root / "store")
    assert code == 0
    return root, spec, model, json.loads((root / "store" / "selection" / "selection.json").read_text())


def main_run(spec: Path, store: Path) -> int:
    from selection.cli import main

    return main(["run", str(spec), "-q", "--storage", str(store)])


def copy_run(root: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    return store


def manifests(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("MANIFEST.json"))}


def test_answerless_examples_are_excluded_and_reported(local_model_run):
    _, _, _, document = local_model_run
    assert document["excludedNoAnswer"] == list(LONG_PROMPT_LINES)
    assert not set(document["indices"]) & set(LONG_PROMPT_LINES)
    assert len(document["indices"]) == document["budget"] == 45


def test_answerless_warning_names_the_lines(local_model_run, tmp_path, caplog):
    import logging

    root, spec, _, _ = local_model_run
    store = copy_run(root, tmp_path)
    for shard in range(2):
        shutil.rmtree(store / TRAIN_FEATURES.prefix(epoch=0, shard=shard, shards=2))
    shutil.rmtree(store / "scores")
    with caplog.at_level(logging.WARNING, logger="dsel.data"):
        assert main_run(spec, store) == 0
    assert "keep no assistant token within maxLength 256 and are excluded" in caplog.text
    assert "line(s) 8, 131" in caplog.text and "line(s) 300" in caplog.text  # one warning per shard


def test_model_changed_in_place_is_refused(local_model_run, tmp_path, capsys):
    """The issue's reproduction: an interrupted run, then the weights overwritten in the same dir."""
    root, spec, model, _ = local_model_run
    store = copy_run(root, tmp_path)
    (store / TRAIN_FEATURES.prefix(epoch=0, shard=1, shards=2) / storage.MANIFEST_NAME).unlink()  # interrupted
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    build_tiny_model("llama-demo", tmp_path / "other", seed=1)
    before = manifests(store)
    try:
        shutil.copy(tmp_path / "other" / "model.safetensors", weights)
        code, err = run_cli(["run", str(spec), "-q", "--storage", str(store)], capsys)
    finally:
        weights.write_bytes(original)
    assert code == 2
    assert "warmup/checkpoint-000 was produced by a different spec" in err and "a changed model" in err
    assert manifests(store) == before
    assert main_run(spec, store) == 0  # with the original weights back, the run resumes


def test_corrupt_selected_subset_is_recomputed_not_served(local_model_run, tmp_path):
    root, spec, _, document = local_model_run
    store = copy_run(root, tmp_path)
    subset = store / "selection" / artifacts.SUBSET_FILE
    good = subset.read_bytes()
    subset.write_bytes(b'{"messages": "tampered"}\n' + good[30:])
    assert main_run(spec, store) == 0
    assert subset.read_bytes() == good
    assert json.loads((store / "selection" / "selection.json").read_text())["indices"] == document["indices"]


def test_corrupt_selection_json_is_recomputed(local_model_run, tmp_path):
    root, spec, _, document = local_model_run
    store = copy_run(root, tmp_path)
    (store / "selection" / "selection.json").write_text("{not json")
    assert main_run(spec, store) == 0
    assert json.loads((store / "selection" / "selection.json").read_text())["indices"] == document["indices"]


def test_corrupt_checkpoint_says_what_to_delete(local_model_run, tmp_path, capsys):
    root, spec, _, _ = local_model_run
    store = copy_run(root, tmp_path)
    (store / TRAIN_FEATURES.prefix(epoch=0, shard=0, shards=2) / storage.MANIFEST_NAME).unlink()
    weights = next((store / WARMUP_CHECKPOINT.prefix(epoch=0)).rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")
    before = manifests(store)
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(store)], capsys)
    assert code == 2 and "does not match its manifest" in err
    assert f"delete the artifact {(store / WARMUP_CHECKPOINT.prefix(epoch=0)).as_uri()} (everything under it) and rerun" in err
    assert manifests(store) == before
    shutil.rmtree(store / WARMUP_CHECKPOINT.prefix(epoch=0))
    assert main_run(spec, store) == 0  # the hint works


def test_data_file_listed_twice_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, lambda d: d["spec"]["data"]["validation"].append(
        {"task": "again", "uri": str(DEMO_DIR / "validation" / "copy.jsonl")}))
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and f"{spec}: spec.data.validation: [5].uri" in err and "is already listed as [3]" in err
    assert_nothing_committed(tmp_path / "s")


def test_diverging_warmup_stops_before_committing_a_checkpoint(tmp_path, capsys):
    """A step that blows the adapter up (here AdamW's decay factor 1 - lr x wd) is named at once,
    not found at reduction as an unlocated NaN."""
    spec = write_spec(tmp_path, _spec(**{"warmup.learningRate": 1.0, "warmup.weightDecay": 1e30,
                                         "warmup.epochs": 1}))
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{spec}: spec.warmup.learningRate: the warmup diverged: adapter weight" in err
    assert "is not finite after epoch 0" in err
    assert_nothing_committed(tmp_path / "s")


def test_output_directory_is_refused_before_the_run(tmp_path, capsys):
    target = tmp_path / "results"
    target.mkdir()
    spec = write_spec(tmp_path)
    code, err = run_cli(["run", str(spec), "-q", "--storage", str(tmp_path / "s"), "-o", str(target)], capsys)
    assert code == 2 and f"--output {target}: is a directory; give a file path" in err
    assert not (tmp_path / "s").exists() and list(target.iterdir()) == []
