"""The contract between the operator and the jobs: arguments, storage location, stages, exit codes.

Both sides import this module and nothing else of each other: the operator writes the arguments
document into a ConfigMap and builds one Job per `Stage`; a worker pod reads the document and runs
the stage's entrypoint. It is torch-free (spec and the standard library only), so the operator
image can import it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selection import spec as spec_module

# Exit code of every entrypoint for deterministic bad input (spec, data, arguments, a refused
# rerun): retrying cannot help, so the Jobs' pod failure policy fails the Job (or index) at once.
EXIT_BAD_INPUT = 2
# Exit code for a transient fault (S3 unreachable, 5xx/SlowDown, a hub 429) that outlasted the
# stage's own retries (EX_TEMPFAIL): not bad input, so the Job retries the pod.
EXIT_RETRYABLE = 75

# Set by Kubernetes in each pod of an Indexed Job; the shard when the document names none.
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"


# --- stages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One Kubernetes stage of a selection: one Job, run in this order."""

    name: str  # Job name suffix, the dsel.dev/stage label and the key in status.stages
    phase: str  # status.phase while the stage runs
    entrypoint: str  # `python -m selection.jobs <entrypoint> <args.json>`
    indexed: bool  # an Indexed Job, one completion per shard (JOB_COMPLETION_INDEX)
    progress: str  # status.progress while it runs; an indexed stage's follows "done/total "
    # Whether its pods get spec.resources.gpus; a stage that computes on CPU gets none unless
    # spec.resources.stages.<name>.gpus asks for some.
    uses_gpus: bool = True

    @property
    def failure_action(self) -> str:
        """Pod failure policy action on EXIT_BAD_INPUT: only the shard fails, or the whole Job."""
        return "FailIndex" if self.indexed else "FailJob"

    @property
    def retry_limit_field(self) -> str:
        """The Job spec field holding the pod retries (spec.resources.backoffLimitPerIndex)."""
        return "backoffLimitPerIndex" if self.indexed else "backoffLimit"

    def completions(self, shards: int) -> int:
        return shards if self.indexed else 1


STAGES: tuple[Stage, ...] = (
    Stage(name="warmup", phase="Warmup", entrypoint="warmup", indexed=False, progress="warmup"),
    # Extract and score one shard; with influence distillation, its embeddings and landmark
    # gradients instead (`shard` decides).
    Stage(name="extract", phase="Extracting", entrypoint="shard", indexed=True, progress="shards"),
    # Reduction works on the score matrices with numpy: no GPU to hold.
    Stage(name="reduce", phase="Reducing", entrypoint="reduce", indexed=False, progress="reducing",
          uses_gpus=False),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
_STAGE_BY_NAME = {stage.name: stage for stage in STAGES}

# Every `python -m selection.jobs <entrypoint>`. The Kubernetes stages run warmup, shard and
# reduce; `extract` (training gradient features of one shard) and `score` (attribution rows of
# one shard) are shard's two halves, which can also be run on their own.
ENTRYPOINTS: tuple[str, ...] = ("warmup", "extract", "score", "shard", "reduce")


def stage_named(name: str) -> Stage:
    """The stage called `name`; ValueError naming the known ones otherwise."""
    try:
        return _STAGE_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}") from None


# --- storage --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StorageLocation:
    """Where a selection's artifacts live and how to reach them.

    `credentials_secret` names the Kubernetes Secret the pods get their S3 keys from; it is not
    part of the arguments document (the pods never need it), the operator keeps it beside.
    """

    uri: str  # artifact root: s3://bucket/prefix or a local directory; "" when not given
    endpoint: str | None = None  # S3 endpoint URL for non-AWS stores
    region: str | None = None
    credentials_secret: str | None = None

    @classmethod
    def from_spec(cls, storage: spec_module.StorageSpec) -> "StorageLocation":
        return cls(
            uri=storage.uri or "",
            endpoint=storage.endpoint,
            region=storage.region,
            credentials_secret=storage.credentials_secret,
        )

    def to_document(self) -> dict[str, Any]:
        """The `storage` section of the arguments document."""
        return {"uri": self.uri, "endpoint": self.endpoint, "region": self.region}

    @classmethod
    def from_document(
        cls,
        section: Any,
        *,
        default: "StorageLocation | None" = None,
        credentials_secret: str | None = None,
        source: str = "arguments",
    ) -> "StorageLocation":
        """The `storage` section read back; what it leaves empty comes from `default`."""
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise JobArgumentError(f"{source}: storage: expected an object, got {type(section).__name__}")
        default = default or cls(uri="")
        return cls(
            uri=section.get("uri") or default.uri,
            endpoint=section.get("endpoint") or default.endpoint,
            region=section.get("region") or default.region,
            credentials_secret=credentials_secret or default.credentials_secret,
        )


