"""The whole graph with ``DERMAOPS_BACKEND=aws``, against the moto server on 127.0.0.1.

Driven the way a user drives it: ``dagster asset materialize -m dermaops_assets`` in a
subprocess whose only link to "AWS" is the environment (``AWS_ENDPOINT_URL`` and the
``DERMAOPS_*`` settings), so the definitions, the AWS factory and every resource are the
production ones. moto accepts SageMaker jobs without running them;
``tests.support.moto_executor`` (``python -m tests.support.moto_executor --dagster ...``) runs the real ``ml_code``
entry points from the uploaded sourcedir on the job's declared S3 inputs, so the model
that gets registered and deployed was really trained and evaluated.

The raw dataset comes from an ``s3://`` prefix in a separate "source" bucket, as a
hospital drop or a HAM10000 copy would. The DermaOps buckets have *no* default
encryption, so SSE-KMS on each object proves the code asked for it on every write.

The monitoring assets run too, but only on their "no traffic yet" path: moto's endpoint
serves nothing and writes no data capture (sagemaker-runtime is canned in moto), so
``inference_log`` finds no capture files and ``drift_report``/``model_quality_report`` report
``insufficient_data``. What that still proves on AWS: the baseline processing job, S3
listing of the capture prefix and labels landing, reports written SSE-KMS to the logs
bucket, and CloudWatch metrics published. Drift and quality on real traffic are covered on
the local backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from dermaops_resources.aws.endpoint import VARIANT
from dermaops_resources.metrics import ALARMS
from ml_code.tools.demo_data import generate_demo_dataset

from .conftest import REGION, ROLE_ARN

pytestmark = [pytest.mark.aws, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
STAGES = ("raw_images", "processed_splits", "trained_model", "evaluation_report", "registered_model_package",
          "live_endpoint")
MONITORING = ("model_baseline", "inference_log", "drift_report", "model_quality_report")
TINY_RUN_CONFIG = {
    # One process for every step: the default multiprocess executor spends ~8 s per step
    # starting a Python that imports Dagster and the definitions again (2 busy cores).
    "execution": {"config": {"in_process": {}}},
    "ops": {
        "processed_splits": {"config": {"image_size": 32}},
        "trained_model": {"config": {"epochs": 2, "batch_size": 32, "arch": "resnet18", "amp": False}},
        "evaluation_report": {"config": {"bootstrap_samples": 50}},
        "registered_model_package": {"config": {"min_balanced_accuracy": 0.0, "min_melanoma_sensitivity": 0.0,
                                                   "auto_approve": True}},
    }
}


def _all_objects(s3, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def _upload_source_dataset(s3, tmp_path: Path, bucket: str, prefix: str) -> int:
    """The synthetic HAM10000-layout dataset under s3://bucket/prefix/ (outside DermaOps's buckets)."""
    local = generate_demo_dataset(tmp_path / "demo", n_lesions_per_class=6, seed=0)
    files = [p for p in sorted(local.rglob("*")) if p.is_file()]
    for path in files:
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return sum(1 for p in files if p.suffix == ".jpg")


