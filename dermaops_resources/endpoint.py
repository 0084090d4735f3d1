"""Endpoint deployer: puts an Approved model package behind a live HTTP endpoint.

``LocalEndpointDeployer`` runs ``ml_code.serving.serve`` as a detached server process on
127.0.0.1 (or ``DERMAOPS_ENDPOINT_HOST``, which needs ``DERMAOPS_ENDPOINT_TOKEN``) that outlives the Dagster run; ``SageMakerEndpointDeployer``
(``dermaops_resources.aws.endpoint``) creates a SageMaker endpoint with auto-scaling.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ml_code.atomic import atomic_path, write_text_atomic
from ml_code.serving.access import ADMIN_TOKEN_HEADER, is_loopback
from ml_code.serving.control import pid_alive

from .handles import EndpointHandle
from .object_store import (
    CHILD_UMASK,
    PRIVATE_FILE_MODE,
    ObjectStore,
    file_uri_to_path,
    join_uri,
    open_private_append,
    private_dir,
    sha256_file,
)
from .registry import ModelPackage
from .settings import REPO_ROOT, child_environment


class DeploymentFailed(RuntimeError):
    """The new package did not pass its health check; the previous one keeps serving."""


DEPLOYMENT_RECORD_PREFIX = "deployments"
"""Models-bucket folder of the deployment records: ``deployments/<endpoint>/<variant>.json``."""


def deployment_record_uri(store: ObjectStore, endpoint_name: str, variant: str) -> str:
    return store.uri("models", f"{DEPLOYMENT_RECORD_PREFIX}/{endpoint_name}/{variant}.json")


def record_deployment(store: ObjectStore, endpoint_name: str, variant: str, *, version: int, endpoint_config: str,
                      kind: str, requested_at: float, finished_at: float, outcome: str) -> str:
    """Append one deployment attempt to the endpoint variant's record (read by
    :func:`deployment_timeline`). Why: SageMaker's capture lines name no model, and SageMaker
    keeps no history of which endpoint config served when, so this record is the only way to
    say which package answered a captured request. Times are epoch seconds; ``kind`` is
    ``create`` or ``update``; ``outcome`` is ``in_service``, ``rolled_back``, ``failed`` or
    ``interrupted`` (see ``ml_code.monitoring.capture.VersionTimeline``). One deployment runs at a
    time per endpoint, so read-append-write is safe; the object is replaced whole (S3 PUT)."""
    uri = deployment_record_uri(store, endpoint_name, variant)
    record = store.get_json_or(uri, {"endpoint": endpoint_name, "variant": variant, "deployments": []})
    record["deployments"].append({"version": int(version), "endpoint_config": endpoint_config, "kind": kind,
                                  "requested_at": float(requested_at), "finished_at": float(finished_at),
                                  "outcome": outcome})
    return store.put_json("models", f"{DEPLOYMENT_RECORD_PREFIX}/{endpoint_name}/{variant}.json", record)


def deployment_timeline(store: ObjectStore, endpoint_name: str, variant: str):
    """The variant's ``VersionTimeline`` from its deployment record, or None when there is no record
    (an endpoint deployed before records were kept, or the local endpoint, whose capture lines carry
    their version)."""
    from ml_code.monitoring.capture import VersionTimeline

    record = store.get_json_or(deployment_record_uri(store, endpoint_name, variant), None)
    if record is None:
        return None
    return VersionTimeline.from_deployments(record.get("deployments", []))


class EndpointDeployer(dg.ConfigurableResource, ABC):
    @abstractmethod
    def deploy(self, package: ModelPackage, store: ObjectStore,
               on_log: Callable[[str], None] | None = None) -> EndpointHandle:
        """Serve ``package``; swap without failing requests in flight; raise DeploymentFailed
        (leaving the old model serving) when the new one is unhealthy."""

    @abstractmethod
    def set_traffic(self, challenger: ModelPackage | None, store: ObjectStore, *, weight: float = 0.0,
                    shadow: bool = False, on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Serve ``challenger`` as the variant ``Challenger`` beside the champion: answering a
        ``weight`` share (0..1) of requests, or, with ``shadow``, scoring a copy of every request
        without answering any. None removes the challenger. Returns the status; raises
        DeploymentFailed (nothing changed) when the package is unhealthy or no champion serves."""

    @abstractmethod
    def promote(self, store: ObjectStore, on_log: Callable[[str], None] | None = None) -> EndpointHandle:
        """Make the challenger the only variant (champion) without failing a request; raises
        DeploymentFailed when there is no challenger."""

    @abstractmethod
    def status(self) -> dict[str, Any] | None:
        """JSON-able status (at least url, package_version, healthy) or None when not deployed."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop the endpoint; True if one was running."""


