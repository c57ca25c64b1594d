"""The DataSelection spec: defaults, field-path errors, the CLI's validate command."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from selection import spec
from selection.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "dataselection.yaml"


def demo_document() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_demo_spec_loads_with_documented_defaults():
    resource = spec.load_selection(DEMO)
    assert resource.name == "demo"
    assert resource.spec.selection.method == "bids"
    assert resource.spec.gradients.train_type == "adam"
    # docs/algorithms.md §3 defaults where the demo does not override them
    assert resource.spec.warmup.beta2 == 0.999
    assert resource.spec.warmup.lora.dropout == 0.1
    assert resource.spec.warmup.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resource.spec_dict()["gradients"]["projectionDim"] == 512


def test_full_defaults_follow_the_specification():
    document = demo_document()
    document["spec"] = {
        "model": {"source": "tiny:llama-demo"},
        "data": {"train": "t.jsonl", "validation": [{"uri": "v.jsonl"}]},
        "selection": {"budget": 0.05},
    }
    s = spec.parse_selection(document).spec
    assert (s.warmup.lora.r, s.warmup.lora.alpha, s.warmup.learning_rate) == (128, 512.0, 2e-5)
    assert (s.warmup.epochs, s.warmup.fraction, s.warmup.effective_batch_size) == (4, 0.05, 128)
    assert (s.warmup.warmup_ratio, s.warmup.weight_decay, s.warmup.eps) == (0.03, 0.0, 1e-8)
    assert (s.gradients.projection_dim, s.gradients.projection) == (8192, "countsketch")
    assert (s.selection.granularity, s.selection.normalize, s.selection.iterative) == ("instance", True, True)


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (lambda d: d["spec"]["selection"].update(budget=0), "spec.selection.budget", "fraction in (0, 1]"),
        (lambda d: d["spec"]["selection"].update(budget=1.5), "spec.selection.budget", "fraction in (0, 1]"),
        (lambda d: d["spec"]["selection"].update(budget="lots"), "spec.selection.budget", "fraction in (0, 1]"),
        (lambda d: d["spec"]["selection"].update(method="best"), "spec.selection.method", "bids"),
        (lambda d: d["spec"]["gradients"].update(projectionDim=0), "spec.gradients.projectionDim", "greater than"),
        (lambda d: d["spec"]["warmup"]["lora"].update(rank=8), "spec.warmup.lora.rank", "unknown field"),
        (lambda d: d["spec"]["data"].update(validation=[]), "spec.data.validation", "at least 1"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "metadata.name", "DNS label"),
        (lambda d: d.update(kind="Selection"), "kind", "DataSelection"),
    ],
)
def test_problems_name_their_field_path(mutate, path, message):
    document = demo_document()
    mutate(document)
    with pytest.raises(spec.SpecError) as caught:
        spec.parse_selection(document)
    paths = dict(caught.value.problems)
    assert path in paths, caught.value.problems
    assert message in paths[path]


def test_every_problem_is_reported_at_once():
    document = demo_document()
    document["spec"]["selection"]["budget"] = -3
    document["spec"]["gradients"]["shards"] = 0
    with pytest.raises(spec.SpecError) as caught:
        spec.parse_selection(document)
    assert {p for p, _ in caught.value.problems} == {"spec.selection.budget", "spec.gradients.shards"}


def test_budget_keeps_count_and_fraction_apart():
    document = demo_document()
    del document["spec"]["selection"]["fraction"]
    document["spec"]["selection"]["budget"] = 30
    assert spec.parse_selection(document).spec.selection.budget == 30
    assert isinstance(spec.parse_selection(document).spec.selection.budget, int)
    del document["spec"]["selection"]["budget"]
    document["spec"]["selection"]["fraction"] = 1  # what the API server returns for 1.0
    assert spec.parse_selection(document).spec.selection.budget == 1.0
    assert isinstance(spec.parse_selection(document).spec.selection.budget, float)


def test_yaml_errors_give_line_numbers(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: dsel.dev/v1alpha1\nkind: [unclosed\n")
    with pytest.raises(spec.SpecError, match=r"broken.yaml: line \d+, column \d+: not valid YAML"):
        spec.load_selection(broken)


def test_validate_command_exit_codes(tmp_path, capsys):
    assert main(["validate", str(DEMO), "--check-data"]) == 0
    assert "300 training examples, 20 validation examples" in capsys.readouterr().out
    document = demo_document()
    document["spec"]["selection"]["budget"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "spec.selection.budget: must be a fraction in (0, 1] or a positive count" in err


def test_manifest_round_trips():
    resource = spec.load_selection(DEMO)
    again = spec.parse_selection(copy.deepcopy(resource.to_manifest()))
    assert again == resource