def _dagster_run_ids(dagster_home: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run recorded in the subprocess's Dagster instance."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return [(run.run_id, run.status.value) for run in instance.get_runs()]


def test_whole_graph_on_aws_backend_against_moto(private_moto_server: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    s3 = boto3.client("s3", region_name=REGION)
    sm = boto3.client("sagemaker", region_name=REGION)
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)

    kms_key_arn = boto3.client("kms", region_name=REGION).create_key(
        Description="dermaops e2e key")["KeyMetadata"]["Arn"]
    buckets = {b: f"dermaops-e2e-{b}-{suffix}" for b in ("raw", "processed", "models", "logs")}
    source_bucket = f"dermaops-e2e-source-{suffix}"
    for name in (*buckets.values(), source_bucket):
        s3.create_bucket(Bucket=name)
    topic_arn = boto3.client("sns", region_name=REGION).create_topic(Name=f"dermaops-alerts-{suffix}")["TopicArn"]
    n_source_images = _upload_source_dataset(s3, tmp_path, source_bucket, "drops/ham10000-demo")
    assert not cloudwatch.describe_alarms(AlarmNames=[a.name for a in ALARMS])["MetricAlarms"]  # only this run
    endpoint_name = f"dermaops-e2e-{suffix}"
    group = f"dermaops-e2e-{suffix}"

    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    config = tmp_path / "run_config.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN_CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERMAOPS_", "DAGSTER_", "AWS_"))}
    env.update({
        "DERMAOPS_BACKEND": "aws",
        "AWS_ENDPOINT_URL": private_moto_server,
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "DERMAOPS_KMS_KEY_ID": kms_key_arn,
        "DERMAOPS_SAGEMAKER_ROLE_ARN": ROLE_ARN,
        **{f"DERMAOPS_{b.upper()}_BUCKET": name for b, name in buckets.items()},
        "DERMAOPS_SNS_TOPIC_ARN": topic_arn,
        "DERMAOPS_HOME": str(tmp_path / "home"),
        "DERMAOPS_RAW_URI": f"s3://{source_bucket}/drops/ham10000-demo",
        "DERMAOPS_LABELS_URI": f"s3://{buckets['logs']}/labels-landing",
        "DERMAOPS_ENDPOINT_NAME": endpoint_name,
        "DERMAOPS_MODEL_PACKAGE_GROUP": group,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_TELEMETRY_DISABLED": "1",
        "PYTHONPATH": str(REPO),  # the dagster process imports the executor from tests.support
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # 2 shared cores
    })

    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.moto_executor", "--dagster", "asset", "materialize", "-m", "dermaops_assets", "--select", ",".join(STAGES + MONITORING),
         "-c", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"materialize failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    runs = _dagster_run_ids(dagster_home)
    assert len(runs) == 1 and runs[0][1] == "SUCCESS", runs
    run_id = runs[0][0]

    # -- S3: every object DermaOps wrote is SSE-KMS with the configured key; no temp leftovers --
    written: dict[str, list[str]] = {b: _all_objects(s3, name) for b, name in buckets.items()}
    for logical in ("raw", "processed", "models"):
        assert written[logical], f"nothing written to the {logical} bucket"
    for logical, keys in written.items():
        assert not [k for k in keys if k.startswith("_tmp/")], f"unpublished temp objects left in {logical}"
        for key in keys:
            head = s3.head_object(Bucket=buckets[logical], Key=key)
            assert head.get("ServerSideEncryption") == "aws:kms", (logical, key, head.get("ServerSideEncryption"))
            assert head.get("SSEKMSKeyId") == kms_key_arn, (logical, key, head.get("SSEKMSKeyId"))
    raw_images = [k for k in written["raw"] if k.startswith("images/")]
    assert len(raw_images) == n_source_images  # every synthetic image ingested from s3://, stored once
    assert any(k.endswith("/manifest.csv") for k in written["raw"])
    for stage in STAGES + MONITORING:
        assert f"handles/{stage}.json" in written["models"], f"no handle for {stage}"
    assert [k for k in written["processed"] if k.endswith("/train_pixels.json")]
    assert [k for k in written["processed"] if "/splits/pixels/" in k and k.endswith(".npy")]

    package_summaries = sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    assert len(package_summaries) == 1, package_summaries
    package = sm.describe_model_package(ModelPackageName=package_summaries[0]["ModelPackageArn"])
    props = package["CustomerMetadataProperties"]

    # -- training job (the one the package's lineage names): managed spot, checkpoints synced --
    training = sm.describe_training_job(TrainingJobName=props["lineage:training_job"])
    assert training["TrainingJobStatus"] == "Completed"
    assert training["EnableManagedSpotTraining"] is True
    assert training["StoppingCondition"]["MaxWaitTimeInSeconds"] >= training["StoppingCondition"]["MaxRuntimeInSeconds"]
    checkpoint_uri = training["CheckpointConfig"]["S3Uri"]
    assert checkpoint_uri.startswith(f"s3://{buckets['models']}/checkpoints/")
    ckpt_prefix = checkpoint_uri.split("/", 3)[3]
    assert [k for k in written["models"] if k.startswith(ckpt_prefix + "/") and k.endswith("epoch-0002.pt")], \
        f"no epoch-2 checkpoint under {checkpoint_uri}"
    assert training["OutputDataConfig"]["KmsKeyId"] == kms_key_arn
    assert training["ResourceConfig"]["VolumeKmsKeyId"] == kms_key_arn

    # -- registry: Approved, metrics in S3, lineage to this Dagster run --
    assert package["ModelApprovalStatus"] == "Approved"
    stats_uri = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert stats_uri.startswith(f"s3://{buckets['models']}/") and stats_uri.endswith("/evaluation.json")
    evaluation = json.loads(s3.get_object(Bucket=buckets["models"], Key=stats_uri.split("/", 3)[3])["Body"].read())
    accuracy = evaluation["multiclass_classification_metrics"]["accuracy"]["value"]
    assert 0.0 <= accuracy <= 1.0
    assert props["lineage:dagster_run_id"] == run_id
    # the registry's headline metrics are the evaluation job's, for the test split it scored
    assert float(props["metric:balanced_accuracy"]) == pytest.approx(
        evaluation["dermaops"]["headline"]["balanced_accuracy"])
    confusion = evaluation["multiclass_classification_metrics"]["confusion_matrix"]
    assert sum(sum(row.values()) for row in confusion.values()) == evaluation["dermaops"]["n_test"] > 0
    model_url = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    model_hash = props["dermaops:model_hash"]
    assert model_url == f"s3://{buckets['models']}/sha256/{model_hash}/model.tar.gz"
    tar_bytes = s3.get_object(Bucket=buckets["models"], Key=f"sha256/{model_hash}/model.tar.gz")["Body"].read()
    assert hashlib.sha256(tar_bytes).hexdigest() == model_hash  # the registered bytes are what was trained

    # -- endpoint: InService, data capture to the logs bucket (KMS), auto-scaling 1..5 --
    endpoint = sm.describe_endpoint(EndpointName=endpoint_name)
    assert endpoint["EndpointStatus"] == "InService"
    endpoint_config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    capture = endpoint_config["DataCaptureConfig"]
    assert capture["EnableCapture"] is True
    assert capture["DestinationS3Uri"] == f"s3://{buckets['logs']}/datacapture"
    assert capture["KmsKeyId"] == kms_key_arn
    model = sm.describe_model(ModelName=endpoint_config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == model_url

    aas = boto3.client("application-autoscaling", region_name=REGION)
    resource_id = f"endpoint/{endpoint_name}/variant/{VARIANT}"
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])[
        "ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(1, 5)]
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)["ScalingPolicies"]
    assert [p["PolicyType"] for p in policies] == ["TargetTrackingScaling"]

    # -- CloudWatch: the five alarms exist (blue/green rollback names two of them), actions -> SNS --
    alarms = cloudwatch.describe_alarms(AlarmNames=[a.name for a in ALARMS])["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == sorted(a.name for a in ALARMS)
    assert all(a["AlarmActions"] == [topic_arn] for a in alarms)

    # -- monitoring on AWS: baseline job outputs in S3, no-traffic reports, CloudWatch metrics --
    def handle(asset: str) -> dict:
        body = s3.get_object(Bucket=buckets["models"], Key=f"handles/{asset}.json")["Body"].read()
        return json.loads(body)["handle"]

    baseline = handle("model_baseline")
    assert baseline["model_hash"] == model_hash and baseline["item_count"] > 0
    assert f"{baseline['baseline_uri'].split('/', 3)[3]}/statistics.json" in written["models"]
    # the evaluation's held-out predictions reached the baseline job as its 'evaluation' input
    expected = s3.get_object(Bucket=buckets["models"],
                             Key=f"{baseline['baseline_uri'].split('/', 3)[3]}/prediction_distribution.json")
    assert json.loads(expected["Body"].read())["scored_by"] == "evaluation"
    assert handle("inference_log")["total_records"] == 0
    drift = handle("drift_report")
    assert (drift["status"], drift["n_requests"]) == ("insufficient_data", 0)
    assert drift["report_uri"].startswith(f"s3://{buckets['logs']}/monitoring/drift_report/")
    assert handle("model_quality_report")["status"] == "insufficient_data"
    published = {(m["MetricName"], tuple((d["Name"], d["Value"]) for d in m.get("Dimensions", [])))
                 for page in cloudwatch.get_paginator("list_metrics").paginate(Namespace="DermaOps")
                 for m in page["Metrics"]}
    assert ("DriftDetected", (("EndpointName", endpoint_name),)) in published
    assert ("Evaluation_balanced_accuracy", (("ModelPackageGroup", group),)) in published
