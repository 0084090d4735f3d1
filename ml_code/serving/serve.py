"""Local stand-in for a SageMaker PyTorch inference container.

``python -m ml_code.serving.serve --model-tar PATH --port P --capture-dir DIR --endpoint-name NAME
--package-version N --state-file PATH [--admin-token-file PATH] [--invoke-token-file PATH] [--host 127.0.0.1]``

Why a server of our own rather than the real container: the local backend must give
the same HTTP contract (``GET /ping``, ``POST /invocations``), the same handler contract
(``code/inference.py`` with ``model_fn / input_fn / predict_fn / output_fn`` inside a
``model.tar.gz``) and the same data-capture files as a SageMaker endpoint, so that the
monitoring assets read one format in both places.

What it adds over the container, because the local backend has no blue/green fleet:

* ``POST /admin/swap`` loads a new package beside the serving one, health-checks it
  (``model_fn`` works AND a prediction on a generated image yields probabilities that sum
  to 1) and only then swaps the active model reference. Requests in flight finish on the
  model they started with; a package that fails the check is never swapped in (409).
* Data capture is buffered and published by a background thread about once a second as
  NEW files (``ml_code.atomic``: temp name + ``os.replace``) whose keys only ever increase, so a reader
  can remember the last key it read and never sees half a file.

Access: the server is not an open door. Every request must name this server in its ``Host``
header (the bound address, or a loopback name for a loopback bind): a web page that rebinds
its own DNS name to 127.0.0.1 is answered 421 (DNS rebinding). ``/admin/*`` needs the admin
token (``X-Admin-Token``). ``/invocations`` needs ``Authorization: Bearer <token>`` when
``--invoke-token-file`` is given, and the server refuses to bind a non-loopback address
without one (exit code 2). ``/ping`` stays open to health checks. Tokens are read from
0600 files, never from the command line, and never logged.

Only the standard library and Pillow are imported here; the handlers bring torch.
Logs carry request ids, sizes, status codes and latencies: never image bytes or PHI.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ml_code.atomic import write_bytes_atomic, write_json_atomic
from ml_code.package.loader import OpenedPackage, PackageError, open_package
from ml_code.package.requests import content_type_of
from ml_code.serving.transform import InferenceError, transform

LOG = logging.getLogger("dermaops.serve")

ADMIN_TOKEN_HEADER = "X-Admin-Token"
AUTHORIZATION_HEADER = "Authorization"  # "Bearer <token>" on /invocations when an invoke token is set
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"  # what SageMaker's InferenceId becomes
MAX_BODY_BYTES = 10 * 1024 * 1024
#: Invocations decoded and scored at once; more wait up to ``QUEUE_WAIT_SECONDS`` for a slot,
#: then get 503 + Retry-After. One thread per connection is otherwise unbounded, and each
#: large image costs up to a few hundred MB while it is decoded.
MAX_INFLIGHT = 8  # default of --max-inflight
QUEUE_WAIT_SECONDS = 10.0
#: A client that stops sending mid-request is dropped after this long instead of holding a
#: thread (and the model it acquired) forever.
CLIENT_TIMEOUT_SECONDS = 30.0
VARIANT = "AllTraffic"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


# ----------------------------------------------------------------------------------------
# Model packages
# ----------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """One extracted, imported and health-checked package; immutable once serving."""

    version: int
    model_tar: str
    workdir: Path
    package: OpenedPackage
    loaded_at: float
    inflight: int = 0
    retired: bool = False

    @property
    def model(self) -> Any:
        return self.package.model

    def cleanup(self) -> None:
        """Forget the package's modules and delete the extracted files (only when nobody uses them)."""
        self.package.forget_modules()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _test_image(model_dir: Path) -> bytes:
    """A deterministic noise JPEG at the package's image size: enough to exercise every handler."""
    from PIL import Image
    import random

    size = 64
    cfg_path = model_dir / "model_config.json"
    if cfg_path.is_file():
        try:
            size = int(json.loads(cfg_path.read_text()).get("image_size", size))
        except (ValueError, TypeError, json.JSONDecodeError):
            pass
    rng = random.Random(1234)
    img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def health_check(package: OpenedPackage) -> dict[str, Any]:
    """Run one prediction end-to-end through :func:`transform` and insist on a valid probability vector."""
    try:
        text = transform(package, _test_image(package.model_dir), "image/jpeg", "application/json")
    except InferenceError as exc:
        raise PackageError(f"test prediction failed: {exc}") from exc
    try:
        response = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackageError(f"output_fn did not return JSON: {exc}") from exc
    probs = response.get("probabilities") if isinstance(response, dict) else None
    if not isinstance(probs, dict) or not probs:
        raise PackageError("output_fn JSON has no 'probabilities' mapping of class -> probability")
    values = list(probs.values())
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in values):
        raise PackageError(f"probabilities are not all finite numbers in [0, 1]: {probs}")
    total = float(sum(values))
    if abs(total - 1.0) > 1e-3:
        raise PackageError(f"probabilities sum to {total:.6f}, not 1")
    if response.get("predicted_class") not in probs:
        raise PackageError(f"predicted_class {response.get('predicted_class')!r} is not one of {sorted(probs)}")
    return response


def load_package(model_tar: str | os.PathLike, version: int) -> LoadedModel:
    """Extract, import, model_fn, health-check. Raises PackageError with the reason; leaves nothing behind."""
    tar_path = Path(model_tar)
    if not tar_path.is_file():
        raise PackageError(f"model package {tar_path} does not exist")
    workdir = Path(tempfile.mkdtemp(prefix=f"dermaops-serve-v{version}-"))
    package = None
    try:
        package = open_package(tar_path, workdir / "model", f"v{version}")
        health_check(package)
        return LoadedModel(version=version, model_tar=str(tar_path), workdir=workdir, package=package,
                           loaded_at=time.time())
    except BaseException:
        if package is not None:
            package.forget_modules()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------
# Data capture
# ----------------------------------------------------------------------------------------
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def capture_record(*, body: bytes, content_type: str, response_text: str, event_id: str,
                   inference_id: str, inference_time: float, package_version: int,
                   status: int = 200, latency_ms: float = 0.0) -> dict[str, Any]:
    """One line of SageMaker data capture, plus what SageMaker keeps in CloudWatch instead: the
    package version, the HTTP status and the latency (``ml_code.monitoring.health`` reads them)."""
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
            "inferenceTime": _iso(inference_time),
            "modelPackageVersion": package_version,
            "dermaopsStatus": int(status),
            "dermaopsLatencyMs": round(float(latency_ms), 3),
        },
        "eventVersion": "0",
    }


class CaptureWriter:
    """Buffers capture records; a background thread publishes them as new JSONL files.

    File keys are ``<endpoint>/AllTraffic/yyyy/mm/dd/hh/<yyyymmddThhmmssffffff>-<uuid8>.jsonl``
    taken from the *publish* time (strictly increasing), so keys grow in publish order and a
    reader that remembers the last key it saw (``start_after``) never misses a file.
    """

    def __init__(self, root: Path, endpoint_name: str, interval: float = 1.0, max_buffer: int = 5000):
        self.base = Path(root) / endpoint_name / VARIANT
        self.interval = interval
        self.max_buffer = max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_ts = 0.0
        self.files_written = 0
        self.records_written = 0
        self.write_errors = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)

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
                self.write_errors += 1
                LOG.error("data capture write failed (%d records kept for retry): %s", len(records), exc)
                with self._lock:
                    self._buffer[:0] = records
                    overflow = len(self._buffer) - self.max_buffer * 10
                    if overflow > 0:  # bounded memory when the disk stays unwritable
                        del self._buffer[:overflow]
                        self.dropped += overflow
                return None

    def _publish(self, records: list[dict[str, Any]]) -> Path:
        ts = max(time.time(), self._last_ts + 1e-6)
        self._last_ts = ts
        when = datetime.fromtimestamp(ts, tz=timezone.utc)
        folder = self.base / when.strftime("%Y/%m/%d/%H")
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{when.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.jsonl"
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        # 0600: captured requests are patient images and clinical context. The temporary
        # file is a dot-name, which store listings skip.
        write_bytes_atomic(final, payload, mode=0o600)
        self.files_written += 1
        self.records_written += len(records)
        return final

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()


# ----------------------------------------------------------------------------------------
# Server state
# ----------------------------------------------------------------------------------------
@dataclass
class Counters:
    requests_served: int = 0
    client_errors: int = 0
    server_errors: int = 0
    swaps: int = 0
    failed_swaps: int = 0


@dataclass
class EndpointState:
    """The active model reference plus counters; swapping is one assignment under a lock."""

    endpoint_name: str
    capture: CaptureWriter
    admin_token: str | None
    started_at: float = field(default_factory=time.time)
    active: LoadedModel | None = None
    counters: Counters = field(default_factory=Counters)
    last_swap_error: str | None = None
    shutting_down: bool = False
    state_file: Path | None = None
    state_info: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _swap_lock: threading.Lock = field(default_factory=threading.Lock)
    max_inflight: int = MAX_INFLIGHT
    invoke_token: str | None = None
    #: Host header names (lower case, no port) this server answers; filled by make_server
    allowed_hosts: frozenset[str] = frozenset()
    slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.max_inflight)

    # -- model reference ----------------------------------------------------------------
    def acquire(self) -> LoadedModel | None:
        with self._lock:
            model = self.active
            if model is not None:
                model.inflight += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.inflight -= 1
            done = model.retired and model.inflight == 0
        if done:
            model.cleanup()

    def install(self, new: LoadedModel) -> LoadedModel | None:
        """Make ``new`` the active model; the old one is cleaned up once its last request ends."""
        with self._lock:
            old, self.active = self.active, new
            if old is not None:
                old.retired = True
                done = old.inflight == 0
            else:
                done = False
        if old is not None and done:
            old.cleanup()
        return old

    def swap(self, model_tar: str, version: int) -> LoadedModel:
        """Load + check beside the serving model, then swap. One swap at a time."""
        with self._swap_lock:
            try:
                new = load_package(model_tar, version)
            except PackageError as exc:
                with self._lock:
                    self.counters.failed_swaps += 1
                    self.last_swap_error = str(exc)
                raise
            old = self.install(new)
            with self._lock:
                self.counters.swaps += 1
                self.last_swap_error = None
            self.publish_state()
            LOG.info("swapped model package v%s -> v%s", old.version if old else None, version)
            return new

    def publish_state(self) -> None:
        """Rewrite the state file so it always names the package being served."""
        model = self.active
        if self.state_file is None or model is None or self.shutting_down:
            return
        self.state_info.update(package_version=model.version, model_tar=str(Path(model.model_tar).resolve()),
                               model_loaded_at=_iso(model.loaded_at))
        write_json_atomic(self.state_file, self.state_info)

    def count(self, status: int) -> None:
        with self._lock:
            if status < 400:
                self.counters.requests_served += 1
            elif status < 500:
                self.counters.client_errors += 1
            else:
                self.counters.server_errors += 1

    def healthy(self) -> bool:
        return self.active is not None and not self.shutting_down

    def status(self) -> dict[str, Any]:
        model = self.active
        with self._lock:
            c = self.counters
            return {
                "endpoint_name": self.endpoint_name,
                "pid": os.getpid(),
                "healthy": self.healthy(),
                "package_version": model.version if model else None,
                "model_tar": model.model_tar if model else None,
                "model_loaded_at": _iso(model.loaded_at) if model else None,
                "started_at": _iso(self.started_at),
                "requests_served": c.requests_served,
                "errors": {"client": c.client_errors, "server": c.server_errors},
                "swaps": c.swaps,
                "failed_swaps": c.failed_swaps,
                "last_swap_error": self.last_swap_error,
                "capture": {
                    "dir": str(self.capture.base),
                    "files_written": self.capture.files_written,
                    "records_written": self.capture.records_written,
                    "write_errors": self.capture.write_errors,
                    "dropped_records": self.capture.dropped,
                },
            }


