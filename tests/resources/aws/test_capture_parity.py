"""Monitoring reads what SageMaker writes: the same traffic, monitored on both backends, gives the same figures.

One stream of requests goes through a real local endpoint (a packaged DermaNet on 127.0.0.1):
v1 serves 20 labelled requests (half JSON with clinical context, half bare PNGs) and 5 sent
without an inference id; then v2 is deployed and serves 55 labelled + 5 id-less requests. The
local capture files are what the local backend monitors. The same requests, rewritten as
SageMaker writes them (``tests.support.aws_capture``: JSON bodies inline, images BASE64, no
model version, ``inferenceId`` only when the client sent one, SageMaker's own ``eventId``), go
to the moto S3 logs bucket under ``datacapture/<endpoint>/AllTraffic/yyyy/mm/dd/hh/``; the AWS
endpoint deployer (moto create for v1, a stubbed blue/green update for v2, as moto has no
UpdateEndpoint) keeps the deployment record that says which package answered when.
``inference_log``, ``drift_report`` and ``model_quality_report`` then run on each backend
(AWS: S3 store, CloudWatch metrics, SNS notifier on moto) and must agree figure for figure.

Requests without an inference id: on both backends their row's id is the capture's ``eventId``.
The local endpoint returns that id (``X-Inference-Id``); SageMaker never returns its eventId to
the caller, so on AWS no label can name such a request: it counts in the inference log and in
drift, never in model quality. The traffic here labels only requests sent with an id, so both
backends see the same labelled set.

The second test reads every alarm the platform creates (CloudWatch on moto after these runs,
and any ``aws_cloudwatch_metric_alarm`` or dashboard metric in ``infra/``) and fails on one whose
metric nothing publishes.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from botocore.stub import Stubber
from PIL import Image

from dermaops_assets.monitoring import (
    cost_report,
    drift_report,
    inference_log,
    model_quality_report,
)
from dermaops_resources.aws import endpoint as endpoint_mod
from dermaops_resources.aws.cloudwatch import CloudWatchMetrics, SnsNotifier
from dermaops_resources.aws.endpoint import SageMakerEndpointDeployer
from dermaops_resources.aws.s3 import S3ObjectStore
from dermaops_resources.endpoint import LocalEndpointDeployer
from dermaops_resources.metrics import (
    ALARMS,
    NAMESPACE,
    SAGEMAKER_ENDPOINT_METRICS,
    LocalMetricsStore,
)
from dermaops_resources.monitoring_handles import BaselineHandle
from dermaops_resources.notifier import LocalNotifier
from dermaops_resources.object_store import (
    LocalObjectStore,
    file_uri_to_path,
    sha256_file,
)
from dermaops_resources.registry import ModelPackage, SqliteModelRegistry
from dermaops_resources.settings import Settings
from dermaops_services.monitoring import BASELINE_INDEX, LOG_PREFIX
from ml_code.monitoring.baseline import compute_baseline
from ml_code.package import networks
from ml_code.package.loader import write_code
from ml_code.tools.traffic import REQUEST_ID_HEADER, encode_request, simulate_traffic
from tests.support.aws_capture import local_capture_files, publish_sagemaker_capture
from tests.support.dagster_io import HandleIO
from tests.support.endpoint_packages import wait_for
from tests.support.monitoring_synth import lesion_images

from .conftest import REGION, ROLE_ARN
from .test_endpoint import _endpoint, _stub_update

pytestmark = [pytest.mark.aws, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
SIZE = 16
GROUP = "parity"
VARIANT = "AllTraffic"


def _package(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model_dir = folder / f"pkg{seed}"
    model_dir.mkdir(parents=True)
    torch.save(networks.build_network("dermanet", len(CLASSES)).state_dict(), model_dir / "model.pt")
    (model_dir / "model_config.json").write_text(json.dumps({
        "arch": "dermanet", "classes": CLASSES, "image_size": SIZE, "mean": [0.6, 0.45, 0.4],
        "std": [0.2, 0.2, 0.2], "temperature": 1.0}))
    write_code(model_dir)
    tar_path = folder / f"model{seed}.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(model_dir.rglob("*")):
            tar.add(p, arcname=p.relative_to(model_dir).as_posix(), recursive=False)
    return tar_path


def _images(folder: Path, n: int, seed: int, offset: int) -> tuple[list[Path], dict[str, str], dict[str, dict]]:
    """n PNG lesions; labels (a fixed pseudo-random diagnosis each) and, for every other image, clinical context."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths, labels, context = [], {}, {}
    for i, img in enumerate(lesion_images(n, 40, seed=seed)):
        stem = f"ISIC_{offset + i:07d}"
        Image.fromarray(img).save(folder / f"{stem}.png")
        paths.append(folder / f"{stem}.png")
        labels[stem] = str(rng.choice(CLASSES))
        if i % 2 == 0:
            context[stem] = {"age": float(rng.integers(4, 17) * 5), "sex": str(rng.choice(["male", "female"])),
                             "anatom_site": str(rng.choice(["back", "lower extremity", "face"]))}
    return paths, labels, context


