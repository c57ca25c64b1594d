"""Attribution quality, measured directly: the linear datamodeling score (LDS) of dsel's features.

    python -m bench.attribution                 # full: 400-example pool, 40 half-subsets (~14 min measured)
    python -m bench.attribution --size smoke    # the CI smoke test's size (seconds)

The LDS of TRAK (Park et al. 2023): draw m random subsets S_1..S_m holding half of a training
pool, fine-tune a model on each, and measure every validation example j's loss f_j(S_k). An
attribution method gives a score A_ij (how much training example i helps validation example j);
its prediction for subset k is the summed attribution tau_j(S_k) = sum_{i in S_k} A_ij. Per
validation example, LDS_j = Spearman(tau_j(S_.), -f_j(S_.)) over the m subsets (influence means
lower loss, hence the minus), and the score is the mean of LDS_j over the validation examples
with a 95% bootstrap interval (resampling validation examples). 1 means the attribution ranks
the subsets exactly as training does; random scores give 0.

Everything is dsel's own code: the base model and the fine-tuning recipe of `bench/quality`
(pretrain.py, cached by recipe hash; finetune.py, epochs scaled down), the features from
`selection.local.run_selection` on a DataSelection spec (the `dsel run` path) and, for the one
variant dsel has no spec option for, from dsel's extraction pieces (`bias_corrected_scores`).
Rows of the table:

- less (dsel): Adam-preconditioned training features vs plain validation features, projected,
  unit rows, checkpoint-weighted cosine (docs/algorithms.md §5-§7), read from the score shards.
- sgd: the same with `gradients.trainType: sgd` (plain training gradients).
- adam-bias-corrected: g * (1-b1)/(1-b1^(t+1)) / (sqrt(v/(1-b2^(t+1))) + eps) per checkpoint,
  no momentum term (Influence Distillation's preconditioner), weighted over checkpoints like LESS;
  `... last checkpoint` uses only the last one, as Influence Distillation does.
- influence-distillation: dsel's distilled N x M matrix (landmark gradients with that
  preconditioner at the last checkpoint, propagated by kernel ridge regression on JVP embeddings).
- same-task: 1 when the pool example belongs to the validation example's capability (true
  labels: an oracle-side reference); same-task clean: only its on-target and duplicate examples.
- random: seeded Gaussian scores (LDS 0 in expectation).

The pool mixes what a real instruction pool has (`build_pool`): per capability on-target
examples, off-target ones (other operand sizes), wrong answers, rule-flipped near-distractors
and duplicates, plus generic chatter. Validation sets are small on-target samples.

Every subset is trained with the same recipe and seed, so subsets differ only in data. The
per-subset losses and dsel's artifacts are cached (bench/quality/results/cache/attribution/),
so an interrupted run resumes. Results: bench/attribution_results/ (README.md documents them).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

if __package__ in (None, ""):  # `python bench/attribution.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import finetune, pretrain, run as quality_run, tasks  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "attribution_results"
DEFAULT_CACHE = quality_run.DEFAULT_CACHE  # git-ignored; holds the shared base models too

# --- the pool --------------------------------------------------------------------------------

KINDS = ("on-target", "off-target", "wrong", "flipped", "duplicate")  # per capability
CHATTER = tasks.DISTRACTOR


@dataclass(frozen=True)
class PoolEntry:
    item: tasks.Item
    kind: str  # one of KINDS, or CHATTER
    correct: str = ""  # the rule-following answer to the prompt (differs for wrong and flipped)

    @property
    def task(self) -> str:
        return self.item.task


@dataclass(frozen=True)
class MixedPool:
    """How many of each ingredient: shares of a capability's examples, and of the whole pool."""

    size: int = 400
    chatter_share: float = 0.1
    shares: tuple[tuple[str, float], ...] = (
        ("on-target", 0.45), ("off-target", 0.2), ("wrong", 0.15), ("flipped", 0.1), ("duplicate", 0.1),
    )
    validation_per_task: int = 8

    def counts(self) -> tuple[dict[str, int], int]:
        """(examples per kind for each capability, chatter examples); they add up to `size`."""
        chatter = int(round(self.size * self.chatter_share))
        per_task = (self.size - chatter) // len(tasks.TASKS)
        counts = {kind: int(per_task * share) for kind, share in self.shares}
        counts["on-target"] += per_task - sum(counts.values())
        return counts, self.size - per_task * len(tasks.TASKS)


