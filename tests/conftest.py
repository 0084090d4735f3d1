"""Shared fixtures: every test gets its own DERMAOPS_HOME so nothing touches the repo's state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HAM10000 = REPO.parent / "shared" / "data" / "ham10000"


@pytest.fixture
def dermaops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dermaops-home"
    monkeypatch.setenv("DERMAOPS_HOME", str(home))
    monkeypatch.setenv("DERMAOPS_BACKEND", "local")
    for var in ("DERMAOPS_RAW_URI", "DERMAOPS_LANDING_URI", "DERMAOPS_LABELS_URI", "DERMAOPS_AUTO_APPROVE",
                "DERMAOPS_TRAIN_RECIPE"):
        monkeypatch.delenv(var, raising=False)
    return home


def ham10000_available() -> bool:
    return (HAM10000 / "HAM10000_metadata.csv").is_file() and (HAM10000 / "images").is_dir()


requires_ham10000 = pytest.mark.skipif(not ham10000_available(),
                                       reason=f"HAM10000 not found at {HAM10000}")


def pytest_configure(config):
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")
