"""Jobs runner: processing and training jobs that run ``ml_code`` entry points.

``LocalJobRunner`` runs the entry point in a subprocess with the SageMaker container
contract laid out on disk (channels, model dir, output dir, hyperparameters,
checkpoint dir); ``SageMakerJobRunner`` (``dermaops_resources.aws.sagemaker_jobs``)
submits the same entry point to SageMaker. Both stream log lines and metric records
back to the caller and raise ``JobFailed`` with the job's own failure reason.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import BaseModel, Field, model_validator

from ml_code.contract import parse_metric_line
from ml_code.data.splits import SPLITS

from .object_store import CHILD_UMASK, PRIVATE_FILE_MODE, ObjectStore, file_uri_to_path, join_uri, private_dir
from .settings import REPO_ROOT, child_environment

LogFn = Callable[[str], None]
MetricFn = Callable[[dict[str, Any]], None]


class JobFailed(RuntimeError):
    """A processing or training job ended Failed or Stopped; ``reason`` is the job's own."""

    def __init__(self, job_name: str, status: str, reason: str):
        super().__init__(f"Job {job_name} ended {status}: {reason}")
        self.job_name = job_name
        self.status = status
        self.reason = reason


class JobSpec(BaseModel):
    """What to run: the same description serves a subprocess and a SageMaker job."""

    job_type: Literal["processing", "training"]
    name: str = Field(description="unique job name (SageMaker rules: [a-zA-Z0-9-], <= 63 chars)")
    entry_point: str = Field(description="module run with python -m, e.g. ml_code.training.train")
    inputs: dict[str, str] = Field(description="channel / processing input name -> store prefix URI")
    output_uri: str = Field(description="store prefix for everything the job writes")
    outputs: list[str] = Field(default_factory=list, description="processing output names")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    checkpoint_uri: str | None = None
    instance_count: int = 1
    sharded_inputs: list[str] = Field(default_factory=list, description="inputs split across instances")
    input_files: dict[str, list[str]] = Field(
        default_factory=dict,
        description="input name -> the only files under its prefix the job reads (names relative to the prefix); "
                    "an input not named here is staged whole")
    gpu: bool = False

    @model_validator(mode="after")
    def _input_files_are_relative_names_of_inputs(self) -> JobSpec:
        """Why the field exists: a rerun's earlier output is an input of which the job reads a few
        small files (the processing job's pixel maps, not its segments); staging the whole prefix
        downloads all of it into the container on every rerun. The names must stay under the prefix."""
        for name, files in self.input_files.items():
            if name not in self.inputs:
                raise ValueError(f"input_files names {name!r}, which is not an input of job {self.name} "
                                 f"(inputs: {sorted(self.inputs)})")
            for rel in files:
                parts = rel.split("/")
                if not rel or rel.startswith("/") or "" in parts or "." in parts or ".." in parts:
                    raise ValueError(f"input_files[{name!r}] holds {rel!r}: give names relative to the input's "
                                     "prefix, without empty, '.' or '..' parts")
        return self


class JobResult(BaseModel):
    name: str
    status: str
    output_uris: dict[str, str] = Field(default_factory=dict)
    model_uri: str | None = None
    metrics: list[dict[str, Any]] = Field(default_factory=list)
    wall_seconds: float = 0.0
    billable_seconds: float = 0.0
    estimated_cost_usd: float = 0.0
    instance_type: str = "local"


class JobRunner(dg.ConfigurableResource, ABC):
    """Runs processing and training jobs and reports their logs and metrics."""

    @abstractmethod
    def run(self, spec: JobSpec, store: ObjectStore, on_log: LogFn | None = None,
            on_metric: MetricFn | None = None) -> JobResult: ...


PACKAGE_GZIP_LEVEL = 0
"""gzip level of the local runner's ``model.tar.gz``: stored blocks. A package is mostly float32
weights, which deflate barely shrinks, while deflating them costs seconds of the training step
and inflating them again costs every job and endpoint worker that opens the package; level 0 is
still a gzip file that ``tar -xzf``, Python's ``tarfile`` and SageMaker read as before."""


def _safe_tar(tar_path: Path, src_dir: Path) -> None:
    """model.tar.gz of ``src_dir``, created 0600 (it is under DERMAOPS_HOME/jobs); members keep
    their own (owner-only) modes, so a local endpoint that extracts it keeps them private too."""
    fd = os.open(tar_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=PACKAGE_GZIP_LEVEL) as tar:
        for path in sorted(src_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(src_dir).as_posix(), recursive=False)


