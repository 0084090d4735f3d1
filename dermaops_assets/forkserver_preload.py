"""What a run's forkserver imports before it forks a process per step (``dermaops_assets.executor``).

A forked step inherits every module its server imported. The definitions are one part; the
other is what every step does first, opening the run's instance (``DAGSTER_HOME``): its SQLite
run, event-log and schedule storages import sqlalchemy, alembic and their dependencies, which
every forked step otherwise imported again, five times over when five steps start together.
Opening the instance here once imports exactly what the configured storages need (SQLite or
Postgres alike); the instance is closed again, so no connection crosses a fork.
"""

from __future__ import annotations

import dagster as dg

import dermaops_assets

DEFINITIONS = dermaops_assets.defs
"""What every step loads (imported here, so each forked step inherits it)."""


def _import_instance_storages() -> None:
    """Open and close the instance of ``DAGSTER_HOME``; never fails (a preload that raised would
    take the forkserver, and with it every step of the run, down: the steps open it themselves)."""
    try:
        with dg.DagsterInstance.get():
            pass
    except Exception:  # noqa: BLE001
        pass


_import_instance_storages()