# ------------------------------------------------------------------------------------------
# Local backend: ml_code.serving.serve as a detached process on 127.0.0.1
# ------------------------------------------------------------------------------------------
SERVER_MODULE = "ml_code.serving.serve"  # the supervisor; ml_code.serving.access holds the names used here
TOKEN_ENV_VAR = "DERMAOPS_ENDPOINT_TOKEN"  # the setting named in errors (read only by settings.py)


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours is reaped and counts as dead)."""
    if pid <= 0:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fine, ask the kernel (the workers' own check)
    return pid_alive(pid)


def _is_our_server(pid: int) -> bool:
    """Guard against pid reuse: only signal a process that runs ml_code.serving.serve."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)  # no /proc (macOS): trust the state file
    return SERVER_MODULE.encode() in cmdline


def _http_json(url: str, *, method: str = "GET", payload: Any = None, headers: dict[str, str] | None = None,
               timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request; HTTP errors are returned, connection errors raised."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        parsed = json.loads(body) if body else {}
    except json.JSONDecodeError:
        parsed = {"raw": body[:500].decode("utf-8", "replace")}
    return status, parsed if isinstance(parsed, dict) else {"value": parsed}


class LocalEndpointDeployer(EndpointDeployer):
    """Serves packages with ``python -m ml_code.serving.serve`` running detached on ``host``.

    The server outlives the Dagster run that deployed it (its own session, its own log
    file), exactly as a SageMaker endpoint outlives the pipeline execution. Redeploys do
    not restart it: they ask it to load, check and swap the new package (``/admin/swap``),
    so requests never fail during a rollout and a broken package never goes live.
    Everything about the running server lives in ``state_dir``: ``server.json`` (written by
    the server once healthy), ``admin.token`` (0600, new per start), ``serve.log``,
    ``packages/v<N>/model.tar.gz`` and ``port`` (kept so a restarted server reuses it).

    ``host`` other than a loopback address needs ``invoke_token`` (DERMAOPS_ENDPOINT_TOKEN):
    clients then send ``Authorization: Bearer <token>`` to ``/invocations``. The token reaches the
    server through ``invoke.token`` (0600), never its command line, and is never logged.
    """

    state_dir: str
    capture_uri: str = Field(description="file:// prefix of the logs bucket's datacapture folder")
    endpoint_name: str = "dermaops-lesion-endpoint"
    port: int = 0
    host: str = Field(default="127.0.0.1", description="address the server binds (DERMAOPS_ENDPOINT_HOST); "
                                                        "a non-loopback one needs invoke_token")
    invoke_token: str = Field(default="", repr=False,
                              description="secret bearer token /invocations requires (DERMAOPS_ENDPOINT_TOKEN); "
                                          "empty = none, allowed on loopback hosts only")
    startup_timeout_seconds: float = 120
    max_inflight: int = Field(default=8, description="invocations the server admits at once, shared out between "
                                                     "its workers (DERMAOPS_ENDPOINT_MAX_INFLIGHT)")
    workers: int = Field(default=0, ge=0, description="worker processes of the server; 0 = one per core "
                                                      "(DERMAOPS_ENDPOINT_WORKERS)")
    log_level: str = Field(default="INFO", description="the server's log level (DERMAOPS_SERVE_LOG_LEVEL)")

    # -- paths ------------------------------------------------------------------------
    @property
    def _dir(self) -> Path:
        return Path(self.state_dir).expanduser().resolve()

    @property
    def _state_file(self) -> Path:
        return self._dir / "server.json"

    @property
    def _token_file(self) -> Path:
        return self._dir / "admin.token"

    @property
    def _invoke_token_file(self) -> Path:
        return self._dir / "invoke.token"

    @property
    def _log_file(self) -> Path:
        return self._dir / "serve.log"

    @property
    def _port_file(self) -> Path:
        return self._dir / "port"

    def _capture_dir(self) -> Path:
        return file_uri_to_path(self.capture_uri)

    def endpoint_capture_uri(self) -> str:
        """Where this endpoint's capture files land: ``<capture_uri>/<endpoint>/AllTraffic``."""
        return join_uri(self.capture_uri, self.endpoint_name, "AllTraffic")

    # -- server discovery ---------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return state if isinstance(state, dict) and "pid" in state and "url" in state else None

    def _ping(self, url: str, timeout: float = 3.0) -> dict[str, Any] | None:
        try:
            status, body = _http_json(f"{url}/ping", timeout=timeout)
        except (OSError, urllib.error.URLError):
            return None
        return body if status == 200 else None

    def _admin_headers(self) -> dict[str, str]:
        try:
            return {ADMIN_TOKEN_HEADER: self._token_file.read_text().strip()}
        except OSError:
            return {}

    def _serves_current_access(self, state: dict[str, Any]) -> bool:
        """True when the running server was started with this deployer's host and invocation token."""
        try:
            running_token = self._invoke_token_file.read_text().strip()
        except FileNotFoundError:
            running_token = ""
        except OSError:
            return False
        return state.get("host") == self.host and hmac.compare_digest(running_token.encode(),
                                                                       self.invoke_token.strip().encode())

    def _running(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(state file, ping body) of a live healthy server, else None."""
        state = self._read_state()
        if state is None or not _pid_alive(int(state["pid"])):
            return None
        ping = self._ping(state["url"])
        return (state, ping) if ping is not None else None

    # -- fetching -----------------------------------------------------------------------
    def _fetch_package(self, package: ModelPackage, store: ObjectStore, log: Callable[[str], None]) -> Path:
        dest = self._dir / "packages" / f"v{package.version}" / "model.tar.gz"
        private_dir(dest.parent)
        try:
            with atomic_path(dest, PRIVATE_FILE_MODE) as tmp:
                local = store.local_path(package.model_uri)
                if local is not None:
                    shutil.copyfile(local, tmp)
                else:
                    store.download_file(package.model_uri, tmp)
        except (OSError, ValueError) as exc:
            raise DeploymentFailed(f"cannot fetch model package v{package.version} from {package.model_uri}: "
                                   f"{exc}. Check the registry entry's model_uri.") from exc
        digest = sha256_file(dest)
        log(f"fetched package v{package.version} ({dest.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}) "
            f"to {dest}")
        return dest

    def _prune_packages(self, keep: set[int]) -> None:
        """Keep the serving package and the one before it (for rollback); drop older copies."""
        root = self._dir / "packages"
        for folder in root.glob("v*"):
            try:
                version = int(folder.name[1:])
            except ValueError:
                continue
            if version not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    # -- starting / stopping ------------------------------------------------------------
    def _log_tail(self, offset: int, limit: int = 4000) -> str:
        try:
            with open(self._log_file, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no server log)"
        return text[-limit:].strip() or "(server log is empty)"

    def _choose_port(self) -> int:
        if self.port:
            return self.port
        try:
            previous = int(self._port_file.read_text().strip())
        except (OSError, ValueError):
            return 0
        with socket.socket() as sock:  # reuse the last port if nobody took it meanwhile
            # the server binds with SO_REUSEADDR (ml_code.serving.serve.bind_socket), so TIME_WAIT is no obstacle
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, previous))
            except OSError:
                return 0
        return previous

    def _check_access_config(self) -> None:
        if not is_loopback(self.host) and not self.invoke_token.strip():
            raise DeploymentFailed(
                f"the local endpoint would listen on {self.host!r}, which is not a loopback address, without an "
                f"invocation token: anyone on the network could send it images. Set {TOKEN_ENV_VAR} to a long random "
                "secret (clients then send 'Authorization: Bearer <token>'), or set DERMAOPS_ENDPOINT_HOST back to "
                "127.0.0.1.")

    def _start_server(self, model_tar: Path, version: int, log: Callable[[str], None]) -> dict[str, Any]:
        self._check_access_config()
        private_dir(self._dir)
        self._state_file.unlink(missing_ok=True)
        write_text_atomic(self._token_file, secrets.token_urlsafe(32), mode=0o600)
        invoke_args: list[str] = []
        if self.invoke_token.strip():
            write_text_atomic(self._invoke_token_file, self.invoke_token.strip(), mode=0o600)
            invoke_args = ["--invoke-token-file", str(self._invoke_token_file)]
        else:
            self._invoke_token_file.unlink(missing_ok=True)
        port = self._choose_port()
        capture_dir = self._capture_dir()
        private_dir(capture_dir)
        cmd = [sys.executable, "-m", SERVER_MODULE, "--model-tar", str(model_tar), "--host", self.host,
               "--port", str(port), "--capture-dir", str(capture_dir), "--endpoint-name", self.endpoint_name,
               "--package-version", str(version), "--state-file", str(self._state_file),
               "--admin-token-file", str(self._token_file), *invoke_args, "--max-inflight", str(self.max_inflight),
               "--workers", str(self.workers), "--log-level", self.log_level]
        env = child_environment(drop_prefixes=(TOKEN_ENV_VAR,))  # the server reads the token file only
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        with open_private_append(self._log_file, binary=True) as logfh:
            offset = logfh.tell()
            logfh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting package v{version} ===\n".encode())
            logfh.flush()
            proc = subprocess.Popen(cmd, cwd=str(self._dir), env=env, stdin=subprocess.DEVNULL, stdout=logfh,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                    umask=CHILD_UMASK)  # its state file and captures: owner-only
        log(f"started {SERVER_MODULE} (pid {proc.pid}) for package v{version}; log: {self._log_file}")
        deadline = time.monotonic() + self.startup_timeout_seconds
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                self._token_file.unlink(missing_ok=True)
                self._invoke_token_file.unlink(missing_ok=True)
                raise DeploymentFailed(f"endpoint server for package v{version} exited with code {code} before "
                                       f"becoming healthy. Server log:\n{self._log_tail(offset)}")
            state = self._read_state()
            if state is not None and int(state["pid"]) == proc.pid and self._ping(state["url"], 2.0) is not None:
                write_text_atomic(self._port_file, str(state["port"]), mode=PRIVATE_FILE_MODE)
                log(f"endpoint {self.endpoint_name} healthy at {state['url']} serving v{version}")
                return state
            time.sleep(0.2)
        self._kill(proc.pid, grace=5.0)
        self._token_file.unlink(missing_ok=True)
        self._invoke_token_file.unlink(missing_ok=True)
        self._state_file.unlink(missing_ok=True)
        raise DeploymentFailed(f"endpoint server for package v{version} was not healthy within "
                               f"{self.startup_timeout_seconds:.0f}s (raise startup_timeout_seconds if the model "
                               f"is slow to load). Server log:\n{self._log_tail(offset)}")

    @staticmethod
    def _kill(pid: int, grace: float) -> None:
        """SIGTERM (graceful: flushes captures), then SIGKILL after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _pid_alive(pid):
                    return
                time.sleep(0.05)

    def _admin_post(self, state: dict[str, Any], route: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST ``payload`` to the running server's ``/admin/<route>`` (swaps wait for every worker to load)."""
        try:
            token = self._token_file.read_text().strip()
        except OSError as exc:
            raise DeploymentFailed(f"cannot read the admin token {self._token_file} of the running server: {exc}; "
                                   f"stop the endpoint and deploy again.") from exc
        try:
            return _http_json(f"{state['url']}/admin/{route}", method="POST", payload=payload,
                              headers={ADMIN_TOKEN_HEADER: token}, timeout=self.startup_timeout_seconds + 30)
        except (OSError, urllib.error.URLError) as exc:
            raise DeploymentFailed(f"{route} request to {state['url']} failed: {exc}") from exc

    def _swap(self, state: dict[str, Any], model_tar: Path, version: int, log: Callable[[str], None]) -> None:
        log(f"asking the running server (pid {state['pid']}, v{state.get('package_version')}) to swap in "
            f"v{version}")
        status, body = self._admin_post(state, "swap", {"model_tar": str(model_tar), "package_version": version})
        if status == 409:
            raise DeploymentFailed(f"package v{version} rejected by the health check; v{body.get('serving_version')} "
                                   f"keeps serving. Reason: {body.get('error')}")
        if status != 200:
            raise DeploymentFailed(f"swap to package v{version} failed with HTTP {status}: {body.get('error', body)}")
        log(f"endpoint {self.endpoint_name} now serves v{version} at {state['url']}")

    def _running_or_fail(self) -> dict[str, Any]:
        running = self._running()
        if running is None:
            raise DeploymentFailed(f"endpoint {self.endpoint_name} is not running: deploy a champion first "
                                   "(`dermaops deploy` or the deploy_job)")
        return running[0]

    def set_traffic(self, challenger: ModelPackage | None, store: ObjectStore, *, weight: float = 0.0,
                    shadow: bool = False, on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        log = on_log or (lambda _msg: None)
        private_dir(self._dir)
        with open_private_append(self._dir / "deploy.lock") as lockfh:
            fcntl.flock(lockfh, fcntl.LOCK_EX)  # one rollout at a time, across processes
            state = self._running_or_fail()
            payload: dict[str, Any] = {"challenger": None}
            if challenger is not None:
                model_tar = self._fetch_package(challenger, store, log)
                payload = {"challenger": {"model_tar": str(model_tar), "package_version": challenger.version},
                           "weight": float(weight), "shadow": bool(shadow)}
            code, body = self._admin_post(state, "traffic", payload)
            if code != 200:
                raise DeploymentFailed(f"traffic change refused (HTTP {code}); nothing changed: "
                                       f"{body.get('error', body)}")
        served = (body.get("status") or {}).get("challenger")
        log(f"endpoint {self.endpoint_name}: challenger {served if served else 'removed'}")
        return body.get("status") or {}

    def promote(self, store: ObjectStore, on_log: Callable[[str], None] | None = None) -> EndpointHandle:
        log = on_log or (lambda _msg: None)
        private_dir(self._dir)
        with open_private_append(self._dir / "deploy.lock") as lockfh:
            fcntl.flock(lockfh, fcntl.LOCK_EX)  # one rollout at a time, across processes
            state = self._running_or_fail()
            code, body = self._admin_post(state, "promote", {})
            if code != 200:
                raise DeploymentFailed(f"promotion refused (HTTP {code}): {body.get('error', body)}")
        version = int(body["package_version"])
        log(f"endpoint {self.endpoint_name}: challenger v{version} promoted; it is now the only variant")
        status = body.get("status") or {}
        return EndpointHandle(name=self.endpoint_name, url=state["url"], package_version=version,
                              package_arn=None, model_uri=str(status.get("model_tar") or ""),
                              capture_uri=self.capture_uri)

    # -- the interface ------------------------------------------------------------------
    def deploy(self, package: ModelPackage, store: ObjectStore,
               on_log: Callable[[str], None] | None = None) -> EndpointHandle:
        log = on_log or (lambda _msg: None)
        private_dir(self._dir)
        with open_private_append(self._dir / "deploy.lock") as lockfh:
            fcntl.flock(lockfh, fcntl.LOCK_EX)  # one rollout at a time, across processes
            model_tar = self._fetch_package(package, store, log)
            running = self._running()
            previous = None
            if running is not None and not self._serves_current_access(running[0]):
                self._check_access_config()  # before stopping a server that works
                log(f"the endpoint's host or invocation token setting changed; restarting server pid "
                    f"{running[0]['pid']} with the new access settings")
                previous = running[1].get("package_version")
                if _is_our_server(int(running[0]["pid"])):
                    self._kill(int(running[0]["pid"]), grace=15.0)
                running = None
            if running is None:
                stale = self._read_state()
                if stale is not None and _pid_alive(int(stale["pid"])) and _is_our_server(int(stale["pid"])):
                    log(f"server pid {stale['pid']} does not answer /ping; restarting it")
                    self._kill(int(stale["pid"]), grace=5.0)
                state = self._start_server(model_tar, package.version, log)
            else:
                state, ping = running
                previous = ping.get("package_version")
                self._swap(state, model_tar, package.version, log)
            challenger = ((self.status() or {}).get("challenger") or {}).get("package_version")
            self._prune_packages({package.version, *(int(v) for v in (previous, challenger) if v is not None)})
        return EndpointHandle(
            name=self.endpoint_name, url=state["url"], package_version=package.version,
            package_arn=package.arn or None, model_uri=package.model_uri,
            capture_uri=self.capture_uri,
        )

    def status(self) -> dict[str, Any] | None:
        state = self._read_state()
        if state is None or not _pid_alive(int(state["pid"])):
            return None
        out: dict[str, Any] = {
            "endpoint_name": self.endpoint_name, "url": state["url"], "pid": int(state["pid"]),
            "package_version": state.get("package_version"), "healthy": False,
            "capture_uri": self.endpoint_capture_uri(), "started_at": state.get("started_at"),
            "log_file": str(self._log_file),
        }
        try:
            code, body = _http_json(f"{state['url']}/admin/status", headers=self._admin_headers(), timeout=3.0)
        except (OSError, urllib.error.URLError):
            return out
        if code == 200:
            out.update(healthy=bool(body.get("healthy")), package_version=body.get("package_version"),
                       model_loaded_at=body.get("model_loaded_at"), requests_served=body.get("requests_served"),
                       errors=body.get("errors"), swaps=body.get("swaps"), failed_swaps=body.get("failed_swaps"),
                       last_swap_error=body.get("last_swap_error"), workers=body.get("workers"),
                       challenger=body.get("challenger"))
        return out

    def stop(self) -> bool:
        state = self._read_state()
        was_running = False
        if state is not None:
            pid = int(state["pid"])
            if _pid_alive(pid) and _is_our_server(pid):
                self._kill(pid, grace=15.0)
                was_running = True
        self._state_file.unlink(missing_ok=True)
        self._token_file.unlink(missing_ok=True)
        self._invoke_token_file.unlink(missing_ok=True)
        return was_running
