"""kopf handlers: decorators and wiring only; the work happens in `reconciler` and `phases`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from selection import spec as spec_module

from selection_operator import cluster, manifests, reconciler
from selection_operator.settings import OperatorSettings

GROUP, VERSION, PLURAL = spec_module.API_GROUP, spec_module.API_VERSION, spec_module.PLURAL


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Read the DSEL_* environment, connect, and start the metrics endpoint."""
    config = OperatorSettings.from_env()
    if config.logging_level is not None:
        logging.getLogger().setLevel(config.logging_level)
    # Our own names for kopf's bookkeeping, and none of it in .status (that is ours).
    settings.persistence.finalizer = "dsel.dev/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dsel.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="dsel.dev", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "dsel-operator"
    memo.dsel = reconciler.Context.create(config)
    logger.info(
        "dsel operator: worker image %s, default storage %s, metrics %s",
        config.worker_image, config.default_storage_uri or "(none)",
        f"{config.metrics_address}:{config.metrics_port}" if config.metrics_port else "off",
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    context = memo.get("dsel")
    if context is not None:
        context.close()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """The same credentials the operator's API client uses ($KUBECONFIG read at call time)."""
    return kopf.ConnectionInfo(**cluster.connection_info(cluster.load_configuration()))


# Deletion stops the loop via `stopped`; kopf checks every second and cancels it after 10 s.
@kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_polling=1.0, cancellation_timeout=10.0)
async def run_selection(
    namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    await reconciler.watch_over(memo.dsel, _namespaced(namespace), name, logger, stopped)


# Event handlers are async so that they run in the loop that owns the wake-up events
# (kopf runs sync handlers in threads).
@kopf.on.event(GROUP, VERSION, PLURAL)
async def selection_changed(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body.get("metadata", {})
    if type == "DELETED":
        memo.dsel.metrics.set_phase(meta.get("namespace"), meta.get("name"), None)
        return
    memo.dsel.wakeups.poke_on_new_generation(meta.get("namespace"), meta.get("name"), meta.get("generation"))


@kopf.on.event("batch", "v1", "jobs", labels={manifests.LABEL_SELECTION: kopf.PRESENT})
async def job_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    memo.dsel.wakeups.poke(_namespaced(namespace), labels[manifests.LABEL_SELECTION])


@kopf.on.delete(GROUP, VERSION, PLURAL, retries=5, backoff=2)
async def clean_up(namespace: str | None, name: str, uid: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Delete the Jobs (and so their pods) and ConfigMaps now, not whenever garbage collection runs."""
    await reconciler.delete_children(memo.dsel, _namespaced(namespace), name, uid, logger)


def _namespaced(namespace: str | None) -> str:
    """kopf types `namespace` for cluster-scoped kinds too; DataSelections and Jobs always have one."""
    if namespace is None:
        raise kopf.PermanentError("expected a namespaced object, got one without metadata.namespace")
    return namespace
