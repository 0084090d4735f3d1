"""Local stand-in for a SageMaker PyTorch inference container: uvicorn workers serving Starlette.

``python -m ml_code.serving.serve --model-tar PATH --port P --capture-dir DIR --endpoint-name NAME
--package-version N --state-file PATH [--workers W] [--admin-token-file PATH] [--invoke-token-file PATH]
[--host 127.0.0.1]``

Why a server of our own at all: the local backend must give the same HTTP contract
(``GET /ping``, ``POST /invocations``), the same handler contract (``code/inference.py`` with
``model_fn / input_fn / predict_fn / output_fn`` inside a ``model.tar.gz``) and the same
data-capture files as a SageMaker endpoint, so that the monitoring assets read one format in
both places. What is ours is only that: the routes (``ml_code.serving.app``), the model
holding (``ml_code.serving.models``), capture (``ml_code.serving.capture``) and the swap
protocol (``ml_code.serving.control``). HTTP parsing, connections, keep-alive, worker
processes and their supervision are uvicorn's.

Why uvicorn (+ Starlette) rather than gunicorn: both are maintained and both are in the
environment already (uvicorn and Starlette through dagster-webserver, gunicorn through
mlflow). uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``, what ``uvicorn
--workers`` runs) gives what gunicorn's arbiter would here: one socket bound by the parent,
``spawn``'d workers sharing it, worker health pings, a crashed worker replaced, SIGTERM ->
graceful shutdown of every worker. An asyncio worker reads a slow client's body without
holding a thread (gunicorn's sync workers would need a thread or process per connection, and
gunicorn + uvicorn workers is two stacks where one does). Hot swap does not restart workers
(gunicorn's HUP or uvicorn's rolling restart would reload the package in new processes and
leave a window where old and new workers answer side by side); workers load the new package
beside the old one and switch together, see ``ml_code.serving.app``.

Processes: this process (the supervisor; its pid is in the state file and it is what
``dermaops endpoint stop`` signals) binds the socket, writes the model to serve into a
private control folder, starts ``--workers`` uvicorn workers (0: one per core available to
the process) and writes ``--state-file`` once every worker has loaded and health-checked the
package. A package no worker can load ends the server with exit code 3. Each worker gets
``ceil(max_inflight / workers)`` admission slots and ``cores // workers`` torch threads (at
least 1), so the workers together admit about ``--max-inflight`` requests and never ask for
more cores than there are.

Access: every request must name this server in its ``Host`` header (the bound address, or a
loopback name): a web page that rebinds its own DNS name to 127.0.0.1 is answered 421 (DNS
rebinding). ``/admin/*`` needs the admin token (``X-Admin-Token``). ``/invocations`` needs
``Authorization: Bearer <token>`` when ``--invoke-token-file`` is given, and the server refuses
to bind a non-loopback address without one (exit code 2). ``/ping`` stays open to health
checks. Tokens are read from 0600 files, never from the command line or the environment,
reach the workers through the spawn pipe, and are never logged. Logs carry request ids,
sizes, status codes and latencies: never image bytes or PHI.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from ml_code import contract
from ml_code.atomic import write_json_atomic
from ml_code.serving.access import (  # noqa: F401 - the server's public names (the deployer and tests use them)
    ADMIN_TOKEN_HEADER,
    AUTHORIZATION_HEADER,
    LOOPBACK_NAMES,
    allowed_host_names,
    host_header_name,
    is_loopback,
    url_host,
)
from ml_code.serving.app import (  # noqa: F401
    INFERENCE_ID_HEADER,
    MAX_BODY_BYTES,
    WorkerApp,
    WorkerOptions,
)
from ml_code.serving.capture import CaptureWriter, capture_record, iso  # noqa: F401
from ml_code.serving.control import ControlDir, Desired
from ml_code.serving.models import VARIANT, LoadedModel, health_check, load_package  # noqa: F401

LOG = logging.getLogger("dermaops.serve")

#: Invocations the whole server decodes and scores at once (default of --max-inflight); more
#: wait up to ``QUEUE_WAIT_SECONDS`` for a slot, then get 503 + Retry-After. Each large image
#: costs up to a few hundred MB while it is decoded.
MAX_INFLIGHT = 8
QUEUE_WAIT_SECONDS = 10.0
#: A client that stops sending mid-body is answered 408 after this long; it never held a slot.
CLIENT_TIMEOUT_SECONDS = 30.0
#: Seconds a stopping worker waits for requests in flight before it cancels them.
GRACEFUL_SHUTDOWN_SECONDS = 10


def available_cores() -> int:
    """Cores this process may run on (``ml_code.contract.available_cpus``)."""
    return contract.available_cpus()


def plan_workers(requested: int, max_inflight: int, cores: int | None = None) -> tuple[int, int, int]:
    """(workers, admission slots per worker, torch threads per worker) for ``requested`` workers
    (0 = one per core) and a server-wide ``max_inflight``."""
    cores = cores or available_cores()
    workers = requested if requested > 0 else cores
    return workers, max(1, math.ceil(max(1, max_inflight) / workers)), max(1, cores // workers)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every worker shares (IPv6 for an address with ':'); SO_REUSEADDR so a
    restarted server can take its port back while old connections sit in TIME_WAIT."""
    bare = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def log_config(level: str) -> dict[str, Any]:
    """One stderr format for the supervisor, the workers (``%(process)d`` tells them apart) and uvicorn."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"uvicorn.access": {"level": "WARNING"}},
    }


def remove_state_file(path: Path) -> None:
    """Remove the state file only if it is still ours (a newer server may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, json.JSONDecodeError):
        pass


