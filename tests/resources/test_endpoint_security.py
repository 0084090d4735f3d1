"""The local endpoint is not an open door: loopback unless a token is configured, Host checked,
invocation and admin tokens required. Real server processes on 127.0.0.1, real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dermaops_resources.endpoint import DeploymentFailed, LocalEndpointDeployer
from dermaops_resources.factory import build_local_resources
from dermaops_resources.object_store import LocalObjectStore, file_uri_to_path
from dermaops_resources.settings import REPO_ROOT, Settings
from ml_code.serving import serve
from ml_code.tools.traffic import main as traffic_main
from tests.support.endpoint_packages import (
    build_package,
    lesion_image,
    post,
    register,
    wait_for,
)

TOKEN = "test-invocation-token-0123456789abcdef"


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("endpoint-security")
    store = LocalObjectStore(root=str(root / "store"))
    tars = root / "tars"
    tars.mkdir()
    return {"root": root, "store": store, "tar": build_package(tars / "v1.tar.gz", seed=1)}


def make_deployer(env, name: str, **kwargs) -> LocalEndpointDeployer:
    return LocalEndpointDeployer(state_dir=str(env["root"] / name / "state"),
                                 capture_uri=env["store"].uri("logs", f"datacapture-{name}"),
                                 endpoint_name=f"{name}-endpoint", startup_timeout_seconds=90, **kwargs)


@pytest.fixture(scope="module")
def guarded(env):
    """One server on 127.0.0.1 with an invocation token, deployed with DERMAOPS_ENDPOINT_TOKEN in the
    environment too (to check that the server process does not inherit it)."""
    deployer = make_deployer(env, "guarded", invoke_token=TOKEN)
    package = register(env["store"], env["tar"], 1)
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMAOPS_ENDPOINT_TOKEN", TOKEN)
        try:
            handle = deployer.deploy(package, env["store"], on_log=logs.append)
            yield {"deployer": deployer, "handle": handle, "logs": logs, "package": package}
        finally:
            deployer.stop()


# ------------------------------------------------------------------------------------------
# Binding
# ------------------------------------------------------------------------------------------
def test_a_non_loopback_bind_without_a_token_exits_2_and_never_listens(env, tmp_path):
    port = free_port()
    state_file = tmp_path / "server.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ml_code.serving.serve", "--model-tar", str(env["tar"]), "--host", "0.0.0.0",
         "--port", str(port), "--capture-dir", str(tmp_path / "capture"), "--package-version", "1",
         "--state-file", str(state_file)],
        check=False, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
        timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to listen on 0.0.0.0" in proc.stderr
    assert "--invoke-token-file" in proc.stderr and "DERMAOPS_ENDPOINT_TOKEN" in proc.stderr
    assert not state_file.exists()
    with socket.socket() as sock:  # nobody listens there
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "dermaops.internal", "::"])
def test_loopback_detection(host):
    assert not serve.is_loopback(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]", "LOCALHOST"])
def test_loopback_names(host):
    assert serve.is_loopback(host)


def test_the_deployer_refuses_a_non_loopback_host_without_a_token_before_starting_anything(env):
    deployer = make_deployer(env, "open-door", host="0.0.0.0")
    with pytest.raises(DeploymentFailed, match="DERMAOPS_ENDPOINT_TOKEN") as info:
        deployer.deploy(register(env["store"], env["tar"], 1), env["store"])
    assert "0.0.0.0" in str(info.value)
    assert deployer.status() is None and not (Path(deployer.state_dir) / "server.json").exists()
    assert not (Path(deployer.state_dir) / "serve.log").exists()  # no server process was started


# ------------------------------------------------------------------------------------------
# Host header (DNS rebinding)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil"])
def test_a_request_for_another_host_is_refused(guarded, host):
    url = guarded["handle"].url
    assert get(f"{url}/ping", {"Host": host})[0] == 421
    status, _, body = post(f"{url}/invocations", lesion_image("PNG"), "image/png",
                           headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
    assert status == 421 and "Host header" in body["error"]
    assert get(f"{url}/admin/status", {"Host": host})[0] == 421


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:1234", "[::1]:80"])
def test_loopback_host_headers_are_answered(guarded, host):
    assert get(f"{guarded['handle'].url}/ping", {"Host": host})[0] == 200


def test_host_header_parsing():
    assert serve.host_header_name("Example.ORG:8080") == "example.org"
    assert serve.host_header_name("[::1]:8080") == "::1"
    assert serve.host_header_name("localhost.") == "localhost"
    assert serve.host_header_name("") is None and serve.host_header_name(None) is None


# ------------------------------------------------------------------------------------------
# Tokens
# ------------------------------------------------------------------------------------------
def test_invocations_need_the_bearer_token(guarded):
    url = f"{guarded['handle'].url}/invocations"
    image = lesion_image("PNG")
    status, headers, body = post(url, image, "image/png")
    assert status == 401 and "Authorization: Bearer" in body["error"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in json.dumps(body)
    assert post(url, image, "image/png", headers={"Authorization": "Bearer wrong-token"})[0] == 401
    assert post(url, image, "image/png", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    assert post(url, image, "image/png", headers={"Authorization": f"Bearer {TOKEN}x"})[0] == 401
    status, _, body = post(url, image, "image/png", headers={"Authorization": f"Bearer {TOKEN}",
                                                             "X-Amzn-SageMaker-Inference-Id": "authorised-1"})
    assert status == 200 and set(body["probabilities"]) and body["predicted_class"]


def test_refused_invocations_are_captured_without_their_body(guarded):
    url = f"{guarded['handle'].url}/invocations"
    status, _, _ = post(url, lesion_image("PNG"), "image/png",
                        headers={"X-Amzn-SageMaker-Inference-Id": "no-token-1"})
    assert status == 401
    root = file_uri_to_path(guarded["deployer"].endpoint_capture_uri())

    def record():
        for path in sorted(root.rglob("*.jsonl")):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec["eventMetadata"]["inferenceId"] == "no-token-1":
                    return rec
        return None

    rec = wait_for(record, timeout=10, what="the 401 capture record")
    assert rec["captureData"]["endpointInput"]["data"] == ""
    assert "Bearer" in rec["captureData"]["endpointOutput"]["data"]


def test_ping_stays_open_to_health_checks(guarded):
    status, body = get(f"{guarded['handle'].url}/ping")
    assert status == 200 and body["status"] == "healthy"


def test_admin_status_needs_the_admin_token(guarded):
    url = f"{guarded['handle'].url}/admin/status"
    status, body = get(url)
    assert status == 403 and "X-Admin-Token" in body["error"]
    assert get(url, {"X-Admin-Token": "guess"})[0] == 403
    assert get(url, {"Authorization": f"Bearer {TOKEN}"})[0] == 403  # the invocation token is not an admin token
    admin = (Path(guarded["deployer"].state_dir) / "admin.token").read_text().strip()
    status, body = get(url, {"X-Admin-Token": admin})
    assert status == 200 and body["healthy"] is True
    # the deployer's own status call sends the admin token
    assert guarded["deployer"].status()["healthy"] is True


def test_the_token_travels_in_a_0600_file_never_on_the_command_line_or_in_logs(guarded):
    deployer = guarded["deployer"]
    token_file = Path(deployer.state_dir) / "invoke.token"
    assert token_file.read_text() == TOKEN and (token_file.stat().st_mode & 0o777) == 0o600
    pid = deployer.status()["pid"]
    assert TOKEN.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert TOKEN.encode() not in Path(f"/proc/{pid}/environ").read_bytes()  # DERMAOPS_ENDPOINT_TOKEN is dropped
    assert b"--invoke-token-file" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert TOKEN not in (Path(deployer.state_dir) / "serve.log").read_text()
    assert TOKEN not in "\n".join(guarded["logs"])
    assert TOKEN not in repr(deployer)


def test_redeploy_swaps_through_the_guarded_admin_route(guarded, env):
    deployer = guarded["deployer"]
    pid = deployer.status()["pid"]
    v2 = register(env["store"], env["tar"], 2)
    handle = deployer.deploy(v2, env["store"])
    status = deployer.status()
    assert status["pid"] == pid and status["package_version"] == 2  # swapped, not restarted
    assert post(f"{handle.url}/invocations", lesion_image("PNG"), "image/png")[0] == 401


def test_traffic_sends_the_token_from_a_file(guarded, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"ISIC_{i:07d}.png").write_bytes(lesion_image("PNG", shade=i * 20))
    base = ["--endpoint", guarded["handle"].url, "--images", str(images), "--rate", "50", "--limit", "3"]
    assert traffic_main(base) == 1
    assert json.loads(capsys.readouterr().out)["statuses"] == {"401": 3}
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert traffic_main([*base, "--token-file", str(token_file)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["statuses"] == {"200": 3} and TOKEN not in out
    assert traffic_main([*base, "--token-file", str(tmp_path / "missing")]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_a_changed_token_restarts_the_server_with_it(env):
    deployer = make_deployer(env, "rotate", invoke_token="first-token-0123456789")
    try:
        handle = deployer.deploy(register(env["store"], env["tar"], 1), env["store"])
        first_pid = deployer.status()["pid"]
        rotated = deployer.model_copy(update={"invoke_token": "second-token-0123456789"})
        handle = rotated.deploy(register(env["store"], env["tar"], 2), env["store"])
        assert rotated.status()["pid"] != first_pid and rotated.status()["package_version"] == 2
        url = f"{handle.url}/invocations"
        assert post(url, lesion_image("PNG"), "image/png",
                    headers={"Authorization": "Bearer first-token-0123456789"})[0] == 401
        assert post(url, lesion_image("PNG"), "image/png",
                    headers={"Authorization": "Bearer second-token-0123456789"})[0] == 200
    finally:
        deployer.stop()


# ------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------
def test_settings_reach_the_deployer_and_hide_the_token(tmp_path):
    settings = Settings.from_env({"DERMAOPS_HOME": str(tmp_path), "DERMAOPS_ENDPOINT_HOST": "0.0.0.0",
                                  "DERMAOPS_ENDPOINT_TOKEN": TOKEN})
    assert settings.endpoint_host == "0.0.0.0" and settings.endpoint_token == TOKEN
    assert TOKEN not in repr(settings)
    endpoint = build_local_resources(settings)["endpoint"]
    assert endpoint.host == "0.0.0.0" and endpoint.invoke_token == TOKEN
    defaults = Settings.from_env({"DERMAOPS_HOME": str(tmp_path)})
    assert defaults.endpoint_host == "127.0.0.1" and defaults.endpoint_token == ""
