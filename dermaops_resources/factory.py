"""The one place where the backend is chosen: ``DERMAOPS_BACKEND`` = ``local`` | ``aws``.

Both branches return the same resource keys, so every asset, sensor and CLI command
is written once against the interfaces.
"""

from __future__ import annotations

from typing import Any

from .endpoint import LocalEndpointDeployer
from .io_manager import HandleIOManager
from .jobs import LocalJobRunner
from .metrics import LocalMetricsStore
from .notifier import LocalNotifier
from .object_store import LocalObjectStore, secure_home
from .registry import SqliteModelRegistry
from .settings import Settings

RESOURCE_KEYS = ("store", "jobs", "registry", "endpoint", "notifier", "metrics")
"""Resources each backend builds; the factory adds ``io_manager`` and ``settings`` to them."""


def build_local_resources(settings: Settings) -> dict[str, Any]:
    """The local backend, all of it under ``DERMAOPS_HOME``: the home is made (or tightened
    to) 0700 here, and each resource creates its own folders 0700 and files 0600, so patient
    images, the registry, metrics, alerts and job folders are readable by their owner only."""
    home = secure_home(settings.home_path)
    store = LocalObjectStore(root=str(home / "store"))
    return {
        "store": store,
        "jobs": LocalJobRunner(work_root=str(home / "jobs"), num_gpus=settings.local_num_gpus),
        "registry": SqliteModelRegistry(db_path=str(home / "registry.db")),
        "endpoint": LocalEndpointDeployer(
            state_dir=str(home / "endpoint"),
            capture_uri=store.uri("logs", "datacapture"),
            endpoint_name=settings.endpoint_name,
            port=settings.endpoint_port,
            host=settings.endpoint_host,
            invoke_token=settings.endpoint_token,
            max_inflight=settings.endpoint_max_inflight,
            workers=settings.endpoint_workers,
            log_level=settings.serve_log_level,
        ),
        "notifier": LocalNotifier(alerts_path=str(home / "alerts.jsonl"), webhook_url=settings.webhook_url),
        "metrics": LocalMetricsStore(db_path=str(home / "metrics.db")),
    }


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """Resources for the configured backend, plus the handle IO manager on the same store."""
    settings = settings or Settings.from_env()
    if settings.backend == "aws":
        from .aws.factory import build_aws_resources

        resources = build_aws_resources(settings)
    else:
        resources = build_local_resources(settings)
    missing = set(RESOURCE_KEYS) - set(resources)
    if missing:
        raise RuntimeError(f"backend {settings.backend!r} lacks resources {sorted(missing)}")
    resources["io_manager"] = HandleIOManager(store=resources["store"])
    resources["settings"] = settings
    return resources