def off_target(task: str, rng: random.Random) -> tasks.Item:
    """The capability with operands the targets never have (another sub-distribution)."""
    if task == "successor":
        n = rng.randint(1000, 99998)
        return tasks.Item(task, f"after {n} comes", str(n + 1))
    if task == "larger":
        a, b = rng.sample(range(100, 1000), 2)
        return tasks.Item(task, f"of {a} and {b} the larger is", str(max(a, b)))
    if task == "parity":
        n = rng.randint(100_000, 9_999_999)
        return tasks.Item(task, f"{n} is", "even" if n % 2 == 0 else "odd")
    if task == "count":
        alphabet = rng.sample("abcdef", 4)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(9, 14)))
        return tasks.Item(task, f"{text} has ? {alphabet[0]}:", str(text.count(alphabet[0])))
    if task == "lookup":
        keys = rng.sample(tasks.LETTERS, rng.randint(5, 7))
        values = [rng.randint(10, 99) for _ in keys]
        pick = rng.randrange(len(keys))
        pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
        return tasks.Item(task, f"{pairs}; {keys[pick]} is", str(values[pick]))
    if task == "sort":
        digits = [rng.randint(0, 9) for _ in range(rng.randint(7, 9))]
        return tasks.Item(task, " ".join(map(str, digits)) + " in order is", " ".join(map(str, sorted(digits))))
    raise ValueError(f"no off-target variant of {task!r}")


def flipped_answer(item: tasks.Item) -> str:
    """The answer under a flipped rule (predecessor, smaller, other parity, other letters,
    the next key's value, descending): a near-distractor with the on-target prompt."""
    words = item.question.split()
    if item.task == "successor":
        return str(int(words[1]) - 1)
    if item.task == "larger":
        return str(min(int(words[1]), int(words[3])))
    if item.task == "parity":
        return "odd" if item.answer == "even" else "even"
    if item.task == "count":
        text, target = words[0], words[3].removesuffix(":")
        return str(len(text) - text.count(target))
    if item.task == "lookup":
        pairs, asked = item.question.removesuffix(" is").split("; ")
        keys = [p.split("=") for p in pairs.split()]
        position = [k for k, _ in keys].index(asked)
        return keys[(position + 1) % len(keys)][1]
    if item.task == "sort":
        return " ".join(sorted(item.answer.split(), reverse=True))
    raise ValueError(f"no flipped rule for {item.task!r}")


