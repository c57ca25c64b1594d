"""kopf handlers: decorators and wiring only; the work happens in `reconciler` and `phases`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from selection import spec as spec_module

from selection_operator import cluster, manifests, reconciler
from selection_operator.settings import OperatorSettings

GROUP, VERSION, PLURAL = spec_module.API_GROUP, spec_module.API_VERSION, spec_module.PLURAL


# The finalizer that dsel's operator used to put on DataSelections (through kopf daemons and a
# delete handler). None is added any more; a resource still carrying it is released on deletion.
LEGACY_FINALIZER = "dsel.dev/cleanup"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Read the DSEL_* environment, connect, and start the metrics endpoint."""
    config = OperatorSettings.from_env()
    if config.logging_level is not None:
        logging.getLogger().setLevel(config.logging_level)
    # Our own names for kopf's bookkeeping, and none of it in .status (that is ours).
    settings.persistence.finalizer = LEGACY_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dsel.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="dsel.dev", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "dsel-operator"
    # Only dsel's Jobs, filtered by the API server (kopf's handler filters are client-side).
    settings.watching.label_selectors["batch", "v1", "jobs"] = manifests.LABEL_SELECTION
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
        await context.close()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """The same credentials the operator's API client uses ($KUBECONFIG read at call time)."""
    return kopf.ConnectionInfo(**cluster.connection_info(cluster.load_configuration()))


# Event handlers are async so that they run in the loop that owns the reconcile loops and their
# wake-up events (kopf runs sync handlers in threads). No handler here needs a finalizer.
@kopf.on.event(GROUP, VERSION, PLURAL)
async def selection_changed(
    type: str, body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    meta = body.get("metadata", {})
    namespace, name = _namespaced(meta.get("namespace")), meta.get("name")
    if type == "DELETED" or meta.get("deletionTimestamp"):
        memo.dsel.supervisor.stop(namespace, name)
        memo.dsel.metrics.set_phase(namespace, name, None)
        if type != "DELETED" and LEGACY_FINALIZER in (meta.get("finalizers") or ()):
            await memo.dsel.cluster.remove_selection_finalizer(namespace, name, LEGACY_FINALIZER)
        return
    memo.dsel.selections.seen(namespace, name, event["object"])
    memo.dsel.supervisor.ensure(namespace, name, meta.get("generation"), logger)


@kopf.on.event("batch", "v1", "jobs", labels={manifests.LABEL_SELECTION: kopf.PRESENT})
async def job_changed(
    type: str | None, event: kopf.RawEvent, labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    memo.dsel.wakeups.poke_for_job(_namespaced(namespace), labels[manifests.LABEL_SELECTION], type, event["object"])


def _namespaced(namespace: str | None) -> str:
    """kopf types `namespace` for cluster-scoped kinds too; DataSelections and Jobs always have one."""
    if namespace is None:
        raise kopf.PermanentError("expected a namespaced object, got one without metadata.namespace")
    return namespace
