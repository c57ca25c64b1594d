"""The `DataSelection` resource: one typed model shared by the CLI, the jobs and the operator.

The same model validates `dsel run spec.yaml`, the job arguments and the Kubernetes resource,
and generates the CRD's OpenAPI schema, so it only uses constructs JSON Schema can express.
Field names are camelCase in YAML (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from selection import kube_values
from selection.reduce.registry import ALL_METHODS

API_GROUP = "dsel.dev"
API_VERSION = "v1alpha1"
KIND = "DataSelection"
PLURAL = "dataselections"

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Seeds are int64 in the CRD and reach torch.manual_seed, which takes at most 64 bits.
MAX_SEED = 2**63 - 1


class SpecError(ValueError):
    """A spec that cannot be used; `problems` lists every (field path, message) found."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class _Section(BaseModel):
    """Base for spec sections: camelCase aliases, unknown fields rejected (typos must not pass)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
        allow_inf_nan=False,  # an infinite learning rate or ridge fails only hours later
    )


def _usable_uri(value: str) -> str:
    """A data or storage URI that `open_store` / `read_uri` will accept (checked without I/O)."""
    from selection.storage import StorageError, check_uri

    try:
        return check_uri(value)
    except StorageError as error:
        raise ValueError(str(error)) from None


class ModelSpec(_Section):
    """Which causal LM to estimate influence with."""

    source: str = Field(
        description=(
            "Model to load: a Hugging Face model name, a local directory, an s3://bucket/prefix "
            "holding a saved model, or 'tiny:<preset>' for the built-in tiny models used by demos "
            "and tests (presets: llama-demo, llama-small)."
        ),
        min_length=1,
    )
    revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit) when source is a hub name."
    )
    chat_template: Literal["auto", "plain"] = Field(
        default="auto",
        description=(
            "How conversations become text. 'auto' uses the tokenizer's own chat template when it "
            "has one and the plain template otherwise; 'plain' always uses dsel's documented plain "
            "template ('<|role|>\\ncontent\\n' blocks, assistant turns ending in EOS)."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Compute dtype: 'auto' is bfloat16 on GPUs that support it and float32 on CPU.",
    )


class ValidationSetSpec(_Section):
    """One validation file; each example belongs to exactly one task."""

    uri: str = Field(description="JSONL file (local path or s3:// URI) in chat format.", min_length=1)

    @field_validator("uri")
    @classmethod
    def _uri_is_usable(cls, value: str) -> str:
        return _usable_uri(value)

    task: str | None = Field(
        default=None,
        description=(
            "Task of every example in this file. When omitted, each line must carry a 'task' "
            "field; when given, a line whose 'task' differs is an error."
        ),
    )


class DataSpec(_Section):
    """Training pool and validation sets."""

    train: str = Field(
        description=(
            "Training pool: JSONL (local path or s3:// URI), one chat example per line. The "
            "selection result addresses examples by their 0-based line number in this file."
        ),
        min_length=1,
    )
    validation: list[ValidationSetSpec] = Field(
        description="Validation sets that define the target capabilities (tasks).", min_length=1
    )
    max_length: int = Field(
        default=2048,
        ge=8,
        description="Tokens per example after templating; longer examples are truncated on the right.",
    )

    @field_validator("train")
    @classmethod
    def _train_is_usable(cls, value: str) -> str:
        return _usable_uri(value)

    @field_validator("validation")
    @classmethod
    def _no_file_twice(cls, value: list[ValidationSetSpec]) -> list[ValidationSetSpec]:
        seen: dict[str, int] = {}
        for position, entry in enumerate(value):
            if entry.uri in seen:
                raise ValueError(
                    f"[{position}].uri {entry.uri!r} is already listed as [{seen[entry.uri]}]: "
                    "listing a file twice would count its examples twice"
                )
            seen[entry.uri] = position
        return value


class LoraSpec(_Section):
    """LoRA adapter shape (LESS defaults)."""

    r: int = Field(default=128, ge=1, description="LoRA rank.")
    alpha: float = Field(default=512.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        default=0.1, ge=0, lt=1, description="LoRA dropout during warmup (always off for gradients)."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names that get adapters.",
    )


class WarmupSpec(_Section):
    """LoRA warmup training on a random fraction of the pool (docs/algorithms.md §3)."""

    fraction: float = Field(
        default=0.05, gt=0, le=1, description="Share of the pool used for warmup, drawn with `seed`."
    )
    epochs: int = Field(default=4, ge=1, le=100, description="Epochs; one checkpoint per epoch.")
    learning_rate: float = Field(
        default=2e-5, gt=0, le=1,
        description="Peak AdamW learning rate (at most 1: larger steps only produce NaN weights).",
    )
    schedule: Literal["linear", "constant"] = Field(
        default="linear", description="Learning-rate schedule after linear warmup."
    )
    warmup_ratio: float = Field(
        default=0.03, ge=0, lt=1, description="Share of optimizer steps spent ramping the LR up."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    beta1: float = Field(default=0.9, gt=0, lt=1, description="Adam beta1.")
    beta2: float = Field(default=0.999, gt=0, lt=1, description="Adam beta2.")
    eps: float = Field(default=1e-8, gt=0, description="Adam epsilon.")
    effective_batch_size: int = Field(
        default=128, ge=1, description="Examples per optimizer step (gradient accumulation fills it)."
    )
    micro_batch_size: int = Field(
        default=4, ge=1, description="Examples per forward/backward; bounds memory, not the result."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed for the warmup subset, data order and dropout.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter configuration.")


class GradientsSpec(_Section):
    """Per-example gradient features (docs/algorithms.md §4-§7)."""

    projection_dim: int = Field(default=8192, ge=1, description="Dimension d of projected features.")
    projection: Literal["rademacher", "countsketch"] = Field(
        default="countsketch",
        description=(
            "Random projection. 'countsketch' (default): each coordinate hashed to one bucket with "
            "a random sign; O(p) work, extraction at about 1.1x a plain forward+backward. "
            "'rademacher': dense +-1/sqrt(d) as LESS/TRAK (generated in seeded blocks of at most "
            "1 GiB, never as one p x d matrix); LESS-identical but 20-100x slower on CPU at "
            "r=128. Measured cosine error vs the exact gradients (RMS, d=8192, r=128): 0.011 "
            "for CountSketch, 0.010 for the dense projection (docs/performance.md)."
        ),
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Projection seed; the same in every shard.")
    shards: int = Field(
        default=1, ge=1, le=10000, description="Training-pool shards (parallel pods on Kubernetes)."
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        description=(
            "Examples per gradient batch. Shard boundaries fall on multiples of it, so results "
            "do not depend on the number of shards."
        ),
    )
    # selection.gradients.preconditioners.TRAINING_PRECONDITIONERS has one entry per value
    # (not imported: the operator reads this module and must not import torch). The variants
    # beyond the papers: adam-no-momentum docs/algorithms.md §18.1, adam-diagonal §18.2.
    train_type: Literal["adam", "sgd", "adam-no-momentum", "adam-diagonal"] = Field(
        default="adam",
        description=(
            "Training-example features. 'adam': LESS exact, (b1*m + (1-b1)*g) / sqrt(b2*v + "
            "(1-b2)*g^2 + eps). 'sgd': the plain gradient g. 'adam-no-momentum': LESS without the "
            "b1*m term, which after a short warmup is one direction shared by every example and "
            "can dominate the features (mean pairwise cosine 0.8-0.9 measured in bench/quality). "
            "'adam-diagonal': g x ((1-b1)/(1-b1^(t+1))) / (sqrt(v / (1 - b2^(t+1))) + eps), the bias-corrected, "
            "g-independent Adam scaling Influence Distillation uses. Validation features are "
            "always plain gradients. Influence Distillation's landmarks use plain g with 'sgd' "
            "and its bias-corrected scaling otherwise."
        ),
    )


class DistillationSpec(_Section):
    """Influence Distillation's landmark approximation (docs/algorithms.md §14, Nikdan et al. 2025).

    Used when selection.method is influence-distillation or selection.influence is distilled:
    accurate gradients only for `landmarks` examples, propagated to the whole pool through cheap
    JVP embeddings, instead of gradients for every example.
    """

    landmarks: int = Field(
        default=4096, ge=1, description="Landmark examples L (capped at the pool size), drawn with `seed`."
    )
    blocks: int = Field(
        default=4, ge=1, description="Transformer blocks kept for the JVP embeddings (the first ones)."
    )
    tangents: int = Field(
        default=2, ge=1, description="Seeded Gaussian parameter directions for the JVP embeddings."
    )
    embed_dim: int = Field(
        default=4096, ge=1, description="Embedding dimension after the seeded projection."
    )
    ridge: float = Field(
        default=1e-2, gt=0, description="Kernel ridge regularizer, as a multiple of the kernel's mean diagonal."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed for landmarks, tangents and the projection.")


class SelectionSpec(_Section):
    """How the attribution matrix becomes a subset (docs/algorithms.md §8-§14)."""

    # bids, the BIDS paper's method and the default: docs/algorithms.md §10, §18
    method: Literal[ALL_METHODS] = Field(  # type: ignore[valid-type]  # the reducer registry's names
        default="bids",
        description=(
            "Reduction method. bids (the default) is the BIDS paper's iterative balanced selection "
            "over instance-normalized influence. quota gives every task an equal share of the "
            "budget, filled with the task's most influential examples; less is LESS's task-max "
            "top-k; random a seeded uniform draw; influence-distillation selects round robin over "
            "validation examples from the distilled influence matrix; quota-sample (dsel's own) "
            "fills each quota by a seeded draw among the task's top `candidates` x quota examples. "
            "On bench/quality's transfer benchmark bids and quota beat random and stratified "
            "selection at 5/10/15% (95% intervals above zero) and tie each other on accuracy; bids "
            "has the lower test loss (bench/quality/README.md)."
        ),
    )
    influence: Literal["gradient", "distilled"] = Field(
        default="gradient",
        description=(
            "Which N x M influence matrix the method reduces: 'gradient' (LESS features for every "
            "example) or 'distilled' (landmark gradients propagated by kernel ridge regression; "
            "implied by method influence-distillation)."
        ),
    )
    amount: Union[int, float, None] = Field(
        default=None,
        alias="budget",
        description=(
            "How many examples to select, as an integer count. Give either budget or fraction. "
            "(Deprecated: a fraction written here with a decimal point, e.g. 0.05, is still read "
            "as a fraction; 1.0 is refused, because a Kubernetes API server stores it as 1.)"
        ),
    )
    fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "How many examples to select, as a share in (0, 1] of the pool: count = "
            "floor(fraction x N). Unlike a fractional budget it survives the API server's JSON "
            "encoding, which writes 1.0 as 1."
        ),
    )
    granularity: Literal["instance", "task"] = Field(
        default="instance",
        description="BIDS: balance over validation instances (columns) or over task means.",
    )
    normalize: bool = Field(
        default=True, description="BIDS: z-score each column over the pool first (ablation: false)."
    )
    iterative: bool = Field(
        default=True, description="BIDS: update the running mean r after each pick (ablation: false)."
    )
    candidates: float = Field(  # quota-sample's c: docs/algorithms.md §18.3
        default=3.0,
        ge=1,
        description=(
            "quota-sample: each task draws its quota from its top candidates x quota examples "
            "(1 = the top quota, like quota; larger = more diverse, less filtered)."
        ),
    )
    deduplicate: bool = Field(  # docs/algorithms.md §18.5
        default=True,
        description=(
            "Leave out training lines whose messages repeat an earlier line exactly (listed in "
            "selection.json as excludedDuplicates), so no example takes two budget slots; false "
            "selects from every line, as the papers do."
        ),
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed for the random method and quota-sample's draws."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.budget) != has(self.fraction)",
                 "message": "set exactly one of budget (a count) or fraction (a share of the pool)"},
            ]
        }
    )

    @property
    def budget(self) -> int | float:
        """The requested budget: a count (int) or a fraction of the pool (float)."""
        if self.fraction is not None:
            return float(self.fraction)
        assert self.amount is not None  # the validator below requires one of them
        return self.amount

    @field_validator("amount", mode="before")
    @classmethod
    def _budget_is_a_number(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a fraction in (0, 1] or a positive count")
        return value

    @field_validator("amount")
    @classmethod
    def _budget_in_range(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float):
            if math.isfinite(value) and value == int(value) and 0 < value <= 1:
                raise ValueError(
                    f"{value} is ambiguous: a Kubernetes API server stores it as {int(value)}, a count of "
                    f"{int(value)} example(s); write 'fraction: {value}' for a share of the pool, or an "
                    "integer count"
                )
            if not math.isfinite(value) or not 0 < value <= 1:
                raise ValueError("must be a fraction in (0, 1] or a positive count")
        elif value is not None and value < 1:
            raise ValueError("must be a fraction in (0, 1] or a positive count")
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> "SelectionSpec":
        if (self.amount is None) == (self.fraction is None):
            raise ValueError(
                "set exactly one of budget (an integer count) or fraction (a share in (0, 1] of the pool)"
            )
        return self


class StorageSpec(_Section):
    """Where artifacts live. Local directories work for `dsel run`; Kubernetes needs S3."""

    uri: str | None = Field(
        default=None,
        description=(
            "Artifact root: s3://bucket/prefix or a local directory. Default for `dsel run`: "
            ".dsel/<name> under the working directory; the operator uses its configured default."
        ),
    )
    endpoint: str | None = Field(
        default=None, description="S3 endpoint URL for non-AWS stores (MinIO, SeaweedFS, Ceph)."
    )
    region: str | None = Field(default=None, description="S3 region.")
    credentials_secret: str | None = Field(
        default=None,
        description=(
            "Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, passed to pods as "
            "env vars. Never copied into status, events or logs."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _uri_is_usable(cls, value: str | None) -> str | None:
        return None if value is None else _usable_uri(value)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_usable(cls, value: str | None) -> str | None:
        from selection.storage import StorageError, check_endpoint

        if value is None:
            return None
        try:
            return check_endpoint(value, "endpoint")
        except StorageError as error:
            raise ValueError(str(error).removeprefix("endpoint: ")) from None


# Kubernetes value grammars (selection.kube_values), checked here and carried into the CRD.
Quantity = Annotated[
    str,
    AfterValidator(kube_values.check_quantity),
    WithJsonSchema({"type": "string", "pattern": kube_values.QUANTITY_PATTERN}),
]
LabelValue = Annotated[
    str,
    AfterValidator(kube_values.check_label_value),
    WithJsonSchema({"type": "string", "maxLength": kube_values.LABEL_VALUE_MAX,
                    "pattern": kube_values.LABEL_VALUE_PATTERN}),
]
QualifiedName = Annotated[
    str,
    AfterValidator(kube_values.check_qualified_name),
    WithJsonSchema({"type": "string", "maxLength": kube_values.QUALIFIED_NAME_MAX,
                    "pattern": kube_values.QUALIFIED_NAME_PATTERN}),
]
DnsSubdomain = Annotated[
    str,
    AfterValidator(kube_values.check_dns_subdomain),
    WithJsonSchema({"type": "string", "maxLength": kube_values.DNS_SUBDOMAIN_MAX,
                    "pattern": kube_values.DNS_SUBDOMAIN_PATTERN}),
]
# A Kubernetes API object passed through as is (affinity, EnvVar, Volume, ...): the API server
# validates it when the Job is created; the CRD keeps it unpruned.
KubeObject = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
]
# Bounds that keep the CRD's CEL rules within the API server's cost budget.
_MAX_LIST = 64


class TolerationSpec(_Section):
    """A Kubernetes toleration, passed through to the pods (checked as the API server would)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                 "message": "a toleration with operator Exists must not set a value"},
                {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                 "message": "tolerationSeconds needs effect NoExecute"},
                {"rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                 "message": "a toleration without a key needs operator Exists"},
            ]
        }
    )

    key: QualifiedName | None = Field(default=None, description="Taint key (empty: every key, with Exists).")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Match operator (default Equal)."
    )
    value: LabelValue | None = Field(default=None, description="Taint value (with Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate (empty: every effect)."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated (effect NoExecute only)."
    )

    @model_validator(mode="after")
    def _as_the_api_server_checks(self) -> "TolerationSpec":
        if self.operator == "Exists" and self.value:
            raise ValueError(f"operator Exists matches any value; remove value {self.value!r}")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies to effect NoExecute only")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        return self


