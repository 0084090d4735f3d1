"""One worker process of the local endpoint: a Starlette ASGI app that uvicorn serves.

Routes (the SageMaker container contract plus what the local backend adds):
``GET /ping`` (open to health checks), ``POST /invocations`` (``Authorization: Bearer`` when
an invocation token is configured), ``POST /admin/swap``, ``POST /admin/traffic``,
``POST /admin/promote`` and ``GET /admin/status`` (``X-Admin-Token``). Every request must name the server in its ``Host`` header (421
otherwise: DNS rebinding). Status codes of failed inferences come from
``ml_code.serving.transform``; this module adds 401/403/404/408/411/413/421/503.

Admission control, per worker: ``max_inflight`` requests are admitted at once (the supervisor
gives each worker its share of the server's limit) and ``torch_threads`` of them are decoded
and scored at a time, the others queued in the worker; more wait up to
``queue_wait_seconds`` for a slot, then get 503 + ``Retry-After``. The body is read (with a
``client_timeout_seconds`` deadline, 408 after it) BEFORE a slot or a model is taken, so a
slow client holds neither. A slot is a plain ``asyncio.Semaphore`` in the worker, not a
semaphore shared between processes: one held by a worker that crashed would never come back.

Hot swap across workers (coordinated through ``ml_code.serving.control``): the worker that
receives ``/admin/swap`` publishes ``prepare.json``; every worker loads and health-checks the
package beside its serving one and stages it; once all have, the coordinator replaces
``active.json`` (the commit) and every request that starts afterwards, in any worker, is
answered by the new package (each request compares the file's ``stat`` with what its
worker serves). No worker restarts, no request is refused, and a client that sends its
requests one after another never sees the old version again once the new one answered.
If any worker cannot load the package, nothing switches and the answer is 409.

Champion/challenger (issue 21): ``/admin/traffic`` adds a second package as the variant
``Challenger`` (or changes its weight, or removes it) and ``/admin/promote`` makes it the only
variant; both are swaps like the one above (a new generation, staged in every worker, one
commit), and a promotion loads nothing: every worker serves the challenger already. Per
request a worker draws the answering variant (weighted random, seeded per worker) and names it
in the ``X-Dermaops-Variant`` header and the capture record (``eventMetadata.dermaopsVariant``);
a *shadow* challenger answers nobody: it scores a copy of every request after the client has
its answer (a background task, outside the admission slot), and its answer is kept only in the
capture record (``eventMetadata.dermaopsShadow``).

``WorkerApp`` is the picklable object handed to uvicorn: uvicorn starts workers with the
``spawn`` method, and each worker builds its own :class:`Worker` (model, capture writer,
counters) when the app first runs (the lifespan startup).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ml_code.atomic import write_json_atomic
from ml_code.package.loader import PackageError
from ml_code.package.requests import content_type_of
from ml_code.serving.access import (
    ADMIN_TOKEN_HEADER,
    AUTHORIZATION_HEADER,
    bearer_ok,
    host_header_name,
    same_token,
)
from ml_code.serving.capture import CaptureWriter, PublishClock, add_shadow, capture_record, iso
from ml_code.serving.control import ChallengerSpec, ControlDir, Desired, pid_alive
from ml_code.serving.models import CHALLENGER, VARIANT, LoadedModel, ModelHolder, load_package
from ml_code.serving.transform import InferenceError, transform

LOG = logging.getLogger("dermaops.serve")

INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"  # what SageMaker's InferenceId becomes
VARIANT_HEADER = "X-Dermaops-Variant"  # which variant answered (SageMaker's runtime says it in x-amzn-invoked-production-variant)
MAX_BODY_BYTES = 10 * 1024 * 1024
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
#: How often a worker looks at the control folder for a swap (and at its parent).
WATCH_INTERVAL_SECONDS = 0.05


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker needs, picklable (tokens travel in the spawn pipe, never argv or env)."""

    control_dir: str
    capture_dir: str
    endpoint_name: str
    admin_token: str | None
    invoke_token: str | None
    allowed_hosts: frozenset[str]
    max_inflight: int = 8
    queue_wait_seconds: float = 10.0
    client_timeout_seconds: float = 30.0
    capture_interval: float = 1.0
    torch_threads: int = 1
    swap_timeout_seconds: float = 300.0
    state_file: str | None = None
    parent_pid: int | None = None
    started_at: float = 0.0


