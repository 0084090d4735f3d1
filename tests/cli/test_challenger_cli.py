"""Champion/challenger as a user runs it: two registered packages, v1 deployed by deploy_job,
`dermaops endpoint traffic --challenger 2 --weight 0.5`, labelled `dermaops traffic`, the
challenger_report materialized by Dagster, then `dermaops endpoint promote`: the endpoint answers
with v2 only, v2 is Approved, and live_endpoint (stored handle and newest materialization) names v2."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from dermaops_cli import main as dermaops
from dermaops_resources.handles import RegisteredPackageHandle
from dermaops_resources.io_manager import store_handle
from dermaops_resources.object_store import sha256_file
from dermaops_resources.settings import Settings
from ml_code.tools.demo_data import generate_demo_dataset
from tests.support.endpoint_packages import (
    build_package,
    lesion_image,
    post,
    read_captures,
    wait_for,
)


@pytest.fixture
def platform(dermaops_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from dermaops_assets import definitions
    from dermaops_resources.factory import build_resources

    (tmp_path / "dagster").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("DERMAOPS_LABELS_URI", str(tmp_path / "labels"))
    monkeypatch.delenv("DERMAOPS_ENDPOINT_TOKEN", raising=False)
    settings = Settings.from_env()
    resources = build_resources(settings)
    store, registry, group = resources["store"], resources["registry"], settings.model_package_group
    for version in (1, 2):  # tiny untrained packages (tests/support/endpoint_packages.py), not trained models
        tar = build_package(tmp_path / f"v{version}.tar.gz", seed=version)
        uri = store.put_file("models", f"packages/v{version}/model.tar.gz", tar)
        registry.register(group, uri, sha256_file(tar), {"balanced_accuracy": 0.5}, "", {})
    registry.set_status(group, 1, "Approved", reason="test champion")
    store_handle(store, dg.AssetKey("registered_model_package"),
                 RegisteredPackageHandle(registered=True, reason="test", group=group, version=1, status="Approved"))
    defs = dg.Definitions(assets=definitions.stage_assets, jobs=definitions.all_jobs, resources=resources)
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    try:
        yield {"defs": defs, "instance": instance, "resources": resources, "group": group, "tmp": tmp_path}
    finally:
        resources["endpoint"].stop()
        instance.dispose()


def _latest(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def test_challenger_traffic_report_and_promote(platform, capsys) -> None:
    defs, instance, res = platform["defs"], platform["instance"], platform["resources"]
    assert defs.resolve_job_def("deploy_job").execute_in_process(instance=instance).success
    url = res["endpoint"].status()["url"]

    assert dermaops(["endpoint", "traffic", "--challenger", "2", "--weight", "0.5"]) == 0
    demo = platform["tmp"] / "demo"
    generate_demo_dataset(demo, n_lesions_per_class=6, image_size=(40, 30), seed=0)
    assert dermaops(["traffic", "--endpoint", url, "--images", str(demo), "--metadata",
                     str(demo / "HAM10000_metadata.csv"), "--labels-out", str(platform["tmp"] / "labels"),
                     "--rate", "100", "--limit", "60", "--seed", "1"]) == 0
    (labels_csv,) = (platform["tmp"] / "labels").glob("*.csv")
    sent = len(labels_csv.read_text().splitlines()) - 1
    assert sent >= 40
    wait_for(lambda: len(read_captures(res["endpoint"])) >= sent, timeout=20, what=f"{sent} captures")

    report = dg.materialize(  # what monitoring_job runs for it: inference_log first, then the report
        [dg.AssetSpec("live_endpoint"), *(a for a in defs.assets if a.key.to_user_string() in
                                          {"inference_log", "challenger_report"})],
        instance=instance, resources=res, selection=["inference_log", "challenger_report"],
        run_config={"ops": {"challenger_report": {"config": {"min_labelled": 5, "n_resamples": 200}}}})
    assert report.success
    md = _latest(instance, "challenger_report")
    assert md["recommendation"] in {"promote", "keep", "not enough data"} and md["answers"] == sent
    text = md["report"]
    assert "AllTraffic" in text and "Challenger" in text, text

    capsys.readouterr()
    assert dermaops(["endpoint", "promote"]) == 0
    assert "v2 is now the only variant" in capsys.readouterr().out
    answers = {post(f"{url}/invocations", lesion_image("JPEG", shade=i), "image/jpeg")[1].get("X-Model-Version")
               for i in range(20)}
    assert answers == {"2"}
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as resp:
        assert json.loads(resp.read()).get("package_version") in (2, "2")
    assert res["registry"].get(platform["group"], 2).status == "Approved"  # the next deploy_job keeps v2
    # live_endpoint names v2: its newest materialization and the handle the monitoring assets load
    assert _latest(instance, "live_endpoint")["package_version"] == 2
    handle = json.loads(Path(res["store"].root, "models", "handles", "live_endpoint.json").read_text())["handle"]
    assert handle["package_version"] == 2 and handle["model_uri"].endswith("packages/v2/model.tar.gz")
