"""Fixtures for the chart and image tests."""

from __future__ import annotations

from collections.abc import Iterator

import helm_python
import pytest

from tests.chart.helmchart import CHART_DIR


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    """charts/dsel, loaded once by Helm's chart loader."""
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded
