"""The local endpoint end to end: a real model.tar.gz, a real detached server, real HTTP.

Every package is built here from a torch state_dict, a model_config.json and a
``code/inference.py`` that follows the SageMaker handler contract, so these tests do
not depend on the training job. Servers are always stopped in fixture teardown.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from PIL import Image

from dermaops_resources.endpoint import DeploymentFailed, _pid_alive
from dermaops_resources.object_store import join_uri, LocalObjectStore, file_uri_to_path
from dermaops_resources.settings import REPO_ROOT

from tests.support.endpoint_packages import (  # noqa: F401 - re-exported for the endpoint test modules
    CLASSES, HANDLER, IMAGE_SIZE, build_package, build_real_package, inprocess_worker, lesion_image, make_deployer,
    ping, post, read_captures, register, wait_for)


# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("endpoint")
    store = LocalObjectStore(root=str(root / "store"))
    tars = root / "tars"
    tars.mkdir()
    return {"root": root, "store": store, "tars": tars}


@pytest.fixture(scope="module")
def live(env):
    """One server deployed with package v1, shared by the tests that only talk to it."""
    deployer = make_deployer(env, "live")
    v1 = register(env["store"], build_package(env["tars"] / "v1.tar.gz", seed=1), 1)
    logs: list[str] = []
    try:
        handle = deployer.deploy(v1, env["store"], on_log=logs.append)
        yield {"deployer": deployer, "handle": handle, "logs": logs, "v1": v1}
    finally:
        deployer.stop()


def test_deploy_serves_jpeg_and_png(live):
    handle = live["handle"]
    assert handle.package_version == 1 and handle.url.startswith("http://127.0.0.1:")
    # Like DataCaptureConfig.DestinationS3Uri: the base; files land under <endpoint>/<variant>/.
    assert handle.capture_uri == live["deployer"].capture_uri
    assert live["deployer"].endpoint_capture_uri() == join_uri(handle.capture_uri, handle.name, handle.variant)
    assert handle.model_uri == live["v1"].model_uri and handle.package_arn == "local:dermaops-test/1"
    assert ping(handle.url) == 200
    for fmt, ctype in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("JPEG", "application/x-image")):
        status, headers, body = post(f"{handle.url}/invocations", lesion_image(fmt), ctype)
        assert status == 200, body
        assert headers["X-Model-Version"] == "1"
        assert len(headers["X-Inference-Id"]) >= 8
        assert set(body["probabilities"]) == set(CLASSES)
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
        assert body["predicted_class"] == max(body["probabilities"], key=body["probabilities"].get)
    # the logs the deployer reports say what happened, with no image bytes
    assert any("healthy" in line for line in live["logs"])
    assert "model.tar.gz" in (Path(live["deployer"].state_dir) / "packages" / "v1").iterdir().__next__().name


def test_client_errors_are_json_4xx_not_500(live):
    url = live["handle"].url
    status, _, body = post(f"{url}/invocations", b"hello", "text/plain")
    assert status == 415 and "image/jpeg" in body["error"]
    status, headers, body = post(f"{url}/invocations", b"\xff\xd8 definitely not a jpeg", "image/jpeg")
    assert status == 400 and "cannot decode" in body["error"]
    assert headers["X-Model-Version"] == "1"
    status, _, body = post(f"{url}/invocations", b"", "image/png")
    assert status == 400 and "empty" in body["error"]
    status, _, body = post(f"{url}/nowhere", b"x", "image/png")
    assert status == 404
    status, _, body = post(f"{url}/invocations", lesion_image("PNG"), "image/png", headers={"Accept": "text/html"})
    assert status == 406 and "application/json" in body["error"]
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert post(f"{url}/invocations", lesion_image("PNG"), "image/png", headers={"Accept": browser})[0] == 200

    # the server still answers after the bad requests
    assert post(f"{url}/invocations", lesion_image("PNG"), "image/png")[0] == 200


def test_admin_swap_needs_the_token(live):
    url = live["handle"].url
    payload = json.dumps({"model_tar": "/nonexistent.tar.gz", "package_version": 99}).encode()
    status, _, body = post(f"{url}/admin/swap", payload, "application/json")
    assert status == 403 and "X-Admin-Token" in body["error"]
    status, _, _ = post(f"{url}/admin/swap", payload, "application/json", headers={"X-Admin-Token": "guess"})
    assert status == 403
    token_file = Path(live["deployer"].state_dir) / "admin.token"
    assert (token_file.stat().st_mode & 0o777) == 0o600


def test_capture_files_have_sagemaker_structure(live):
    url = live["handle"].url
    image = lesion_image("JPEG", shade=77)
    status, headers, response = post(f"{url}/invocations", image, "image/jpeg",
                                     headers={"X-Amzn-SageMaker-Inference-Id": "capture-check-1"})
    assert status == 200 and headers["X-Inference-Id"] == "capture-check-1"
    bad_status, bad_headers, _ = post(f"{url}/invocations", b"plain words", "text/plain")
    assert bad_status == 415

    def find():
        by_id = {r["eventMetadata"]["inferenceId"]: r for r in read_captures(live["deployer"])}
        return by_id if {"capture-check-1", bad_headers["X-Inference-Id"]} <= set(by_id) else None

    by_id = wait_for(find, timeout=10, what="the capture files of two requests")
    record = by_id["capture-check-1"]
    assert record["eventVersion"] == "0"
    inp, out = record["captureData"]["endpointInput"], record["captureData"]["endpointOutput"]
    assert inp["mode"] == "INPUT" and inp["encoding"] == "BASE64" and inp["observedContentType"] == "image/jpeg"
    assert base64.b64decode(inp["data"]) == image
    Image.open(io.BytesIO(base64.b64decode(inp["data"]))).verify()
    assert out == {"observedContentType": "application/json", "mode": "OUTPUT", "encoding": "JSON",
                   "data": out["data"]}
    assert json.loads(out["data"]) == response
    meta = record["eventMetadata"]
    assert meta["modelPackageVersion"] == 1 and len(meta["eventId"]) == 36
    assert meta["inferenceTime"].endswith("Z") and meta["inferenceTime"][:4].isdigit()
    rejected = by_id[bad_headers["X-Inference-Id"]]  # recorded, but without what the client sent
    assert rejected["captureData"]["endpointInput"]["data"] == ""
    assert "error" in json.loads(rejected["captureData"]["endpointOutput"]["data"])
    # the server log names requests but never carries their bytes
    log_text = (Path(live["deployer"].state_dir) / "serve.log").read_text()
    assert inp["data"][:40] not in log_text and "plain words" not in log_text
    # layout: <endpoint>/AllTraffic/yyyy/mm/dd/hh/<yyyymmddThhmmssffffff>-<uuid8>.jsonl, no temp files left
    root = file_uri_to_path(live["deployer"].endpoint_capture_uri())
    files = list(root.rglob("*"))
    jsonl = [p for p in files if p.is_file()]
    assert jsonl and all(p.suffix == ".jsonl" and not p.name.startswith(".") for p in jsonl)
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in jsonl)  # patient images: owner only
    for path in jsonl:
        parts = path.relative_to(root).parts
        assert len(parts) == 5 and [len(p) for p in parts[:4]] == [4, 2, 2, 2]
        stamp, suffix = path.stem.split("-")
        assert len(stamp) == 21 and stamp[8] == "T" and stamp.startswith("".join(parts[:3])) and len(suffix) == 8


def test_status_reports_the_live_server(live):
    status = live["deployer"].status()
    assert status is not None
    json.dumps(status)  # JSON-able
    assert status["healthy"] is True and status["package_version"] == live["handle"].package_version
    assert status["url"] == live["handle"].url and status["endpoint_name"] == "live-endpoint"
    assert status["capture_uri"] == live["deployer"].endpoint_capture_uri()
    assert os.path.exists(f"/proc/{status['pid']}") or status["pid"] > 0
    assert status["requests_served"] >= 1 and status["errors"]["client"] >= 1


def test_redeploy_under_load_fails_no_request(live, env):
    deployer, url = live["deployer"], live["handle"].url
    v2 = register(env["store"], build_package(env["tars"] / "v2.tar.gz", seed=2), 2)
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()
    image = lesion_image("JPEG")

    def traffic():
        while not stop.is_set():
            try:
                status, headers, _ = post(f"{url}/invocations", image, "image/jpeg")
                results.append((status, headers.get("X-Model-Version")))
            except Exception as exc:  # noqa: BLE001 - a connection failure is a failed request
                results.append((-1, repr(exc)))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        wait_for(lambda: len(results) >= 5, what="traffic before the swap")
        handle = deployer.deploy(v2, env["store"])
        seen = len(results)
        wait_for(lambda: len(results) >= seen + 5, what="traffic after the swap")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert handle.package_version == 2 and handle.url == url  # same server, same port
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed
    versions = [v for _, v in results]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions), "once v2 answered, v1 must never answer again"
    assert deployer.status()["package_version"] == 2
    assert json.loads((Path(deployer.state_dir) / "server.json").read_text())["package_version"] == 2


def test_redeploy_with_the_projects_own_handler(live, env):
    """The real code/inference.py (resnet18) loads, passes the health check and serves."""
    real = register(env["store"], build_real_package(env["tars"] / "real.tar.gz"), 4)
    handle = live["deployer"].deploy(real, env["store"])
    assert handle.package_version == 4
    for fmt, ctype in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
        status, headers, body = post(f"{handle.url}/invocations", lesion_image(fmt, size=(200, 150)), ctype)
        assert status == 200 and headers["X-Model-Version"] == "4", body
        assert body["model_arch"] == "resnet18" and set(body["probabilities"]) == set(CLASSES)
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    status, _, body = post(f"{handle.url}/invocations", b"GIF89a not really", "image/png")
    assert status == 400 and "decode" in body["error"]


@pytest.mark.parametrize("kind,kwargs,reason", [
    ("model_fn raises", {"model_fn_hook": "raise RuntimeError('weights file is corrupted')"},
     "weights file is corrupted"),
    ("weights do not fit", {"weight_classes": 5}, "size mismatch"),
    ("not probabilities", {"probs": "logits"}, "probabilities"),
])
def test_broken_package_is_not_swapped_in(live, env, kind, kwargs, reason):
    deployer = live["deployer"]
    before = deployer.status()["package_version"]
    version = 10 + len(kind)
    bad = register(env["store"], build_package(env["tars"] / f"bad-{version}.tar.gz", **kwargs), version)
    with pytest.raises(DeploymentFailed, match=reason):
        deployer.deploy(bad, env["store"])
    status = deployer.status()
    assert status["healthy"] and status["package_version"] == before
    assert reason in status["last_swap_error"]
    code, headers, body = post(f"{live['handle'].url}/invocations", lesion_image("PNG"), "image/png")
    assert code == 200 and headers["X-Model-Version"] == str(before) and "probabilities" in body


def test_broken_first_package_leaves_nothing_running(env):
    deployer = make_deployer(env, "broken-start")
    bad = register(env["store"], build_package(env["tars"] / "bad-start.tar.gz",
                                               model_fn_hook="raise RuntimeError('no weights here')"), 7)
    try:
        with pytest.raises(DeploymentFailed, match="no weights here") as info:
            deployer.deploy(bad, env["store"])
        assert "exited with code" in str(info.value)
        assert deployer.status() is None
        assert not (Path(deployer.state_dir) / "server.json").exists()
        assert not (Path(deployer.state_dir) / "admin.token").exists()
    finally:
        deployer.stop()


def test_server_outlives_the_deploying_process_and_stops_cleanly(env):
    deployer = make_deployer(env, "detached")
    tar = build_package(env["tars"] / "detached.tar.gz", seed=3)
    package = register(env["store"], tar, 3)
    script = textwrap.dedent("""
        import json, sys
        from dermaops_resources.endpoint import LocalEndpointDeployer
        from dermaops_resources.object_store import LocalObjectStore
        from dermaops_resources.registry import ModelPackage
        deployer = LocalEndpointDeployer.model_validate(json.loads(sys.argv[1]))
        store = LocalObjectStore(root=sys.argv[2])
        handle = deployer.deploy(ModelPackage.model_validate_json(sys.argv[3]), store)
        print(handle.model_dump_json())
    """)
    config = {k: getattr(deployer, k) for k in ("state_dir", "capture_uri", "endpoint_name", "startup_timeout_seconds")}
    try:
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(config), env["store"].root,
                               package.model_dump_json()], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        handle = json.loads(proc.stdout.strip().splitlines()[-1])
        # the deploying process is gone; the server is still there, in its own session
        assert ping(handle["url"]) == 200
        status = deployer.status()
        assert status["healthy"] and status["package_version"] == 3
        pid = status["pid"]
        assert os.getsid(pid) == pid != os.getsid(0)
        # requests answered just before SIGTERM are flushed to capture at shutdown
        ids = [post(f"{handle['url']}/invocations", lesion_image("JPEG", shade=i), "image/jpeg")[1]["X-Inference-Id"]
               for i in range(3)]
        port = int(handle["url"].rsplit(":", 1)[1])
        assert deployer.stop() is True
        assert ping(handle["url"]) is None
        assert not _pid_alive(pid)  # gone (or a zombie awaiting its reaper, which is not ours here)
        assert deployer.status() is None and deployer.stop() is False
        assert set(ids) <= {r["eventMetadata"]["inferenceId"] for r in read_captures(deployer)}
        # a later deploy starts a fresh server on the same port (port=0 means "pick once, keep")
        handle2 = deployer.deploy(package, env["store"])
        assert int(handle2.url.rsplit(":", 1)[1]) == port and ping(handle2.url) == 200
    finally:
        deployer.stop()


#: predict_fn of a package that takes 1.5 s on a mid-grey image (a request that stays in flight)
SLOW_ON_GREY = ("(__import__('time').sleep(1.5) or torch.softmax(logits, 0)) if abs(float(x.mean())) < 0.05 "
                "else torch.softmax(logits, 0)")


def _grey_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_saturated_endpoint_answers_503_with_retry_after(env, tmp_path):
    """Requests beyond the in-flight limit wait briefly for a slot, then get 503; the slot comes back."""
    tar = build_package(env["tars"] / "slow.tar.gz", seed=5, probs=SLOW_ON_GREY)
    with inprocess_worker(tmp_path, tar, max_inflight=1, queue_wait_seconds=0.2) as (url, app):
        slow: list = []
        thread = threading.Thread(target=lambda: slow.append(post(f"{url}/invocations", _grey_png(), "image/png")))
        thread.start()
        wait_for(lambda: app.worker.slots.locked(), timeout=10, what="the slow request to take the only slot")
        status, headers, body = post(f"{url}/invocations", lesion_image("PNG"), "image/png")
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in body["error"]
        thread.join(timeout=30)
        assert slow[0][0] == 200  # the request in flight was not disturbed
        assert post(f"{url}/invocations", lesion_image("PNG"), "image/png")[0] == 200  # its slot came back
        assert app.worker.counters.get("server_errors") == 1  # the 503


def test_a_client_that_stalls_mid_body_is_dropped_without_holding_a_slot(env, tmp_path):
    import socket

    tar = build_package(env["tars"] / "stall.tar.gz", seed=6)
    with inprocess_worker(tmp_path, tar, max_inflight=1, client_timeout_seconds=0.5) as (url, app):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 1000\r\n\r\n12345")  # promises 1000 bytes, sends 5
            wait_for(lambda: app.worker.counters.get("client_errors") == 1, timeout=5,
                     what="the stalled request to time out")
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
        assert not app.worker.slots.locked()  # it never took the only slot
        assert post(f"{url}/invocations", lesion_image("PNG"), "image/png")[0] == 200
