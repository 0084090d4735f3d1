"""The endpoint's error and latency alarms, locally: real requests to a real endpoint server, then
the monitoring asset that reads its capture, publishes the metrics and pages on a transition."""

from __future__ import annotations

import io

import dagster as dg
import pytest
from PIL import Image

from dermaops_assets.monitoring import inference_log
from dermaops_resources.handles import EndpointHandle
from dermaops_resources.metrics import LocalMetricsStore
from dermaops_resources.notifier import LocalNotifier
from tests.support.dagster_io import HandleIO as _HandleIO
from tests.support.endpoint_packages import build_package, make_deployer, post, register, wait_for

# predict_fn of the test package: a white image is a server error, a grey one takes 1.2 s.
FAILS_ON_WHITE_SLOW_ON_GREY = ("(1 / 0) if float(x.mean()) > 1.5 else "
                               "((__import__('time').sleep(1.2) or torch.softmax(logits, 0)) "
                               "if abs(float(x.mean())) < 0.05 else torch.softmax(logits, 0))")


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def world(tmp_path):
    from dermaops_resources.object_store import LocalObjectStore

    env = {"root": tmp_path, "store": LocalObjectStore(root=str(tmp_path / "store")), "tars": tmp_path / "tars"}
    env["tars"].mkdir()
    deployer = make_deployer(env, "health")
    package = register(env["store"], build_package(env["tars"] / "v1.tar.gz", seed=1,
                                                   probs=FAILS_ON_WHITE_SLOW_ON_GREY), 1)
    handle = deployer.deploy(package, env["store"])
    resources = {"store": env["store"], "io_manager": _HandleIO(env["store"]),
                 "metrics": LocalMetricsStore(db_path=str(tmp_path / "metrics.db")),
                 "notifier": LocalNotifier(alerts_path=str(tmp_path / "alerts.jsonl"))}
    env["store"].put_json("models", "handles/live_endpoint.json",
                          {"type": f"{EndpointHandle.__module__}:{EndpointHandle.__qualname__}",
                           "handle": handle.model_dump()})
    try:
        yield handle, resources, deployer
    finally:
        deployer.stop()


def _monitor(resources) -> dict:
    result = dg.materialize([dg.AssetSpec("live_endpoint"), inference_log], resources=resources,
                            selection=["inference_log"])
    assert result.success
    (mat,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def _pages(resources, alarm: str) -> list[dict]:
    return [a for a in resources["notifier"].read_alerts() if a["attributes"].get("alarm") == alarm]


def test_eleven_server_errors_in_an_hour_page_once(world):
    handle, resources, deployer = world
    for _ in range(11):
        status, _, _ = post(f"{handle.url}/invocations", _png(255), "image/png")
        assert status == 500
    status, _, _ = post(f"{handle.url}/invocations", _png(90), "image/png")
    assert status == 200
    capture = deployer.endpoint_capture_uri()
    wait_for(lambda: sum(1 for _ in resources["store"].list(capture)) >= 1, 20, "capture files")
    wait_for(lambda: _monitor(resources)["endpoint_errors_last_hour"] >= 11, 30, "11 errors captured")
    pages = _pages(resources, "dermaops-endpoint-errors")
    assert len(pages) == 1 and pages[0]["severity"] == "critical"
    assert resources["metrics"].alarm_states()["dermaops-endpoint-errors"] == "ALARM"
    assert {"EndpointErrors", "EndpointLatencyMs"} <= resources["metrics"].metric_names()
    # The breach lasts, the monitor runs again: no second page.
    assert _monitor(resources)["endpoint_errors_last_hour"] == 11
    assert len(_pages(resources, "dermaops-endpoint-errors")) == 1


def test_ten_errors_do_not_page_and_a_slow_endpoint_raises_the_latency_warning(world):
    handle, resources, deployer = world
    for _ in range(10):
        assert post(f"{handle.url}/invocations", _png(255), "image/png")[0] == 500
    for _ in range(3):  # mid-grey: 1.2 s each, so the 5-minute p95 is over the 1000 ms threshold
        assert post(f"{handle.url}/invocations", _png(128), "image/png")[0] == 200
    wait_for(lambda: _monitor(resources)["endpoint_errors_last_hour"] >= 10, 30, "captured traffic")
    md = _monitor(resources)
    assert md["endpoint_errors_last_hour"] == 10 and md["latency_p95_ms_worst_5min"] > 1000
    assert not _pages(resources, "dermaops-endpoint-errors")
    (warning,) = _pages(resources, "dermaops-latency-p95")
    assert warning["severity"] == "warning"
