"""A "SageMaker" that really runs the job, for tests against moto.

moto accepts CreateTrainingJob / CreateProcessingJob and marks the job Completed at
once without running anything. ``execute`` (plugged in with
:class:`PlayedJobRunner`, a test subclass of the production runner, or :func:`install` for a
``dagster`` subprocess, see ``python -m tests.support.moto_executor --dagster``) closes the gap:
right after the job is created it plays the container's part from the *request the runner
sent*:

- unpacks the uploaded sourcedir.tar.gz (so a file missing from the tarball fails here,
  as it would on AWS) and runs it the way the container would: training through the
  launcher script with the toolkit's ``--key value`` arguments and ``SM_*`` variables,
  processing with ``python -m`` and the code on ``PYTHONPATH``;
- downloads the declared S3 inputs, uploads model.tar.gz / output.tar.gz / checkpoints /
  processing outputs to the S3 locations SageMaker would use;
- writes the job's stdout into the CloudWatch Logs stream SageMaker would use (so the
  runner's log tailing and metric parsing are exercised);
- on a non-zero exit marks the moto job Failed with the ``/opt/ml/output/failure`` text.

The runner then polls moto and post-processes exactly as in production.

Job state changes go straight into moto's backend when the server runs in this process
(the unit tests); from another process (the ``dagster asset materialize`` subprocess of the
end-to-end test) they go to the ``JOB_STATE_PATH`` route that ``start_moto_server`` adds in
front of moto, which applies them in the server's process. ``python -m
tests.support.moto_executor --serve PORT`` runs such a server as a process of its own (until its
stdin closes).
"""

from __future__ import annotations

from collections.abc import Callable

import argparse
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3

ACCOUNT = "123456789012"
JOB_STATE_PATH = "/_dermaops_test/sagemaker-job"
JOB_FIELDS = ("training_job_status", "secondary_status", "processing_job_status", "failure_reason",
              "training_time_in_seconds", "billable_time_in_seconds")


def _backend_job(region: str, name: str, training: bool):
    from moto.sagemaker.models import sagemaker_backends

    backend = sagemaker_backends[ACCOUNT][region]
    return (backend.training_jobs if training else backend.processing_jobs)[name]


def apply_job_update(region: str, name: str, training: bool, fields: dict[str, Any]) -> None:
    """Set attributes of a moto job in this process's backend (KeyError: no such job/field)."""
    job = _backend_job(region, name, training)
    for key, value in fields.items():
        if key not in JOB_FIELDS:
            raise KeyError(key)
        setattr(job, key, value)


def _update_job(region: str, name: str, training: bool, fields: dict[str, Any]) -> None:
    """Apply in-process when the moto server shares this process, else through the server's hook."""
    try:
        apply_job_update(region, name, training, fields)
        return
    except KeyError:
        pass  # the job lives in the moto server's process, not here
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if not endpoint:
        raise RuntimeError(f"moto job {name} is not in this process and AWS_ENDPOINT_URL is unset; "
                           "the executor cannot reach the moto server to update it.")
    body = json.dumps({"region": region, "name": name, "training": training, "fields": fields}).encode()
    req = urllib.request.Request(endpoint.rstrip("/") + JOB_STATE_PATH, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"moto server refused the update of job {name}: {exc.code} {exc.read()[:300]!r}; "
                           "is it the test server of tests/resources/aws/conftest.py (with the job-state hook)?") from exc


