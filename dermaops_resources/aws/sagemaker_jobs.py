"""SageMaker job runner: the same ``JobSpec`` as ``LocalJobRunner``, run as a SageMaker job.

- ``processing`` specs become Processing jobs: the PyTorch framework image, the code
  tarball as an extra input, and a container entrypoint that unpacks it, puts it on
  ``PYTHONPATH`` and runs ``python -m <entry_point>``; hyperparameters travel in
  ``SM_HPS`` (what ``ml_code.contract`` reads, and what the local runner sets).
- ``training`` specs become Training jobs in the PyTorch framework container
  (``sagemaker_program`` / ``sagemaker_submit_directory``): a tiny launcher in the
  tarball runs ``python -m <entry_point>`` with the toolkit's ``--key value`` args.
  Managed spot is on by default, with checkpoints synced to ``spec.checkpoint_uri``.

The runner polls ``Describe*`` with exponential backoff, streams the job's CloudWatch
Logs into ``on_log``/``on_metric``, raises ``JobFailed`` with SageMaker's own
FailureReason, and stops the job if the caller is interrupted (a cancelled Dagster run
must not leave a GPU instance billing). Results have the local runner's shape:
``model_uri`` for training and ``output_uris[name]`` prefixes; the training container's
``output.tar.gz`` is unpacked to ``<output_uri>/output/``.

Creating the job is one method, :meth:`SageMakerJobRunner.start_job`; the moto tests subclass
it (``tests/resources/aws/moto_executor.py``) to also play the container's part, since moto
marks jobs Completed without running anything. Everything else is the production path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr

from ml_code.contract import parse_metric_line

from ..cost import INSTANCE_PRICES
from ..jobs import JobFailed, JobResult, JobRunner, JobSpec, LogFn, MetricFn
from ..object_store import ObjectStore, join_uri
from ..settings import REPO_ROOT
from . import aws_client, error_code, is_not_found

# On-demand USD per instance-hour, one table for jobs and the cost report. Spot savings show
# up in BillableTimeInSeconds, so cost = billable seconds x rate x instance count.
DEFAULT_PRICES: dict[str, float] = dict(INSTANCE_PRICES)
TERMINAL = ("Completed", "Failed", "Stopped")
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
LAUNCHER = "dermaops_launch.py"
LAUNCHER_SOURCE = '''"""Run the DermaOps entry point named by DERMAOPS_ENTRY_POINT as `python -m` would.

The SageMaker PyTorch training toolkit runs a *script* (sagemaker_program); DermaOps
entry points are modules of the ml_code package, so this launcher bridges the two and
keeps the toolkit's `--key value` hyperparameter arguments in sys.argv.
"""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
runpy.run_module(os.environ["DERMAOPS_ENTRY_POINT"], run_name="__main__", alter_sys=True)
'''
PROC_INPUT = "/opt/ml/processing/input"
PROC_OUTPUT = "/opt/ml/processing/output"
# What the training job logs each epoch (train.py); the test metrics come from the evaluation job.
METRIC_NAMES = ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy")



def build_sourcedir(code_dir: Path, requirements: list[str] | tuple[str, ...] = ()) -> bytes:
    """A deterministic sourcedir.tar.gz of the ``ml_code`` package plus the launcher.

    ``requirements`` become ``requirements.txt`` at the root: the training toolkit pip-installs
    it before running the program, and the processing entrypoint does the same. They are the
    packages ml_code needs beyond the PyTorch framework image (pandera); use a custom image
    (``image_uri``, ECR repos in infra/) for jobs without internet access.

    Deterministic (sorted members, zeroed mtimes/owners, gzip mtime 0) so identical code
    gives an identical content hash and is uploaded once.
    """
    if not (code_dir / "__init__.py").is_file():
        raise FileNotFoundError(f"{code_dir} is not the ml_code package (no __init__.py); "
                                "set SageMakerJobRunner.code_dir to the ml_code folder.")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))

        add_bytes(LAUNCHER, LAUNCHER_SOURCE.encode())
        if requirements:
            add_bytes("requirements.txt", ("\n".join(requirements) + "\n").encode())
        for path in sorted(code_dir.rglob("*")):
            rel = path.relative_to(code_dir)
            if not path.is_file() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
                continue
            add_bytes(f"{code_dir.name}/{rel.as_posix()}", path.read_bytes())
    return buf.getvalue()


def _hp_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _prefix(uri: str) -> str:
    return uri.rstrip("/") + "/"


def _seconds(desc: dict[str, Any], start: str, end: str) -> float:
    a, b = desc.get(start), desc.get(end)
    if isinstance(a, datetime) and isinstance(b, datetime):
        return max(0.0, (b - a).total_seconds())
    return 0.0


class _LogTail:
    """Follows a job's CloudWatch log streams (``<job>/...``); silent while none exist yet."""

    def __init__(self, client: Any, group: str, job_name: str, on_line: Callable[[str], None]):
        self.client, self.group, self.job_name, self.on_line = client, group, job_name, on_line
        self.tokens: dict[str, str | None] = {}

    def pump(self) -> None:
        try:
            streams = self.client.describe_log_streams(logGroupName=self.group,
                                                       logStreamNamePrefix=f"{self.job_name}/")["logStreams"]
        except Exception as exc:  # noqa: BLE001 - no logs yet, or no permission: jobs still run
            if is_not_found(exc) or error_code(exc) in ("AccessDeniedException",):
                return
            raise
        for stream in sorted(s["logStreamName"] for s in streams):
            self.tokens.setdefault(stream, None)
        for stream, token in self.tokens.items():
            while True:
                kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamName": stream,
                                          "startFromHead": True}
                if token:
                    kwargs["nextToken"] = token
                page = self.client.get_log_events(**kwargs)
                for event in page.get("events", []):
                    for line in str(event.get("message", "")).splitlines():
                        self.on_line(line)
                new_token = page.get("nextForwardToken")
                if not new_token or new_token == token:
                    break
                token = new_token
            self.tokens[stream] = token


