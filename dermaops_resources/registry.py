"""Model registry: versioned model packages with an approval status.

``SqliteModelRegistry`` keeps package groups and packages in a SQLite file under
``DERMAOPS_HOME``; ``SageMakerModelRegistry`` (``dermaops_resources.aws.registry``)
uses SageMaker Model Registry. Both enforce the same approval transitions.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Literal

import dagster as dg
from pydantic import BaseModel, Field

from .object_store import private_sqlite

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


class StatusChange(BaseModel):
    """One entry of a package's approval history: what it became, why, who did it, when.

    ``actor`` is who ran the change (the OS user locally, the AWS caller identity ARN on
    SageMaker), taken from the process, never from the request: an approver cannot name
    someone else."""

    group: str
    version: int
    status: str
    reason: str = ""
    actor: str = ""
    at: float = 0.0
    sequence: int = 0
    """1 for the registration, then one more per change."""
    truncated: bool = False
    """The reason (or actor) was cut to fit the backend's record (SageMaker: 256 characters)."""
    dropped_before: int = 0
    """Entries missing just before this one (SageMaker's 50-property limit; see the AWS registry)."""


def local_actor() -> str:
    """The OS user running this process (``getpass.getuser()``), for the local audit trail.

    ``getpass`` reads LOGNAME/USER first and falls back to the password database; in a
    container without either it raises, and ``uid:<n>`` still says who it was."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid (minimal containers)
        return f"uid:{os.getuid()}"


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
                 status: ApprovalStatus = "PendingManualApproval", actor: str | None = None) -> ModelPackage:
        """A new version of ``group``; ``actor`` defaults to whoever runs this process and is
        recorded as the first entry of the package's :meth:`history`."""

    @abstractmethod
    def list_packages(self, group: str) -> list[ModelPackage]:
        """All versions, newest first."""

    @abstractmethod
    def get(self, group: str, version: int) -> ModelPackage: ...

    @abstractmethod
    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str = "",
                   actor: str | None = None) -> ModelPackage:
        """Approve or reject a package (``check_transition`` rules) and append the change, with
        ``reason`` and ``actor`` (default: whoever runs this process), to its history."""

    @abstractmethod
    def history(self, group: str, version: int) -> list[StatusChange]:
        """Every status change of one package, oldest first, registration included: the audit
        trail of who approved or rejected it and why (``dermaops registry history``)."""

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
    reason TEXT NOT NULL, at REAL NOT NULL, actor TEXT NOT NULL DEFAULT ''
);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a registry written by an older DermaOps up to the current schema.

    ``status_history.actor`` came with the audit trail; rows written before it keep an
    empty actor (unknown), which ``history`` shows as such rather than guessing."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(status_history)")}
    if "actor" not in columns:
        try:
            conn.execute("ALTER TABLE status_history ADD COLUMN actor TEXT NOT NULL DEFAULT ''")
        except sqlite3.OperationalError as exc:  # another process migrated it meanwhile
            if "duplicate column" not in str(exc).lower():
                raise



class SqliteModelRegistry(ModelRegistry):
    """The local registry: one SQLite file, every change in a transaction."""

    db_path: str

    @contextmanager
    def _conn(self):
        private_sqlite(self.db_path)
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            _migrate(conn)
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
                 status: ApprovalStatus = "PendingManualApproval", actor: str | None = None) -> ModelPackage:
        actor = actor or local_actor()
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
                conn.execute("INSERT INTO status_history(grp, version, status, reason, at, actor) "
                             "VALUES (?, ?, ?, 'registered', ?, ?)", (group, version, status, now, actor))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.get(group, version)

    def list_packages(self, group: str) -> list[ModelPackage]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM packages WHERE grp = ? ORDER BY version DESC", (group,)).fetchall()
        return [self._row(r) for r in rows]

    def get(self, group: str, version: int) -> ModelPackage:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM packages WHERE grp = ? AND version = ?", (group, version)).fetchone()
        if row is None:
            raise RegistryError(f"No model package {group} version {version}; see `dermaops registry list`.")
        return self._row(row)

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str = "",
                   actor: str | None = None) -> ModelPackage:
        actor = actor or local_actor()
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
                conn.execute("INSERT INTO status_history(grp, version, status, reason, at, actor) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (group, version, status, reason, now, actor))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.get(group, version)

    def history(self, group: str, version: int) -> list[StatusChange]:
        with self._conn() as conn:
            exists = conn.execute("SELECT 1 FROM packages WHERE grp = ? AND version = ?", (group, version)).fetchone()
            rows = conn.execute("SELECT status, reason, actor, at FROM status_history WHERE grp = ? AND version = ? "
                                "ORDER BY at, rowid", (group, version)).fetchall()
        if exists is None:
            raise RegistryError(f"No model package {group} version {version}; see `dermaops registry list`.")
        return [StatusChange(group=group, version=version, status=r["status"], reason=r["reason"],
                             actor=r["actor"], at=r["at"], sequence=n) for n, r in enumerate(rows, start=1)]