# ----------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------
class EndpointHandler(BaseHTTPRequestHandler):
    server_version = "DermaOpsServe/1.0"
    timeout = CLIENT_TIMEOUT_SECONDS  # socket timeout of each connection (StreamRequestHandler)
    state: EndpointState  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("%s %s", self.address_string(), format % args)

    # -- helpers ------------------------------------------------------------------------
    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> str:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        return text

    def _read_body(self, limit: int) -> bytes | None:
        """The request body, or None (after answering) when its length is missing or too big."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length header is required"})
            return None
        if length < 0 or length > limit:
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            {"error": f"body of {length} bytes exceeds the {limit}-byte limit"})
            return None
        return self.rfile.read(length) if length else b""

    # -- access -------------------------------------------------------------------------
    def _host_ok(self) -> bool:
        """True when the Host header names this server; else answers 421 (DNS rebinding guard)."""
        name = host_header_name(self.headers.get("Host"))
        if name is not None and name in self.state.allowed_hosts:
            return True
        self.state.count(421)
        LOG.info("refused a request with Host header %r (not one of this server's names)",
                 (self.headers.get("Host") or "")[:100])
        self._send_json(HTTPStatus.MISDIRECTED_REQUEST,
                        {"error": "the Host header does not name this server; send the request to the address the "
                                  f"endpoint is bound to ({', '.join(sorted(self.state.allowed_hosts))})"})
        return False

    def _admin_ok(self) -> bool:
        """True when the admin token was sent; else answers 403."""
        token = self.state.admin_token
        if token and _same_token(self.headers.get(ADMIN_TOKEN_HEADER, ""), token):
            return True
        self.state.count(403)
        self._send_json(403, {"error": f"admin routes need the {ADMIN_TOKEN_HEADER} header "
                                       f"with the token from the server's admin token file"})
        return False

    def _invoker_ok(self) -> bool:
        """True when no invoke token is configured or the right bearer token was sent."""
        token = self.state.invoke_token
        if not token:
            return True
        scheme, _, offered = self.headers.get(AUTHORIZATION_HEADER, "").strip().partition(" ")
        return scheme.lower() == "bearer" and _same_token(offered.strip(), token)

    # -- routes -------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path == "/ping":
            if self.state.healthy():
                self._send_json(200, {"status": "healthy", "package_version": self.state.active.version})
            else:
                self._send_json(503, {"status": "unhealthy"})
        elif path == "/admin/status":
            if self._admin_ok():
                self._send_json(200, self.state.status())
        else:
            self._send_json(404, {"error": f"no route GET {path}; use /ping, /admin/status"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path == "/invocations":
            self._invoke()
        elif path == "/admin/swap":
            self._swap()
        else:
            self._send_json(404, {"error": f"no route POST {path}; use /invocations, /admin/swap"})

    def _invoke(self) -> None:
        started = time.time()
        event_id = str(uuid.uuid4())
        asked_id = self.headers.get(INFERENCE_ID_HEADER, "")
        inference_id = asked_id if _SAFE_ID.match(asked_id) else event_id
        content_type = content_type_of(self.headers.get("Content-Type"))
        if not self._invoker_ok():  # before the body is read: a stranger cannot make us read 10 MB
            payload = json.dumps({"error": f"/invocations needs the header '{AUTHORIZATION_HEADER}: Bearer <token>' "
                                           "with the endpoint's invocation token"})
            self._send_json(401, payload, {"WWW-Authenticate": 'Bearer realm="dermaops"',
                                           "X-Inference-Id": inference_id})
            self.state.count(401)
            self.state.capture.add(capture_record(  # captured without its body, as every 4xx
                body=b"", content_type=content_type or "application/octet-stream", response_text=payload,
                event_id=event_id, inference_id=inference_id, inference_time=started, package_version=-1))
            LOG.info("invocation id=%s status=401 (no or wrong invocation token)", inference_id)
            return
        try:
            body = self._read_body(MAX_BODY_BYTES)
        except OSError as exc:  # the client stalled past the timeout or went away mid-body
            LOG.info("invocation %s: body not received: %s", inference_id, exc)
            self.state.count(408)
            return
        if body is None:
            self.state.count(411)
            return
        if not self.state.slots.acquire(timeout=QUEUE_WAIT_SECONDS):
            self.state.count(503)
            self._send_json(503, {"error": f"the endpoint is busy ({self.state.max_inflight} requests in progress); retry"},
                            {"Retry-After": "1", "X-Inference-Id": inference_id})
            return
        model = self.state.acquire()  # after the body is in: a slow client holds no model
        version = model.version if model else None
        status, payload = 200, ""
        try:
            try:
                if model is None:
                    raise InferenceError(503, "no model is loaded yet")
                payload = transform(model.package, body, content_type, self.headers.get("Accept"))
            except InferenceError as exc:
                status, payload = exc.status_code, exc.body()
            headers = {"X-Inference-Id": inference_id}
            if version is not None:
                headers["X-Model-Version"] = str(version)
            try:
                self._send_json(status, payload, headers)
            except OSError as exc:  # the client went away; the request still counts and is captured
                LOG.info("invocation %s: client disconnected before the response: %s", inference_id, exc)
        finally:
            if model is not None:
                self.state.release(model)
            self.state.slots.release()
        self.state.count(status)
        # A rejected request (4xx) is captured without its body: it is not an image the monitors
        # could use, and it may hold anything a client sent, patient details included.
        self.state.capture.add(capture_record(
            body=body if not 400 <= status < 500 else b"",
            content_type=content_type or "application/octet-stream", response_text=payload,
            event_id=event_id, inference_id=inference_id, inference_time=started,
            package_version=version if version is not None else -1, status=status,
            latency_ms=(time.time() - started) * 1000))
        LOG.log(logging.DEBUG if status < 400 else logging.INFO,
                "invocation id=%s status=%d version=%s bytes=%d ms=%.1f",
                inference_id, status, version, len(body), (time.time() - started) * 1000)

    def _swap(self) -> None:
        if not self._admin_ok():
            return
        body = self._read_body(1 << 16)
        if body is None:
            return
        try:
            request = json.loads(body or b"{}")
            model_tar = str(request["model_tar"])
            version = int(request["package_version"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self._send_json(400, {"error": f'body must be JSON {{"model_tar": path, "package_version": n}}: {exc}'})
            return
        LOG.info("swap requested: v%s from %s", version, model_tar)
        try:
            new = self.state.swap(model_tar, version)
        except PackageError as exc:
            LOG.error("package v%s rejected, v%s keeps serving: %s", version,
                      self.state.active.version if self.state.active else None, exc)
            self._send_json(409, {"error": f"package v{version} failed its health check: {exc}",
                                  "serving_version": self.state.active.version if self.state.active else None})
            return
        self._send_json(200, {"swapped": True, "package_version": new.version, "status": self.state.status()})


def _same_token(offered: str, token: str) -> bool:
    """Constant-time comparison (the time taken does not tell how much of a guess was right)."""
    return hmac.compare_digest(offered.encode("utf-8", "replace"), token.encode("utf-8"))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1); False for names and ``0.0.0.0``."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_header_name(value: str | None) -> str | None:
    """The host name of a Host header, lower case, without port or IPv6 brackets; None if absent/garbled."""
    value = (value or "").strip().lower()
    if not value:
        return None
    if value.startswith("["):  # [::1]:8080
        end = value.find("]")
        return value[1:end] if end > 0 else None
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".") or None


def allowed_host_names(host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """Host header names a server bound to ``host`` answers: the bound address, the loopback names
    (a DNS-rebinding page cannot make a browser send those) and any ``extra`` names."""
    names = {host.strip().strip("[]").lower(), *LOOPBACK_NAMES, *(h.strip().lower() for h in extra)}
    return frozenset(n for n in names if n)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def make_server(state: EndpointState, host: str, port: int) -> ThreadingHTTPServer:
    if not state.allowed_hosts:
        state.allowed_hosts = allowed_host_names(host)
    handler = type("BoundEndpointHandler", (EndpointHandler,), {"state": state})
    server_class = ThreadingHTTPServer
    if ":" in host:  # an IPv6 address such as ::1
        server_class = type("ThreadingHTTPServerV6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((host.strip("[]"), port), handler)
    server.daemon_threads = True
    return server


def remove_state_file(path: Path) -> None:
    """Remove the state file only if it is still ours (a newer server may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, json.JSONDecodeError):
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ml_code.serving.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-tar", required=True, help="model.tar.gz with code/inference.py")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (see the state file)")
    p.add_argument("--capture-dir", required=True, help="data capture root (files go to DIR/<endpoint>/AllTraffic/...)")
    p.add_argument("--endpoint-name", default="dermaops-lesion-endpoint")
    p.add_argument("--package-version", type=int, required=True)
    p.add_argument("--state-file", required=True, help="JSON written once healthy, removed at shutdown")
    p.add_argument("--admin-token-file", default=None, help="file holding the token /admin/* require (X-Admin-Token)")
    p.add_argument("--invoke-token-file", default=None,
                   help="file holding the token /invocations requires ('Authorization: Bearer <token>'); "
                        "required to bind a non-loopback --host")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="another name clients may send in the Host header (repeatable); the bound address "
                        "and, always, 127.0.0.1, localhost and ::1 are accepted")
    p.add_argument("--capture-interval", type=float, default=1.0)
    p.add_argument("--max-inflight", type=int, default=MAX_INFLIGHT,
                   help="invocations scored at once; more wait up to 10 s, then get 503")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokens: dict[str, str | None] = {}
    for what, path in (("admin", args.admin_token_file), ("invocation", args.invoke_token_file)):
        tokens[what] = None
        if path:
            try:
                tokens[what] = Path(path).read_text().strip() or None
            except OSError as exc:
                LOG.error("cannot read the %s token file %s: %s", what, path, exc)
                return 2
            if tokens[what] is None:
                LOG.error("the %s token file %s is empty; write the token into it (or leave the option out)",
                          what, path)
                return 2
    if not is_loopback(args.host) and tokens["invocation"] is None:
        LOG.error("refusing to listen on %s: a non-loopback address would let anyone on the network send patient "
                  "images to the model. Configure an invocation token (--invoke-token-file FILE; the local deployer "
                  "writes it from DERMAOPS_ENDPOINT_TOKEN), or bind 127.0.0.1 (DERMAOPS_ENDPOINT_HOST).", args.host)
        return 2
    capture = CaptureWriter(Path(args.capture_dir), args.endpoint_name, interval=args.capture_interval)
    state = EndpointState(endpoint_name=args.endpoint_name, capture=capture, admin_token=tokens["admin"],
                          max_inflight=max(1, args.max_inflight), invoke_token=tokens["invocation"],
                          allowed_hosts=allowed_host_names(args.host, tuple(args.allowed_host)))
    try:
        state.install(load_package(args.model_tar, args.package_version))
    except PackageError as exc:
        LOG.error("model package v%s is not servable: %s", args.package_version, exc)
        return 3
    LOG.info("model package v%s loaded from %s", args.package_version, args.model_tar)
    try:
        server = make_server(state, args.host, args.port)
    except OSError as exc:
        LOG.error("cannot listen on %s:%s: %s (choose another port)", args.host, args.port, exc)
        state.active.cleanup()  # the extracted package
        return 4
    port = server.server_address[1]
    capture.start()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        LOG.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    serving.start()
    state_file = Path(args.state_file)
    url = f"http://{url_host(args.host)}:{port}"
    state.state_file = state_file
    state.state_info = {
        "pid": os.getpid(), "url": url, "host": args.host, "port": port,
        "endpoint_name": args.endpoint_name, "capture_dir": str(capture.base),
        "started_at": _iso(state.started_at),
    }
    state.publish_state()
    LOG.info("serving endpoint %s at %s (invocation token %s)", args.endpoint_name, url,
             "required" if state.invoke_token else "not required: loopback only")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        state.shutting_down = True  # /ping turns 503 so nobody routes new work here
        server.shutdown()
        server.server_close()
        deadline = time.time() + 10
        while time.time() < deadline and state.active is not None and state.active.inflight > 0:
            time.sleep(0.05)
        capture.close()
        remove_state_file(state_file)
        if state.active is not None:
            state.active.cleanup()
        LOG.info("stopped; %d capture files written", capture.files_written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
