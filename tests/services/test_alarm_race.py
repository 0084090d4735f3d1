"""Two monitors evaluating the same breach at once page once: the alarm transition is one
SQLite transaction (BEGIN IMMEDIATE; read; write; commit) in ``LocalMetricsStore``."""

from __future__ import annotations

import threading
from pathlib import Path

from dermaops_services.alarms import evaluate_alarms
from dermaops_resources.metrics import LocalMetricsStore
from dermaops_resources.notifier import LocalNotifier

THREADS = 8
ROUNDS = 10


def test_concurrent_breaches_notify_exactly_once(tmp_path: Path) -> None:
    db, alerts = tmp_path / "metrics.db", tmp_path / "alerts.jsonl"
    LocalMetricsStore(db_path=str(db)).ensure_alarms()
    for round_ in range(ROUNDS):
        evaluate_alarms(LocalMetricsStore(db_path=str(db)), LocalNotifier(alerts_path=str(alerts)),
                        {"EndpointErrors": 0})  # back to OK: the next breach is a new transition
        barrier = threading.Barrier(THREADS)
        results: list[bool] = []
        errors: list[BaseException] = []

        def monitor(barrier: threading.Barrier = barrier, results: list[bool] = results,
                    errors: list[BaseException] = errors) -> None:
            # one store and notifier per "process", as two Dagster runs would have
            metrics, notifier = LocalMetricsStore(db_path=str(db)), LocalNotifier(alerts_path=str(alerts))
            try:
                barrier.wait()
                results.extend(t.notified for t in evaluate_alarms(metrics, notifier, {"EndpointErrors": 50}))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=monitor) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(results) == [False] * (THREADS - 1) + [True], f"round {round_}: {results}"
    lines = [line for line in alerts.read_text().splitlines() if line.strip()]
    assert len(lines) == ROUNDS, f"{len(lines)} pages for {ROUNDS} breaches"
    assert LocalMetricsStore(db_path=str(db)).alarm_states()["dermaops-endpoint-errors"] == "ALARM"


def test_set_alarm_state_on_an_unknown_alarm_records_it(tmp_path: Path) -> None:
    metrics = LocalMetricsStore(db_path=str(tmp_path / "metrics.db"))
    assert metrics.set_alarm_state("custom-alarm", "ALARM") == "INSUFFICIENT_DATA"
    assert metrics.set_alarm_state("custom-alarm", "ALARM") == "ALARM", "a second caller sees the first one's state"