class JobStateHook:
    """WSGI middleware in front of moto: ``POST JOB_STATE_PATH`` changes a job in moto's backend,
    which lives in the server's process. Only test servers have this route; production never
    calls it."""

    def __init__(self, app: Any):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != JOB_STATE_PATH:
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length))
            apply_job_update(body["region"], body["name"], bool(body["training"]), body["fields"])
            status, payload = "200 OK", b"{}"
        except KeyError as exc:
            status, payload = "404 Not Found", json.dumps({"error": f"no such job or field: {exc}"}).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def start_moto_server(host: str, port: int) -> Any:
    """A started ThreadedMotoServer on host:port with the job-state route in front of moto."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    server._server.app = JobStateHook(server._server.app)  # before any request is served
    return server


def _write_logs(region: str, group: str, stream: str, lines: list[str]) -> None:
    logs = boto3.client("logs", region_name=region)
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines or ["(no output)"])]
    for i in range(0, len(events), 1000):
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[i:i + 1000])


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    return proc.returncode, proc.stdout.splitlines()


def _tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)
    return dest


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "DAGSTER_", "PYTHONPATH"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def execute(runner: Any, spec: Any, request: dict[str, Any], store: Any, client: Any) -> None:
    training = spec.job_type == "training"
    with tempfile.TemporaryDirectory(prefix="moto-sm-") as tmp:
        work = Path(tmp)
        code = work / "code"
        code.mkdir()
        if training:
            code_uri = request["HyperParameters"]["sagemaker_submit_directory"]
        else:
            code_input = next(i for i in request["ProcessingInputs"] if i["InputName"] == "code")
            code_uri = code_input["S3Input"]["S3Uri"].rstrip("/") + "/sourcedir.tar.gz"
        with tarfile.open(store.download_file(code_uri, work / "sourcedir.tar.gz")) as tar:
            tar.extractall(code, filter="data")
        env = _base_env()
        env.update(request.get("Environment", {}))
        started = time.time()
        if training:
            code_rc, lines, failure = _train(request, store, work, code, env)
        else:
            code_rc, lines, failure = _process(request, store, work, code, env)
        elapsed = max(1, int(time.time() - started))
        group = "/aws/sagemaker/TrainingJobs" if training else "/aws/sagemaker/ProcessingJobs"
        _write_logs(runner.region, group, f"{spec.name}/algo-1-{int(started)}", lines)
        if code_rc != 0:
            reason = failure or "\n".join(lines[-5:]) or f"exit code {code_rc}"
            fields: dict[str, Any] = ({"training_job_status": "Failed", "secondary_status": "Failed"} if training
                                      else {"processing_job_status": "Failed"})
            fields["failure_reason"] = reason
            _update_job(runner.region, spec.name, training, fields)
        elif training:
            # what managed spot would bill at a 70 % discount
            billable = max(1, int(elapsed * 0.3)) if request.get("EnableManagedSpotTraining") else elapsed
            _update_job(runner.region, spec.name, training,
                        {"training_time_in_seconds": elapsed, "billable_time_in_seconds": billable})


def _stage_input(store: Any, data_type: str, uri: str, dest: Path) -> Path:
    """An input as SageMaker stages it: every object under an ``S3Prefix``, or the objects a
    ``ManifestFile`` lists (``[{"prefix": ...}, "relative/name", ...]``) under their relative names;
    a listed object that is missing fails the job, as it does on SageMaker."""
    if data_type == "S3Prefix":
        return store.download_dir(uri, dest)
    if data_type != "ManifestFile":
        raise ValueError(f"S3DataType {data_type!r} is not one SageMaker processing or training inputs take")
    prefix, *names = json.loads(store.get_bytes(uri))
    for rel in names:
        store.download_file(prefix["prefix"] + rel, dest / rel)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _train(request: dict[str, Any], store: Any, work: Path, code: Path,
           env: dict[str, str]) -> tuple[int, list[str], str]:
    opt = work / "opt_ml"
    model_dir, output_dir, ckpt = opt / "model", opt / "output", opt / "checkpoints"
    for d in (model_dir, output_dir / "data", ckpt):
        d.mkdir(parents=True)
    channels = []
    for channel in request.get("InputDataConfig", []):
        name = channel["ChannelName"]
        source = channel["DataSource"]["S3DataSource"]
        local = _stage_input(store, source["S3DataType"], source["S3Uri"], opt / "input" / "data" / name)
        local.mkdir(parents=True, exist_ok=True)
        env[f"SM_CHANNEL_{name.upper()}"] = str(local)
        channels.append(name)
    ckpt_uri = request.get("CheckpointConfig", {}).get("S3Uri")
    if ckpt_uri:
        store.download_dir(ckpt_uri, ckpt)
    user_hps = {k: v for k, v in request["HyperParameters"].items() if not k.startswith("sagemaker_")}
    env.update({
        "SM_CHANNELS": json.dumps(sorted(channels)), "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DIR": str(output_dir), "SM_OUTPUT_DATA_DIR": str(output_dir / "data"),
        "SM_HPS": json.dumps(user_hps), "SM_CHECKPOINT_DIR": str(ckpt),
        "SM_HOSTS": json.dumps(["algo-1"]), "SM_CURRENT_HOST": "algo-1", "SM_NUM_GPUS": "0",
        "PYTHONPATH": str(code),
    })
    args = [a for k, v in user_hps.items() for a in (f"--{k}", v)]
    rc, lines = _run([sys.executable, str(code / request["HyperParameters"]["sagemaker_program"]), *args],
                     cwd=code, env=env)
    failure_file = output_dir / "failure"
    failure = failure_file.read_text().strip() if failure_file.exists() else ""
    if rc == 0:
        base = request["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{request['TrainingJobName']}/output"
        for src, name in ((model_dir, "model.tar.gz"), (output_dir / "data", "output.tar.gz")):
            bucket, key = store.split_uri(f"{base}/{name}")
            store.put_file(bucket, key, _tar_dir(src, work / name))
        if ckpt_uri:
            bucket, key = store.split_uri(ckpt_uri)
            store.upload_dir(bucket, key, ckpt)
    return rc, lines, failure


def _process(request: dict[str, Any], store: Any, work: Path, code: Path,
             env: dict[str, str]) -> tuple[int, list[str], str]:
    outputs: dict[str, tuple[Path, str]] = {}
    for item in request.get("ProcessingInputs", []):
        if item["InputName"] == "code":
            continue
        local = _stage_input(store, item["S3Input"]["S3DataType"], item["S3Input"]["S3Uri"],
                             work / "input" / item["InputName"])
        local.mkdir(parents=True, exist_ok=True)
        env[f"SM_PROCESSING_INPUT_{item['InputName'].upper()}"] = str(local)
    for item in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
        local = work / "output" / item["OutputName"]
        local.mkdir(parents=True)
        env[f"SM_PROCESSING_OUTPUT_{item['OutputName'].upper()}"] = str(local)
        outputs[item["OutputName"]] = (local, item["S3Output"]["S3Uri"])
    env["SM_OUTPUT_DIR"] = str(work / "sm_output")
    env["PYTHONPATH"] = str(code)
    rc, lines = _run([sys.executable, "-m", env["DERMAOPS_ENTRY_POINT"]], cwd=work, env=env)
    failure_file = work / "sm_output" / "failure"
    failure = failure_file.read_text().strip() if failure_file.exists() else ""
    if rc == 0:
        for local, uri in outputs.values():
            bucket, key = store.split_uri(uri)
            store.upload_dir(bucket, key, local)
    return rc, lines, failure


def played(player: Callable[..., None]) -> Callable[..., None]:
    """A ``start_job`` that creates the job as production does, then calls ``player``."""
    from dermaops_resources.aws.sagemaker_jobs import SageMakerJobRunner

    create = SageMakerJobRunner.start_job  # the production method, before install() replaces it

    def start_job(runner: Any, spec: Any, request: dict[str, Any], store: Any) -> None:
        create(runner, spec, request, store)
        player(runner=runner, spec=spec, request=request, store=store, client=runner.client("sagemaker"))

    return start_job


def played_runner(player: Callable[..., None], **fields: Any) -> Any:
    """The production SageMakerJobRunner whose ``start_job`` also runs ``player`` (default: the job)."""
    from dermaops_resources.aws.sagemaker_jobs import SageMakerJobRunner

    runner_cls = type("PlayedJobRunner", (SageMakerJobRunner,), {"start_job": played(player)})
    return runner_cls(**fields)


def install() -> None:
    """Make every SageMakerJobRunner of this process play its jobs (the dagster subprocess)."""
    from dermaops_resources.aws.sagemaker_jobs import SageMakerJobRunner

    SageMakerJobRunner.start_job = played(execute)  # type: ignore[method-assign]


def _main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--dagster"]:  # `dagster ARGS...` with jobs played against moto
        install()
        from dagster._cli import main as dagster_main

        sys.argv = ["dagster", *argv[1:]]
        dagster_main()
        return
    parser = argparse.ArgumentParser(description="moto server with the DermaOps job-state hook (tests only)")
    parser.add_argument("--serve", type=int, required=True, metavar="PORT")
    args = parser.parse_args(argv)
    server = start_moto_server("127.0.0.1", args.serve)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        server.stop()


if __name__ == "__main__":
    _main()