class StageResourcesSpec(_Section):
    """One stage's pod size; what it leaves out comes from spec.resources."""

    gpus: int | None = Field(default=None, ge=0, description="nvidia.com/gpu per pod of this stage.")
    cpu: Quantity | None = Field(default=None, description="CPU request per pod of this stage.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit per pod of this stage.")


class StagesResourcesSpec(_Section):
    """Per-stage overrides of gpus, cpu and memory (one key per Kubernetes stage)."""

    warmup: StageResourcesSpec = Field(default_factory=StageResourcesSpec, description="The warmup Job.")
    extract: StageResourcesSpec = Field(
        default_factory=StageResourcesSpec, description="Every pod of the extraction (shard) Job."
    )
    reduce: StageResourcesSpec = Field(
        default_factory=StageResourcesSpec,
        description="The reduction Job; it runs on CPU and gets no GPUs unless gpus is set here.",
    )


class PodOverridesSpec(_Section):
    """Additions to every Job pod's template (the Kubernetes API validates their content)."""

    labels: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict, max_length=_MAX_LIST, description="Extra pod labels (not dsel.dev/*)."
    )
    annotations: dict[QualifiedName, str] = Field(
        default_factory=dict, max_length=_MAX_LIST, description="Extra pod annotations."
    )
    priority_class_name: DnsSubdomain | None = Field(default=None, description="PriorityClass of the pods.")
    runtime_class_name: DnsSubdomain | None = Field(default=None, description="RuntimeClass of the pods.")
    affinity: KubeObject | None = Field(default=None, description="Pod affinity (a core/v1 Affinity).")
    env: list[KubeObject] = Field(
        default_factory=list, max_length=_MAX_LIST,
        description="Extra worker env vars (core/v1 EnvVar), e.g. HF_TOKEN from a Secret.",
    )
    env_from: list[KubeObject] = Field(
        default_factory=list, max_length=_MAX_LIST, description="Extra env sources (core/v1 EnvFromSource)."
    )
    volumes: list[KubeObject] = Field(
        default_factory=list, max_length=_MAX_LIST, description="Extra pod volumes (core/v1 Volume), e.g. a PVC."
    )
    volume_mounts: list[KubeObject] = Field(
        default_factory=list, max_length=_MAX_LIST, description="Extra worker mounts (core/v1 VolumeMount)."
    )


