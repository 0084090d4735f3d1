"""DERMAOPS_HOME is owner-only: the folder 0700, every folder below it 0700, every file 0600.

A small real flow runs under a fresh home with a permissive umask (0o000), so the modes
come from DermaOps itself, not from the test's environment; then the whole tree is walked.
Exceptions: none."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dermaops_services.alarms import evaluate_alarms
from dermaops_resources.factory import build_local_resources
from dermaops_resources.jobs import JobFailed, JobSpec
from dermaops_resources.object_store import LocalObjectStore
from dermaops_resources.settings import Settings

ENTRY = "tests.support.contract_probe"


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)  # the test, not library code, loosens the umask: DermaOps must not rely on it
    try:
        yield
    finally:
        os.umask(previous)


def _modes(home: Path) -> tuple[dict[str, str], int]:
    """{path: mode} of everything under ``home`` (itself included) that is not owner-only."""
    bad: dict[str, str] = {}
    count = 0
    for folder, dirs, files in os.walk(home, followlinks=False):
        for path in [Path(folder)] + [Path(folder) / f for f in files]:
            st = os.lstat(path)
            count += 1
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                bad[str(path.relative_to(home.parent))] = oct(st.st_mode)
    return bad, count


def test_a_local_flow_leaves_only_owner_only_files(tmp_path: Path, open_umask: None) -> None:
    home = tmp_path / "home"
    res = build_local_resources(Settings.from_env({"DERMAOPS_HOME": str(home)}))
    store, registry, metrics, notifier, jobs = (res[k] for k in ("store", "registry", "metrics", "notifier", "jobs"))

    store.put_bytes("raw", "images/batch-1/ISIC_0000001.jpg", b"\xff\xd8 lesion")
    store.put_bytes("processed", "splits/1/data.txt", b"lesions")
    result = jobs.run(JobSpec(job_type="training", name="train-1", entry_point=ENTRY,
                              inputs={"splits": store.uri("processed", "splits/1")}, hyperparameters={"lr": 0.01},
                              output_uri=store.uri("models", "jobs/train/train-1"),
                              checkpoint_uri=store.uri("models", "ckpt/train-1")), store)
    with pytest.raises(JobFailed):  # its folder stays under jobs/ for debugging
        jobs.run(JobSpec(job_type="training", name="train-bad", entry_point=ENTRY,
                         inputs={"splits": store.uri("processed", "splits/1")}, hyperparameters={"mode": "fail"},
                         output_uri=store.uri("models", "jobs/train/bad")), store)
    package = registry.register("lesions", result.model_uri, "h", {"balanced_accuracy": 0.7}, "", {})
    registry.set_status("lesions", package.version, "Approved", "reviewed")
    metrics.put("EndpointErrors", 50)
    assert any(t.notified for t in evaluate_alarms(metrics, notifier, {"EndpointErrors": 50}))
    notifier.notify("subject", "message")
    res["endpoint"]._fetch_package(registry.get("lesions", 1), store, lambda _msg: None)
    store.download_file(result.model_uri, home / "scratch" / "model.tar.gz")

    reader = sqlite3.connect(home / "registry.db")  # keeps -wal/-shm on disk while the tree is walked
    try:
        reader.execute("SELECT COUNT(*) FROM packages").fetchone()
        registry.set_status("lesions", package.version, "Rejected", "retired")
        assert (home / "registry.db-wal").exists() and (home / "registry.db-shm").exists()
        bad, count = _modes(home)
    finally:
        reader.close()
    assert not bad, f"not owner-only: {bad}"
    names = {p.name for p in home.rglob("*")}
    assert {"registry.db", "metrics.db", "alerts.jsonl", "ISIC_0000001.jpg", "checkpoint-epoch-0001.pt",
            "train-bad", "model.tar.gz", "deploy.lock"} - names <= {"deploy.lock"}, names
    assert (home / "jobs" / "train-bad" / "model").is_dir(), "the failed job's folder was walked"
    assert count > 30


def test_an_older_home_is_tightened(tmp_path: Path, open_umask: None) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    db = home / "registry.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    (home / "alerts.jsonl").write_text("")
    os.chmod(home / "alerts.jsonl", 0o644)
    res = build_local_resources(Settings.from_env({"DERMAOPS_HOME": str(home)}))
    res["registry"].list_packages("lesions")
    res["notifier"].notify("subject", "message")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "alerts.jsonl").stat().st_mode) == 0o600


def test_local_store_refuses_keys_that_escape_it(tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not the store's")
    for key in ("../outside/x.jpg", "images/../../../outside/x.jpg", "a/..", "/../outside/x"):
        with pytest.raises(ValueError, match=r"'\.\.' part and would escape"):
            store.put_bytes("raw", key, b"x")
        with pytest.raises(ValueError, match=r"'\.\.' part"):
            store.uri("raw", key)
    for bucket in ("..", "../outside", ".hidden", ""):
        with pytest.raises(ValueError, match="not a plain folder name"):
            store.put_bytes(bucket, "x.jpg", b"x")
    # a folder inside the store that is a symbolic link out of it: no write through it, no read
    store.put_bytes("raw", "images/ok.jpg", b"ok")
    (tmp_path / "store" / "raw" / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the local object store"):
        store.put_bytes("raw", "linked/x.jpg", b"x")
    with pytest.raises(ValueError, match="outside the local object store"):
        store.put_bytes("raw", "linked/new/deeper/x.jpg", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"], "nothing was written or made outside"
    with pytest.raises(ValueError, match="outside the local object store"):
        store.get_bytes((tmp_path / "store" / "raw" / "linked" / "secret.txt").as_uri())
    with pytest.raises(ValueError, match="outside the local object store"):
        store.get_bytes((tmp_path / "store" / "raw" / ".." / ".." / "outside" / "secret.txt").as_uri())
    (tmp_path / "store" / "raw" / "images" / "link.jpg").symlink_to(outside / "secret.txt")
    with pytest.raises(ValueError, match="outside the local object store"):
        store.get_bytes(store.uri("raw", "images/link.jpg"))
    assert store.get_bytes(store.uri("raw", "images/ok.jpg")) == b"ok"