def _without_id(url: str, paths: list[Path]) -> None:
    """Requests a client sends without an inference id (no labels can follow them on AWS)."""
    for path in paths:
        body, ctype = encode_request(path, None)
        req = urllib.request.Request(f"{url}/invocations", data=body, method="POST", headers={"Content-Type": ctype})
        assert REQUEST_ID_HEADER not in req.headers
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200


def _put_handles(store, handles: dict) -> None:
    for key, handle in handles.items():
        cls = type(handle)
        store.put_json("models", f"handles/{key}.json", {"type": f"{cls.__module__}:{cls.__qualname__}",
                                                         "handle": handle.model_dump()})


def _monitor(resources: dict, with_cost: bool = False) -> dict[str, dict]:
    assets = [dg.AssetSpec("live_endpoint"), dg.AssetSpec("model_baseline"), inference_log, drift_report,
              model_quality_report, *([cost_report] if with_cost else [])]
    selection = ["inference_log", "drift_report", "model_quality_report", *(["cost_report"] if with_cost else [])]
    result = dg.materialize(assets, resources=resources, selection=selection, run_config={"ops": {
        "drift_report": {"config": {"max_requests": 200, "mmd_permutations": 99}}}})
    assert result.success
    mats = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {m.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in m.metadata.items()} for m in mats}


def _logged(store) -> pd.DataFrame:
    bucket_parts = [o for o in store.list(store.uri("logs", f"{LOG_PREFIX}/parts")) if o.key.endswith(".parquet")]
    return pd.concat([pd.read_parquet(io.BytesIO(store.get_bytes(o.uri))) for o in bucket_parts], ignore_index=True)