class SageMakerJobRunner(JobRunner):
    """Runs ``JobSpec`` entry points as SageMaker Processing and Training jobs."""

    role_arn: str = Field(description="SageMaker execution role (infra: dermaops-sagemaker-execution)")
    region: str = "us-east-1"
    endpoint_url: str | None = None
    training_instance_type: str = "ml.g5.xlarge"
    processing_instance_type: str = Field(default="ml.m5.xlarge",
                                          description="CPU processing; specs with gpu=True use the training type")
    framework_version: str = "2.5"
    py_version: str = "py311"
    image_uri: str = Field(default="", description="image override (e.g. the ECR repo of infra/); "
                                                   "default: the AWS PyTorch framework image")
    use_spot: bool = True
    max_runtime_seconds: int = 6 * 3600
    max_wait_seconds: int = 12 * 3600
    volume_size_gb: int = 50
    volume_kms_key_id: str = ""
    output_kms_key_id: str = ""
    price_per_hour: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    poll_seconds: float = 15.0
    poll_backoff: float = 1.5
    poll_max_seconds: float = 120.0
    code_dir: str = str(REPO_ROOT / "ml_code")
    code_bucket: str = "models"
    container_requirements: list[str] = Field(
        default_factory=lambda: ["pandera>=0.20"],
        description="pip requirements installed in the container before the entry point (empty: none)")
    max_attempts: int = 10
    subnets: list[str] = Field(default_factory=list, description="VPC subnets the jobs run in (DERMAOPS_VPC_SUBNETS)")
    security_group_ids: list[str] = Field(default_factory=list,
                                          description="their security groups (DERMAOPS_VPC_SECURITY_GROUPS)")
    network_isolation: bool = Field(default=False, description="no network at all inside the job containers "
                                    "(DERMAOPS_NETWORK_ISOLATION); needs an image with the dependencies baked in")

    _clients: dict = PrivateAttr(default_factory=dict)
    _images: dict = PrivateAttr(default_factory=dict)

    # -- plumbing -------------------------------------------------------------------------
    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.region, self.endpoint_url, self.max_attempts)
        return self._clients[service]

    def image(self, instance_type: str, scope: str = "training") -> str:
        if self.image_uri:
            return self.image_uri
        key = (instance_type, scope)
        if key not in self._images:
            from sagemaker.core import image_uris

            try:
                self._images[key] = image_uris.retrieve(
                    framework="pytorch", region=self.region, version=self.framework_version,
                    py_version=self.py_version, instance_type=instance_type, image_scope=scope)
            except Exception as exc:  # noqa: BLE001 - turn SDK errors into a fix
                raise ValueError(
                    f"No PyTorch {scope} image for framework_version={self.framework_version!r}, "
                    f"py_version={self.py_version!r}, {instance_type} in {self.region}: {exc}. "
                    "Pin a supported version or set image_uri.") from exc
        return self._images[key]

    def upload_code(self, store: ObjectStore) -> str:
        """Upload sourcedir.tar.gz under a content-hashed key (once per code version)."""
        data = build_sourcedir(Path(self.code_dir), self.container_requirements)
        digest = hashlib.sha256(data).hexdigest()[:16]
        key = f"code/sourcedir/{digest}/sourcedir.tar.gz"
        uri = store.uri(self.code_bucket, key)
        if not store.exists(uri):
            store.put_bytes(self.code_bucket, key, data)
        return uri

    def _validate(self, spec: JobSpec) -> None:
        if not JOB_NAME_RE.match(spec.name):
            raise ValueError(f"Job name {spec.name!r} is not valid on SageMaker: use letters, digits and "
                             "hyphens only, start with a letter or digit, at most 63 characters.")
        if not MODULE_RE.match(spec.entry_point):
            raise ValueError(f"Entry point {spec.entry_point!r} is not a dotted module name like ml_code.training.train.")
        if not self.role_arn:
            raise ValueError("SageMakerJobRunner.role_arn is empty; set DERMAOPS_SAGEMAKER_ROLE_ARN to the role "
                             "from `terraform output sagemaker_execution_role_arn`.")
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("A VPC needs both DERMAOPS_VPC_SUBNETS and DERMAOPS_VPC_SECURITY_GROUPS (terraform output "
                             "private_subnet_ids / sagemaker_security_group_ids with enable_vpc = true).")
        if self.network_isolation and self.container_requirements:
            raise ValueError(f"Network-isolated jobs cannot pip install {self.container_requirements} at start: build "
                             "docker/Dockerfile.training, push it and set DERMAOPS_JOB_IMAGE_URI (jobs on that image "
                             "install nothing).")
        unknown = set(spec.sharded_inputs) - set(spec.inputs)
        if unknown:
            raise ValueError(f"sharded_inputs {sorted(unknown)} are not inputs of job {spec.name} "
                             f"(inputs: {sorted(spec.inputs)}).")
        for name, uri in {**spec.inputs, "output_uri": spec.output_uri}.items():
            if not uri.startswith("s3://"):
                raise ValueError(f"Job {spec.name}: {name} = {uri!r} is not an S3 URI; SageMaker jobs read and "
                                 "write S3 only (use the S3 object store with the AWS backend).")

    # -- requests -------------------------------------------------------------------------
    def input_manifest_uri(self, spec: JobSpec, name: str) -> str:
        """Where the manifest of input ``name`` (``spec.input_files``) is published: beside the job's outputs."""
        return join_uri(spec.output_uri, f"input-manifests/{spec.name}/{name}.manifest")

    def upload_input_manifests(self, spec: JobSpec, store: ObjectStore) -> None:
        """Publish one SageMaker manifest file per input that lists its files
        (``[{"prefix": "s3://bucket/prefix/"}, "relative/name", ...]``, the ``ManifestFile`` format
        of the ProcessingS3Input / S3DataSource API): SageMaker then downloads those objects, under
        the input's local path by their relative names, instead of every object under the prefix."""
        for name, files in spec.input_files.items():
            bucket, key = store.split_uri(self.input_manifest_uri(spec, name))
            manifest = [{"prefix": _prefix(spec.inputs[name])}, *files]
            store.put_bytes(bucket, key, json.dumps(manifest).encode())

    def _s3_source(self, spec: JobSpec, name: str, uri: str) -> tuple[str, str]:
        """``(S3DataType, S3Uri)`` of one input: its manifest when the spec lists its files, else its prefix."""
        if name in spec.input_files:
            return "ManifestFile", self.input_manifest_uri(spec, name)
        return "S3Prefix", _prefix(uri)

    def training_request(self, spec: JobSpec, code_uri: str) -> dict[str, Any]:
        instance_type = self.training_instance_type
        hps = {k: _hp_value(v) for k, v in spec.hyperparameters.items()}
        hps.update({
            "sagemaker_program": LAUNCHER,
            "sagemaker_submit_directory": code_uri,
            "sagemaker_region": self.region,
            "sagemaker_container_log_level": "20",
        })
        if spec.instance_count > 1:
            hps["sagemaker_torch_distributed_enabled"] = "true"  # torchrun across the instances
        channels = []
        for name, uri in sorted(spec.inputs.items()):
            data_type, s3_uri = self._s3_source(spec, name, uri)
            channels.append({
                "ChannelName": name,
                "DataSource": {"S3DataSource": {
                    "S3DataType": data_type, "S3Uri": s3_uri,
                    "S3DataDistributionType": "ShardedByS3Key" if name in spec.sharded_inputs
                    else "FullyReplicated"}},
                "InputMode": "File",
            })
        stopping: dict[str, int] = {"MaxRuntimeInSeconds": self.max_runtime_seconds}
        if self.use_spot:
            stopping["MaxWaitTimeInSeconds"] = max(self.max_wait_seconds, self.max_runtime_seconds)
        resource: dict[str, Any] = {"InstanceType": instance_type, "InstanceCount": spec.instance_count,
                                    "VolumeSizeInGB": self.volume_size_gb}
        if self.volume_kms_key_id:
            resource["VolumeKmsKeyId"] = self.volume_kms_key_id
        output: dict[str, Any] = {"S3OutputPath": spec.output_uri.rstrip("/")}
        if self.output_kms_key_id:
            output["KmsKeyId"] = self.output_kms_key_id
        request: dict[str, Any] = {
            "TrainingJobName": spec.name,
            "HyperParameters": hps,
            "AlgorithmSpecification": {
                "TrainingImage": self.image(instance_type, "training"),
                "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": m, "Regex": rf'\[dermaops-metric\] .*"{m}": ([-0-9.eE+]+)'}
                                      for m in METRIC_NAMES],
            },
            "RoleArn": self.role_arn,
            "InputDataConfig": channels,
            "OutputDataConfig": output,
            "ResourceConfig": resource,
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": self.use_spot,
            "EnableInterContainerTrafficEncryption": spec.instance_count > 1,
            "Environment": {"DERMAOPS_ENTRY_POINT": spec.entry_point, "PYTHONUNBUFFERED": "1"},
            "Tags": [{"Key": "dermaops:entry_point", "Value": spec.entry_point},
                     {"Key": "dermaops:job_type", "Value": "training"}],
        }
        if self.subnets:
            request["VpcConfig"] = self._vpc()
        if self.network_isolation:
            request["EnableNetworkIsolation"] = True
        # Spot without checkpoints restarts from scratch after a reclaim: always give one.
        checkpoint = spec.checkpoint_uri or (join_uri(spec.output_uri, "checkpoints") if self.use_spot else None)
        if checkpoint:
            request["CheckpointConfig"] = {"S3Uri": checkpoint.rstrip("/"), "LocalPath": "/opt/ml/checkpoints"}
        return request

    def processing_request(self, spec: JobSpec, code_uri: str) -> dict[str, Any]:
        instance_type = self.training_instance_type if spec.gpu else self.processing_instance_type
        inputs = [{
            "InputName": "code",
            "S3Input": {"S3Uri": code_uri.rsplit("/", 1)[0] + "/", "LocalPath": f"{PROC_INPUT}/code",
                        "S3DataType": "S3Prefix", "S3InputMode": "File",
                        "S3DataDistributionType": "FullyReplicated"},
        }]
        for name, uri in sorted(spec.inputs.items()):
            if name == "code":
                raise ValueError(f"Job {spec.name}: input name 'code' is reserved for the job's source code.")
            data_type, s3_uri = self._s3_source(spec, name, uri)
            inputs.append({"InputName": name, "S3Input": {
                "S3Uri": s3_uri, "LocalPath": f"{PROC_INPUT}/{name}", "S3DataType": data_type,
                "S3InputMode": "File",
                "S3DataDistributionType": "ShardedByS3Key" if name in spec.sharded_inputs else "FullyReplicated"}})
        outputs = [{"OutputName": name, "S3Output": {"S3Uri": join_uri(spec.output_uri, name),
                                                     "LocalPath": f"{PROC_OUTPUT}/{name}",
                                                     "S3UploadMode": "EndOfJob"}} for name in spec.outputs]
        output_config: dict[str, Any] = {"Outputs": outputs}
        if self.output_kms_key_id:
            output_config["KmsKeyId"] = self.output_kms_key_id
        cluster: dict[str, Any] = {"InstanceCount": spec.instance_count, "InstanceType": instance_type,
                                   "VolumeSizeInGB": self.volume_size_gb}
        if self.volume_kms_key_id:
            cluster["VolumeKmsKeyId"] = self.volume_kms_key_id
        script = ("set -euo pipefail; mkdir -p /opt/ml/code; "
                  f"tar -xzf {PROC_INPUT}/code/sourcedir.tar.gz -C /opt/ml/code; "
                  "if [ -f /opt/ml/code/requirements.txt ]; then "
                  "python -m pip install --quiet -r /opt/ml/code/requirements.txt; fi; "
                  'export PYTHONPATH="/opt/ml/code${PYTHONPATH:+:$PYTHONPATH}"; '
                  'exec python -m "$DERMAOPS_ENTRY_POINT"')
        request: dict[str, Any] = {
            "ProcessingJobName": spec.name,
            "ProcessingInputs": inputs,
            "ProcessingOutputConfig": output_config,
            "ProcessingResources": {"ClusterConfig": cluster},
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_seconds},
            "AppSpecification": {"ImageUri": self.image(instance_type, "training"),
                                 "ContainerEntrypoint": ["/bin/bash", "-c", script]},
            "Environment": {"DERMAOPS_ENTRY_POINT": spec.entry_point, "PYTHONUNBUFFERED": "1",
                            "SM_HPS": json.dumps(spec.hyperparameters, sort_keys=True)},
            "RoleArn": self.role_arn,
            "Tags": [{"Key": "dermaops:entry_point", "Value": spec.entry_point},
                     {"Key": "dermaops:job_type", "Value": "processing"}],
        }
        network: dict[str, Any] = {}
        if self.subnets:
            network["VpcConfig"] = self._vpc()
        if self.network_isolation:
            network["EnableNetworkIsolation"] = True
        if network:
            request["NetworkConfig"] = network
        return request

    def _vpc(self) -> dict[str, list[str]]:
        return {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}

    # -- running --------------------------------------------------------------------------
    def start_job(self, spec: JobSpec, request: dict[str, Any], store: ObjectStore) -> None:
        """Create the SageMaker job from ``request`` (the job runs on AWS from here on)."""
        sm = self.client("sagemaker")
        if spec.job_type == "training":
            sm.create_training_job(**request)
        else:
            sm.create_processing_job(**request)

    def run(self, spec: JobSpec, store: ObjectStore, on_log: LogFn | None = None,
            on_metric: MetricFn | None = None) -> JobResult:
        on_log = on_log or (lambda line: None)
        on_metric = on_metric or (lambda rec: None)
        self._validate(spec)
        training = spec.job_type == "training"
        code_uri = self.upload_code(store)
        self.upload_input_manifests(spec, store)
        request = self.training_request(spec, code_uri) if training else self.processing_request(spec, code_uri)
        instance_type = (request["ResourceConfig"]["InstanceType"] if training
                         else request["ProcessingResources"]["ClusterConfig"]["InstanceType"])
        started = time.monotonic()
        self.start_job(spec, request, store)
        on_log(f"[{spec.name}] created SageMaker {spec.job_type} job on {spec.instance_count} x {instance_type}"
               f"{' (managed spot)' if training and self.use_spot else ''}: {spec.entry_point}")

        metrics: list[dict[str, Any]] = []

        def on_line(line: str) -> None:
            record = parse_metric_line(line)
            if record is None:
                on_log(line)
            else:
                metrics.append(record)
                on_metric(record)

        group = "/aws/sagemaker/TrainingJobs" if training else "/aws/sagemaker/ProcessingJobs"
        tail = _LogTail(self.client("logs"), group, spec.name, on_line)
        terminal = False
        try:
            desc = self._poll(spec, training, tail, on_log)
            terminal = True
        except BaseException:
            if not terminal:
                self._stop(spec, training, on_log)
            raise
        wall = time.monotonic() - started
        status = desc["TrainingJobStatus" if training else "ProcessingJobStatus"]
        if status != "Completed":
            raise JobFailed(spec.name, status, desc.get("FailureReason") or desc.get("ExitMessage")
                            or f"SageMaker reported {status} without a reason; see CloudWatch log group {group}.")
        return self._result(spec, training, desc, store, metrics, wall, instance_type, on_log)

    def _describe(self, spec: JobSpec, training: bool) -> dict[str, Any]:
        sm = self.client("sagemaker")
        if training:
            return sm.describe_training_job(TrainingJobName=spec.name)
        return sm.describe_processing_job(ProcessingJobName=spec.name)

    def _poll(self, spec: JobSpec, training: bool, tail: _LogTail, on_log: LogFn) -> dict[str, Any]:
        delay = self.poll_seconds
        last_secondary = ""
        while True:
            desc = self._describe(spec, training)
            tail.pump()
            secondary = desc.get("SecondaryStatus", "")
            if secondary and secondary != last_secondary:
                on_log(f"[{spec.name}] {secondary}")  # e.g. Interrupted / Restarting on spot reclaim
                last_secondary = secondary
            if desc["TrainingJobStatus" if training else "ProcessingJobStatus"] in TERMINAL:
                tail.pump()  # the last lines land just before the status flips
                return desc
            time.sleep(delay)
            delay = min(delay * self.poll_backoff, self.poll_max_seconds)

    def _stop(self, spec: JobSpec, training: bool, on_log: LogFn) -> None:
        """Best effort: the caller's exception matters more than a failed stop request."""
        sm = self.client("sagemaker")
        try:
            if training:
                sm.stop_training_job(TrainingJobName=spec.name)
            else:
                sm.stop_processing_job(ProcessingJobName=spec.name)
            on_log(f"[{spec.name}] interrupted: stop requested")
        except Exception as exc:  # noqa: BLE001
            on_log(f"[{spec.name}] interrupted, and stopping the job failed ({exc}); stop it in the console")

    def _result(self, spec: JobSpec, training: bool, desc: dict[str, Any], store: ObjectStore,
                metrics: list[dict[str, Any]], wall: float, instance_type: str, on_log: LogFn) -> JobResult:
        count = spec.instance_count
        if training:
            run_seconds = float(desc.get("TrainingTimeInSeconds") or _seconds(desc, "TrainingStartTime",
                                                                               "TrainingEndTime") or wall)
            billable = float(desc.get("BillableTimeInSeconds") or run_seconds)
        else:
            run_seconds = _seconds(desc, "ProcessingStartTime", "ProcessingEndTime") or wall
            billable = run_seconds
        rate = self.price_per_hour.get(instance_type)
        if rate is None:
            on_log(f"[{spec.name}] no price for {instance_type} in price_per_hour; cost reported as 0")
        cost = billable * count * (rate or 0.0) / 3600.0
        if training and self.use_spot and run_seconds:
            on_log(f"[{spec.name}] managed spot saved {100 * (1 - billable / run_seconds):.0f}% "
                   f"({billable:.0f} of {run_seconds:.0f} s billed)")
        result = JobResult(name=spec.name, status="Completed", metrics=metrics, wall_seconds=wall,
                           billable_seconds=billable * count, estimated_cost_usd=cost,
                           instance_type=instance_type)
        if training:
            result.model_uri = desc["ModelArtifacts"]["S3ModelArtifacts"]
            result.output_uris["output"] = self._unpack_output_data(spec, desc, store, on_log)
        else:
            for out in desc.get("ProcessingOutputConfig", {}).get("Outputs", []):
                result.output_uris[out["OutputName"]] = out["S3Output"]["S3Uri"]
            for name in spec.outputs:
                result.output_uris.setdefault(name, join_uri(spec.output_uri, name))
        return result

    def _unpack_output_data(self, spec: JobSpec, desc: dict[str, Any], store: ObjectStore, on_log: LogFn) -> str:
        """Extract ``output.tar.gz`` (SM_OUTPUT_DATA_DIR) to ``<output_uri>/output/``, like the local runner."""
        base = desc.get("OutputDataConfig", {}).get("S3OutputPath", spec.output_uri).rstrip("/")
        tar_uri = f"{base}/{spec.name}/output/output.tar.gz"
        bucket, prefix = store.split_uri(spec.output_uri)
        target = f"{prefix}/output"
        if not store.exists(tar_uri):
            on_log(f"[{spec.name}] no output.tar.gz at {tar_uri}; the job wrote no output data")
            return store.uri(bucket, target)
        scratch = Path(tempfile.mkdtemp(prefix="dermaops-output-"))
        try:
            tar_path = store.download_file(tar_uri, scratch / "output.tar.gz")
            extract = scratch / "data"
            extract.mkdir()
            with tarfile.open(tar_path) as tar:
                tar.extractall(extract, filter="data")  # refuses absolute paths and ../ escapes
            return store.upload_dir(bucket, target, extract)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
