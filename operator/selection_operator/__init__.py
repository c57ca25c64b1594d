"""The dsel operator: `kopf run -m selection_operator` turns DataSelections into Kubernetes Jobs.

Importing the package registers the kopf handlers. Settings come from DSEL_* environment
variables (see `selection_operator.settings`). The modules:

    handlers    kopf decorators only
    reconciler  observe -> decide -> act for one resource
    phases      the pure state machine
    manifests   pure builders of the ConfigMap and Jobs
    status      conditions and the compact encoding of selected indices
    cluster     the only module talking to the Kubernetes API
    results     reading selection.json from the artifact store
    metrics     Prometheus metrics
    settings    the DSEL_* environment
"""

from selection_operator import handlers  # noqa: F401  (registers the handlers)