class ResourcesSpec(_Section):
    """Pod placement and size on Kubernetes (ignored by `dsel run`)."""

    image: str | None = Field(default=None, description="Worker image; defaults to the operator's.")
    gpus: int = Field(default=0, ge=0, description="nvidia.com/gpu per pod.")
    cpu: Quantity | None = Field(default=None, description="CPU request per pod, e.g. '4' or '500m'.")
    memory: Quantity | None = Field(
        default=None,
        description="Memory request per pod, e.g. '32Gi'; also its limit. Default: the operator's.",
    )
    cache_size: Quantity = Field(
        default="20Gi",
        description="Size limit of the model/HF cache volume (emptyDir) of each pod; part of its ephemeral-storage request.",
    )
    scratch_size: Quantity = Field(
        default="2Gi",
        description="Size limit of the /tmp volume (emptyDir) of each pod; part of its ephemeral-storage request.",
    )
    stages: StagesResourcesSpec = Field(
        default_factory=StagesResourcesSpec, description="Per-stage gpus, cpu and memory."
    )
    node_selector: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict, max_length=_MAX_LIST, description="Pod node selector."
    )
    tolerations: list[TolerationSpec] = Field(
        default_factory=list, max_length=_MAX_LIST, description="Pod tolerations."
    )
    queue_name: LabelValue | None = Field(
        default=None, description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label."
    )
    pod: PodOverridesSpec = Field(
        default_factory=PodOverridesSpec, description="Affinity, env, volumes, classes, labels of the pods."
    )
    backoff_limit_per_index: int = Field(
        default=2, ge=0, description="Retries of one extraction shard before the selection fails."
    )