class LocalJobRunner(JobRunner):
    """Runs ``python -m <entry_point>`` here, with the container contract on local folders."""

    work_root: str
    python: str = sys.executable
    timeout_seconds: int = 6 * 3600
    num_gpus: int = Field(default=0, description="GPUs offered to training jobs as SM_NUM_GPUS (DERMAOPS_LOCAL_NUM_GPUS)")

    def _channel_dir(self, store: ObjectStore, uri: str, scratch: Path, files: list[str] | None = None) -> Path:
        """The folder a job sees for one input: the prefix's own folder (or a download of it), or,
        when the spec lists the input's ``files``, a folder holding those alone, as SageMaker stages
        a manifest input: a job that reads a file it did not declare fails here as it would there."""
        if files is None:
            return store.materialize_dir(uri, scratch)
        return store.materialize_files(uri, files, scratch)

    def run(self, spec: JobSpec, store: ObjectStore, on_log: LogFn | None = None,
            on_metric: MetricFn | None = None) -> JobResult:
        on_log = on_log or (lambda line: None)
        on_metric = on_metric or (lambda rec: None)
        work = Path(self.work_root) / spec.name
        if work.exists():
            shutil.rmtree(work)
        private_dir(work)  # 0700; a failed job's folder stays behind for debugging, owner-only
        env = child_environment(drop_prefixes=("SM_", "DAGSTER_"))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        args: list[str] = []
        output_dirs: dict[str, Path] = {}
        if spec.job_type == "training":
            model_dir, out_dir = work / "model", work / "output"
            private_dir(out_dir / "data")
            private_dir(model_dir)
            for name, uri in spec.inputs.items():
                env[f"SM_CHANNEL_{name.upper()}"] = str(self._channel_dir(store, uri, work / "input" / name,
                                                                          spec.input_files.get(name)))
            ckpt = work / "checkpoints"
            if spec.checkpoint_uri and spec.checkpoint_uri.startswith("file:"):
                # Local store: the checkpoint prefix is a folder, so the job writes straight into it.
                ckpt = file_uri_to_path(spec.checkpoint_uri)
            elif spec.checkpoint_uri:
                store.download_dir(spec.checkpoint_uri, ckpt)
            private_dir(ckpt)
            env.update({
                "SM_CHANNELS": json.dumps(sorted(spec.inputs)),
                "SM_MODEL_DIR": str(model_dir),
                "SM_OUTPUT_DIR": str(out_dir),
                "SM_OUTPUT_DATA_DIR": str(out_dir / "data"),
                "SM_HPS": json.dumps(spec.hyperparameters),
                "SM_CHECKPOINT_DIR": str(ckpt),
                "SM_HOSTS": json.dumps(["algo-1"]),
                "SM_CURRENT_HOST": "algo-1",
                "SM_NUM_GPUS": str(self.num_gpus),
            })
            for key, value in spec.hyperparameters.items():
                args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        else:
            out_dir = work / "output"
            private_dir(out_dir)
            for name, uri in spec.inputs.items():
                env[f"SM_PROCESSING_INPUT_{name.upper()}"] = str(
                    self._channel_dir(store, uri, work / "input" / name, spec.input_files.get(name)))
            for name in spec.outputs:
                output_dirs[name] = work / "processing-output" / name
                private_dir(output_dirs[name])
                env[f"SM_PROCESSING_OUTPUT_{name.upper()}"] = str(output_dirs[name])
            env["SM_OUTPUT_DIR"] = str(out_dir)
            env["SM_HPS"] = json.dumps(spec.hyperparameters)

        started = time.monotonic()
        metrics: list[dict[str, Any]] = []
        cmd = [self.python, "-m", spec.entry_point, *args]
        on_log(f"[{spec.name}] starting {spec.job_type} job: {spec.entry_point}")
        # umask in the child only: what the job writes (checkpoints, model, failure file) is owner-only
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True, umask=CHILD_UMASK)
        tail: list[str] = []
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                record = parse_metric_line(line)
                if record is not None:
                    metrics.append(record)
                    on_metric(record)
                else:
                    on_log(line)
                    tail = (tail + [line])[-20:]
                if time.monotonic() - started > self.timeout_seconds:
                    raise JobFailed(spec.name, "Stopped", f"exceeded {self.timeout_seconds}s")
            code = proc.wait()
        except BaseException:
            # Dagster run cancelled, or timeout: stop the job like StopTrainingJob would.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            raise
        wall = time.monotonic() - started
        if code != 0:
            failure = out_dir / "failure"
            reason = failure.read_text().strip() if failure.exists() else "\n".join(tail[-5:])
            raise JobFailed(spec.name, "Failed", reason or f"exit code {code}")

        bucket, prefix = store.split_uri(spec.output_uri)
        result = JobResult(name=spec.name, status="Completed", metrics=metrics, wall_seconds=wall,
                           billable_seconds=wall)
        if spec.job_type == "training":
            tar_path = work / "model.tar.gz"
            _safe_tar(tar_path, work / "model")
            result.model_uri = store.put_file(bucket, f"{prefix}/model.tar.gz", tar_path)
            result.output_uris["output"] = store.upload_dir(bucket, f"{prefix}/output", out_dir / "data")
            if spec.checkpoint_uri and not spec.checkpoint_uri.startswith("file:"):
                ckpt_bucket, ckpt_prefix = store.split_uri(spec.checkpoint_uri)
                store.upload_dir(ckpt_bucket, ckpt_prefix, ckpt)
        else:
            for name, path in output_dirs.items():
                result.output_uris[name] = store.upload_dir(bucket, f"{prefix}/{name}", path)
        shutil.rmtree(work, ignore_errors=True)
        return result


def job_output_prefix(store: ObjectStore, bucket: str, stage: str, job_name: str) -> str:
    return join_uri(store.uri(bucket, "jobs"), stage, job_name)


def read_training_record(store: ObjectStore, output_uri: str | None) -> dict:
    """train.py's history.json: per-epoch history, resolved config, best epoch, stop reason."""
    if not output_uri:
        return {}
    stored = store.get_json_or(join_uri(output_uri, "history.json"), {})
    return stored if isinstance(stored, dict) else {"history": list(stored)}


def read_split_index(store: ObjectStore, splits_uri: str) -> pd.DataFrame:
    """The preprocess job's ``{split}_index.csv`` files as one table with a ``split`` column,
    every value as text (what the split checks need: lesion ids, diagnoses)."""
    frames = [pd.read_csv(io.BytesIO(store.get_bytes(join_uri(splits_uri, f"{split}_index.csv"))), dtype=str)
              .assign(split=split) for split in SPLITS]
    return pd.concat(frames, ignore_index=True)