@pytest.fixture(scope="module")
def parity(moto_server, kms_key_arn, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    suffix = uuid.uuid4().hex[:8]
    endpoint_name = f"dermaops-parity-{suffix}"
    namespace = f"DermaOpsParity{suffix}"  # this module's CloudWatch metrics only
    buckets = {b: f"dermaops-parity-{b}-{suffix}" for b in ("raw", "processed", "models", "logs")}
    s3 = boto3.client("s3", region_name=REGION)
    for name in buckets.values():
        s3.create_bucket(Bucket=name)
    local_store = LocalObjectStore(root=str(tmp / "store"))
    aws_store = S3ObjectStore(buckets=buckets, region=REGION, kms_key_id=kms_key_arn)
    topic = boto3.client("sns", region_name=REGION).create_topic(Name=f"dermaops-parity-{suffix}")["TopicArn"]

    # two packages, one registry (the registry is not what differs between the backends)
    tars = {v: _package(tmp / "tars", seed=v) for v in (1, 2)}
    registry = SqliteModelRegistry(db_path=str(tmp / "registry.db"))
    packages: dict[str, dict[int, ModelPackage]] = {"local": {}, "aws": {}}
    for v, tar in tars.items():
        digest = sha256_file(tar)
        registry.register(GROUP, f"file://{tar}", digest, {"balanced_accuracy": 0.5}, "", {})
        registry.set_status(GROUP, v, "Approved")
        for backend, store in (("local", local_store), ("aws", aws_store)):
            uri = store.put_file("models", f"sha256/{digest}/model.tar.gz", tar)
            packages[backend][v] = ModelPackage(group=GROUP, version=v, status="Approved", created_at=time.time(),
                                                updated_at=time.time(), model_uri=uri, model_hash=digest,
                                                arn=f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{GROUP}/{v}")

    # the baseline of v2 (the model serving when the monitors run), in both stores
    splits = tmp / "splits"
    splits.mkdir()
    np.save(splits / "train_images.npy", lesion_images(200, SIZE, seed=1))
    np.save(splits / "val_images.npy", lesion_images(80, SIZE, seed=2))
    rng = np.random.default_rng(3)
    pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(200)], "age": rng.integers(3, 17, 200) * 5.0,
                  "sex": rng.choice(["male", "female"], 200), "localization": rng.choice(["back", "face"], 200)}
                 ).to_csv(splits / "train_index.csv", index=False)
    summary = compute_baseline(splits, tars[2], tmp / "baseline", max_embeddings=80)
    baselines = {}
    for backend, store in (("local", local_store), ("aws", aws_store)):
        uri = store.upload_dir("models", "jobs/baseline/b2/baseline", tmp / "baseline")
        baselines[backend] = BaselineHandle(baseline_uri=uri, model_uri=packages[backend][2].model_uri,
                                            model_hash=packages[backend][2].model_hash, item_count=200,
                                            n_embeddings=80, embedding_split="val", features=summary["features"])
        store.put_json("models", f"{BASELINE_INDEX}/{packages[backend][2].model_hash}.json",
                       baselines[backend].model_dump())

    local = LocalEndpointDeployer(state_dir=str(tmp / "endpoint"), capture_uri=local_store.uri("logs", "datacapture"),
                                  endpoint_name=endpoint_name, startup_timeout_seconds=90)
    aws = SageMakerEndpointDeployer(endpoint_name=endpoint_name, role_arn=ROLE_ARN, region=REGION,
                                    kms_key_id=kms_key_arn, poll_seconds=0.0,
                                    inference_image_uri="763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311")
    labels_dir = tmp / "labels"
    try:
        url = local.deploy(packages["local"][1], local_store).url
        aws.deploy(packages["aws"][1], aws_store)
        paths, labels, context = _images(tmp / "batch1", 25, seed=11, offset=0)
        sent = simulate_traffic(url, paths[:20], rate=500, limit=20, labels=labels, labels_out=labels_dir,
                                context=context, classes=CLASSES)
        assert sent["ok"] == 20
        _without_id(url, paths[20:])

        handles = {"local": local.deploy(packages["local"][2], local_store)}
        with pytest.MonkeyPatch.context() as mp, Stubber(aws.client("sagemaker")) as stub:
            mp.setattr(endpoint_mod, "_stamp", lambda: "20260101000000")
            new_cfg = f"{endpoint_name[:36]}-v2-20260101000000-cfg"
            _stub_update(stub, endpoint_name, "previous-cfg", _endpoint(endpoint_name, "InService", new_cfg), aws)
            handles["aws"] = aws.deploy(packages["aws"][2], aws_store)
        time.sleep(1.1)  # SageMaker's inferenceTime has whole seconds: keep v2's first second clear of the update
        paths, labels, context = _images(tmp / "batch2", 60, seed=12, offset=100)
        sent = simulate_traffic(url, paths[:55], rate=500, limit=55, labels=labels, labels_out=labels_dir,
                                context=context, classes=CLASSES)
        assert sent["ok"] == 55
        _without_id(url, paths[55:])
        capture_root = file_uri_to_path(local.endpoint_capture_uri())
        wait_for(lambda: sum(len(p.read_text().splitlines()) for p in local_capture_files(capture_root)) >= 85, 20,
                 "85 captured requests")
    finally:
        local.stop()

    keys = publish_sagemaker_capture(aws_store, handles["aws"].capture_uri, endpoint_name, VARIANT,
                                     local_capture_files(capture_root))
    for path in sorted(labels_dir.glob("*.csv")):
        aws_store.put_file("logs", f"labels-landing/{path.name}", path)

    results = {}
    for backend, store in (("local", local_store), ("aws", aws_store)):
        _put_handles(store, {"live_endpoint": handles[backend], "model_baseline": baselines[backend]})
        resources = {"store": store, "registry": registry, "io_manager": HandleIO(store)}
        if backend == "local":
            resources |= {"metrics": LocalMetricsStore(db_path=str(tmp / "metrics.db")),
                          "notifier": LocalNotifier(alerts_path=str(tmp / "alerts.jsonl"))}
            labels_uri = str(labels_dir)
        else:
            resources |= {"metrics": CloudWatchMetrics(region=REGION, namespace=namespace, alarm_topic_arn=topic,
                                                       endpoint_name=endpoint_name),
                          "notifier": SnsNotifier(region=REGION, topic_arn=topic),
                          "settings": Settings.from_env()}
            labels_uri = aws_store.uri("logs", "labels-landing")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DERMAOPS_MODEL_PACKAGE_GROUP", GROUP)
            mp.setenv("DERMAOPS_LABELS_URI", labels_uri)
            results[backend] = {"md": _monitor(resources, with_cost=backend == "aws"), "rows": _logged(store)}
    return {"results": results, "keys": keys, "aws_store": aws_store, "namespace": namespace,
            "metrics": CloudWatchMetrics(region=REGION, namespace=namespace, alarm_topic_arn=topic,
                                         endpoint_name=endpoint_name),
            "endpoint_name": endpoint_name, "capture_prefix": handles["aws"].capture_uri}