def build_pool(sizes: MixedPool, seed: int) -> tuple[list[PoolEntry], dict[str, list[tasks.Item]]]:
    """A shuffled mixed pool and on-target validation sets (no validation question in the pool).

    - on-target: the generator the validation examples come from (bench/quality/tasks.py).
    - off-target: the same capability on operands of other sizes (a real pool covers a skill in
      forms the target does not ask for).
    - wrong: an on-target prompt with the answer of another example of the task (label noise).
    - flipped: an on-target prompt answered by a flipped rule (looks on-target, teaches the
      opposite; real pools have near-duplicates of a task with different conventions).
    - duplicate: exact copies of on-target examples already in the pool (scraped pools repeat).
    - chatter: the benchmark's generic distractor (unlearnable random words).
    """
    rng = random.Random(seed)
    counts, chatter = sizes.counts()
    seen: set[str] = set()

    def fresh(make: Callable[[], tasks.Item]) -> tasks.Item:
        for _ in range(10_000):
            item = make()
            if item.question not in seen:
                seen.add(item.question)
                return item
        raise RuntimeError("cannot draw a new distinct question; the pool is too large for the generator")

    validation = {
        t: [fresh(lambda t=t: tasks.make_item(t, rng)) for _ in range(sizes.validation_per_task)] for t in tasks.TASKS
    }
    pool: list[PoolEntry] = []
    for task in tasks.TASKS:
        on = [fresh(lambda task=task: tasks.make_item(task, rng)) for _ in range(counts["on-target"])]
        pool += [PoolEntry(item, "on-target", item.answer) for item in on]
        for _ in range(counts["off-target"]):
            item = fresh(lambda task=task: off_target(task, rng))
            pool.append(PoolEntry(item, "off-target", item.answer))
        for _ in range(counts["wrong"]):
            item = fresh(lambda task=task: tasks.make_item(task, rng))
            other = [o.answer for o in on if o.answer != item.answer] or [flipped_answer(item)]
            pool.append(PoolEntry(replace(item, answer=rng.choice(other)), "wrong", item.answer))
        for _ in range(counts["flipped"]):
            item = fresh(lambda task=task: tasks.make_item(task, rng))
            while flipped_answer(item) == item.answer:  # e.g. count "aab" of a: 2 a's, 1 other
                item = fresh(lambda task=task: tasks.make_item(task, rng))
            pool.append(PoolEntry(replace(item, answer=flipped_answer(item)), "flipped", item.answer))
        for item in (rng.choice(on) for _ in range(counts["duplicate"])):
            pool.append(PoolEntry(item, "duplicate", item.answer))
    for item in (tasks.make_item(CHATTER, rng) for _ in range(chatter)):
        pool.append(PoolEntry(item, CHATTER, item.answer))
    rng.shuffle(pool)
    return pool, validation


# --- sizes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """Everything that differs between the full run and the smoke test."""

    name: str
    pool: MixedPool
    subsets: int  # m
    subset_fraction: float
    model: pretrain.PretrainConfig
    recipe: finetune.FinetuneRecipe
    warmup_examples: int  # dsel's warmup subset, as a count (the fraction follows from the pool)
    warmup_epochs: int
    projection_dim: int
    gradient_batch: int
    landmarks: int
    warmup_like_finetune: bool = False  # the warmup takes the fine-tune's LoRA shape and learning rate
    seed: int = 0
    bootstrap: int = 10_000

    def measurement_key(self, base_model: str) -> str:
        """What the measured losses depend on (not the features): pool, subsets, recipe, base model."""
        from selection.spec import spec_fingerprint

        return spec_fingerprint({
            "pool": asdict(self.pool), "subsets": self.subsets, "fraction": self.subset_fraction,
            "recipe": asdict(self.recipe), "base": base_model, "seed": self.seed,
        })[:12]


def size_preset(name: str) -> Size:
    if name == "full":
        # The quality benchmark's base model and recipe; 4 epochs instead of 8 so 40 trainings
        # fit in ~15 min. The warmup sees 150 examples for 2 epochs, as in the quality
        # benchmark's full run (5% of its 3000-example pool): 20 optimizer steps.
        return Size(
            "full", MixedPool(size=400, validation_per_task=8), 40, 0.5,
            quality_run.size_preset("full").model, replace(finetune.FinetuneRecipe(), epochs=4),
            warmup_examples=150, warmup_epochs=2, projection_dim=2048, gradient_batch=16, landmarks=64,
        )
    if name == "smoke":
        smoke = quality_run.size_preset("smoke")
        return Size(
            "smoke", MixedPool(size=48, validation_per_task=1), 5, 0.5, smoke.model, smoke.recipe,
            warmup_examples=16, warmup_epochs=2, projection_dim=64, gradient_batch=8, landmarks=12,
            bootstrap=500,
        )
    raise ValueError(f"unknown size {name!r}")


