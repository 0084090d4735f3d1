"""The local endpoint with two worker processes: both serve, both capture (nothing lost or
interleaved), and a hot swap under steady concurrent load fails no request and leaves every
worker answering with the new version. A real server process on 127.0.0.1, real HTTP."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dermaops_resources.object_store import LocalObjectStore, file_uri_to_path
from tests.support.endpoint_packages import (
    build_package,
    lesion_image,
    make_deployer,
    post,
    register,
    wait_for,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("endpoint-workers")
    store = LocalObjectStore(root=str(root / "store"))
    tars = root / "tars"
    tars.mkdir()
    return {"root": root, "store": store, "tars": tars}


@pytest.fixture(scope="module")
def two(env):
    deployer = make_deployer(env, "two", workers=2)
    v1 = register(env["store"], build_package(env["tars"] / "v1.tar.gz", seed=1), 1)
    try:
        handle = deployer.deploy(v1, env["store"])
        yield {"deployer": deployer, "url": handle.url}
    finally:
        deployer.stop()


def _invoke(url: str, inference_id: str) -> tuple[int, str | None]:
    status, headers, _ = post(f"{url}/invocations", lesion_image("JPEG", shade=len(inference_id)), "image/jpeg",
                              headers={"X-Amzn-SageMaker-Inference-Id": inference_id}, timeout=30)
    return status, headers.get("X-Model-Version")


def _capture_lines(deployer) -> list[str]:
    root = file_uri_to_path(deployer.endpoint_capture_uri())
    return [line for path in sorted(root.rglob("*.jsonl")) for line in path.read_text().splitlines()]


def test_two_workers_both_serve_and_both_capture(two):
    deployer, url = two["deployer"], two["url"]
    status = deployer.status()
    assert len(status["workers"]) == 2 and len({w["pid"] for w in status["workers"]}) == 2
    ids = [f"both-{i:03d}" for i in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: _invoke(url, i), ids))
    assert all(code == 200 for code, _ in results), results

    def captured():
        lines = [line for line in _capture_lines(deployer) if '"both-' in line]
        return lines if len(lines) >= len(ids) else None

    lines = wait_for(captured, timeout=15, what="the capture records of 64 requests")
    records = [json.loads(line) for line in lines]  # every line is one whole record
    assert sorted(r["eventMetadata"]["inferenceId"] for r in records) == ids  # each exactly once
    assert all(r["eventMetadata"]["dermaopsStatus"] == 200 and r["captureData"]["endpointInput"]["data"]
               for r in records)
    workers = deployer.status()["workers"]
    # each worker answered some of the requests and wrote capture records of its own
    assert all(w["requests"] > 0 and w["capture_records"] > 0 for w in workers), workers
    assert sum(w["capture_records"] for w in workers) == len(_capture_lines(deployer))
    root = file_uri_to_path(deployer.endpoint_capture_uri())
    assert not [p for p in root.rglob("*") if p.is_file() and p.name.startswith(".")]  # no temp files left


def test_hot_swap_under_concurrent_load_fails_nothing_and_switches_every_worker(two, env):
    deployer, url = two["deployer"], two["url"]
    v2 = register(env["store"], build_package(env["tars"] / "v2.tar.gz", seed=2), 2)
    stop = threading.Event()
    per_client: list[list[tuple[int, str | None]]] = [[] for _ in range(4)]

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                per_client[n].append(_invoke(url, f"load-{n}-{i}"))
            except Exception as exc:  # noqa: BLE001 - a connection failure is a failed request
                per_client[n].append((-1, repr(exc)))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(map(len, per_client)) >= 20, timeout=30, what="traffic before the swap")
        handle = deployer.deploy(v2, env["store"])
        seen = sum(map(len, per_client))
        wait_for(lambda: sum(map(len, per_client)) >= seen + 20, timeout=30, what="traffic after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert handle.package_version == 2 and handle.url == url
    results = [r for rs in per_client for r in rs]
    assert not [r for r in results if r[0] != 200], [r for r in results if r[0] != 200]
    for rs in per_client:  # a client that saw v2 never sees v1 again (every worker switched at once)
        versions = [v for _, v in rs]
        assert versions == sorted(versions) and versions[-1] == "2", versions
    assert {"1", "2"} <= {v for _, v in results}
    before = {w["pid"]: w["requests"] for w in deployer.status()["workers"]}
    with ThreadPoolExecutor(max_workers=8) as pool:
        after = list(pool.map(lambda i: _invoke(url, f"after-{i}"), range(32)))
    assert set(after) == {(200, "2")}
    status = deployer.status()
    assert status["package_version"] == 2 and status["swaps"] >= 1
    assert {w["package_version"] for w in status["workers"]} == {2} and set(before) == {
        w["pid"] for w in status["workers"]}  # same processes: swapped, not restarted
    assert all(w["requests"] > before[w["pid"]] for w in status["workers"])  # both answered, with v2
    assert json.loads((Path(deployer.state_dir) / "server.json").read_text())["package_version"] == 2
