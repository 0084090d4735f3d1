"""Notifier: tells the team about skipped registrations, alarms and retraining.

``LocalNotifier`` writes a log line and appends to an alerts JSONL file (and posts to an
optional webhook); ``SnsNotifier`` (``dermaops_resources.aws.cloudwatch``) publishes to an
SNS topic. Messages must never carry PHI: callers pass aggregate facts only.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import dagster as dg

from .object_store import open_private_append

Severity = Literal["info", "warning", "critical"]
log = logging.getLogger("dermaops.notifier")


class Notifier(dg.ConfigurableResource, ABC):
    @abstractmethod
    def notify(self, subject: str, message: str, severity: Severity = "info",
               attributes: dict[str, str] | None = None) -> str:
        """Send one notification; returns its id."""


class LocalNotifier(Notifier):
    alerts_path: str
    webhook_url: str = ""
    webhook_timeout_seconds: float = 5.0

    def notify(self, subject: str, message: str, severity: Severity = "info",
               attributes: dict[str, str] | None = None) -> str:
        record = {
            "id": uuid.uuid4().hex,
            "time": time.time(),
            "severity": severity,
            "subject": subject,
            "message": message,
            "attributes": attributes or {},
        }
        line = json.dumps(record, sort_keys=True)
        log.log(logging.CRITICAL if severity == "critical" else logging.WARNING if severity == "warning"
                else logging.INFO, "[%s] %s: %s", severity.upper(), subject, message)
        # 0600: alerts name models and metrics, not patients, but DERMAOPS_HOME is owner-only throughout
        with open_private_append(self.alerts_path) as fh:  # one write of one line: readers never see half a record
            fh.write(line + "\n")
        if self.webhook_url:
            req = urllib.request.Request(self.webhook_url, data=line.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=self.webhook_timeout_seconds).close()
            except OSError as exc:  # the alert is already on disk; a dead webhook must not fail a run
                log.warning("alert webhook %s failed: %s", self.webhook_url, exc)
        return record["id"]

    def read_alerts(self) -> list[dict]:
        path = Path(self.alerts_path)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
