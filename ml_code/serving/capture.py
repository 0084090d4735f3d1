"""SageMaker data capture for the local endpoint: one record per request, published as new files.

Layout (what ``dermaops_assets.monitoring`` and ``ml_code.monitoring.capture`` read, unchanged
from the single-process server): ``<root>/<endpoint>/AllTraffic/yyyy/mm/dd/hh/
<yyyymmddThhmmssffffff>-<uuid8>.jsonl``, one JSON record a line, 0600.

Several worker processes and one capture folder: no file is ever appended to, by anyone.
Each worker buffers its own records and publishes them about once a second as a NEW file
(``ml_code.atomic``: a dot-named temporary file, fsync, ``os.replace``), so no two workers
ever write the same file and a reader never sees half of one. The key is the publish time,
taken under an exclusive ``flock`` on a clock file the workers share (:class:`PublishClock`),
with the file published before the lock is released: keys stay strictly increasing in
publish order across all workers, so a reader that remembers the last key it read
(``start_after``) never misses a file that appears later with a smaller key.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ml_code.atomic import write_bytes_atomic
from ml_code.serving.control import Counters
from ml_code.serving.models import VARIANT

LOG = logging.getLogger("dermaops.serve")


def iso(ts: float) -> str:
    """``ts`` (Unix seconds) as UTC ISO-8601 with microseconds and a ``Z``, as SageMaker writes times."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def capture_record(*, body: bytes, content_type: str, response_text: str, event_id: str,
                   inference_id: str, inference_time: float, package_version: int,
                   status: int = 200, latency_ms: float = 0.0, variant: str = VARIANT) -> dict[str, Any]:
    """One line of SageMaker data capture, plus what SageMaker keeps in CloudWatch instead: the
    package version, the HTTP status and the latency (``ml_code.monitoring.health`` reads them),
    and the variant that answered (``dermaopsVariant``: SageMaker puts it in the capture path,
    the local endpoint keeps one path and says it here). A shadow answer is added by
    :func:`add_shadow`."""
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": content_type,
                "mode": "INPUT",
                "data": base64.b64encode(body).decode("ascii"),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": response_text,
                "encoding": "JSON",
            },
        },
        "eventMetadata": {
            "eventId": event_id,
            "inferenceId": inference_id,
            "inferenceTime": iso(inference_time),
            "modelPackageVersion": package_version,
            "dermaopsStatus": int(status),
            "dermaopsLatencyMs": round(float(latency_ms), 3),
            "dermaopsVariant": variant,
        },
        "eventVersion": "0",
    }


def add_shadow(record: dict[str, Any], *, variant: str, package_version: int, response_text: str,
               status: int, latency_ms: float) -> dict[str, Any]:
    """Put a shadow variant's answer to the same request into ``record`` (``eventMetadata.dermaopsShadow``,
    shaped like ``endpointOutput`` plus its own version, status and latency): never returned to
    the client, kept so ``ml_code.monitoring.challenger`` can compare both answers request by request."""
    record["eventMetadata"]["dermaopsShadow"] = {
        "variant": variant, "modelPackageVersion": package_version, "dermaopsStatus": int(status),
        "dermaopsLatencyMs": round(float(latency_ms), 3),
        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT", "data": response_text,
                           "encoding": "JSON"},
    }
    return record


class PublishClock:
    """Strictly increasing publish times, shared by the processes that name ``path`` (None: this process only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._last = 0.0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def tick(self) -> Iterator[float]:
        """Yield the next publish time; the caller publishes inside the block (the lock is held)."""
        with self._lock:
            if self.path is None:
                ts = max(time.time(), self._last + 1e-6)
                yield ts
                self._last = ts
                return
            with open(self.path, "a+", encoding="ascii") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
                fh.seek(0)
                try:
                    last = float(fh.read().strip() or 0.0)
                except ValueError:
                    last = 0.0
                ts = max(time.time(), last + 1e-6, self._last + 1e-6)
                yield ts
                fh.seek(0)
                fh.truncate()
                fh.write(repr(ts))
                fh.flush()
                self._last = ts


class CaptureWriter:
    """Buffers one worker's capture records; a background thread publishes them as new JSONL files.

    File keys are ``<endpoint>/AllTraffic/yyyy/mm/dd/hh/<yyyymmddThhmmssffffff>-<uuid8>.jsonl``
    taken from the *publish* time (see :class:`PublishClock`), so keys grow in publish order.
    Counts go to ``counters`` (``capture_files``, ``capture_records``, ``capture_write_errors``,
    ``capture_dropped``), which the server's other workers can read.
    """

    def __init__(self, root: Path, endpoint_name: str, interval: float = 1.0, max_buffer: int = 5000,
                 counters: Counters | None = None, clock: PublishClock | None = None,
                 variant: str = VARIANT) -> None:
        self.base = Path(root) / endpoint_name / variant
        self.interval = interval
        self.max_buffer = max_buffer
        self.counters = counters if counters is not None else Counters()
        self.clock = clock if clock is not None else PublishClock()
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)

    @property
    def files_written(self) -> int:
        return self.counters.get("capture_files")

    @property
    def records_written(self) -> int:
        return self.counters.get("capture_records")

    def start(self) -> None:
        self._thread.start()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._buffer.append(record)
            full = len(self._buffer) >= self.max_buffer
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> Path | None:
        with self._lock:
            records, self._buffer = self._buffer, []
        if not records:
            return None
        with self._write_lock:
            try:
                return self._publish(records)
            except OSError as exc:
                self.counters.add("capture_write_errors")
                LOG.error("data capture write failed (%d records kept for retry): %s", len(records), exc)
                with self._lock:
                    self._buffer[:0] = records
                    overflow = len(self._buffer) - self.max_buffer * 10
                    if overflow > 0:  # bounded memory when the disk stays unwritable
                        del self._buffer[:overflow]
                        self.counters.add("capture_dropped", overflow)
                return None

    def _publish(self, records: list[dict[str, Any]]) -> Path:
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self.clock.tick() as ts:
            when = datetime.fromtimestamp(ts, tz=timezone.utc)
            folder = self.base / when.strftime("%Y/%m/%d/%H")
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{when.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.jsonl"
            # 0600: captured requests are patient images and clinical context. The temporary
            # file is a dot-name, which store listings skip.
            write_bytes_atomic(final, payload, mode=0o600)
        self.counters.add("capture_files")
        self.counters.add("capture_records", len(records))
        return final

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()
