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
