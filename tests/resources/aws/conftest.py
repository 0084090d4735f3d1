"""A moto server on 127.0.0.1 that every AWS client in the test session talks to.

Real HTTP, fake credentials, no network: boto3 reaches it through AWS_ENDPOINT_URL,
exactly as it would reach AWS, so the production client code runs unmodified.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest

from dermaops_resources.aws.s3 import S3ObjectStore

from tests.support.moto_executor import start_moto_server

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/dermaops-sagemaker-execution"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    port = _free_port()
    server = start_moto_server("127.0.0.1", port)
    env = aws_env(f"http://127.0.0.1:{port}")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_PROFILE", raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        yield env["AWS_ENDPOINT_URL"]
    server.stop()


def aws_env(endpoint_url: str) -> dict[str, str]:
    """What every AWS client (and the SageMaker SDK) needs to talk to a moto server, offline."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "SAGEMAKER_VALIDATE_ROLE": "false",
    }


@pytest.fixture()
def private_moto_server(monkeypatch: pytest.MonkeyPatch):
    """A moto server of its own, in a child process, for tests that leave a lot of state behind.

    moto keeps its state in module globals, so a second server in this process would share
    the session server's state: the end-to-end test's metrics, alarms and endpoints would then
    change what the unit tests see. A child process has fresh globals and dies with the test.
    This test's own AWS clients point at it (monkeypatched env).
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    repo = Path(__file__).resolve().parents[3]
    child_env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.moto_executor", "--serve", str(port)], cwd=repo,
                            env=child_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2).read()
                break
            except urllib.error.HTTPError:
                break  # it answers HTTP: up
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None:
                    raise RuntimeError(f"private moto server exited: {proc.stderr.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"private moto server did not answer on {url} within 60 s")
                time.sleep(0.2)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        for key, value in aws_env(url).items():
            monkeypatch.setenv(key, value)
        yield url
    finally:
        proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="session")
def kms_key_arn(moto_server) -> str:
    return boto3.client("kms", region_name=REGION).create_key(Description="dermaops test key")["KeyMetadata"]["Arn"]


@pytest.fixture(scope="session")
def bucket_names(moto_server) -> dict[str, str]:
    """The four DermaOps buckets, with a per-session suffix (names are global on S3)."""
    suffix = uuid.uuid4().hex[:8]
    names = {b: f"dermaops-test-{b}-{suffix}" for b in ("raw", "processed", "models", "logs")}
    s3 = boto3.client("s3", region_name=REGION)
    for name in names.values():
        s3.create_bucket(Bucket=name)
    return names


@pytest.fixture()
def store(bucket_names, kms_key_arn) -> S3ObjectStore:
    return S3ObjectStore(buckets=bucket_names, region=REGION, kms_key_id=kms_key_arn,
                         multipart_threshold_mb=8, multipart_chunk_mb=8)


@pytest.fixture()
def sm_backend(moto_server):
    """moto's in-process SageMaker backend (the server thread shares it), to mutate job states."""
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[ACCOUNT][REGION]
