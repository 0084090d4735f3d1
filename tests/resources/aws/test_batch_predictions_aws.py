"""``batch_predictions`` on the AWS backend against moto: the images under an s3:// prefix are
scored by a package from the SageMaker registry in a SageMaker processing job (played by
``tests.support.moto_executor`` from the request the runner sent), outputs land in S3, and a
rerun reads the previous output from S3 and scores only the new image."""

from __future__ import annotations

import csv
import io
import json
import uuid

import dagster as dg
import pytest

from dermaops_assets.batch import batch_predictions
from dermaops_resources.aws.endpoint import SageMakerEndpointDeployer
from dermaops_resources.aws.registry import SageMakerModelRegistry
from dermaops_resources.object_store import join_uri, sha256_file
from tests.support.batch_inputs import BROKEN, GOOD, jpeg, package_dir, write_images
from tests.support.moto_executor import execute, played_runner

from .conftest import REGION, ROLE_ARN

pytestmark = pytest.mark.aws


def _materialize(resources: dict, input_uri: str) -> dict:
    result = dg.materialize([batch_predictions], resources=resources, run_config={
        "ops": {"batch_predictions": {"config": {"input_uri": input_uri, "package_version": 1}}}})
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def test_s3_prefix_scored_by_a_processing_job_and_rerun_reads_the_previous_output(store, tmp_path, monkeypatch):
    group = f"dermaops-batch-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DERMAOPS_MODEL_PACKAGE_GROUP", group)
    tar = package_dir(tmp_path / "model") / "model.tar.gz"
    registry = SageMakerModelRegistry(region=REGION)
    package = registry.register(group, store.put_file("models", f"packages/{group}/model.tar.gz", tar),
                                sha256_file(tar), {}, "", {"data_version": "data-v7"}, status="Approved")
    assert package.version == 1
    prefix = f"batch-inputs/{group}"
    images = write_images(tmp_path / "images")
    input_uri = store.upload_dir("raw", prefix, images)
    resources = {"store": store, "registry": registry,
                 "jobs": played_runner(execute, role_arn=ROLE_ARN, region=REGION, poll_seconds=0.0),
                 "endpoint": SageMakerEndpointDeployer(role_arn=ROLE_ARN, region=REGION)}

    md = _materialize(resources, input_uri)
    assert (md["images"], md["scored"], md["reused"], md["skipped"]) == (6, 4, 0, 2)
    assert md["records"].startswith("s3://") and md["package_version"] == 1
    records = [json.loads(x) for x in store.get_bytes(md["records"]).decode().splitlines()]
    assert sorted(r["image"] for r in records) == sorted(GOOD)
    assert {(r["model_hash"], r["data_version"]) for r in records} == {(package.model_hash, "data-v7")}
    skipped_uri = join_uri(md["records"].rsplit("/", 1)[0], "skipped.csv")
    skipped = list(csv.DictReader(io.StringIO(store.get_bytes(skipped_uri).decode())))
    assert sorted(r["image"] for r in skipped) == sorted(BROKEN)

    store.put_bytes("raw", f"{prefix}/lesion_new.jpg", jpeg(42))
    again = _materialize(resources, input_uri)
    assert (again["images"], again["scored"], again["reused"], again["skipped"]) == (7, 1, 4, 2)
    sagemaker = resources["jobs"].client("sagemaker")
    jobs = sagemaker.list_processing_jobs(NameContains="dermaops-batch-")["ProcessingJobSummaries"]
    key = md["records"].split("/batch-predictions/")[1][:12]
    ran = [j for j in jobs if j["ProcessingJobName"].startswith(f"dermaops-batch-{key}")]
    assert len(ran) == 2 and {j["ProcessingJobStatus"] for j in ran} == {"Completed"}, (key, jobs)
