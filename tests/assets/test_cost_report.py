"""cost_report: the monthly cost from what the platform knows, its metric, its alarm and `dermaops cost`."""

from __future__ import annotations

import dagster as dg
import pytest

from dermaops_assets.monitoring import cost_report
from dermaops_resources.cost import HOURS_PER_MONTH, INSTANCE_PRICES
from dermaops_resources.handles import EndpointHandle
from dermaops_resources.metrics import LocalMetricsStore
from dermaops_resources.notifier import LocalNotifier
from dermaops_resources.object_store import LocalObjectStore
from dermaops_resources.settings import Settings
from tests.support.dagster_io import HandleIO as _HandleIO


def _run(tmp_path, instance, instances: int, endpoint_type: str = "ml.m5.large"):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.put_bytes("raw", "images/ab/x.jpg", b"x" * 2_000_000)
    endpoint = EndpointHandle(name="ep", url="http://127.0.0.1:9", package_version=1, model_uri="file:///m",
                              capture_uri=store.uri("logs", "datacapture"), instance_count=instances)
    store.put_json("models", "handles/live_endpoint.json",
                   {"type": f"{EndpointHandle.__module__}:{EndpointHandle.__qualname__}", "handle": endpoint.model_dump()})
    resources = {"store": store, "io_manager": _HandleIO(store),
                 "settings": Settings.from_env({"DERMAOPS_HOME": str(tmp_path),
                                                "DERMAOPS_ENDPOINT_INSTANCE_TYPE": endpoint_type}),
                 "metrics": LocalMetricsStore(db_path=str(tmp_path / "metrics.db")),
                 "notifier": LocalNotifier(alerts_path=str(tmp_path / "alerts.jsonl"))}
    result = dg.materialize([dg.AssetSpec("live_endpoint"), dg.AssetSpec("inference_log"), cost_report],
                            resources=resources, selection=["cost_report"], instance=instance)
    assert result.success
    (mat,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}, resources


def test_cost_from_endpoint_hours_job_seconds_and_storage(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        for seconds in (1800.0, 5400.0):  # two training runs, 2 h on the configured GPU type in all
            instance.report_runless_asset_event(dg.AssetMaterialization("trained_model",
                                                                        metadata={"billable_seconds": seconds}))
        md, resources = _run(tmp_path, instance, instances=1)
    assert md["endpoint_usd"] == pytest.approx(HOURS_PER_MONTH * INSTANCE_PRICES["ml.m5.large"], rel=1e-3)
    assert md["training_usd"] == pytest.approx(2 * INSTANCE_PRICES["ml.g5.xlarge"], rel=1e-3)
    assert md["training_runs"] == 2 and md["training_usd_per_run"] == pytest.approx(INSTANCE_PRICES["ml.g5.xlarge"], rel=1e-3)
    assert md["storage_usd"] > 0 and md["total_usd"] < 500
    assert resources["metrics"].alarm_states()["dermaops-monthly-cost"] == "OK"
    assert "EstimatedMonthlyCostUSD" in resources["metrics"].metric_names()
    assert not resources["notifier"].read_alerts()


def test_five_gpu_instances_raise_the_cost_warning_once(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        md, resources = _run(tmp_path, instance, instances=5, endpoint_type="ml.g5.xlarge")
        assert md["total_usd"] > 500
        _run(tmp_path, instance, instances=5, endpoint_type="ml.g5.xlarge")  # still over: no second page
    (page,) = resources["notifier"].read_alerts()
    assert page["attributes"]["alarm"] == "dermaops-monthly-cost" and page["severity"] == "warning"


def test_dermaops_cost_prints_the_breakdown(tmp_path, monkeypatch, capsys):
    from dermaops_cli import main

    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    with dg.DagsterInstance.get() as instance:
        _run(tmp_path, instance, instances=1)
    assert main(["cost"]) == 0
    out = capsys.readouterr().out
    assert "endpoint: $" in out and "total: $" in out and "per 1,000 requests" in out