def describe_route(spec: ChallengerSpec | None) -> str:
    """How the challenger is served, for logs: ``none``, ``v3 shadow`` or ``v3 at 10%``."""
    if spec is None:
        return "none"
    return f"v{spec.version} shadow" if spec.shadow else f"v{spec.version} at {spec.weight:.0%}"


class BodyError(Exception):
    """The request body could not be read: ``status`` (408/411/413) and a client-safe message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return Response(text, status_code=int(status), media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, after checking its declared length; raises :class:`BodyError`."""
    try:
        length = int(request.headers.get("content-length", ""))
    except ValueError:
        raise BodyError(HTTPStatus.LENGTH_REQUIRED, "Content-Length header is required") from None
    if length < 0 or length > limit:
        raise BodyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds the {limit}-byte limit")

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in request.stream()])

    try:
        return await asyncio.wait_for(collect(), timeout)
    except (TimeoutError, ClientDisconnect):
        raise BodyError(HTTPStatus.REQUEST_TIMEOUT, f"the {length}-byte body did not arrive within {timeout:g} s") \
            from None


@dataclass
class Staged:
    """What a worker will serve once ``generation`` is committed: loaded and health-checked beside
    what it serves. ``fresh`` are the models loaded for it (the others are served already and are
    reused: a weight change loads nothing, a promotion moves the challenger's model over)."""

    generation: int
    champion: LoadedModel
    challenger: LoadedModel | None
    spec: ChallengerSpec | None
    fresh: list[LoadedModel]

    def discard(self) -> None:
        for model in self.fresh:
            model.cleanup()


