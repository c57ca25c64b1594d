"""The embedded executor behind `dsel run`: every stage, in order, in this process.

It calls the same stage functions the Kubernetes Jobs run, so a local run and a cluster run of
one spec produce the same artifacts. Finished artifacts are skipped, so rerunning after an
interruption resumes where it stopped.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from selection.contract import JobArgs, StorageLocation
from selection.jobs import reduce, warmup
from selection.jobs.context import StageContext
from selection.jobs.methods import method_for
from selection.spec import DataSelection

DEFAULT_LOCAL_ROOT = ".dsel"


def default_storage_uri(resource: DataSelection) -> str:
    """The spec's storage.uri, else .dsel/<name> under the working directory."""
    return resource.spec.storage.uri or str(Path(DEFAULT_LOCAL_ROOT, resource.name).resolve())


@contextmanager
def _bar(enabled: bool, total: int, description: str) -> Iterator[Any]:
    if not enabled:
        class Silent:
            def update(self, n: int = 1) -> None: ...
        yield Silent()
        return
    with tqdm(total=total, desc=description, unit="ex", dynamic_ncols=True, leave=True) as bar:
        yield bar


def run_selection(
    resource: DataSelection,
    *,
    storage_uri: str | None = None,
    base_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run warmup, extraction, scoring and reduction; return the selection document.

    Each shard runs the influence method's per-shard step (the one the Indexed Job runs: extract
    and score, or embeddings and landmark gradients), then the reduction.
    """
    args = JobArgs(
        resource=resource,
        storage=StorageLocation(
            uri=storage_uri or default_storage_uri(resource),
            endpoint=resource.spec.storage.endpoint,
            region=resource.spec.storage.region,
        ),
        base_dir=str(base_dir) if base_dir is not None else None,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    ctx = StageContext(args)
    try:
        spec = ctx.spec
        with _bar(progress, 0, "warmup") as bar:
            def on_step(step: int, total: int) -> None:
                bar.total, bar.unit = total, "step"
                bar.update(1)

            warmup.run(ctx, progress=on_step)
        method = method_for(spec)
        with _bar(progress, method.work_items(ctx), method.name) as bar:
            for shard in range(spec.gradients.shards):
                method.fill_shard(ctx, shard, progress=bar.update)
        document = reduce.run(ctx)
        document = dict(document)
        document["artifacts"] = ctx.artifacts.store.uri
        return document
    finally:
        ctx.close()
