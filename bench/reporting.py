"""Where the hand-run benchmarks put what they print: stdout, and optionally files to commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def publish(text: str, results: Any, output: Path | None, raw: Path | None) -> None:
    """Print the table; also write it (markdown) to `output` and the raw results (JSON) to `raw`."""
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    if raw:
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(results, indent=2))
