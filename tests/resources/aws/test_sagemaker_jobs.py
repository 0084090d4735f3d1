"""SageMakerJobRunner against moto: request shape, results, failures, interruption, log streaming."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path

import boto3
import pytest

from dermaops_resources.aws.sagemaker_jobs import LAUNCHER, SageMakerJobRunner, build_sourcedir
from dermaops_resources.jobs import JobFailed, JobSpec
from dermaops_resources.settings import REPO_ROOT

from .conftest import REGION, ROLE_ARN
from tests.support.moto_executor import execute, played_runner

pytestmark = pytest.mark.aws

TOY_TRAIN = '''"""Fits y = a*x + b by gradient descent on the 'splits' channel; checkpoints every epoch."""
import json
import numpy as np
from ml_code.contract import emit_metric, run_entry_point, training_env


def main():
    env = training_env()
    if env.hyperparameters.get("fail"):
        raise ValueError("label column missing in splits/data.csv")
    data = np.loadtxt(env.channel("splits") / "data.csv", delimiter=",")
    x, y = data[:, 0], data[:, 1]
    a = b = 0.0
    history = []
    for epoch in range(int(env.hyperparameters["epochs"])):
        for _ in range(200):
            err = a * x + b - y
            a -= float(env.hyperparameters["lr"]) * 2 * (err * x).mean()
            b -= float(env.hyperparameters["lr"]) * 2 * err.mean()
        loss = float(((a * x + b - y) ** 2).mean())
        history.append({"epoch": epoch, "train_loss": loss})
        (env.checkpoint_dir / f"checkpoint-epoch-{epoch:04d}.json").write_text(json.dumps({"a": a, "b": b}))
        emit_metric(epoch=epoch, train_loss=loss)
    print("training done")
    (env.model_dir / "model.json").write_text(json.dumps({"a": a, "b": b}))
    (env.output_data_dir / "history.json").write_text(json.dumps(history))


if __name__ == "__main__":
    run_entry_point(main)
'''

TOY_PROCESS = '''"""Scales the numbers in input 'table' by SM_HPS factor into output 'scaled'."""
import json, os
from ml_code.contract import emit_metric, parse_hyperparameters, processing_input, processing_output, run_entry_point


def main():
    factor = float(parse_hyperparameters([])["factor"])
    rows = (processing_input("table") / "data.csv").read_text().split()
    out = [str(float(r) * factor) for r in rows]
    (processing_output("scaled") / "scaled.csv").write_text("\\n".join(out))
    staged = sorted(p.relative_to(processing_input("table")).as_posix()
                    for p in processing_input("table").rglob("*") if p.is_file())
    (processing_output("scaled") / "staged.json").write_text(json.dumps(staged))
    emit_metric(rows=len(out))


if __name__ == "__main__":
    run_entry_point(main)
'''


@pytest.fixture()
def toy_code(tmp_path) -> Path:
    pkg = tmp_path / "src" / "ml_code"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(REPO_ROOT / "ml_code" / "contract.py", pkg / "contract.py")
    (pkg / "toy_train.py").write_text(TOY_TRAIN)
    (pkg / "toy_process.py").write_text(TOY_PROCESS)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    return pkg


def _runner(player=None, **kw) -> SageMakerJobRunner:
    """The production runner, or (with ``player``) one whose job creation also plays the job."""
    base = dict(role_arn=ROLE_ARN, region=REGION, poll_seconds=0.0, volume_kms_key_id="vol-key",
                output_kms_key_id="out-key")
    base.update(kw)
    return played_runner(player, **base) if player else SageMakerJobRunner(**base)


def _capture(runner: SageMakerJobRunner, operation: str) -> list[dict]:
    sent: list[dict] = []
    runner.client("sagemaker").meta.events.register(
        f"provide-client-params.sagemaker.{operation}", lambda params, **_: sent.append(json.loads(json.dumps(params))))
    return sent


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_training_job_request_shape(store):
    runner = _runner()
    sent = _capture(runner, "CreateTrainingJob")
    store.put_bytes("processed", "jobs/preprocess/p1/splits/data.csv", b"1,2\n")
    name = _name("train")
    spec = JobSpec(job_type="training", name=name, entry_point="ml_code.training.train",
                   inputs={"splits": store.uri("processed", "jobs/preprocess/p1/splits")},
                   output_uri=store.uri("models", f"jobs/train/{name}"),
                   hyperparameters={"arch": "resnet18", "epochs": 3, "amp": True, "lr": 0.001},
                   checkpoint_uri=store.uri("models", f"checkpoints/{name}"))
    logs: list[str] = []
    result = runner.run(spec, store, on_log=logs.append)
    (req,) = sent
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"]["MaxWaitTimeInSeconds"] >= req["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert req["CheckpointConfig"] == {"S3Uri": spec.checkpoint_uri, "LocalPath": "/opt/ml/checkpoints"}
    assert req["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50,
                                     "VolumeKmsKeyId": "vol-key"}
    assert req["OutputDataConfig"] == {"S3OutputPath": spec.output_uri, "KmsKeyId": "out-key"}
    assert req["AlgorithmSpecification"]["TrainingImage"] == \
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-gpu-py311"
    hps = req["HyperParameters"]
    assert hps["sagemaker_program"] == LAUNCHER
    assert hps["arch"] == "resnet18" and hps["epochs"] == "3" and hps["amp"] == "true" and hps["lr"] == "0.001"
    assert req["Environment"]["DERMAOPS_ENTRY_POINT"] == "ml_code.training.train"
    channel = req["InputDataConfig"][0]
    assert channel["ChannelName"] == "splits"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"].endswith("/splits/")  # no sibling-prefix leaks
    # the code tarball is in S3: launcher + the real ml_code package, no bytecode
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(hps["sagemaker_submit_directory"]))) as tar:
        names = tar.getnames()
    assert LAUNCHER in names and "ml_code/contract.py" in names and "ml_code/training/train.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(hps["sagemaker_submit_directory"]))) as tar:
        assert tar.extractfile("requirements.txt").read().decode().split() == ["pandera>=0.20"]
    # moto kept the job as sent; the result points at SageMaker's artifact layout
    desc = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert desc["EnableManagedSpotTraining"] is True
    assert result.model_uri == f"{spec.output_uri}/{name}/output/model.tar.gz"
    assert result.output_uris["output"] == f"{spec.output_uri}/output"
    assert result.instance_type == "ml.g5.xlarge" and result.status == "Completed"
    assert any("managed spot" in line for line in logs)


def test_code_upload_is_content_addressed(store, toy_code):
    runner = _runner(code_dir=str(toy_code))
    assert build_sourcedir(toy_code) == build_sourcedir(toy_code), "tarball must be byte-for-byte reproducible"
    first = runner.upload_code(store)
    assert runner.upload_code(store) == first, "same code -> same key, uploaded once"
    (toy_code / "toy_train.py").write_text(TOY_TRAIN + "\n# changed\n")
    assert runner.upload_code(store) != first
    with pytest.raises(FileNotFoundError, match="not the ml_code package"):
        build_sourcedir(toy_code.parent)


def test_processing_job_request_shape(store):
    runner = _runner()
    sent = _capture(runner, "CreateProcessingJob")
    name = _name("prep")
    spec = JobSpec(job_type="processing", name=name, entry_point="ml_code.data.preprocess",
                   inputs={"manifest": store.uri("raw", "manifests/abc"), "images": store.uri("raw", "images")},
                   output_uri=store.uri("processed", f"jobs/preprocess/{name}"), outputs=["splits"],
                   hyperparameters={"image_size": 64, "seed": 42}, instance_count=2, sharded_inputs=["images"])
    result = runner.run(spec, store)
    (req,) = sent
    inputs = {i["InputName"]: i["S3Input"] for i in req["ProcessingInputs"]}
    assert inputs["images"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert inputs["manifest"]["S3DataDistributionType"] == "FullyReplicated"
    assert inputs["images"]["LocalPath"] == "/opt/ml/processing/input/images"
    assert inputs["code"]["S3Uri"].endswith("/") and store.exists(inputs["code"]["S3Uri"] + "sourcedir.tar.gz")
    entry = req["AppSpecification"]["ContainerEntrypoint"]
    assert "pip install --quiet -r /opt/ml/code/requirements.txt" in entry[2]
    assert entry[:2] == ["/bin/bash", "-c"] and "PYTHONPATH" in entry[2] and 'python -m "$DERMAOPS_ENTRY_POINT"' in entry[2]
    assert req["AppSpecification"]["ImageUri"].endswith("pytorch-training:2.5-cpu-py311")
    assert json.loads(req["Environment"]["SM_HPS"]) == {"image_size": 64, "seed": 42}
    assert req["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    assert req["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert req["ProcessingOutputConfig"]["KmsKeyId"] == "out-key"
    assert result.output_uris == {"splits": f"{spec.output_uri}/splits"}


def test_training_runs_through_the_played_container(store, toy_code):
    """The whole path: code tarball -> container-like run -> artifacts in S3 -> logs -> result."""
    runner = _runner(code_dir=str(toy_code), player=execute)
    rows = "\n".join(f"{x},{3 * x + 1}" for x in [0.0, 0.1, 0.2, 0.5, 0.7, 1.0])
    store.put_bytes("processed", "toy/splits/data.csv", rows.encode())
    name = _name("toytrain")
    spec = JobSpec(job_type="training", name=name, entry_point="ml_code.toy_train",
                   inputs={"splits": store.uri("processed", "toy/splits")},
                   output_uri=store.uri("models", f"jobs/train/{name}"),
                   hyperparameters={"epochs": 3, "lr": 0.5}, checkpoint_uri=store.uri("models", f"ckpt/{name}"))
    logs, metrics = [], []
    result = runner.run(spec, store, on_log=logs.append, on_metric=metrics.append)
    assert [m["epoch"] for m in metrics] == [0, 1, 2] and metrics == result.metrics
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert "training done" in logs
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(result.model_uri))) as tar:
        model = json.load(tar.extractfile("model.json"))
    assert model["a"] == pytest.approx(3, abs=0.3) and model["b"] == pytest.approx(1, abs=0.3)
    # output.tar.gz unpacked to <output_uri>/output/, like LocalJobRunner
    history = store.get_json(result.output_uris["output"] + "/history.json")
    assert len(history) == 3
    assert [o.key.rsplit("/", 1)[1] for o in store.list(spec.checkpoint_uri)] == \
        [f"checkpoint-epoch-{e:04d}.json" for e in range(3)]
    # spot billing: cost follows BillableTimeInSeconds, not the wall clock
    desc = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert result.billable_seconds == desc["BillableTimeInSeconds"]
    assert result.estimated_cost_usd == pytest.approx(desc["BillableTimeInSeconds"] * 1.408 / 3600, rel=1e-6)


def test_processing_runs_through_the_played_container(store, toy_code):
    runner = _runner(code_dir=str(toy_code), player=execute)
    store.put_bytes("raw", "toy/table/data.csv", b"1\n2\n3\n")
    name = _name("toyproc")
    spec = JobSpec(job_type="processing", name=name, entry_point="ml_code.toy_process",
                   inputs={"table": store.uri("raw", "toy/table")}, outputs=["scaled"],
                   output_uri=store.uri("processed", f"jobs/scale/{name}"), hyperparameters={"factor": 2.5})
    metrics = []
    result = runner.run(spec, store, on_metric=metrics.append)
    assert store.get_bytes(result.output_uris["scaled"] + "/scaled.csv") == b"2.5\n5.0\n7.5"
    assert metrics == [{"rows": 3}]


@pytest.mark.parametrize("job_type", ["processing", "training"])
def test_an_input_with_listed_files_downloads_those_alone(store, toy_code, job_type):
    """``input_files`` becomes a SageMaker manifest (``ManifestFile``) listing those objects: the
    played container, staging the input from the request as SageMaker does, holds the listed
    files only, and the job's answer is the same."""
    runner = _runner(code_dir=str(toy_code), player=execute)
    name = _name("toylisted")
    if job_type == "processing":
        folder, listed = "toy/listed-table", ["data.csv"]
        store.put_bytes("raw", f"{folder}/data.csv", b"1\n2\n3\n")
        spec = JobSpec(job_type="processing", name=name, entry_point="ml_code.toy_process",
                       inputs={"table": store.uri("raw", folder)}, outputs=["scaled"], input_files={"table": listed},
                       output_uri=store.uri("processed", f"jobs/scale/{name}"), hyperparameters={"factor": 2.5})
    else:
        folder, listed = "toy/listed-splits", ["data.csv"]
        store.put_bytes("raw", f"{folder}/data.csv", "\n".join(f"{x},{3 * x + 1}" for x in [0.0, 0.5, 1.0]).encode())
        spec = JobSpec(job_type="training", name=name, entry_point="ml_code.toy_train",
                       inputs={"splits": store.uri("raw", folder)}, input_files={"splits": listed},
                       output_uri=store.uri("models", f"jobs/train/{name}"), hyperparameters={"epochs": 1, "lr": 0.5})
    store.put_bytes("raw", f"{folder}/pixels/segment.npy", b"\0" * 4096)  # under the prefix, not listed
    sent = _capture(runner, "CreateProcessingJob" if job_type == "processing" else "CreateTrainingJob")
    result = runner.run(spec, store)
    if job_type == "processing":
        assert store.get_bytes(result.output_uris["scaled"] + "/scaled.csv") == b"2.5\n5.0\n7.5"
        assert store.get_json(result.output_uris["scaled"] + "/staged.json") == listed
        source = next(i["S3Input"] for i in sent[0]["ProcessingInputs"] if i["InputName"] == "table")
    else:
        assert result.model_uri and store.exists(result.model_uri)
        source = sent[0]["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert source["S3DataType"] == "ManifestFile"
    prefix, *names = json.loads(store.get_bytes(source["S3Uri"]))
    assert prefix == {"prefix": store.uri("raw", folder) + "/"} and names == listed


def test_failing_entry_point_raises_job_failed_with_container_reason(store, toy_code):
    runner = _runner(code_dir=str(toy_code), player=execute)
    store.put_bytes("processed", "toy/splits/data.csv", b"0,1\n1,4\n")
    name = _name("toyfail")
    spec = JobSpec(job_type="training", name=name, entry_point="ml_code.toy_train",
                   inputs={"splits": store.uri("processed", "toy/splits")},
                   output_uri=store.uri("models", f"jobs/train/{name}"), hyperparameters={"epochs": 1, "fail": True})
    with pytest.raises(JobFailed) as err:
        runner.run(spec, store)
    assert err.value.status == "Failed"
    assert err.value.reason == "ValueError: label column missing in splits/data.csv"


def mark_failed(runner, spec, request, store, client):
    """Executor: SageMaker reports the job Failed with its own reason (moto backend mutation)."""
    from moto.sagemaker.models import sagemaker_backends

    job = sagemaker_backends["123456789012"][runner.region].training_jobs[spec.name]
    job.training_job_status = "Failed"
    job.failure_reason = "CapacityError: Unable to provision requested ML compute capacity."


def mark_in_progress(runner, spec, request, store, client):
    from moto.sagemaker.models import sagemaker_backends

    backend = sagemaker_backends["123456789012"][runner.region]
    if spec.job_type == "training":
        backend.training_jobs[spec.name].training_job_status = "InProgress"
    else:
        backend.processing_jobs[spec.name].processing_job_status = "InProgress"


def _train_spec(store, name: str) -> JobSpec:
    return JobSpec(job_type="training", name=name, entry_point="ml_code.training.train",
                   inputs={"splits": store.uri("processed", "x")}, output_uri=store.uri("models", f"jobs/{name}"))


def test_failure_reason_from_sagemaker_surfaces_in_job_failed(store):
    runner = _runner(player=mark_failed)
    name = _name("cap")
    with pytest.raises(JobFailed, match="CapacityError: Unable to provision") as err:
        runner.run(_train_spec(store, name), store)
    assert err.value.job_name == name and err.value.status == "Failed"


def cancel_while_polling(monkeypatch, client, operation: str, exc: BaseException) -> None:
    """The run is cancelled while the runner polls the job: the second status request raises,
    as Dagster's interrupt does when it lands during the wait between two of them."""
    real, calls = getattr(client, operation), []

    def describe(**kwargs):
        calls.append(kwargs)
        if len(calls) > 1:
            raise exc
        return real(**kwargs)

    monkeypatch.setattr(client, operation, describe)


def test_interrupted_run_stops_the_training_job(store, monkeypatch):
    runner = _runner(player=mark_in_progress)
    stopped: list[str] = []
    sm = runner.client("sagemaker")
    # moto lacks StopTrainingJob: record the call on the real client instead
    monkeypatch.setattr(sm, "stop_training_job", lambda TrainingJobName: stopped.append(TrainingJobName))

    cancel_while_polling(monkeypatch, sm, "describe_training_job", KeyboardInterrupt("dagster run cancelled"))
    name = _name("cancel")
    with pytest.raises(KeyboardInterrupt):
        runner.run(_train_spec(store, name), store)
    assert stopped == [name]


def test_interrupted_run_stops_the_processing_job(store, monkeypatch):
    runner = _runner(player=mark_in_progress)

    class RunCancelled(BaseException):  # like dagster's DagsterExecutionInterruptedError
        pass

    cancel_while_polling(monkeypatch, runner.client("sagemaker"), "describe_processing_job", RunCancelled())
    name = _name("pcancel")
    spec = JobSpec(job_type="processing", name=name, entry_point="ml_code.data.preprocess",
                   inputs={"manifest": store.uri("raw", "m")}, outputs=["splits"],
                   output_uri=store.uri("processed", f"jobs/{name}"))
    with pytest.raises(RunCancelled):
        runner.run(spec, store)
    desc = boto3.client("sagemaker").describe_processing_job(ProcessingJobName=name)
    assert desc["ProcessingJobStatus"] == "Stopped"


def test_bad_specs_are_refused_before_anything_is_created(store):
    runner = _runner()
    with pytest.raises(ValueError, match="not valid on SageMaker"):
        runner.run(_train_spec(store, "bad_name_with_underscores"), store)
    spec = _train_spec(store, _name("ok")).model_copy(update={"inputs": {"splits": "file:///tmp/x"}})
    with pytest.raises(ValueError, match="not an S3 URI"):
        runner.run(spec, store)
    with pytest.raises(ValueError, match="DERMAOPS_SAGEMAKER_ROLE_ARN"):
        _runner(role_arn="").run(_train_spec(store, _name("ok")), store)
    with pytest.raises(ValueError, match="No PyTorch training image"):
        _runner(framework_version="0.1").image("ml.g5.xlarge")


@pytest.mark.slow
def test_spot_interruption_resumes_real_training_from_s3_checkpoints(store, tmp_path):
    """The real ml_code.training.train through SageMaker: a first job stops after epoch 2 with its
    checkpoints synced to CheckpointConfig.S3Uri (what managed spot does before an interruption);
    the restarted job gets them back in /opt/ml/checkpoints and continues at epoch 3."""
    from tests.support.synth_splits import make_splits

    splits = make_splits(tmp_path / "splits", size=16, n_train=140, n_val=42, n_test=42)
    prefix = store.upload_dir("processed", "spot/splits", splits)
    runner = _runner(player=execute)
    checkpoint_uri = store.uri("models", f"checkpoints/{_name('spot')}")
    hps = {"arch": "dermanet", "batch_size": 32, "num_threads": 1, "seed": 3}

    def job(epochs: int):
        name = _name("spot")
        spec = JobSpec(job_type="training", name=name, entry_point="ml_code.training.train", inputs={"splits": prefix},
                       output_uri=store.uri("models", f"jobs/train/{name}"), checkpoint_uri=checkpoint_uri,
                       hyperparameters={**hps, "epochs": epochs})
        logs: list[str] = []
        return runner.run(spec, store, on_log=logs.append), logs

    first, _ = job(2)
    assert [m["epoch"] for m in first.metrics if "epoch" in m] == [1, 2]
    assert {o.key.rsplit("/", 1)[1] for o in store.list(checkpoint_uri)} >= {"checkpoint-epoch-0002.pt"}
    second, logs = job(4)
    assert any("continuing at epoch 3" in line for line in logs), logs[-10:]
    assert [m["epoch"] for m in second.metrics if "epoch" in m] == [3, 4]
    history = store.get_json(second.output_uris["output"] + "/history.json")
    assert [h["epoch"] for h in history["history"]] == [1, 2, 3, 4]


def test_vpc_and_network_isolation_reach_both_job_kinds(store):
    """Configured subnets, security groups and isolation are in what SageMaker receives."""
    vpc = dict(subnets=["subnet-a", "subnet-b"], security_group_ids=["sg-1"], network_isolation=True,
               image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/dermaops-training:1", container_requirements=[])
    runner = _runner(**vpc)
    training, processing = _capture(runner, "CreateTrainingJob"), _capture(runner, "CreateProcessingJob")
    store.put_bytes("processed", "vpc/splits/data.csv", b"1,2\n")
    runner.run(JobSpec(job_type="training", name=_name("vpc-train"), entry_point="ml_code.training.train",
                       inputs={"splits": store.uri("processed", "vpc/splits")},
                       output_uri=store.uri("models", "jobs/vpc-train")), store)
    runner.run(JobSpec(job_type="processing", name=_name("vpc-proc"), entry_point="ml_code.data.preprocess",
                       inputs={"manifest": store.uri("processed", "vpc/splits")}, outputs=["splits"],
                       output_uri=store.uri("processed", "jobs/vpc-proc")), store)
    expected = {"Subnets": ["subnet-a", "subnet-b"], "SecurityGroupIds": ["sg-1"]}
    assert training[0]["VpcConfig"] == expected and training[0]["EnableNetworkIsolation"] is True
    assert processing[0]["NetworkConfig"] == {"VpcConfig": expected, "EnableNetworkIsolation": True}
    assert "pip install" not in processing[0]["AppSpecification"]["ContainerEntrypoint"][2] or \
        "requirements.txt ]" in processing[0]["AppSpecification"]["ContainerEntrypoint"][2]


def test_isolated_jobs_refuse_to_pip_install(store):
    runner = _runner(network_isolation=True)  # default image + pandera pip requirement
    with pytest.raises(ValueError, match="DERMAOPS_JOB_IMAGE_URI"):
        runner.run(_train_spec(store, _name("iso")), store)