def test_sagemaker_capture_gives_the_figures_local_capture_gives(parity) -> None:
    local, aws = parity["results"]["local"], parity["results"]["aws"]
    store = parity["aws_store"]

    # the fixture files are SageMaker's layout and record format
    assert parity["keys"] and all(re.fullmatch(rf"datacapture/{parity['endpoint_name']}/AllTraffic/"
                                               r"\d{4}/\d{2}/\d{2}/\d{2}/\d{2}-\d{2}-\d{3}-[0-9a-f-]{36}\.jsonl", k)
                                  for k in parity["keys"])
    lines = [json.loads(line) for k in parity["keys"]
             for line in store.get_bytes(store.uri("logs", k)).decode().splitlines()]
    assert len(lines) == 85
    assert {(ln["captureData"]["endpointInput"]["observedContentType"], ln["captureData"]["endpointInput"]["encoding"])
            for ln in lines} == {("application/json", "JSON"), ("image/png", "BASE64")}
    assert all(set(ln["eventMetadata"]) <= {"eventId", "inferenceId", "inferenceTime"} and ln["eventVersion"] == "0"
               for ln in lines)
    assert sum("inferenceId" not in ln["eventMetadata"] for ln in lines) == 10

    # the same rows, attributed to the same package: v1 before the update, v2 after
    for rows in (local["rows"], aws["rows"]):
        assert rows["model_version"].value_counts().to_dict() == {2: 60, 1: 25}
        assert int((rows["inference_id"] == rows["event_id"]).sum()) == 10  # no client id: the capture's own
    features = ["brightness", "contrast", "sharpness", "entropy", "width", "height", "age", "sex", "body_region",
                "predicted_class"]
    # the same rows as a set: files of the local endpoint's workers and SageMaker's hourly files
    # need not list in the same order
    def ordered(rows: pd.DataFrame) -> pd.DataFrame:
        return rows[features].sort_values(features, kind="stable").reset_index(drop=True)

    pd.testing.assert_frame_equal(ordered(local["rows"]), ordered(aws["rows"]))

    # and the same figures
    assert local["md"]["inference_log"]["num_new_records"] == aws["md"]["inference_log"]["num_new_records"] == 85
    assert local["md"]["inference_log"]["skipped"] == aws["md"]["inference_log"]["skipped"] == {}
    # both read the image features from the endpoint's answers, and keep pointers to the capture lines
    assert local["md"]["inference_log"]["requests_decoded"] == aws["md"]["inference_log"]["requests_decoded"] == 0
    assert aws["rows"]["capture_object_uri"].str.startswith("s3://").all()
    assert local["rows"]["capture_object_uri"].str.startswith("file://").all()
    drift_keys = ("status", "n_requests", "drift_detected", "clinical_context_share")
    assert {k: aws["md"]["drift_report"][k] for k in drift_keys} == {k: local["md"]["drift_report"][k]
                                                                     for k in drift_keys}
    assert aws["md"]["drift_report"]["status"] != "insufficient_data" and aws["md"]["drift_report"]["n_requests"] == 85
    assert aws["md"]["drift_report"]["drift_score"] == pytest.approx(local["md"]["drift_report"]["drift_score"])
    quality_keys = ("status", "n_labelled", "balanced_accuracy", "accuracy_drop")
    assert {k: aws["md"]["model_quality_report"][k] for k in quality_keys} == \
        {k: local["md"]["model_quality_report"][k] for k in quality_keys}
    # v2's 55 labelled requests: v1's labelled 20 are not v2's, the 10 id-less ones have no label
    assert aws["md"]["model_quality_report"]["n_labelled"] == 55
    assert aws["md"]["model_quality_report"]["status"] in ("ok", "degraded")


