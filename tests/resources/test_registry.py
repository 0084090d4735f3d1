from __future__ import annotations

from pathlib import Path

import pytest

from dermaops_resources.registry import RegistryError, SqliteModelRegistry


@pytest.fixture
def registry(tmp_path: Path) -> SqliteModelRegistry:
    return SqliteModelRegistry(db_path=str(tmp_path / "registry.db"))


def _register(registry: SqliteModelRegistry, ba: float, status="PendingManualApproval"):
    return registry.register("lesions", f"file:///m/{ba}/model.tar.gz", f"hash{ba}", {"balanced_accuracy": ba},
                             "file:///e.json", {"data_version": "d1", "code_version": "c1", "dagster_run_id": "r"},
                             status=status)


def test_versions_increment_and_lineage_is_kept(registry: SqliteModelRegistry) -> None:
    first, second = _register(registry, 0.7), _register(registry, 0.8)
    assert (first.version, second.version) == (1, 2)
    assert second.status == "PendingManualApproval"
    assert [p.version for p in registry.list_packages("lesions")] == [2, 1]
    assert registry.get("lesions", 1).lineage["data_version"] == "d1"
    assert registry.get("lesions", 2).metrics == {"balanced_accuracy": 0.8}


def test_approval_transitions(registry: SqliteModelRegistry) -> None:
    _register(registry, 0.7)
    assert registry.latest("lesions") is None
    approved = registry.set_status("lesions", 1, "Approved", "reviewed by dermatologist")
    assert approved.status == "Approved" and approved.status_reason == "reviewed by dermatologist"
    assert registry.latest("lesions").version == 1
    assert registry.set_status("lesions", 1, "Rejected", "retired").status == "Rejected"
    assert registry.latest("lesions") is None


def test_bad_transitions_are_refused_and_change_nothing(registry: SqliteModelRegistry) -> None:
    _register(registry, 0.7)
    registry.set_status("lesions", 1, "Approved")
    with pytest.raises(RegistryError, match="already Approved"):
        registry.set_status("lesions", 1, "Approved")
    with pytest.raises(RegistryError, match="cannot go from Approved to PendingManualApproval"):
        registry.set_status("lesions", 1, "PendingManualApproval")
    with pytest.raises(RegistryError, match="not an approval status"):
        registry.set_status("lesions", 1, "Deployed")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="No model package lesions version 9"):
        registry.set_status("lesions", 9, "Approved")
    assert registry.get("lesions", 1).status == "Approved"


def test_history_records_actor_and_reason_in_order(registry: SqliteModelRegistry) -> None:
    import getpass

    _register(registry, 0.7)
    registry.set_status("lesions", 1, "Approved", "reviewed by dermatologist")
    registry.set_status("lesions", 1, "Rejected", "accuracy drop on darker skin", actor="svc-monitor")
    history = registry.history("lesions", 1)
    assert [(c.status, c.reason) for c in history] == [
        ("PendingManualApproval", "registered"), ("Approved", "reviewed by dermatologist"),
        ("Rejected", "accuracy drop on darker skin")]
    assert [c.actor for c in history] == [getpass.getuser(), getpass.getuser(), "svc-monitor"]
    assert [c.sequence for c in history] == [1, 2, 3]
    assert history[0].at <= history[1].at <= history[2].at
    with pytest.raises(RegistryError, match="No model package lesions version 9"):
        registry.history("lesions", 9)


def test_history_migrates_a_registry_without_the_actor_column(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the status_history table as DermaOps wrote it before the audit trail
        conn.execute("CREATE TABLE status_history (grp TEXT NOT NULL, version INTEGER NOT NULL, "
                     "status TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)")
    registry = SqliteModelRegistry(db_path=str(db))
    _register(registry, 0.7)
    registry.set_status("lesions", 1, "Approved", "ok", actor="alice")
    assert [(c.status, c.actor) for c in registry.history("lesions", 1)][-1] == ("Approved", "alice")


def test_cli_registry_history_prints_actor_and_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import getpass
    import json

    import dermaops_cli

    monkeypatch.setenv("DERMAOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DERMAOPS_BACKEND", "local")
    monkeypatch.setenv("DERMAOPS_MODEL_PACKAGE_GROUP", "lesions")
    _register(SqliteModelRegistry(db_path=str(tmp_path / "home" / "registry.db")), 0.7)
    assert dermaops_cli.main(["registry", "approve", "--version", "1", "--reason", "reviewed"]) == 0
    assert dermaops_cli.main(["registry", "reject", "--version", "1", "--reason", "retired: drift"]) == 0
    capsys.readouterr()
    assert dermaops_cli.main(["registry", "history", "--version", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    user = getpass.getuser()
    assert lines[2].split("\t")[1:] == ["PendingManualApproval", user, "registered"]
    assert lines[3].split("\t")[1:] == ["Approved", user, "reviewed"]
    assert lines[4].split("\t")[1:] == ["Rejected", user, "retired: drift"]
    assert dermaops_cli.main(["registry", "history", "--version", "1", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["status"], r["actor"], r["reason"]) for r in records][1:] == [
        ("Approved", user, "reviewed"), ("Rejected", user, "retired: drift")]
    assert dermaops_cli.main(["registry", "history", "--version", "7"]) == 2
    assert "No model package lesions version 7" in capsys.readouterr().err
