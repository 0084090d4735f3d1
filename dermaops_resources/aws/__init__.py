"""AWS backend: the same resources as the local backend, on S3, SageMaker, CloudWatch and SNS.

Submodules import boto3 and (for images) the SageMaker SDK, so they are imported only
when ``DERMAOPS_BACKEND=aws`` picks them (``dermaops_resources.aws.factory``). This
module keeps just the shared client helper: one retry policy and one endpoint rule for
every AWS client DermaOps makes.

Endpoint rule: ``endpoint_url`` when configured, else boto3's own resolution, which
honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` (that is how the tests
point every client at a moto server on 127.0.0.1).
"""

from __future__ import annotations

from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = ["aws_client", "error_code", "is_not_found"]


def aws_client(service: str, region: str | None, endpoint_url: str | None = None,
               max_attempts: int = 10) -> Any:
    """A boto3 client with adaptive retries: throttling backs off instead of failing a run."""
    import boto3

    config = Config(retries={"mode": "adaptive", "max_attempts": max_attempts},
                    user_agent_extra="dermaops")
    return boto3.session.Session().client(service, region_name=region or None,
                                          endpoint_url=endpoint_url or None, config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(exc: BaseException) -> bool:
    """SageMaker says 'not found' as ValidationException + 'Could not find'/'does not exist'."""
    if not isinstance(exc, ClientError):
        return False
    code = error_code(exc)
    if code in ("404", "NoSuchKey", "NotFound", "ResourceNotFound", "ResourceNotFoundException",
                "NoSuchBucket", "NotFoundException"):
        return True
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return code == "ValidationException" and ("could not find" in message or "does not exist" in message
                                              or "not found" in message)