# -- item 1 of issue 16: every alarm watches a metric something emits ---------------------

PUT_LITERAL = re.compile(r"""metrics\.put\(\s*f?["']([A-Za-z0-9_{}]+)["']""")


def _metric_names_in_code() -> set[str]:
    """Metric names the code publishes, as written at each ``metrics.put`` call ({...} = f-string field)."""
    names: set[str] = set()
    for folder in ("dermaops_assets", "dermaops_services", "dermaops_resources", "dermaops_cli"):
        for path in (REPO / folder).rglob("*.py"):
            names |= set(PUT_LITERAL.findall(path.read_text()))
    return names


def _terraform_alarm_metrics() -> list[tuple[str, str, str]]:
    """(where, namespace, metric) of every aws_cloudwatch_metric_alarm and every dashboard metric in infra/."""
    import hcl2

    from tests.infra.test_terraform_policy import load_infra

    infra = load_infra()
    found = [(f"aws_cloudwatch_metric_alarm.{name}", body.get("namespace"), body.get("metric_name"))
             for name, body in infra["resource"].get("aws_cloudwatch_metric_alarm", {}).items()]
    dashboards = infra["resource"].get("aws_cloudwatch_dashboard", {})
    assert dashboards, "infra/ defines no aws_cloudwatch_dashboard: has the Terraform layout changed?"
    for name, body in dashboards.items():
        widget_metrics = re.findall(r'\[\s*"([A-Za-z/]+)"\s*,\s*"([A-Za-z0-9_]+)"', str(body["dashboard_body"]))
        assert widget_metrics, f"no metrics parsed from aws_cloudwatch_dashboard.{name}"
        found += [(f"aws_cloudwatch_dashboard.{name}", ns, metric) for ns, metric in widget_metrics]
    assert hcl2  # parsed with python-hcl2
    return found


def test_every_alarm_and_dashboard_metric_is_one_something_publishes(parity) -> None:
    """On AWS an alarm on a metric nobody publishes stays OK forever (TreatMissingData=notBreaching).
    Published = what the monitoring and cost assets really put to CloudWatch on moto in the runs
    above (list_metrics), cross-checked against the ``metrics.put`` names in the code; or a metric
    SageMaker publishes for the endpoint variant (AWS/SageMaker, EndpointName + VariantName)."""
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    namespace = parity["namespace"]
    published = {m["MetricName"] for page in cloudwatch.get_paginator("list_metrics").paginate(Namespace=namespace)
                 for m in page["Metrics"]}
    assert {"DriftDetected", "AccuracyDropPoints", "EstimatedMonthlyCostUSD"} <= published
    in_code = _metric_names_in_code()
    assert published <= in_code, f"published but not found at a metrics.put call: {published - in_code}"

    parity["metrics"].ensure_alarms()  # what live_endpoint does on AWS (dermaops_assets/deployment.py)
    alarms = cloudwatch.describe_alarms(AlarmNames=[a.name for a in ALARMS])["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == sorted(a.name for a in ALARMS)
    watched = [(f"alarm {a['AlarmName']}", a["Namespace"], a["MetricName"],
                {d["Name"] for d in a.get("Dimensions", [])}) for a in alarms]
    watched += [(where, ns, metric, None) for where, ns, metric in _terraform_alarm_metrics()]
    silent = []
    for where, ns, metric, dims in watched:
        if ns == "AWS/SageMaker":
            ok = metric in SAGEMAKER_ENDPOINT_METRICS and dims in (None, {"EndpointName", "VariantName"})
        elif ns in (namespace, NAMESPACE):  # ours: this run's namespace on moto, DermaOps in Terraform
            ok = metric in published
        else:
            ok = False
        if not ok:
            silent.append(f"{where}: {ns}/{metric}")
    assert not silent, f"alarms or dashboard widgets on metrics nothing publishes on AWS: {silent}"