class DataSelectionSpec(_Section):
    """What to select from, with which model, and how."""

    model: ModelSpec = Field(description="The model whose gradients measure influence.")
    data: DataSpec = Field(description="Training pool and validation sets.")
    warmup: WarmupSpec = Field(default_factory=WarmupSpec, description="LoRA warmup training.")
    gradients: GradientsSpec = Field(default_factory=GradientsSpec, description="Gradient features.")
    selection: SelectionSpec = Field(description="Reduction method and budget.")
    distillation: DistillationSpec = Field(
        default_factory=DistillationSpec, description="Landmark-based influence distillation."
    )
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Artifact storage.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Kubernetes pods.")

    @property
    def uses_distillation(self) -> bool:
        """True when the influence matrix comes from landmarks rather than every example's gradient."""
        return self.selection.method == "influence-distillation" or self.selection.influence == "distilled"

    @model_validator(mode="after")
    def _tasks_are_known(self) -> "DataSelectionSpec":
        named = [v.task for v in self.data.validation if v.task is not None]
        for task in named:
            if not task.strip():
                raise ValueError("data.validation: task names must not be blank")
        return self


class ObjectMeta(BaseModel):
    """The parts of Kubernetes metadata dsel uses; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(description="Resource name; also names the artifacts and Jobs.")
    namespace: str | None = Field(default=None, description="Kubernetes namespace.")

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 48 or not _K8S_NAME.match(value):
            raise ValueError(
                "must be a DNS label of at most 48 characters (lowercase letters, digits, '-'), "
                "so that '<name>-extract' Job names stay valid"
            )
        return value


class DataSelection(BaseModel):
    """The whole resource, as `kubectl apply` and `dsel run` read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: Literal["dsel.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["DataSelection"]
    metadata: ObjectMeta
    spec: DataSelectionSpec
    status: dict[str, Any] | None = Field(default=None, exclude=True)

    @property
    def name(self) -> str:
        return self.metadata.name

    def spec_dict(self) -> dict[str, Any]:
        """The spec with defaults filled in, camelCase, JSON-able: what jobs receive."""
        return self.spec.model_dump(mode="json", by_alias=True)

    def to_manifest(self) -> dict[str, Any]:
        """The resource as a Kubernetes manifest (defaults filled in)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _field_path(loc: tuple[Any, ...]) -> str:
    """Turn a pydantic error location into a dotted path like spec.selection.budget."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("int", "float") or str(item).startswith("function-"):
            continue  # union member names, not fields
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for item in error.errors():
        path = _field_path(item["loc"]) or "(document)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        seen.setdefault(path, message)  # union members repeat the same path
    return list(seen.items())


def parse_selection(document: Any, source: str | None = None) -> DataSelection:
    """Validate a parsed document; raises SpecError listing every problem with its field path."""
    if not isinstance(document, dict):
        raise SpecError([("(document)", "expected a mapping with apiVersion, kind, metadata, spec")], source)
    try:
        return DataSelection.model_validate(document)
    except ValidationError as error:
        raise SpecError(_problems(error), source) from None


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: construct_mapping itself reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first given on line {first}); YAML would silently keep the last",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _refuse_yaml11_number(self.construct_scalar(node), node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _refuse_yaml11_number(self.construct_scalar(node), node)
        return super().construct_yaml_float(node)


