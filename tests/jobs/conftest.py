"""Fixtures for stage tests: the demo resource, shrunk where a test needs speed."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from selection.spec import DataSelection, parse_selection

DEMO_DIR = Path(__file__).resolve().parents[2] / "examples" / "demo"


def demo_resource(**overrides) -> DataSelection:
    """The demo spec with dotted-path overrides, e.g. demo_resource(**{"gradients.shards": 1})."""
    document = yaml.safe_load((DEMO_DIR / "dataselection.yaml").read_text())
    for dotted, value in overrides.items():
        node = document["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = copy.deepcopy(value)
    return parse_selection(document)
