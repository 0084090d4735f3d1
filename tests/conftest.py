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
    _own_cores_per_xdist_worker()


def _own_cores_per_xdist_worker() -> None:
    """Under pytest-xdist (``make test`` runs one worker per core), give each worker, and every job
    and server it starts, cores of its own.

    Jobs size their threads and processes by the CPUs they may run on
    (``ml_code.contract.available_cpus``); unpinned, two workers' training jobs each ran two
    OpenMP threads on two cores, and spinning threads made them several times slower. Pinned,
    each worker is a one-core machine of its own. Without xdist (or with more workers than
    cores) nothing changes."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if not 1 < count <= len(cores):
        return
    os.sched_setaffinity(0, cores[int(worker[2:]) % count::count])


def pytest_collection_modifyitems(config, items):
    """Test files holding slow or real-data tests run first, those with the most of them first:
    ``make test`` hands whole files to its xdist workers in collection order, and the end-to-end
    files, collected last by name, left one worker running them alone at the end (longest
    first keeps both busy). The order within a file, and of the other files, is unchanged."""
    heavy: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("realdata"):
            path = item.nodeid.split("::")[0]
            heavy[path] = heavy.get(path, 0) + 1
    items.sort(key=lambda item: -heavy.get(item.nodeid.split("::")[0], 0))
