"""ml_code.atomic: a failed write leaves the old file and no temporary; modes; no torn files."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from ml_code import atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder: Path, final: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != final)


@pytest.mark.parametrize("writer", ["open", "path"])
def test_writer_failing_midway_keeps_previous_file_and_leaves_no_temp(tmp_path: Path, writer: str):
    target = tmp_path / "metrics.json"
    atomic.write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError, match="disk on fire"):
        if writer == "open":
            with atomic.atomic_open(target) as fh:
                fh.write(b'{"v": 2, "half')
                raise RuntimeError("disk on fire")
        else:
            with atomic.atomic_path(target, suffix=".json") as tmp:
                tmp.write_text('{"v": 2, "half')
                raise RuntimeError("disk on fire")
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path, target.name) == []


def test_unserialisable_json_touches_nothing(tmp_path: Path):
    target = tmp_path / "state.json"
    atomic.write_json_atomic(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic.write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert _leftovers(tmp_path, target.name) == []


def test_interrupt_also_cleans_up(tmp_path: Path):
    # KeyboardInterrupt is a BaseException: the temporary file must still go.
    target = tmp_path / "a.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_open(target) as fh:
            fh.write(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_mode_0600_when_asked_whatever_the_umask(tmp_path: Path):
    old = os.umask(0o000)
    try:
        p = atomic.write_bytes_atomic(tmp_path / "capture.jsonl", b"{}\n", mode=0o600)
        assert _mode(p) == 0o600
        with atomic.atomic_path(tmp_path / "emb.npy", mode=0o600, suffix=".npy") as tmp:
            np.save(tmp, np.arange(3))
        assert _mode(tmp_path / "emb.npy") == 0o600
        np.testing.assert_array_equal(np.load(tmp_path / "emb.npy"), np.arange(3))
        os.umask(0o077)
        p = atomic.write_text_atomic(tmp_path / "public.txt", "x", mode=0o644)
        assert _mode(p) == 0o644
    finally:
        os.umask(old)


def test_default_mode_follows_umask_like_open(tmp_path: Path):
    old = os.umask(0o022)
    try:
        p = atomic.write_text_atomic(tmp_path / "plain.txt", "x")
        assert _mode(p) == 0o644
    finally:
        os.umask(old)


def test_replacing_keeps_no_old_bits(tmp_path: Path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    target.chmod(0o644)
    atomic.write_text_atomic(target, "new", mode=0o600)
    assert target.read_text() == "new" and _mode(target) == 0o600


def test_text_handle_and_parent_folders(tmp_path: Path):
    target = tmp_path / "deep" / "er" / "rows.csv"
    with atomic.atomic_open(target, text=True, newline="") as fh:
        fh.write("a,b\r\n1,2\r\n")
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"


def test_concurrent_writers_never_produce_a_torn_file(tmp_path: Path):
    target = tmp_path / "shared.bin"
    size = 256 * 1024
    payloads = [bytes([i]) * size for i in range(8)]
    atomic.write_bytes_atomic(target, payloads[0])
    stop = threading.Event()
    seen: set[bytes] = set()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if len(data) != size or data.count(data[:1]) != size:
                errors.append(f"torn read: {len(data)} bytes")
            seen.add(data[:1])

    def writer(i: int) -> None:
        for _ in range(15):
            atomic.write_bytes_atomic(target, payloads[i], fsync=False)

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    r.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert _leftovers(tmp_path, target.name) == []
    assert len(seen) >= 1