def draw_subsets(pool_size: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """(m, N) boolean masks of m seeded random subsets of floor(fraction * N) examples."""
    rng = np.random.default_rng([seed, 7])
    masks = np.zeros((count, pool_size), dtype=bool)
    for row in masks:
        row[rng.choice(pool_size, size=max(1, int(fraction * pool_size)), replace=False)] = True
    return masks


# --- statistics --------------------------------------------------------------------------------


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along axis 0 (1-based), ties sharing their mean rank, column by column."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.empty_like(values)
    for column in range(values.shape[1]):
        x = values[:, column]
        order = np.argsort(x, kind="mergesort")
        sorted_x = x[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
        stops = np.r_[starts[1:], len(x)]
        mean_rank = np.repeat((starts + stops + 1) / 2.0, stops - starts)
        ranks[order, column] = mean_rank
    return ranks


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of `a` with the same column of `b` (rows: samples).

    A column that is constant in either input ranks nothing and gets 0 (no predictive power),
    not NaN, so every validation example counts in the mean.
    """
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    norm = np.sqrt((ra * ra).sum(axis=0) * (rb * rb).sum(axis=0))
    correlation = np.zeros(ra.shape[1])
    defined = norm > 1e-12
    correlation[defined] = (ra * rb).sum(axis=0)[defined] / norm[defined]
    return correlation


def lds_per_example(masks: np.ndarray, attributions: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """LDS_j for every validation example: Spearman(sum_{i in S_k} A_ij, -loss_kj) over subsets k.

    masks (m, N) bool, attributions (N, M), losses (m, M) -> (M,).
    """
    predicted = masks.astype(np.float64) @ np.asarray(attributions, dtype=np.float64)
    return spearman_columns(predicted, -np.asarray(losses, dtype=np.float64))


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling the values (validation examples)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def in_sample_datamodel(masks: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """The minimum-norm A with masks @ A = -losses: a perfect fit of the measured effects.

    With m <= N linearly independent subsets it reproduces every measurement, so its LDS is 1:
    a self-check of the LDS machinery on the real measurements (not a method).
    """
    return np.linalg.pinv(masks.astype(np.float64)) @ (-np.asarray(losses, dtype=np.float64))


# --- dsel's features -----------------------------------------------------------------------------


def selection_resource(size: Size, base_dir: Path, inputs: dict[str, Any], pool_size: int, *,
                       method: str = "less", train_type: str = "adam"):
    """A DataSelection spec for this pool, as `dsel run` reads it.

    The quality benchmark's own spec (bench/quality/run.py: its scaled-down LESS warmup and
    gradient sections) with this benchmark's warmup size, feature type and landmark count.
    """
    from types import SimpleNamespace

    from selection.spec import parse_selection

    sections = quality_run._dsel_sections(
        min(1.0, size.warmup_examples / pool_size), size.warmup_epochs, size.projection_dim, size.gradient_batch
    )
    sections["maxLength"] = size.recipe.max_length
    method_entry = quality_run.Method(method, {"method": method})
    resource = quality_run.selection_resource(
        SimpleNamespace(selection=sections), size.seed, base_dir, inputs, method_entry, 0.1  # budget: unused here
    )
    manifest = resource.to_manifest()
    manifest["metadata"]["name"] = f"attribution-{size.name}"
    manifest["spec"]["gradients"]["trainType"] = train_type
    manifest["spec"]["distillation"]["landmarks"] = size.landmarks
    if size.warmup_like_finetune:
        recipe = size.recipe
        manifest["spec"]["warmup"].update({"learningRate": recipe.learning_rate, "lora": {
            "r": recipe.lora_r, "alpha": recipe.lora_alpha, "dropout": recipe.lora_dropout,
            "targetModules": list(recipe.target_modules)}})
    return parse_selection(manifest, source=f"bench.attribution {size.name}")


def _context(resource, storage: Path):
    from selection.contract import JobArgs, StorageLocation
    from selection.jobs.context import StageContext

    return StageContext(JobArgs(resource=resource, storage=StorageLocation(str(storage))))


def gradient_scores(resource, storage: Path) -> np.ndarray:
    """dsel's committed attribution matrix A (N x M) of a gradient-feature run."""
    from selection.jobs import score

    ctx = _context(resource, storage)
    try:
        matrix, _ = score.gather(ctx)  # refuses missing or stale shards
        return np.asarray(matrix, dtype=np.float64)
    finally:
        ctx.close()


def distilled_scores(resource, storage: Path) -> np.ndarray:
    """dsel's distilled influence matrix (N x M) of an influence-distillation run."""
    from selection.jobs import distill

    ctx = _context(resource, storage)
    try:
        return np.asarray(distill.distilled_matrix(ctx)[0], dtype=np.float64)
    finally:
        ctx.close()


def bias_corrected_scores(resource, storage: Path) -> tuple[np.ndarray, np.ndarray]:
    """Training features g * a (Influence Distillation's bias-corrected Adam weighting, no momentum)
    at every warmup checkpoint vs dsel's plain validation features: (checkpoint-weighted, last).

    dsel has no spec option for this feature on every example yet, so it is assembled from dsel's
    pieces on the warmup of `resource` (already run in `storage`): the checkpoints and validation
    features it committed, `BiasCorrectedAdamPreconditioner` as the engine's preconditioner,
    the batched engine (`compute_features`) and `attribution_rows` with LESS's checkpoint weights.
    """
    from selection import artifacts, warmup
    from selection.artifacts import VALIDATION_FEATURES, WARMUP_CHECKPOINT
    from selection.gradients.preconditioners import BiasCorrectedAdamPreconditioner
    from selection.gradients.features import compute_features, default_extractor, lora_dim
    from selection.gradients.projection import make_projector
    from selection.influence import attribution_rows, checkpoint_weights

    ctx = _context(resource, storage)
    try:
        spec, store = ctx.spec, ctx.artifacts
        g, w = spec.gradients, spec.warmup
        model, tokenizer = ctx.load_model()
        model = warmup.attach_lora(model, w.lora, w.seed)
        projector = make_projector(g.projection, lora_dim(model), g.projection_dim, g.seed)
        examples = ctx.tokenize(tokenizer, ctx.train_examples)
        per_checkpoint, rates = [], []
        for epoch in ctx.epochs:
            checkpoint = warmup.load_checkpoint(WARMUP_CHECKPOINT.fetch(store, epoch=epoch))
            warmup.apply_adapter(model, checkpoint)
            scaling = BiasCorrectedAdamPreconditioner.from_checkpoint(checkpoint, w.beta1, w.beta2, w.eps)
            train = compute_features(
                model, examples, extractor=default_extractor(), projector=projector,
                precondition=scaling, batch_size=g.batch_size, pad_token_id=tokenizer.pad_token_id,
            )
            validation = VALIDATION_FEATURES.load_array(store, artifacts.FEATURES_FILE, epoch=epoch)
            per_checkpoint.append(attribution_rows([train], [validation], [1.0]).astype(np.float64))
            rates.append(WARMUP_CHECKPOINT.metadata(store, epoch=epoch).mean_lr)
        weights = checkpoint_weights(rates)
        return sum(wc * scores for wc, scores in zip(weights, per_checkpoint)), per_checkpoint[-1]
    finally:
        ctx.close()


def dsel_attributions(size: Size, base_dir: Path, inputs: dict[str, Any], pool_size: int, validation_count: int,
                      work: Path, log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every feature-based attribution matrix, and the seconds each took."""
    from selection.local import run_selection

    matrices, seconds = {}, {}
    adam_store, sgd_store = work / "dsel-adam", work / "dsel-sgd"  # a store holds one trainType
    def spec(**options: str):
        return selection_resource(size, base_dir, inputs, pool_size, **options)

    runs = [
        ("less (dsel, Adam train vs plain val)", spec(), adam_store, gradient_scores),
        ("sgd (plain train vs plain val)", spec(train_type="sgd"), sgd_store, gradient_scores),
        ("influence-distillation (dsel)", spec(method="influence-distillation"), adam_store, distilled_scores),
    ]
    for label, resource, store, read in runs:
        started = time.perf_counter()
        run_selection(resource, storage_uri=str(store), cache_dir=str(work / "models"), progress=False)
        matrices[label] = read(resource, store)
        seconds[label] = round(time.perf_counter() - started, 1)
        log(f"  features: {label}: {seconds[label]:.0f} s")
    started = time.perf_counter()
    weighted, last = bias_corrected_scores(runs[0][1], adam_store)
    matrices["adam-bias-corrected, no momentum"] = weighted
    matrices["adam-bias-corrected, last checkpoint"] = last
    seconds["adam-bias-corrected, no momentum"] = round(time.perf_counter() - started, 1)
    log(f"  features: adam-bias-corrected: {seconds['adam-bias-corrected, no momentum']:.0f} s")
    return matrices, seconds


def reference_attributions(
    pool: Sequence[PoolEntry], validation_tasks: Sequence[str], seed: int
) -> dict[str, np.ndarray]:
    """Trivial references: same-task indicators (true labels) and seeded random scores."""
    pool_tasks = np.array([e.task for e in pool])
    clean = np.array([e.kind in ("on-target", "duplicate") for e in pool])
    same = (pool_tasks[:, None] == np.array(validation_tasks)[None, :]).astype(np.float64)
    return {
        "same-task indicator (oracle labels)": same,
        "same-task clean indicator (oracle labels)": same * clean[:, None],
        "random": np.random.default_rng([seed, 11]).standard_normal((len(pool), len(validation_tasks))),
    }


# --- measuring the subsets ---------------------------------------------------------------------------


def validation_losses(model, tokenizer, items: Sequence[tasks.Item], max_length: int) -> np.ndarray:
    """Teacher-forced loss of each validation example (mean over its answer tokens), as dsel trains."""
    import torch

    from selection.data import collate
    from selection.loss import model_loss

    batch = collate(finetune.tokenize(tokenizer, items, max_length), tokenizer.pad_token_id)
    with torch.no_grad():
        return model_loss(model, batch).double().numpy()


def measure_subsets(size: Size, base_dir: Path, pool: Sequence[PoolEntry], validation: Sequence[tasks.Item],
                    masks: np.ndarray, directory: Path, log: Callable[[str], None]) -> tuple[np.ndarray, list[float]]:
    """(m, M) validation losses after fine-tuning on each subset; finished subsets are read back."""
    directory.mkdir(parents=True, exist_ok=True)
    losses, seconds = [], []
    for k, mask in enumerate(masks):
        path = directory / f"subset-{k:03d}.json"
        indices = np.flatnonzero(mask).tolist()
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved["indices"] == indices:
                losses.append(saved["losses"])
                seconds.append(saved["seconds"])
                continue
        started = time.perf_counter()
        model, tokenizer = finetune.finetune(base_dir, [pool[i].item for i in indices], size.recipe, size.seed)
        values = validation_losses(model, tokenizer, validation, size.recipe.max_length).tolist()
        elapsed = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps({"indices": indices, "losses": values, "seconds": elapsed}))
        losses.append(values)
        seconds.append(elapsed)
        log(f"  subset {k + 1}/{len(masks)}: mean validation loss {np.mean(values):.3f}  ({elapsed:.0f} s)")
    return np.asarray(losses), seconds


# --- the table -------------------------------------------------------------------------------------


def score_table(masks: np.ndarray, losses: np.ndarray, matrices: dict[str, np.ndarray],
                validation_tasks: Sequence[str], resamples: int, seed: int) -> list[dict[str, Any]]:
    """One row per attribution: LDS mean, 95% CI, the paired difference to the first row (same
    validation examples and subsets) with its CI, per-task means, the per-example values."""
    rows = []
    labels = np.array(validation_tasks)
    reference = None
    for label, matrix in matrices.items():
        values = lds_per_example(masks, matrix, losses)
        reference = values if reference is None else reference
        low, high = bootstrap_interval(values, resamples, seed)
        difference = values - reference
        rows.append({
            "method": label,
            "lds": float(values.mean()),
            "ci95": [low, high],
            "vs_first": float(difference.mean()),
            "vs_first_ci95": list(bootstrap_interval(difference, resamples, seed)),
            "per_task": {t: float(values[labels == t].mean()) for t in tasks.TASKS if (labels == t).any()},
            "per_example": values.tolist(),
        })
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    present = [t for t in tasks.TASKS if any(t in r["per_task"] for r in rows)]
    first = rows[0]["method"].split(" (")[0] if rows else ""
    lines = [
        f"| attribution | LDS | 95% CI | vs {first} (paired) | " + " | ".join(present) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(present),
    ]
    for r in rows:
        per_task = " | ".join(f"{r['per_task'].get(t, float('nan')):+.2f}" for t in present)
        low, high = r["vs_first_ci95"]
        paired = "" if r is rows[0] else f"{r['vs_first']:+.3f} [{low:+.3f}, {high:+.3f}]"
        interval = f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
        lines.append(f"| {r['method']} | {r['lds']:+.3f} | {interval} | {paired} | {per_task} |")
    return "\n".join(lines)


def composition(pool: Sequence[PoolEntry]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for entry in pool:
        out.setdefault(entry.task, {}).setdefault(entry.kind, 0)
        out[entry.task][entry.kind] += 1
    return out


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attribution", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "smoke"), default="full", help="preset (smoke: the CI test's size)")
    parser.add_argument("--subsets", type=int, help="m, the number of random subsets (default: 40 full)")
    parser.add_argument("--pool", type=int, help="pool size N (default: 400 full)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs per subset (default: 4 full)")
    parser.add_argument("--warmup-examples", type=int, help="dsel warmup subset size (default: 150 full)")
    parser.add_argument("--warmup-epochs", type=int, help="dsel warmup epochs = checkpoints (default: 2)")
    parser.add_argument("--warmup-like-finetune", action="store_true",
                        help="dsel warmup with the fine-tune's LoRA shape (r=16, all linear layers) and learning rate")
    parser.add_argument("--out", type=Path, help="results directory (default: bench/attribution_results; "
                        "smoke: under the cache, so it never overwrites the committed results)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="base models and work (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete this configuration's cached work (not the base model)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, see bench/quality/README.md)")
    args = parser.parse_args(argv)

    size = size_preset(args.size)
    if args.subsets is not None:
        size = replace(size, subsets=args.subsets)
    if args.pool is not None:
        size = replace(size, pool=replace(size.pool, size=args.pool))
    if args.epochs is not None:
        size = replace(size, recipe=replace(size.recipe, epochs=args.epochs))
    if args.warmup_examples is not None:
        size = replace(size, warmup_examples=args.warmup_examples)
    if args.warmup_epochs is not None:
        size = replace(size, warmup_epochs=args.warmup_epochs)
    if args.warmup_like_finetune:
        size = replace(size, warmup_like_finetune=True)
    if size.subsets < 2 or size.pool.size < 2 * len(tasks.TASKS):
        parser.error("need at least 2 subsets and a pool of at least 12 examples")
    cache = args.cache.resolve()
    out = (args.out or (DEFAULT_OUT if size.name == "full" else cache / "attribution" / f"{size.name}-out")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored at the end: the smoke test runs in pytest's process
    log_file = (out / "run.log").open("w")

    def log(message: str) -> None:
        print(message, flush=True)
        log_file.write(message + "\n")
        log_file.flush()

    try:
        return _run(args, size, out, cache, log, argv)
    finally:
        torch.set_num_threads(threads_before)
        log_file.close()


def _run(args, size: Size, out: Path, cache: Path, log: Callable[[str], None], argv) -> int:
    import torch

    from selection.models import load_model_and_tokenizer
    from selection.spec import spec_fingerprint

    torch.manual_seed(0)
    arguments = argv if argv is not None else sys.argv[1:]
    command = "python -m bench.attribution " + " ".join(shlex.quote(a) for a in arguments)
    log(f"$ {command.strip()}")
    started = time.perf_counter()
    timings: dict[str, Any] = {}

    t0 = time.perf_counter()
    base_dir, built = pretrain.ensure_base_model(size.model, cache, log)
    timings["pretrain (0 if cached)"] = round(time.perf_counter() - t0, 1) if built else 0.0

    pool, validation_sets = build_pool(size.pool, size.seed)
    validation = [item for t in tasks.TASKS for item in validation_sets[t]]
    validation_tasks = [item.task for item in validation]
    # dsel's artifacts depend on everything; the measured losses only on the pool, subsets and recipe,
    # so feature variants (other warmups) are scored against the same cached fine-tunes.
    work = cache / "attribution" / f"{size.name}-{spec_fingerprint({'size': asdict(size), 'base': base_dir.name})[:12]}"
    measured = cache / "attribution" / f"{size.name}-subsets-{size.measurement_key(base_dir.name)}"
    if args.fresh:
        for directory in (work, measured):
            shutil.rmtree(directory, ignore_errors=True)
    inputs = tasks.write_selection_inputs(tasks.Datasets([e.item for e in pool], validation_sets, {}), work / "data")
    log(f"size {size.name}: pool {len(pool)} ({', '.join(f'{k} {v}' for k, v in size.pool.counts()[0].items())} "
        f"per capability, chatter {size.pool.counts()[1]}), {len(validation)} validation examples, "
        f"{size.subsets} subsets of {int(size.subset_fraction * len(pool))}, fine-tune {size.recipe.epochs} epochs; "
        f"dsel warmup {size.warmup_examples} examples x {size.warmup_epochs} epochs"
        f"{' (fine-tune LoRA and lr)' if size.warmup_like_finetune else ''}; work in {work}, losses in {measured}")

    t0 = time.perf_counter()
    matrices, feature_seconds = dsel_attributions(size, base_dir, inputs, len(pool), len(validation), work, log)
    matrices.update(reference_attributions(pool, validation_tasks, size.seed))
    timings["features"] = round(time.perf_counter() - t0, 1)
    timings["features by method"] = feature_seconds

    model, tokenizer = load_model_and_tokenizer(str(base_dir), dtype="float32")
    base_losses = validation_losses(model, tokenizer, validation, size.recipe.max_length)
    del model

    t0 = time.perf_counter()
    masks = draw_subsets(len(pool), size.subsets, size.subset_fraction, size.seed)
    losses, subset_seconds = measure_subsets(size, base_dir, pool, validation, masks, measured, log)
    timings["fine-tuning"] = round(time.perf_counter() - t0, 1)
    timings["seconds per fine-tune (mean, incl. cached)"] = round(float(np.mean(subset_seconds)), 1)

    rows = score_table(masks, losses, matrices, validation_tasks, size.bootstrap, size.seed)
    self_check = float(lds_per_example(masks, in_sample_datamodel(masks, losses), losses).mean())
    timings["total"] = round(time.perf_counter() - started, 1)
    table = markdown_table(rows)
    spread = float(losses.std(axis=0).mean())
    summary = (
        f"validation loss: base model {base_losses.mean():.3f}, after fine-tuning {losses.mean():.3f} "
        f"(mean over subsets); spread across subsets (std per example, mean) {spread:.3f}\n"
        f"self-check: in-sample least-squares datamodel (fits the measurements exactly) LDS = {self_check:.3f}\n"
        f"time: features {timings['features']:.0f} s; fine-tuning {np.mean(subset_seconds):.1f} s per subset "
        f"(as measured when the subset was first trained; {timings['fine-tuning']:.0f} s in this run)"
    )
    log("")
    log(table)
    log("")
    log(summary)
    log(f"done in {timings['total'] / 60:.1f} min")

    document = {
        "command": command.strip(),
        "size": asdict(size),
        "versions": quality_run.versions(),
        "base_model": base_dir.name,
        "pool_composition": composition(pool),
        "validation_tasks": validation_tasks,
        "timings_seconds": timings,
        "base_validation_losses": base_losses.tolist(),
        "subsets": [np.flatnonzero(m).tolist() for m in masks],
        "losses": losses.tolist(),
        "self_check_in_sample_lds": self_check,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(document, indent=1, default=str))
    (out / "TABLE.md").write_text(
        f"# LDS of dsel's attributions ({size.name})\n\n`{command.strip()}`\n\n"
        f"m = {size.subsets} random subsets of {int(size.subset_fraction * len(pool))} from a "
        f"{len(pool)}-example mixed pool; {len(validation)} validation examples; mean LDS with a 95% bootstrap "
        f"interval over validation examples; per-task columns are means.\n\n{table}\n\n"
        + summary.replace("\n", "\n\n")
        + f"\n\nTotal {timings['total'] / 60:.1f} min ({args.threads} thread, {platform.machine()}).\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
