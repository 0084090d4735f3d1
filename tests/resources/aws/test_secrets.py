"""The AWS backend reads the pseudonym salt from Secrets Manager (created by infra/), here on moto."""

from pathlib import Path

import pytest

from dermaops_services.ingestion import pseudonym_salt


def test_salt_from_secrets_manager(moto_server):
    import boto3

    client = boto3.client("secretsmanager", region_name="us-east-1")
    arn = client.create_secret(Name="dermaops/pseudonym-salt", SecretString="s" * 64)["ARN"]
    assert pseudonym_salt(Path("/nonexistent"), secret_arn=arn, region="us-east-1") == "s" * 64


def test_a_short_secret_is_refused(moto_server):
    import boto3

    client = boto3.client("secretsmanager", region_name="us-east-1")
    arn = client.create_secret(Name="dermaops/short-salt", SecretString="abc")["ARN"]
    with pytest.raises(ValueError, match="Secrets Manager"):
        pseudonym_salt(Path("/nonexistent"), secret_arn=arn, region="us-east-1")
