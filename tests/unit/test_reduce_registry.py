"""The reducer registry is the one list of methods: the spec, `dsel reduce` and the CRD follow it."""

from __future__ import annotations

import argparse
from typing import get_args

import numpy as np
import yaml

from selection.crd import crd_yaml
from selection.reduce import ALL_METHODS, METHODS, REDUCERS, reduce_matrix
from selection.reduce.cli import _add_arguments
from selection.spec import SelectionSpec


def test_spec_cli_and_crd_offer_the_registry_methods_in_order():
    assert ALL_METHODS == tuple(REDUCERS) == ("bids", "less", "quota", "random", "influence-distillation")
    assert get_args(SelectionSpec.model_fields["method"].annotation) == ALL_METHODS
    parser = argparse.ArgumentParser()
    _add_arguments(parser)
    method = next(action for action in parser._actions if action.dest == "method")
    assert tuple(method.choices) == ALL_METHODS
    schema = yaml.safe_load(crd_yaml())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    selection = schema["properties"]["spec"]["properties"]["selection"]["properties"]
    assert tuple(selection["method"]["enum"]) == ALL_METHODS
    assert set(METHODS) == {name for name, reducer in REDUCERS.items() if reducer.naive_oracle}


def test_every_registered_reducer_runs_and_records_its_switches():
    matrix = np.random.default_rng(0).standard_normal((12, 4))
    tasks = ["a", "a", "b", "b"]
    for name, reducer in REDUCERS.items():
        result = reduce_matrix(matrix, tasks, method=name, budget=5, seed=3)
        assert result.method == name and len(result.indices) == 5 == len(set(result.indices))
        assert result.parameters["method"] == name
        assert ("seed" in result.parameters) == reducer.seeded
