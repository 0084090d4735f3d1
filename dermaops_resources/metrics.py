"""Metrics publisher: pipeline and monitoring metrics, and alarms over them.

``LocalMetricsStore`` keeps a SQLite time series under ``DERMAOPS_HOME``;
``CloudWatchMetrics`` (``dermaops_resources.aws.cloudwatch``) calls PutMetricData and
creates the architecture document's alarms as CloudWatch alarms.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg

from .object_store import private_sqlite

NAMESPACE = "DermaOps"


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm of the architecture document's 'Alerting Thresholds'."""

    name: str
    metric: str
    threshold: float
    comparison: str  # "GreaterThanThreshold" | "GreaterThanOrEqualToThreshold"
    statistic: str  # "Sum" | "Maximum" | "p95"
    period_seconds: int
    severity: str  # "warning" | "critical"
    description: str
    aws_metric: str = ""
    """On AWS, the metric SageMaker publishes itself (namespace ``AWS/SageMaker``, dimensions
    EndpointName and VariantName) that the CloudWatch alarm watches instead of ours; empty: ours."""
    aws_threshold_scale: float = 1.0
    """Multiplies the threshold into the AWS metric's unit (ModelLatency is in microseconds)."""


ALARMS: tuple[AlarmSpec, ...] = (
    AlarmSpec("dermaops-endpoint-errors", "EndpointErrors", 10, "GreaterThanThreshold", "Sum", 3600,
              "critical", "Endpoint errors > 10/hour", aws_metric="Invocation5XXErrors"),
    AlarmSpec("dermaops-latency-p95", "EndpointLatencyMs", 1000, "GreaterThanThreshold", "p95", 300,
              "warning", "Latency P95 > 1000 ms", aws_metric="ModelLatency", aws_threshold_scale=1000.0),
    AlarmSpec("dermaops-data-drift", "DriftDetected", 0, "GreaterThanThreshold", "Maximum", 3600,
              "warning", "Data drift detected"),
    AlarmSpec("dermaops-accuracy-drop", "AccuracyDropPoints", 5, "GreaterThanThreshold", "Maximum", 3600,
              "critical", "Model accuracy drop > 5 points"),
    AlarmSpec("dermaops-monthly-cost", "EstimatedMonthlyCostUSD", 500, "GreaterThanThreshold", "Maximum", 86400,
              "warning", "Monthly cost > $500"),
)


#: Who publishes each metric an alarm of ours watches (the AWS-metric alarms need nobody: SageMaker
#: publishes those). Each entry is proven by a test that runs the asset and finds the metric.
PUBLISHED_BY: dict[str, str] = {
    "EndpointErrors": "inference_log (local endpoint only)",
    "EndpointLatencyMs": "inference_log (local endpoint only)",
    "DriftDetected": "drift_report",
    "AccuracyDropPoints": "model_quality_report",
    "EstimatedMonthlyCostUSD": "cost_report",
}
#: What SageMaker publishes for an endpoint variant (namespace AWS/SageMaker).
SAGEMAKER_ENDPOINT_METRICS = ("Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "InvocationsPerInstance",
                              "ModelLatency", "OverheadLatency")


def breached(spec: AlarmSpec, value: float) -> bool:
    if spec.comparison == "GreaterThanOrEqualToThreshold":
        return value >= spec.threshold
    return value > spec.threshold


class MetricsPublisher(dg.ConfigurableResource, ABC):
    @abstractmethod
    def put(self, name: str, value: float, unit: str = "None", dimensions: dict[str, str] | None = None) -> None: ...

    @abstractmethod
    def ensure_alarms(self) -> list[str]:
        """Create (idempotently) the alarms of ``ALARMS``; returns their names."""


class LocalMetricsStore(MetricsPublisher):
    """Metrics and alarm states in one SQLite file (0600, under ``DERMAOPS_HOME``).

    Connections are in autocommit mode; the one read-then-write, an alarm transition, is an
    explicit ``BEGIN IMMEDIATE`` transaction, so concurrent monitors serialise on it."""

    db_path: str

    @contextmanager
    def _conn(self):
        private_sqlite(self.db_path)
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS metrics (name TEXT, value REAL, unit TEXT, "
                         "dimensions TEXT, at REAL)")
            conn.execute("CREATE TABLE IF NOT EXISTS alarms (name TEXT PRIMARY KEY, metric TEXT, threshold REAL, "
                         "comparison TEXT, severity TEXT, state TEXT DEFAULT 'INSUFFICIENT_DATA')")
            yield conn
        finally:
            conn.close()

    def put(self, name, value, unit="None", dimensions=None) -> None:
        import json

        with self._conn() as conn:
            conn.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                         (name, float(value), unit, json.dumps(dimensions or {}, sort_keys=True), time.time()))

    def ensure_alarms(self) -> list[str]:
        with self._conn() as conn:
            for spec in ALARMS:
                conn.execute("INSERT OR IGNORE INTO alarms(name, metric, threshold, comparison, severity) "
                             "VALUES (?, ?, ?, ?, ?)", (spec.name, spec.metric, spec.threshold, spec.comparison,
                                                         spec.severity))
        return [spec.name for spec in ALARMS]

    def set_alarm_state(self, name: str, state: str) -> str:
        """Move an alarm to ``state``; returns the state it had *for this caller*.

        Check and set are one ``BEGIN IMMEDIATE`` transaction: the write lock is taken before
        the read, so of two monitors that see the same breach at once, the second reads the
        first one's ALARM and does not page again (``evaluate_alarms`` notifies on
        ``previous != "ALARM"`` only). An alarm not created by ``ensure_alarms`` yet is
        recorded here rather than silently left without state."""
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT state FROM alarms WHERE name = ?", (name,)).fetchone()
                previous = row[0] if row else "INSUFFICIENT_DATA"
                if row is None:
                    conn.execute("INSERT INTO alarms(name, state) VALUES (?, ?)", (name, state))
                elif previous != state:
                    conn.execute("UPDATE alarms SET state = ? WHERE name = ?", (state, name))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return previous

    def alarm_states(self) -> dict[str, str]:
        with self._conn() as conn:
            return dict(conn.execute("SELECT name, state FROM alarms").fetchall())

    def metric_names(self) -> set[str]:
        """Every metric name published here so far."""
        with self._conn() as conn:
            return {row[0] for row in conn.execute("SELECT DISTINCT name FROM metrics")}
