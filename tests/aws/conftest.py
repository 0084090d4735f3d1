"""A moto server on 127.0.0.1 that every AWS client in the test session talks to.

Real HTTP, fake credentials, no network: boto3 reaches it through AWS_ENDPOINT_URL,
exactly as it would reach AWS, so the production client code runs unmodified.
"""

from __future__ import annotations

import socket
import uuid

import logging

import boto3
import pytest

from dermaops_resources.aws.s3 import S3ObjectStore

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/dermaops-sagemaker-execution"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "SAGEMAKER_VALIDATE_ROLE": "false",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_PROFILE", raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        yield env["AWS_ENDPOINT_URL"]
    server.stop()


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