# --- the arguments document -----------------------------------------------------------------
class JobArgumentError(ValueError):
    """The arguments document is unusable; the message says which field."""


@dataclass(frozen=True)
class JobArgs:
    """The arguments document of one stage run (a mounted ConfigMap, or a dict in `dsel run`)."""

    resource: spec_module.DataSelection
    storage: StorageLocation
    base_dir: str | None = None  # relative data paths are resolved against it (dsel run)
    cache_dir: str | None = None  # model cache; defaults to $DSEL_CACHE_DIR or ~/.cache/dsel
    shard: int | None = None

    def required_shard(self, stage: str) -> int:
        if self.shard is None:
            raise JobArgumentError(f"{stage} needs a shard: field 'shard' or env {SHARD_INDEX_ENV}")
        return self.shard

    def to_document(self) -> dict[str, Any]:
        return {
            "resource": self.resource.to_manifest(),
            "storage": self.storage.to_document(),
            "baseDir": self.base_dir,
            "cacheDir": self.cache_dir,
            "shard": self.shard,
        }

    @classmethod
    def from_document(cls, document: Any, source: str = "arguments") -> "JobArgs":
        """Parse and check a document; the shard defaults to $JOB_COMPLETION_INDEX."""
        if not isinstance(document, dict):
            raise JobArgumentError(f"{source}: expected a JSON object")
        if "resource" not in document:
            raise JobArgumentError(f"{source}: missing field 'resource'")
        resource = spec_module.parse_selection(document["resource"], source=f"{source}: resource")
        location = StorageLocation.from_document(
            document.get("storage"), default=StorageLocation.from_spec(resource.spec.storage), source=source
        )
        if not location.uri:
            raise JobArgumentError(f"{source}: storage.uri: no artifact location given")
        shard = document.get("shard")
        if shard is None and os.environ.get(SHARD_INDEX_ENV, "") != "":
            shard = os.environ[SHARD_INDEX_ENV]
        if shard is not None:
            try:
                shard = int(shard)
            except (TypeError, ValueError):
                raise JobArgumentError(f"{source}: shard: expected an integer, got {shard!r}") from None
            shards = resource.spec.gradients.shards
            if not 0 <= shard < shards:
                raise JobArgumentError(f"{source}: shard: {shard} is outside 0..{shards - 1}")
        return cls(
            resource=resource,
            storage=location,
            base_dir=document.get("baseDir"),
            cache_dir=document.get("cacheDir"),
            shard=shard,
        )


def read_job_args(argument: str) -> JobArgs:
    """Arguments from a JSON file path, or inline JSON when the argument starts with '{'."""
    if argument.lstrip().startswith("{"):
        source, text = "inline arguments", argument
    else:
        source = argument
        try:
            text = Path(argument).read_text(encoding="utf-8")
        except OSError as error:
            raise JobArgumentError(f"{argument}: cannot read ({error.strerror or error})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise JobArgumentError(f"{source}: not valid JSON ({error.msg}, line {error.lineno})") from None
    return JobArgs.from_document(document, source)


# --- shards ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardRange:
    """Rows [start, stop) of the pool; boundaries fall on multiples of the gradient batch size."""

    shard: int
    shards: int
    start: int
    stop: int


def shard_range(pool_size: int, batch_size: int, shard: int, shards: int) -> ShardRange:
    """The rows shard `shard` of `shards` owns: whole batches, as evenly spread as they go."""
    batches = math.ceil(pool_size / batch_size)
    first = (shard * batches) // shards
    last = ((shard + 1) * batches) // shards
    return ShardRange(shard, shards, min(pool_size, first * batch_size), min(pool_size, last * batch_size))
