"""What the worker processes of one local endpoint server share: a private control folder.

The server (``ml_code.serving.serve``) runs several uvicorn worker processes on one listening
socket; any of them may receive ``/admin/swap`` or ``/admin/status``. They coordinate through
files in a 0700 folder the supervisor creates for its lifetime, because files survive a worker
that crashes (a shared-memory lock or semaphore held by a dead process would not be released):

``active.json``    the committed model, ``{"generation", "version", "model_tar", "challenger"}``
                   (``challenger``: null, or ``{"version", "model_tar", "weight", "shadow"}``); every request
                   checks its ``stat`` (microseconds) and a worker whose model is older switches
                   to its staged candidate before answering;
``prepare.json``   a swap in progress: every worker loads and health-checks that package beside
                   the serving one and reports it in its ``workers/<pid>.json``;
``workers/``       ``<pid>.json`` (what the worker serves, what it staged, a load error) and
                   ``<pid>.counters`` (int64 counters in a shared ``mmap``: one writer, any reader);
``swap.lock``      ``flock``: one swap at a time;  ``swaps.json``: swap counts and the last error;
``capture.clock``  ``flock`` + the last capture publish time (``ml_code.serving.capture.PublishClock``).

Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ml_code.atomic import write_json_atomic

COUNTER_FIELDS = ("requests_served", "client_errors", "server_errors", "capture_files", "capture_records",
                  "capture_write_errors", "capture_dropped")
_INT64 = struct.Struct("<q")


class Counters:
    """int64 counters one process writes and any process reads: a 0600 ``mmap``'d file, or memory.

    Aligned 8-byte stores are single instructions on the platforms we run, so a reader never
    sees a torn value; increments within the writing process are serialised by a lock."""

    def __init__(self, path: Path | None = None) -> None:
        size = _INT64.size * len(COUNTER_FIELDS)
        if path is None:
            self._buf: Any = bytearray(size)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                self._buf = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        self._lock = threading.Lock()

    @staticmethod
    def _offset(name: str) -> int:
        return COUNTER_FIELDS.index(name) * _INT64.size

    def add(self, name: str, n: int = 1) -> None:
        offset = self._offset(name)
        with self._lock:
            _INT64.pack_into(self._buf, offset, _INT64.unpack_from(self._buf, offset)[0] + n)

    def get(self, name: str) -> int:
        return _INT64.unpack_from(self._buf, self._offset(name))[0]

    def as_dict(self) -> dict[str, int]:
        return {name: self.get(name) for name in COUNTER_FIELDS}


@dataclass(frozen=True)
class ChallengerSpec:
    """The second variant: ``weight`` is the share of requests it answers (0..1, weighted random per
    request); with ``shadow`` it answers none, scores a copy of every request, and its answer is
    only captured."""

    version: int
    model_tar: str
    weight: float = 0.0
    shadow: bool = False


@dataclass(frozen=True)
class Desired:
    """What the server should serve: ``generation`` counts swaps server-wide (1 = the first);
    ``version``/``model_tar`` are the champion's (variant ``AllTraffic``)."""

    generation: int
    version: int
    model_tar: str
    challenger: ChallengerSpec | None = None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


class ControlDir:
    """The control folder of one server (see the module docstring); every method is safe from any worker."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.workers_dir = self.root / "workers"
        self.active_path = self.root / "active.json"
        self.prepare_path = self.root / "prepare.json"
        self.swaps_path = self.root / "swaps.json"
        self.capture_clock_path = self.root / "capture.clock"

    @classmethod
    def create(cls) -> ControlDir:
        """A fresh private folder (``mkdtemp``: 0700) in the system temporary directory."""
        ctl = cls(tempfile.mkdtemp(prefix="dermaops-serve-ctl-"))
        ctl.workers_dir.mkdir(mode=0o700)
        return ctl

    def destroy(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the desired model --------------------------------------------------------------
    @staticmethod
    def _read_desired(path: Path) -> Desired | None:
        raw = _read_json(path)
        try:
            if not raw:
                return None
            ch = raw.get("challenger")
            challenger = None if not ch else ChallengerSpec(int(ch["version"]), str(ch["model_tar"]),
                                                            float(ch.get("weight", 0.0)), bool(ch.get("shadow")))
            return Desired(int(raw["generation"]), int(raw["version"]), str(raw["model_tar"]), challenger)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def read_active(self) -> Desired | None:
        return self._read_desired(self.active_path)

    def active_stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever ``active.json`` is replaced (inode, mtime, size): a cheap per-request check."""
        try:
            st = os.stat(self.active_path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def publish_active(self, desired: Desired) -> None:
        write_json_atomic(self.active_path, asdict(desired))

    def read_prepare(self) -> Desired | None:
        return self._read_desired(self.prepare_path)

    def publish_prepare(self, desired: Desired) -> None:
        write_json_atomic(self.prepare_path, asdict(desired))

    def clear_prepare(self) -> None:
        self.prepare_path.unlink(missing_ok=True)

    # -- workers ------------------------------------------------------------------------
    def counters(self, pid: int) -> Counters:
        return Counters(self.workers_dir / f"{pid}.counters")

    def write_worker(self, pid: int, info: dict[str, Any]) -> None:
        write_json_atomic(self.workers_dir / f"{pid}.json", {**info, "pid": pid})

    def remove_worker(self, pid: int) -> None:
        (self.workers_dir / f"{pid}.json").unlink(missing_ok=True)

    def workers(self) -> list[dict[str, Any]]:
        """The registered workers that are still running, by pid."""
        out = []
        for path in sorted(self.workers_dir.glob("*.json")):
            info = _read_json(path)
            if info is not None and pid_alive(int(info.get("pid", -1))):
                out.append(info)
        return out

    def totals(self) -> dict[str, int]:
        """Counters summed over every worker this server has had (a replaced worker's counts stay)."""
        total = dict.fromkeys(COUNTER_FIELDS, 0)
        for path in self.workers_dir.glob("*.counters"):
            for name, value in Counters(path).as_dict().items():
                total[name] += value
        return total

    # -- swaps --------------------------------------------------------------------------
    @contextlib.contextmanager
    def swap_lock(self) -> Iterator[None]:
        with open(self.root / "swap.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def read_swaps(self) -> dict[str, Any]:
        return _read_json(self.swaps_path) or {"swaps": 0, "failed_swaps": 0, "last_swap_error": None}

    def next_generation(self) -> int:
        """The generation for a new swap attempt (call under :meth:`swap_lock`): never reused, not
        even after a refused package, so a worker's report of a failed attempt cannot be mistaken
        for the answer to a later one."""
        active = self.read_active()
        return max(active.generation if active else 0, int(self.read_swaps().get("last_generation", 0))) + 1

    def record_swap(self, generation: int, error: str | None) -> None:
        """Count one swap (``error`` None) or one refused package (call under :meth:`swap_lock`)."""
        swaps = self.read_swaps()
        swaps["last_generation"] = generation
        if error is None:
            swaps.update(swaps=swaps["swaps"] + 1, last_swap_error=None)
        else:
            swaps.update(failed_swaps=swaps["failed_swaps"] + 1, last_swap_error=error)
        write_json_atomic(self.swaps_path, swaps)
