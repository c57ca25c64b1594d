"""`dsel validate` refuses specs that `dsel run` would fail on later: exit 2, file and field path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from selection.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "dataselection.yaml"


def spec_file(tmp_path: Path, mutate=None, text: str | None = None) -> Path:
    document = yaml.safe_load(DEMO.read_text())
    if mutate:
        mutate(document["spec"])
    path = tmp_path / "spec.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(document))
    return path


def validate(path: Path, capsys) -> tuple[int, str]:
    before = sorted(p.name for p in path.parent.iterdir())
    code = main(["validate", str(path)])
    assert sorted(p.name for p in path.parent.iterdir()) == before, "validate wrote a file"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _set(section: str, **values):
    def mutate(spec):
        node = spec
        for key in section.split("."):
            node = node.setdefault(key, {})
        node.update(values)
    return mutate


@pytest.mark.parametrize(("mutate", "field", "message"), [
    (_set("warmup", learningRate=float("inf")), "spec.warmup.learningRate", "finite number"),
    (_set("warmup", learningRate=1e30), "spec.warmup.learningRate", "less than or equal to 1"),
    (_set("distillation", ridge=float("nan")), "spec.distillation.ridge", "finite number"),
    (_set("warmup", seed=2**64), "spec.warmup.seed", "less than or equal to 9223372036854775807"),
    (_set("gradients", seed=2**70), "spec.gradients.seed", "less than or equal to"),
    (_set("storage", uri="s3://bucket/../x"), "spec.storage.uri", "escapes the store root"),
    (_set("storage", uri="s3://Bad_Bucket/x"), "spec.storage.uri", "invalid S3 bucket name 'Bad_Bucket'"),
    (_set("storage", uri="file://host/x"), "spec.storage.uri", "names a remote host 'host'"),
    (_set("storage", uri="http://host/x"), "spec.storage.uri", "unsupported storage URI"),
    (_set("data", train="s3://Bad_Bucket/train.jsonl"), "spec.data.train", "invalid S3 bucket name"),
    (_set("storage", endpoint="ftp://host"), "spec.storage.endpoint", "is not an http:// or https:// URL"),
    (_set("storage", endpoint="http://KEY:hunter2@host:9000/"), "spec.storage.endpoint",
     "http://***@host:9000/ embeds credentials"),
    (_set("storage", uri="s3://KEY:hunter2@bucket/x"), "spec.storage.uri", "s3://***@bucket/x embeds credentials"),
    (lambda spec: spec["data"]["validation"].append(dict(spec["data"]["validation"][0])),
     "spec.data.validation", "[5].uri 'validation/arithmetic.jsonl' is already listed as [0]"),
])
def test_refused_fields_name_file_and_path(tmp_path, capsys, mutate, field, message):
    path = spec_file(tmp_path, mutate)
    code, err = validate(path, capsys)
    assert code == 2
    assert f"{path}: {field}: " in err and message in err
    assert "hunter2" not in err


DEMO_FRACTION_LINE = "    fraction: 0.15         # 45 of the 300 examples (or budget: 45, a count)"


def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path, capsys):
    text = DEMO.read_text().replace(DEMO_FRACTION_LINE, "    budget: 45\n    budget: 30")
    path = spec_file(tmp_path, text=text)
    code, err = validate(path, capsys)
    line = text.splitlines().index("    budget: 30") + 1
    assert code == 2
    assert f"{path}: line {line}, column 5: not valid YAML: duplicate key 'budget'" in err


@pytest.mark.parametrize("written", ["1_0", "1:30"])
def test_yaml11_only_numbers_are_refused(tmp_path, capsys, written):
    text = DEMO.read_text().replace(DEMO_FRACTION_LINE, f"    budget: {written}")
    path = spec_file(tmp_path, text=text)
    code, err = validate(path, capsys)
    line = text.splitlines().index(f"    budget: {written}") + 1
    assert code == 2
    assert f"{path}: line {line}, column 13: not valid YAML: '{written}' is a number only in YAML 1.1" in err


def test_deeply_nested_yaml_is_one_clear_line(tmp_path, capsys):
    path = spec_file(tmp_path, text="[" * 100_000)
    code, err = validate(path, capsys)
    assert code == 2 and f"{path}: (document): nested too deeply" in err


def test_valid_demo_still_validates(tmp_path, capsys):
    code, _ = validate(spec_file(tmp_path), capsys)
    assert code == 0