def _startup_error(ctl: ControlDir) -> str | None:
    """Why a worker could not load the package at its start, if one could not."""
    for path in ctl.workers_dir.glob("*.json"):
        try:
            error = json.loads(path.read_text()).get("startup_error")
        except (OSError, json.JSONDecodeError):
            continue
        if error:
            return str(error)
    return None


def _await_workers(ctl: ControlDir, count: int, supervisor: Multiprocess, state_file: Path,
                   state_info: dict[str, Any]) -> None:
    """Publish the state file once ``count`` workers serve; stop the server if one cannot load the package."""
    while not supervisor.should_exit.is_set():
        if _startup_error(ctl) is not None:
            supervisor.should_exit.set()
            return
        ready = [w for w in ctl.workers() if w.get("serving_generation", 0) >= 1]
        if len(ready) >= count:
            active = ctl.read_active()
            state_info.update(package_version=active.version, model_tar=active.model_tar,
                              model_loaded_at=min(w["model_loaded_at"] for w in ready), workers=count)
            write_json_atomic(state_file, state_info)
            LOG.info("serving endpoint %s at %s with %d worker(s)", state_info["endpoint_name"], state_info["url"],
                     count)
            return
        time.sleep(0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ml_code.serving.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-tar", required=True, help="model.tar.gz with code/inference.py")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (see the state file)")
    p.add_argument("--capture-dir", required=True, help="data capture root (files go to DIR/<endpoint>/AllTraffic/...)")
    p.add_argument("--endpoint-name", default="dermaops-lesion-endpoint")
    p.add_argument("--package-version", type=int, required=True)
    p.add_argument("--state-file", required=True, help="JSON written once healthy, removed at shutdown")
    p.add_argument("--workers", type=int, default=0, help="worker processes; 0 = one per available core")
    p.add_argument("--admin-token-file", default=None, help="file holding the token /admin/* require (X-Admin-Token)")
    p.add_argument("--invoke-token-file", default=None,
                   help="file holding the token /invocations requires ('Authorization: Bearer <token>'); "
                        "required to bind a non-loopback --host")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="another name clients may send in the Host header (repeatable); the bound address "
                        "and, always, 127.0.0.1, localhost and ::1 are accepted")
    p.add_argument("--capture-interval", type=float, default=1.0)
    p.add_argument("--max-inflight", type=int, default=MAX_INFLIGHT,
                   help="invocations the server scores at once (shared out between the workers); more wait, then 503")
    p.add_argument("--queue-wait-seconds", type=float, default=QUEUE_WAIT_SECONDS,
                   help="how long a request waits for a slot before it gets 503 + Retry-After")
    p.add_argument("--client-timeout-seconds", type=float, default=CLIENT_TIMEOUT_SECONDS,
                   help="a body that has not fully arrived after this long is answered 408")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _read_tokens(args: argparse.Namespace) -> dict[str, str | None] | None:
    tokens: dict[str, str | None] = {}
    for what, path in (("admin", args.admin_token_file), ("invocation", args.invoke_token_file)):
        tokens[what] = None
        if path:
            try:
                tokens[what] = Path(path).read_text().strip() or None
            except OSError as exc:
                LOG.error("cannot read the %s token file %s: %s", what, path, exc)
                return None
            if tokens[what] is None:
                LOG.error("the %s token file %s is empty; write the token into it (or leave the option out)",
                          what, path)
                return None
    return tokens


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.config.dictConfig(log_config(args.log_level))
    tokens = _read_tokens(args)
    if tokens is None:
        return 2
    if not is_loopback(args.host) and tokens["invocation"] is None:
        LOG.error("refusing to listen on %s: a non-loopback address would let anyone on the network send patient "
                  "images to the model. Configure an invocation token (--invoke-token-file FILE; the local deployer "
                  "writes it from DERMAOPS_ENDPOINT_TOKEN), or bind 127.0.0.1 (DERMAOPS_ENDPOINT_HOST).", args.host)
        return 2
    model_tar = Path(args.model_tar).resolve()
    if not model_tar.is_file():
        LOG.error("model package v%s is not servable: %s does not exist", args.package_version, model_tar)
        return 3
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        LOG.error("cannot listen on %s:%s: %s (choose another port)", args.host, args.port, exc)
        return 4
    workers, slots, threads = plan_workers(args.workers, args.max_inflight)
    ctl = ControlDir.create()
    ctl.publish_active(Desired(generation=1, version=args.package_version, model_tar=str(model_tar)))
    started_at = time.time()
    options = WorkerOptions(
        control_dir=str(ctl.root), capture_dir=str(Path(args.capture_dir).resolve()), endpoint_name=args.endpoint_name,
        admin_token=tokens["admin"], invoke_token=tokens["invocation"],
        allowed_hosts=allowed_host_names(args.host, tuple(args.allowed_host)), max_inflight=slots,
        queue_wait_seconds=args.queue_wait_seconds, client_timeout_seconds=args.client_timeout_seconds,
        capture_interval=args.capture_interval, torch_threads=threads, state_file=str(Path(args.state_file).resolve()),
        parent_pid=os.getpid(), started_at=started_at)
    config = uvicorn.Config(WorkerApp(options), workers=workers, lifespan="on", log_config=log_config(args.log_level),
                            access_log=False, proxy_headers=False, server_header=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    port = sock.getsockname()[1]
    url = f"http://{url_host(args.host)}:{port}"
    state_file = Path(args.state_file)
    state_info: dict[str, Any] = {
        "pid": os.getpid(), "url": url, "host": args.host, "port": port, "endpoint_name": args.endpoint_name,
        "capture_dir": str(Path(args.capture_dir) / args.endpoint_name / VARIANT), "started_at": iso(started_at),
    }
    LOG.info("starting %d worker(s) for package v%s on %s (%d slot(s) and %d torch thread(s) each; invocation "
             "token %s)", workers, args.package_version, url, slots, threads,
             "required" if tokens["invocation"] else "not required: loopback only")
    try:
        supervisor = Multiprocess(config, sockets=[sock])  # SIGTERM/SIGINT: stop every worker gracefully
        threading.Thread(target=_await_workers, name="await-workers", daemon=True,
                         args=(ctl, workers, supervisor, state_file, state_info)).start()
        supervisor.run()
        error = _startup_error(ctl)
    finally:
        remove_state_file(state_file)
        sock.close()
        ctl.destroy()
    if error is not None:
        LOG.error("model package v%s is not servable: %s", args.package_version, error)
        return 3
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
