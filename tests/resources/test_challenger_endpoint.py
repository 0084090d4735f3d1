"""Champion/challenger on the local endpoint: a real server (two worker processes) on 127.0.0.1,
real HTTP. Weighted traffic splits within binomial bounds, a shadow challenger never reaches the
client while the captures hold both answers, and a promotion under steady load fails nothing."""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dermaops_resources.endpoint import DeploymentFailed
from dermaops_resources.object_store import LocalObjectStore
from tests.support.endpoint_packages import (
    build_package,
    lesion_image,
    make_deployer,
    post,
    read_captures,
    register,
    wait_for,
)

VARIANT_HEADER = "X-Dermaops-Variant"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("challenger")
    store = LocalObjectStore(root=str(root / "store"))
    tars = root / "tars"
    tars.mkdir()
    return {"root": root, "store": store, "tars": tars}


@pytest.fixture(scope="module")
def served(env):
    deployer = make_deployer(env, "cc", workers=2)
    packages = {v: register(env["store"], build_package(env["tars"] / f"v{v}.tar.gz", seed=v), v) for v in (1, 2)}
    try:
        handle = deployer.deploy(packages[1], env["store"])
        yield {"deployer": deployer, "url": handle.url, "packages": packages, "store": env["store"]}
    finally:
        deployer.stop()


def _invoke(url: str, inference_id: str, shade: int = 0) -> tuple[int, str | None, str | None, dict]:
    status, headers, body = post(f"{url}/invocations", lesion_image("JPEG", shade=shade), "image/jpeg",
                                 headers={"X-Amzn-SageMaker-Inference-Id": inference_id}, timeout=30)
    return status, headers.get(VARIANT_HEADER), headers.get("X-Model-Version"), body


def _captured(deployer, prefix: str, n: int) -> dict[str, dict]:
    def ready():
        found = {r["eventMetadata"]["inferenceId"]: r for r in read_captures(deployer)
                 if r["eventMetadata"]["inferenceId"].startswith(prefix)}
        return found if len(found) >= n else None

    return wait_for(ready, timeout=20, what=f"{n} capture records {prefix}*")


def test_weighted_traffic_share_is_binomial_and_every_record_names_its_variant(served):
    deployer, url, packages = served["deployer"], served["url"], served["packages"]
    status = deployer.set_traffic(packages[2], served["store"], weight=0.3)
    assert status["challenger"]["package_version"] == 2 and status["challenger"]["weight"] == 0.3
    n = 1000
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: _invoke(url, f"w-{i:04d}", i % 50), range(n)))
    assert {r[0] for r in results} == {200}
    assert {(r[1], r[2]) for r in results} == {("AllTraffic", "1"), ("Challenger", "2")}  # variant <-> version
    share = sum(r[1] == "Challenger" for r in results)
    sd = math.sqrt(n * 0.3 * 0.7)  # binomial(1000, 0.3): mean 300, sd 14.5; 5 sd: a false failure ~ 1 in 1.7 M
    assert abs(share - 300) <= 5 * sd, share
    records = _captured(deployer, "w-", n)
    by_id = {f"w-{i:04d}": r for i, r in enumerate(results)}
    for inference_id, record in records.items():
        meta = record["eventMetadata"]
        assert meta["dermaopsVariant"] == by_id[inference_id][1]
        assert str(meta["modelPackageVersion"]) == by_id[inference_id][2]
        assert json.loads(record["captureData"]["endpointOutput"]["data"]) == by_id[inference_id][3]
    assert {w["challenger_version"] for w in deployer.status()["workers"]} == {2}


def test_shadow_answers_never_reach_the_client_and_captures_hold_both(served):
    deployer, url, packages, store = served["deployer"], served["url"], served["packages"], served["store"]
    shades = range(0, 240, 12)
    deployer.set_traffic(None, store)  # champion only: the reference answers
    alone = [_invoke(url, f"alone-{s}", s) for s in shades]
    deployer.set_traffic(packages[2], store, weight=1.0)  # what the challenger answers to the same images
    challenger = [_invoke(url, f"chal-{s}", s) for s in shades]
    assert {r[1] for r in challenger} == {"Challenger"}
    status = deployer.set_traffic(packages[2], store, shadow=True)
    assert status["challenger"]["shadow"] is True
    shadowed = [_invoke(url, f"sh-{s}", s) for s in shades]
    assert [r[3] for r in shadowed] == [r[3] for r in alone]  # byte for byte the champion's answers
    assert {(r[1], r[2]) for r in shadowed} == {("AllTraffic", "1")}
    assert [r[3] for r in challenger] != [r[3] for r in alone]  # the packages do disagree
    records = _captured(deployer, "sh-", len(shades))

    def has_shadow():
        recs = _captured(deployer, "sh-", len(shades))
        return recs if all("dermaopsShadow" in r["eventMetadata"] for r in recs.values()) else None

    records = wait_for(has_shadow, timeout=20, what="shadow answers in the capture")
    for s, mine, theirs in zip(shades, alone, challenger, strict=True):
        meta = records[f"sh-{s}"]["eventMetadata"]
        assert meta["dermaopsVariant"] == "AllTraffic" and meta["modelPackageVersion"] == 1
        assert json.loads(records[f"sh-{s}"]["captureData"]["endpointOutput"]["data"]) == mine[3]
        shadow = meta["dermaopsShadow"]
        assert (shadow["variant"], shadow["modelPackageVersion"], shadow["dermaopsStatus"]) == ("Challenger", 2, 200)
        assert json.loads(shadow["endpointOutput"]["data"]) == theirs[3]


def test_promote_under_concurrent_load_fails_no_request(served):
    deployer, url, packages, store = served["deployer"], served["url"], served["packages"], served["store"]
    deployer.set_traffic(packages[2], store, weight=0.2)
    stop = threading.Event()
    per_client: list[list[tuple]] = [[] for _ in range(4)]

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                per_client[n].append(_invoke(url, f"p-{n}-{i}", i % 40)[:3])
            except Exception as exc:  # noqa: BLE001 - a connection failure is a failed request
                per_client[n].append((-1, repr(exc), None))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(map(len, per_client)) >= 40, timeout=30, what="traffic before the promotion")
        handle = deployer.promote(store)
        seen = sum(map(len, per_client))
        wait_for(lambda: sum(map(len, per_client)) >= seen + 40, timeout=30, what="traffic after the promotion")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    results = [r for rs in per_client for r in rs]
    assert not [r for r in results if r[0] != 200], [r for r in results if r[0] != 200]
    assert handle.package_version == 2
    for rs in per_client:  # once a client got the promoted champion, never v1 again
        after = [r for r in rs[next((i for i, r in enumerate(rs) if r[1:] == ("AllTraffic", "2")), len(rs)):]]
        assert after and {r[1:] for r in after} == {("AllTraffic", "2")}, rs[-5:]
    status = deployer.status()
    assert status["package_version"] == 2 and status["challenger"] is None
    assert {(w["package_version"], w["challenger_version"]) for w in status["workers"]} == {(2, None)}
    with pytest.raises(DeploymentFailed, match="no challenger"):
        deployer.promote(store)
