"""Stage 1: LoRA warmup on a seeded fraction of the pool; one committed checkpoint per epoch."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from selection import artifacts
from selection.artifacts import WARMUP_CHECKPOINT
from selection.jobs import extract, runner
from selection.jobs.context import StageContext
from selection.jobs.methods import method_for


def run(ctx: StageContext, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Train (or resume) the warmup, then the validation features; returns the checkpoint prefixes.

    Validation features are computed here, once, so that the extraction shards running in
    parallel afterwards all find them finished instead of each computing them.
    """
    from selection import warmup  # deferred: torch (see selection/jobs/__init__.py)

    ctx.preflight()
    spec = ctx.spec.warmup
    store = ctx.artifacts
    validation_epochs = method_for(ctx.spec).validation_epochs(ctx)
    prefixes = [WARMUP_CHECKPOINT.prefix(epoch=e) for e in ctx.epochs]
    finished = [WARMUP_CHECKPOINT.exists(store, ctx.fingerprints, epoch=e) for e in ctx.epochs]
    if all(finished):
        extract.ensure_validation_features(ctx, validation_epochs)
        return prefixes
    last_done = max((e for e, done in zip(ctx.epochs, finished) if done), default=None)
    if last_done is not None and not all(finished[: last_done + 1]):
        last_done = None  # a gap: an epoch without its predecessor cannot be trusted to resume

    model, tokenizer = ctx.load_model()
    model = warmup.attach_lora(model, spec.lora, spec.seed)
    subset = warmup.warmup_indices(len(ctx.train_examples), spec.fraction, spec.seed)
    examples = ctx.tokenize(tokenizer, [ctx.train_examples[i] for i in subset])
    resume = None
    if last_done is not None:
        resume = warmup.load_checkpoint(WARMUP_CHECKPOINT.fetch(store, epoch=last_done))

    def save(epoch: int, directory: Path) -> None:
        info = warmup.load_checkpoint(directory)
        WARMUP_CHECKPOINT.save_directory(
            store,
            directory,
            artifacts.CheckpointMetadata(
                fingerprint=ctx.fingerprints.warmup, epoch=epoch, step=info.step, mean_lr=info.mean_lr,
                warmup_examples=len(subset),
            ),
            epoch=epoch,
        )

    with tempfile.TemporaryDirectory(prefix="dsel-warmup-") as scratch:
        warmup.train_warmup(
            model, examples, spec, tokenizer.pad_token_id,
            save=save, scratch=Path(scratch), resume_from=resume, progress=progress,
        )
    extract.ensure_validation_features(ctx, validation_epochs, model, tokenizer)
    return prefixes


def main(argv: list[str] | None = None) -> int:
    return runner.run_stage("warmup", lambda ctx: run(ctx), argv)


if __name__ == "__main__":
    raise SystemExit(main())
