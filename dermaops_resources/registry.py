"""Model registry: versioned model packages with an approval status.

``SqliteModelRegistry`` keeps package groups and packages in a SQLite file under
``DERMAOPS_HOME``; ``SageMakerModelRegistry`` (``dermaops_resources.aws.registry``)
uses SageMaker Model Registry. Both enforce the same approval transitions.
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import BaseModel, Field

ApprovalStatus = Literal["PendingManualApproval", "Approved", "Rejected"]
APPROVAL_STATUSES: tuple[str, ...] = ("PendingManualApproval", "Approved", "Rejected")

# Which approval changes are allowed. Approved -> Rejected retires a model; a rejected
# package may be re-approved after review. Nothing returns to Pending.
ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    "PendingManualApproval": {"Approved", "Rejected"},
    "Approved": {"Rejected"},
    "Rejected": {"Approved"},
}


class RegistryError(ValueError):
    """A registry request that cannot be honoured (unknown package, bad transition...)."""


class ModelPackage(BaseModel):
    group: str
    version: int
    status: str
    created_at: float
    updated_at: float
    model_uri: str
    model_hash: str
    evaluation_uri: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, str] = Field(default_factory=dict)
    arn: str = ""
    status_reason: str = ""


def check_transition(current: str, new: str, where: str) -> None:
    if new not in APPROVAL_STATUSES:
        raise RegistryError(f"{new!r} is not an approval status; use one of {', '.join(APPROVAL_STATUSES)}.")
    if new == current:
        raise RegistryError(f"{where} is already {current}.")
    if new not in ALLOWED_TRANSITIONS[current]:
        raise RegistryError(
            f"{where} cannot go from {current} to {new}; allowed: {sorted(ALLOWED_TRANSITIONS[current])}."
        )


class ModelRegistry(dg.ConfigurableResource, ABC):
    """Package groups of versioned models, each with metrics, lineage and approval status."""

    @abstractmethod
    def register(self, group: str, model_uri: str, model_hash: str, metrics: dict[str, float],
                 evaluation_uri: str, lineage: dict[str, str],
                 status: ApprovalStatus = "PendingManualApproval") -> ModelPackage: ...

    @abstractmethod
    def list_packages(self, group: str) -> list[ModelPackage]:
        """All versions, newest first."""

    @abstractmethod
    def get(self, group: str, version: int) -> ModelPackage: ...

    @abstractmethod
    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str = "") -> ModelPackage: ...

    def latest(self, group: str, status: str | None = "Approved") -> ModelPackage | None:
        for package in self.list_packages(group):
            if status is None or package.status == status:
                return package
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS package_groups (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS packages (
    grp TEXT NOT NULL REFERENCES package_groups(name),
    version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PendingManualApproval', 'Approved', 'Rejected')),
    status_reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    model_uri TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    evaluation_uri TEXT NOT NULL,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    PRIMARY KEY (grp, version)
);
CREATE TABLE IF NOT EXISTS status_history (
    grp TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL
);
"""


class SqliteModelRegistry(ModelRegistry):
    """The local registry: one SQLite file, every change in a transaction."""

    db_path: str

    @contextmanager
    def _conn(self):
        Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _row(row: sqlite3.Row) -> ModelPackage:
        return ModelPackage(
            group=row["grp"], version=row["version"], status=row["status"], status_reason=row["status_reason"],
            created_at=row["created_at"], updated_at=row["updated_at"], model_uri=row["model_uri"],
            model_hash=row["model_hash"], evaluation_uri=row["evaluation_uri"],
            metrics=json.loads(row["metrics"]), lineage=json.loads(row["lineage"]),
            arn=f"local:model-package/{row['grp']}/{row['version']}",
        )

    def register(self, group, model_uri, model_hash, metrics, evaluation_uri, lineage,
                 status: ApprovalStatus = "PendingManualApproval") -> ModelPackage:
        if status not in APPROVAL_STATUSES:
            raise RegistryError(f"{status!r} is not an approval status; use one of {', '.join(APPROVAL_STATUSES)}.")
        now = time.time()
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO package_groups(name, created_at) VALUES (?, ?)", (group, now))
                version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM packages WHERE grp = ?",
                                       (group,)).fetchone()[0]
                conn.execute(
                    "INSERT INTO packages VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?)",
                    (group, version, status, now, now, model_uri, model_hash, evaluation_uri,
                     json.dumps(metrics, sort_keys=True), json.dumps(lineage, sort_keys=True)),
                )
                conn.execute("INSERT INTO status_history VALUES (?, ?, ?, 'registered', ?)",
                             (group, version, status, now))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.get(group, version)

    def list_packages(self, group: str) -> list[ModelPackage]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM packages WHERE grp = ? ORDER BY version DESC", (group,)).fetchall()
        return [self._row(r) for r in rows]

    def list_groups(self) -> list[str]:
        with self._conn() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM package_groups ORDER BY name")]

    def get(self, group: str, version: int) -> ModelPackage:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM packages WHERE grp = ? AND version = ?", (group, version)).fetchone()
        if row is None:
            raise RegistryError(f"No model package {group} version {version}; see `dermaops registry list`.")
        return self._row(row)

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str = "") -> ModelPackage:
        now = time.time()
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT status FROM packages WHERE grp = ? AND version = ?",
                                   (group, version)).fetchone()
                if row is None:
                    raise RegistryError(f"No model package {group} version {version}; see `dermaops registry list`.")
                check_transition(row[0], status, f"Model package {group} v{version}")
                conn.execute("UPDATE packages SET status = ?, status_reason = ?, updated_at = ? "
                             "WHERE grp = ? AND version = ?", (status, reason, now, group, version))
                conn.execute("INSERT INTO status_history VALUES (?, ?, ?, ?, ?)", (group, version, status, reason, now))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.get(group, version)