def _refuse_yaml11_number(text: str, node: yaml.ScalarNode) -> None:
    """YAML 1.1 reads 1_0 as 10 and 1:30 as 90; JSON and Kubernetes do not. Refuse both."""
    if "_" in text or ":" in text:
        raise yaml.constructor.ConstructorError(
            None, None,
            f"{text!r} is a number only in YAML 1.1 (digit separators or base 60); write it plainly",
            node.start_mark,
        )


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)


def load_selection(path: str | Path) -> DataSelection:
    """Read and validate a spec file (YAML or JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError([("(file)", f"cannot read: {error.strerror or error}")], str(path)) from None
    try:
        documents = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        raise SpecError([(where, f"not valid YAML: {getattr(error, 'problem', error)}")], str(path)) from None
    except RecursionError:
        raise SpecError([("(document)", "nested too deeply to be a DataSelection")], str(path)) from None
    if len(documents) != 1:
        raise SpecError([("(document)", f"expected exactly one YAML document, found {len(documents)}")], str(path))
    return parse_selection(documents[0], source=str(path))


def spec_fingerprint(part: Any) -> str:
    """A stable hash of a JSON-able value: artifacts record it to refuse mixing runs."""
    canonical = json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of the spec section (camelCase), the basis of the CRD's OpenAPI schema."""
    return DataSelectionSpec.model_json_schema(by_alias=True, mode="validation")