class Worker:
    """The state of one worker process: its model holders (champion and challenger), capture
    writer, counters and control view."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.pid = os.getpid()
        self.ctl = ControlDir(options.control_dir)
        self.counters = self.ctl.counters(self.pid)
        self.capture = CaptureWriter(Path(options.capture_dir), options.endpoint_name,
                                     interval=options.capture_interval, counters=self.counters,
                                     clock=PublishClock(self.ctl.capture_clock_path))
        self._models_lock = threading.RLock()  # both holders: a promotion moves a model between them
        self.holder = ModelHolder(VARIANT, self._models_lock)
        self.challenger = ModelHolder(CHALLENGER, self._models_lock)
        self.route: ChallengerSpec | None = None  # the committed challenger's weight / shadow
        self.generation = 0
        self._staged: Staged | None = None
        self._rng = random.Random(f"{self.pid}-{time.time_ns()}")  # per worker: workers draw independently
        self.slots = asyncio.Semaphore(max(1, options.max_inflight))
        self.limiter: anyio.CapacityLimiter | None = None  # made in the event loop (lifespan)
        self.shutting_down = False
        self._stamp: tuple[int, int, int] | None = None
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._prepare_error: dict[str, Any] | None = None
        self._reported: dict[str, Any] | None = None
        self._watcher = threading.Thread(target=self._watch, name="control-watcher", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Load the server's active package(s) (raises PackageError), register, start the threads."""
        try:
            import torch  # the handlers bring it; one worker per core wants its own few threads

            torch.set_num_threads(max(1, self.options.torch_threads))
        except ImportError:
            pass
        desired = self.ctl.read_active()
        if desired is None:
            raise PackageError(f"the control folder {self.ctl.root} names no model (active.json is missing)")
        stamp = self.ctl.active_stamp()
        try:
            self._commit(self._load(desired))
        except PackageError as exc:
            LOG.error("model package v%s is not servable: %s", desired.version, exc)
            self.ctl.write_worker(self.pid, {"startup_error": str(exc)})
            raise
        self._stamp = stamp
        self.capture.start()
        self._report()
        self._watcher.start()
        LOG.info("worker %d serves package v%s (%d slots, %d torch threads)", self.pid, desired.version,
                 self.options.max_inflight, self.options.torch_threads)

    def stop(self) -> None:
        """Shutdown: no new requests reach this worker; flush captures, forget the models."""
        self.shutting_down = True
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)
        self.capture.close()
        self.ctl.remove_worker(self.pid)
        if self._staged is not None:
            self._staged.discard()
        self.holder.close()
        self.challenger.close()
        LOG.info("worker %d stopped; %d capture files written", self.pid, self.capture.files_written)

    def _report(self) -> None:
        """Rewrite this worker's control file when what it serves or staged changed."""
        active, staged, route = self.holder.active, self._staged, self.route
        challenger = self.challenger.active
        info = {"serving_version": active.version if active else None,
                "serving_generation": self.generation,
                "prepared_generation": staged.generation if staged else self.generation,
                "prepare_error": self._prepare_error,
                "model_loaded_at": iso(active.loaded_at) if active else None,
                "challenger_version": challenger.version if challenger else None,
                "challenger_weight": route.weight if route else None,
                "challenger_shadow": route.shadow if route else None}
        if info != self._reported:
            self.ctl.write_worker(self.pid, info)
            self._reported = info

    # -- staging and committing what to serve ---------------------------------------------
    def _load(self, desired: Desired) -> Staged:
        """Everything ``desired`` names, loaded and health-checked (a model this worker serves
        already is reused); raises PackageError and leaves nothing behind."""
        fresh: list[LoadedModel] = []

        def model_for(version: int, model_tar: str) -> LoadedModel:
            for model in (self.holder.active, self.challenger.active):
                if model is not None and model.version == version and model.model_tar == model_tar:
                    return model
            for model in fresh:
                if model.version == version and model.model_tar == model_tar:
                    return model
            model = load_package(model_tar, version, desired.generation)
            fresh.append(model)
            return model

        try:
            champion = model_for(desired.version, desired.model_tar)
            spec = desired.challenger
            challenger = model_for(spec.version, spec.model_tar) if spec is not None else None
        except BaseException:
            for model in fresh:
                model.cleanup()
            raise
        return Staged(desired.generation, champion, challenger, spec, fresh)

    def _commit(self, staged: Staged) -> None:
        """Serve ``staged`` from the next request on; models no longer served retire (cleaned up
        when their last request ends)."""
        with self._models_lock:
            keep = {id(m) for m in (staged.champion, staged.challenger) if m is not None}
            old = [self.holder.replace(staged.champion), self.challenger.replace(staged.challenger)]
            self.route, self.generation = staged.spec, staged.generation
            if self._staged is staged:
                self._staged = None
            for model in old:
                if model is not None and id(model) not in keep:
                    self.holder.retire(model)
                    keep.add(id(model))

    # -- following the control folder ---------------------------------------------------
    def sync(self) -> None:
        """Switch to the committed model(s) if ``active.json`` moved on (called per request: one ``stat``)."""
        stamp = self.ctl.active_stamp()
        if stamp == self._stamp:
            return
        with self._sync_lock:
            desired = self.ctl.read_active()
            if desired is None or desired.generation <= self.generation:
                self._stamp = stamp
                return
            staged = self._staged
            if staged is None or staged.generation != desired.generation:
                # committed without us (we started mid-swap): the watcher loads it
                LOG.warning("worker %d: generation %d committed before it was staged here", self.pid,
                            desired.generation)
                return
            before = self.holder.active.version if self.holder.active else None
            self._commit(staged)
            self._stamp = stamp
            LOG.info("worker %d now serves generation %d: v%s -> v%s, challenger %s", self.pid, desired.generation,
                     before, staged.champion.version, describe_route(staged.spec))
        self._report()

    def _prepare(self, desired: Desired) -> None:
        try:
            staged = self._load(desired)
        except PackageError as exc:
            LOG.error("worker %d: generation %d rejected: %s", self.pid, desired.generation, exc)
            self._prepare_error = {"generation": desired.generation, "error": str(exc)}
            return
        old, self._staged = self._staged, staged
        if old is not None:
            old.discard()
        self._prepare_error = None

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_SECONDS):
            try:
                if self.options.parent_pid and os.getppid() != self.options.parent_pid:
                    LOG.error("worker %d: the server process %s is gone; stopping", self.pid, self.options.parent_pid)
                    os.kill(self.pid, signal.SIGTERM)  # uvicorn's graceful shutdown: captures are flushed
                    return
                self.sync()
                self._follow()
                self._report()
            except Exception:
                LOG.exception("worker %d: control folder check failed", self.pid)

    def _follow(self) -> None:
        """Stage a swap in progress, drop one that was called off, catch up with one committed
        while this worker was starting."""
        prepare, active = self.ctl.read_prepare(), self.ctl.read_active()
        staged = self._staged.generation if self._staged else self.generation
        failed = self._prepare_error["generation"] if self._prepare_error else None
        if prepare is not None and prepare.generation > staged and prepare.generation != failed:
            self._prepare(prepare)
        elif prepare is None and self._staged is not None and active is not None \
                and active.generation < self._staged.generation:
            old, self._staged = self._staged, None  # the swap was called off (another worker refused it)
            old.discard()
        elif prepare is None and active is not None and active.generation > staged and active.generation != failed:
            self._prepare(active)
            self.sync()

    # -- swaps, coordinated by the worker that received the admin request -----------------
    def coordinate(self, change: Callable[[Desired | None, int], Desired]) -> Desired:
        """Stage ``change(current, generation)`` in every worker, then commit it; raises
        PackageError (nothing switched)."""
        with self.ctl.swap_lock():
            generation = self.ctl.next_generation()
            try:
                desired = change(self.ctl.read_active(), generation)
            except PackageError as exc:
                self.ctl.record_swap(generation, str(exc))
                raise
            try:
                for tar in {desired.model_tar, *([desired.challenger.model_tar] if desired.challenger else [])}:
                    if not Path(tar).is_file():
                        raise PackageError(f"model package {tar} does not exist")
                self.ctl.publish_prepare(desired)
                self._wait_for_workers(lambda w: w.get("prepared_generation", 0) >= desired.generation,
                                       self.options.swap_timeout_seconds, desired, "load and health-check")
            except PackageError as exc:
                self.ctl.clear_prepare()
                self.ctl.record_swap(desired.generation, str(exc))
                raise
            self.ctl.publish_active(desired)  # the commit: every request from now on gets this package
            self.ctl.clear_prepare()
            self.sync()
            try:
                self._wait_for_workers(lambda w: w.get("serving_generation", 0) >= desired.generation, 10.0,
                                       desired, "switch to")
            except PackageError as exc:  # committed all the same: a late worker switches on its next request
                LOG.warning("%s", exc)
            self.ctl.record_swap(desired.generation, None)
            self.publish_state()
            LOG.info("generation %d in every worker: champion v%s, challenger %s", desired.generation, desired.version,
                     describe_route(desired.challenger))
            return desired

    def coordinate_swap(self, model_tar: str, version: int) -> Desired:
        """A new champion package (a deployment); a challenger keeps its place and weight."""
        return self.coordinate(lambda cur, g: Desired(g, version, model_tar, cur.challenger if cur else None))

    def coordinate_traffic(self, spec: ChallengerSpec | None) -> Desired:
        """Serve ``spec`` as the challenger beside the champion (None: champion only)."""
        def change(cur: Desired | None, generation: int) -> Desired:
            if cur is None:
                raise PackageError("the server serves no champion yet")
            return Desired(generation, cur.version, cur.model_tar, spec)

        return self.coordinate(change)

    def coordinate_promote(self) -> Desired:
        """Make the challenger the only variant: every worker has it loaded, so nothing reloads."""
        def change(cur: Desired | None, generation: int) -> Desired:
            if cur is None or cur.challenger is None:
                raise PackageError("there is no challenger to promote (`dermaops endpoint traffic --challenger N`)")
            return Desired(generation, cur.challenger.version, cur.challenger.model_tar, None)

        return self.coordinate(change)

    def _wait_for_workers(self, done: Any, timeout: float, desired: Desired, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            workers = self.ctl.workers()
            for w in workers:
                error = w.get("prepare_error") or {}
                if error.get("generation") == desired.generation:
                    raise PackageError(str(error.get("error")))
            if workers and all(done(w) for w in workers):
                return
            if time.monotonic() > deadline:
                late = [w["pid"] for w in workers if not done(w)]
                raise PackageError(f"worker(s) {late} did not {what} generation {desired.generation} "
                                   f"(package v{desired.version}) within {timeout:g} s")
            time.sleep(0.02)

    # -- per request: which variant answers -----------------------------------------------
    def pick(self) -> tuple[LoadedModel | None, str, LoadedModel | None]:
        """(model that answers, its variant name, shadow model or None), all acquired: release
        each with ``self.holder.release``. Weighted random per request (this worker's own seed)."""
        with self._models_lock:
            route, challenger = self.route, self.challenger.active
            if route is None or challenger is None:
                return self.holder.acquire(), VARIANT, None
            if route.shadow:
                return self.holder.acquire(), VARIANT, self.challenger.acquire()
            if self._rng.random() < route.weight:
                return self.challenger.acquire(), CHALLENGER, None
            return self.holder.acquire(), VARIANT, None

    def publish_state(self) -> None:
        """Rewrite the supervisor's state file so it names the package being served."""
        model = self.holder.active
        path = Path(self.options.state_file) if self.options.state_file else None
        if path is None or model is None or self.shutting_down or not path.is_file():
            return
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if self.options.parent_pid and (info.get("pid") != self.options.parent_pid
                                        or not pid_alive(self.options.parent_pid)):
            return
        info.update(package_version=model.version, model_tar=str(Path(model.model_tar).resolve()),
                    model_loaded_at=iso(model.loaded_at), challenger=self.challenger_status())
        write_json_atomic(path, info)

    def challenger_status(self) -> dict[str, Any] | None:
        """The committed challenger (variant, version, weight, shadow), or None."""
        model, route = self.challenger.active, self.route
        if model is None or route is None:
            return None
        return {"variant": CHALLENGER, "package_version": model.version, "model_tar": model.model_tar,
                "weight": route.weight, "shadow": route.shadow, "model_loaded_at": iso(model.loaded_at)}

    # -- per request --------------------------------------------------------------------
    def count(self, status: int) -> None:
        self.counters.add("requests_served" if status < 400 else "client_errors" if status < 500 else "server_errors")

    def healthy(self) -> bool:
        return self.holder.active is not None and not self.shutting_down

    def status(self) -> dict[str, Any]:
        model = self.holder.active
        totals, swaps = self.ctl.totals(), self.ctl.read_swaps()
        return {
            "endpoint_name": self.options.endpoint_name,
            "pid": self.options.parent_pid or self.pid,
            "healthy": self.healthy(),
            "package_version": model.version if model else None,
            "model_tar": model.model_tar if model else None,
            "model_loaded_at": iso(model.loaded_at) if model else None,
            "variant": VARIANT,
            "challenger": self.challenger_status(),
            "started_at": iso(self.options.started_at or time.time()),
            "requests_served": totals["requests_served"],
            "errors": {"client": totals["client_errors"], "server": totals["server_errors"]},
            "swaps": swaps["swaps"],
            "failed_swaps": swaps["failed_swaps"],
            "last_swap_error": swaps["last_swap_error"],
            "workers": [self._worker_status(w) for w in self.ctl.workers()],
            "capture": {
                "dir": str(self.capture.base),
                "files_written": totals["capture_files"],
                "records_written": totals["capture_records"],
                "write_errors": totals["capture_write_errors"],
                "dropped_records": totals["capture_dropped"],
            },
        }

    def _worker_status(self, info: dict[str, Any]) -> dict[str, Any]:
        counts = self.ctl.counters(int(info["pid"])).as_dict()
        return {"pid": info["pid"], "package_version": info.get("serving_version"),
                "challenger_version": info.get("challenger_version"),
                "model_loaded_at": info.get("model_loaded_at"),
                "requests": counts["requests_served"] + counts["client_errors"] + counts["server_errors"],
                "capture_records": counts["capture_records"]}

    async def score_shadow(self, shadow: LoadedModel, record: dict[str, Any], body: bytes | None,
                           content_type: str | None, accept: str | None) -> None:
        """Score ``body`` on the shadow model (after the client has its answer), add that answer to
        ``record`` and capture it. ``body`` None (the champion refused the request): capture only."""
        try:
            if body is not None:
                scored = time.perf_counter()
                status, payload = await anyio.to_thread.run_sync(self.score, shadow, body, content_type, accept,
                                                                 limiter=self.limiter)
                add_shadow(record, variant=CHALLENGER, package_version=shadow.version, response_text=payload,
                           status=status, latency_ms=(time.perf_counter() - scored) * 1000)
        finally:
            self.holder.release(shadow)
            self.capture.add(record)

    def score(self, model: LoadedModel | None, body: bytes, content_type: str | None,
              accept: str | None) -> tuple[int, str]:
        """(status, JSON text) of one admitted request; runs in a worker thread."""
        try:
            if model is None:
                raise InferenceError(503, "no model is loaded yet")
            return 200, transform(model.package, body, content_type, accept)
        except InferenceError as exc:
            return exc.status_code, exc.body()


# ----------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------
class HostCheck:
    """ASGI middleware: a request whose Host header does not name this server gets 421 (DNS rebinding)."""

    def __init__(self, app: Any, worker: Worker) -> None:
        self.app = app
        self.worker = worker

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw = Headers(scope=scope).get("host")
            name = host_header_name(raw)
            if name is None or name not in self.worker.options.allowed_hosts:
                self.worker.count(421)
                LOG.info("refused a request with Host header %r (not one of this server's names)", (raw or "")[:100])
                names = ", ".join(sorted(self.worker.options.allowed_hosts))
                response = json_response(HTTPStatus.MISDIRECTED_REQUEST, {
                    "error": "the Host header does not name this server; send the request to the address the "
                             f"endpoint is bound to ({names})"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _worker(request: Request) -> Worker:
    return request.app.state.worker


def _admin_refusal(request: Request) -> Response | None:
    """None when the admin token was sent; else the 403 to answer."""
    worker = _worker(request)
    token = worker.options.admin_token
    if token and same_token(request.headers.get(ADMIN_TOKEN_HEADER, ""), token):
        return None
    worker.count(403)
    return json_response(403, {"error": f"admin routes need the {ADMIN_TOKEN_HEADER} header "
                                        f"with the token from the server's admin token file"})


async def ping(request: Request) -> Response:
    worker = _worker(request)
    if worker.healthy():
        worker.sync()
        return json_response(200, {"status": "healthy", "package_version": worker.holder.active.version})
    return json_response(503, {"status": "unhealthy"})


async def admin_status(request: Request) -> Response:
    return _admin_refusal(request) or json_response(200, await anyio.to_thread.run_sync(_worker(request).status))


async def admin_swap(request: Request) -> Response:
    worker = _worker(request)
    refused = _admin_refusal(request)
    if refused is not None:
        return refused
    try:
        body = await read_body(request, 1 << 16, worker.options.client_timeout_seconds)
        payload = json.loads(body or b"{}")
        model_tar, version = str(payload["model_tar"]), int(payload["package_version"])
    except BodyError as exc:
        return json_response(exc.status, {"error": str(exc)})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return json_response(400, {"error": f'body must be JSON {{"model_tar": path, "package_version": n}}: {exc}'})
    LOG.info("swap requested: v%s from %s", version, model_tar)
    try:
        await anyio.to_thread.run_sync(worker.coordinate_swap, model_tar, version)
    except PackageError as exc:
        serving = worker.holder.active.version if worker.holder.active else None
        LOG.error("package v%s rejected, v%s keeps serving: %s", version, serving, exc)
        return json_response(409, {"error": f"package v{version} failed its health check: {exc}",
                                   "serving_version": serving})
    status = await anyio.to_thread.run_sync(worker.status)
    return json_response(200, {"swapped": True, "package_version": version, "status": status})


async def _admin_payload(request: Request) -> dict[str, Any] | Response:
    """The JSON object an admin route was sent, or the response refusing the request."""
    refused = _admin_refusal(request)
    if refused is not None:
        return refused
    try:
        body = await read_body(request, 1 << 16, _worker(request).options.client_timeout_seconds)
        payload = json.loads(body or b"{}")
    except BodyError as exc:
        return json_response(exc.status, {"error": str(exc)})
    except json.JSONDecodeError as exc:
        return json_response(400, {"error": f"body is not JSON: {exc}"})
    return payload if isinstance(payload, dict) else json_response(400, {"error": "body must be a JSON object"})


def traffic_spec(payload: dict[str, Any]) -> ChallengerSpec | None:
    """``{"challenger": {"model_tar", "package_version"} | null, "weight": 0..1, "shadow": bool}`` as a
    spec (None: serve the champion only); raises ValueError saying what is wrong."""
    challenger = payload.get("challenger")
    if challenger is None:
        return None
    if not isinstance(challenger, dict) or "model_tar" not in challenger or "package_version" not in challenger:
        raise ValueError('"challenger" must be null or {"model_tar": path, "package_version": n}')
    shadow = bool(payload.get("shadow", False))
    weight = float(payload.get("weight", 0.0))
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight {weight} is not a share of traffic between 0 and 1")
    if shadow and weight:
        raise ValueError("a shadow challenger answers no client: give weight 0 (or no weight) with shadow")
    if not shadow and weight == 0.0:
        raise ValueError("a challenger with weight 0 and no shadow would see no traffic: give --weight or --shadow")
    return ChallengerSpec(int(challenger["package_version"]), str(challenger["model_tar"]), weight, shadow)


async def admin_traffic(request: Request) -> Response:
    worker = _worker(request)
    payload = await _admin_payload(request)
    if isinstance(payload, Response):
        return payload
    try:
        spec = traffic_spec(payload)
    except (TypeError, ValueError) as exc:
        return json_response(400, {"error": str(exc)})
    LOG.info("traffic change requested: challenger %s", describe_route(spec))
    try:
        await anyio.to_thread.run_sync(worker.coordinate_traffic, spec)
    except PackageError as exc:
        LOG.error("traffic change refused, nothing changed: %s", exc)
        return json_response(409, {"error": f"challenger not served: {exc}", "challenger": worker.challenger_status()})
    return json_response(200, {"changed": True, "status": await anyio.to_thread.run_sync(worker.status)})


async def admin_promote(request: Request) -> Response:
    worker = _worker(request)
    payload = await _admin_payload(request)
    if isinstance(payload, Response):
        return payload
    try:
        desired = await anyio.to_thread.run_sync(worker.coordinate_promote)
    except PackageError as exc:
        return json_response(409, {"error": f"not promoted: {exc}"})
    LOG.info("challenger v%s promoted: it is now the only variant", desired.version)
    return json_response(200, {"promoted": True, "package_version": desired.version,
                               "status": await anyio.to_thread.run_sync(worker.status)})


def _refuse_stranger(worker: Worker, started: float, event_id: str, inference_id: str,
                     content_type: str | None) -> Response:
    """401 for an invocation without the right bearer token, captured without its body."""
    payload = json.dumps({"error": f"/invocations needs the header '{AUTHORIZATION_HEADER}: Bearer <token>' "
                                   "with the endpoint's invocation token"})
    worker.count(401)
    worker.capture.add(capture_record(  # captured without its body, as every 4xx
        body=b"", content_type=content_type or "application/octet-stream", response_text=payload,
        event_id=event_id, inference_id=inference_id, inference_time=started, package_version=-1,
        status=401, latency_ms=(time.time() - started) * 1000))
    LOG.info("invocation id=%s status=401 (no or wrong invocation token)", inference_id)
    return json_response(401, payload, {"WWW-Authenticate": 'Bearer realm="dermaops"', "X-Inference-Id": inference_id})


async def invocations(request: Request) -> Response:
    worker = _worker(request)
    started = time.time()
    event_id = str(uuid.uuid4())
    asked_id = request.headers.get(INFERENCE_ID_HEADER, "")
    inference_id = asked_id if _SAFE_ID.match(asked_id) else event_id
    content_type = content_type_of(request.headers.get("content-type"))
    if not bearer_ok(request.headers.get(AUTHORIZATION_HEADER), worker.options.invoke_token):
        # refused before the body is read: a stranger cannot make us read 10 MB
        return _refuse_stranger(worker, started, event_id, inference_id, content_type)
    try:
        body = await read_body(request, MAX_BODY_BYTES, worker.options.client_timeout_seconds)
    except BodyError as exc:
        LOG.info("invocation %s: body not received: %s", inference_id, exc)
        worker.count(exc.status)
        return json_response(exc.status, {"error": str(exc)}, {"X-Inference-Id": inference_id})
    try:
        await asyncio.wait_for(worker.slots.acquire(), worker.options.queue_wait_seconds)
    except TimeoutError:
        worker.count(503)
        return json_response(503, {"error": f"the endpoint is busy ({worker.options.max_inflight} requests in "
                                            "progress); retry"},
                             {"Retry-After": "1", "X-Inference-Id": inference_id})
    shadow: LoadedModel | None = None
    try:
        worker.sync()  # after admission: a request that waited gets the model committed meanwhile
        model, variant, shadow = worker.pick()
        try:
            scored = time.perf_counter()
            status, payload = await anyio.to_thread.run_sync(
                worker.score, model, body, content_type, request.headers.get("accept"), limiter=worker.limiter)
            model_ms = (time.perf_counter() - scored) * 1000
        finally:
            if model is not None:
                worker.holder.release(model)
    except BaseException:
        if shadow is not None:
            worker.holder.release(shadow)
        raise
    finally:
        worker.slots.release()
    version = model.version if model is not None else None
    latency_ms = (time.time() - started) * 1000
    worker.count(status)
    # A rejected request (4xx) is captured without its body: it is not an image the monitors
    # could use, and it may hold anything a client sent, patient details included.
    record = capture_record(
        body=body if not 400 <= status < 500 else b"",
        content_type=content_type or "application/octet-stream", response_text=payload,
        event_id=event_id, inference_id=inference_id, inference_time=started,
        package_version=version if version is not None else -1, status=status, latency_ms=latency_ms,
        variant=variant)
    record["eventMetadata"]["dermaopsModelLatencyMs"] = round(model_ms, 3)
    LOG.log(logging.DEBUG if status < 400 else logging.INFO,
            "invocation id=%s status=%d variant=%s version=%s bytes=%d ms=%.1f", inference_id, status, variant,
            version, len(body), latency_ms)
    headers = {"X-Inference-Id": inference_id, VARIANT_HEADER: variant}
    if version is not None:
        headers["X-Model-Version"] = str(version)
    if shadow is None:
        worker.capture.add(record)
        return json_response(status, payload, headers)
    # Shadow: the client's answer leaves now; the challenger scores the same body afterwards and
    # its answer goes into the capture record only.
    task = BackgroundTask(worker.score_shadow, shadow, record, body if status < 400 else None, content_type,
                          request.headers.get("accept"))
    response = json_response(status, payload, headers)
    response.background = task
    return response


async def no_route(request: Request, _exc: Exception) -> Response:
    return json_response(404, {"error": f"no route {request.method} {request.url.path}; use GET /ping, "
                                        "POST /invocations, POST /admin/swap, POST /admin/traffic, "
                                        "POST /admin/promote, GET /admin/status"})


def build_app(worker: Worker) -> Starlette:
    """The ASGI app of one worker (routes in the module docstring)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Admitted requests score one at a time per torch thread: a worker is sized to its cores,
        # and more Python threads in one forward pass each would only contend for the GIL.
        worker.limiter = anyio.CapacityLimiter(max(1, min(worker.options.max_inflight, worker.options.torch_threads)))
        await anyio.to_thread.run_sync(worker.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.stop)

    app = Starlette(routes=[Route("/ping", ping, methods=["GET"]),
                            Route("/invocations", invocations, methods=["POST"]),
                            Route("/admin/status", admin_status, methods=["GET"]),
                            Route("/admin/swap", admin_swap, methods=["POST"]),
                            Route("/admin/traffic", admin_traffic, methods=["POST"]),
                            Route("/admin/promote", admin_promote, methods=["POST"])],
                    exception_handlers={404: no_route, 405: no_route}, lifespan=lifespan)
    app.state.worker = worker
    app.add_middleware(HostCheck, worker=worker)
    return app


class WorkerApp:
    """The ASGI callable uvicorn pickles into each worker: options only; the app is built on first use."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.worker: Worker | None = None
        self._app: Starlette | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["options"])

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self._app is None:
            self.worker = Worker(self.options)
            self._app = build_app(self.worker)
        await self._app(scope, receive, send)
