"""``dermaops traffic --endpoint-name``: the same requests as local traffic, sent through boto3
``sagemaker-runtime`` InvokeEndpoint to the moto server on 127.0.0.1.

moto's InvokeEndpoint serves no model: it answers from a queue of canned results and remembers
each request (body, ``X-Amzn-SageMaker-*`` headers, Accept) in its backend. So the local endpoint
serves the same traffic first (real server, real package); its answers are queued in moto in the
order they were given; then the SageMaker run must send byte-identical bodies with an
``InferenceId`` each, read the answers back into the same summary and write labels under the ids
SageMaker would capture. moto 5.2.5 answers 500 to a binary body (it decodes every body as UTF-8
and JSON-encodes it) and files every call under endpoint ``None``, so the test lets moto's runtime
handler keep raw bytes and read the endpoint name from the path (``raw_runtime_bodies``).
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from PIL import Image

from dermaops_cli import main as dermaops
from dermaops_resources.object_store import LocalObjectStore
from tests.support.endpoint_packages import (
    build_real_package,
    make_deployer,
    read_captures,
    register,
    wait_for,
)
from tests.support.monitoring_synth import lesion_images

from .conftest import ACCOUNT, REGION

pytestmark = pytest.mark.aws


@pytest.fixture()
def raw_runtime_bodies(moto_server, monkeypatch):
    """moto's InvokeEndpoint handler, keeping a binary body (base64 in its request record) instead of failing."""
    from moto.sagemakerruntime.models import sagemakerruntime_backends
    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

    original = SageMakerRuntimeResponse.invoke_endpoint

    def invoke(self):
        if isinstance(self.body, bytes):
            self.body = base64.b64encode(self.body).decode("ascii")
        name = unquote(self.path.split("/")[2])  # /endpoints/<name>/invocations; moto files every call under None
        self._get_params = lambda: {"EndpointName": name}
        return original(self)

    monkeypatch.setattr(SageMakerRuntimeResponse, "use_raw_body", True, raising=False)
    monkeypatch.setattr(SageMakerRuntimeResponse, "invoke_endpoint", invoke)
    return sagemakerruntime_backends[ACCOUNT][REGION]


def _queue_answers(moto_url: str, answers: list[str]) -> None:
    payload = {"results": [{"Body": text, "ContentType": "application/json", "InvokedProductionVariant": "AllTraffic",
                            "CustomAttributes": ""} for text in answers]}
    req = urllib.request.Request(f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
                                 data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201 or resp.status == 200


def _run(capsys, argv: list[str]) -> dict:
    assert dermaops(["traffic", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("with_context", [False, True], ids=["image-bodies", "json-clinical-context"])
def test_sagemaker_traffic_sends_what_local_traffic_sends_and_reads_the_answers(
        moto_server, raw_runtime_bodies, tmp_path: Path, capsys, with_context: bool) -> None:
    images = tmp_path / "images"
    images.mkdir()
    ids = [f"ISIC_{i:07d}" for i in range(6)]
    for image_id, img in zip(ids, lesion_images(6, size=24, seed=3)):
        Image.fromarray(img).save(images / f"{image_id}.jpg", quality=95)
    pd.DataFrame({"image_id": ids, "dx": ["nv", "mel", "bkl", "nv", "bcc", "df"], "age": [35, 60, None, 45, 70, 20],
                  "sex": ["male", "female", "unknown", "female", "male", "female"],
                  "localization": ["back", "face", "trunk", "lower extremity", "scalp", "hand"]}
                 ).to_csv(tmp_path / "meta.csv", index=False)
    common = ["--images", str(images), "--metadata", str(tmp_path / "meta.csv"), "--rate", "50", "--seed", "4",
              *(["--with-context"] if with_context else [])]

    env = {"root": tmp_path, "store": LocalObjectStore(root=str(tmp_path / "store")), "tars": tmp_path / "tars"}
    env["tars"].mkdir()
    deployer = make_deployer(env, "traffic")
    try:
        handle = deployer.deploy(register(env["store"], build_real_package(env["tars"] / "v1.tar.gz"), 1),
                                 env["store"])
        local = _run(capsys, ["--endpoint", handle.url, *common, "--labels-out", str(tmp_path / "local-labels")])
        assert local["ok"] == 6
        wait_for(lambda: len(read_captures(deployer)) >= 6, 20, "6 captured requests")
        captured = read_captures(deployer)
    finally:
        deployer.stop()
    captured.sort(key=lambda r: r["eventMetadata"]["inferenceTime"])
    local_bodies = [base64.b64decode(r["captureData"]["endpointInput"]["data"]) for r in captured]
    answers = [r["captureData"]["endpointOutput"]["data"] for r in captured]
    assert all(b.startswith(b"{") == with_context for b in local_bodies)

    name = f"dermaops-traffic-{uuid.uuid4().hex[:6]}"
    _queue_answers(moto_server, answers)
    remote = _run(capsys, ["--endpoint-name", name, "--region", REGION, *common,
                           "--labels-out", str(tmp_path / "aws-labels")])

    sent = [json.loads(base64.b64decode(key)) for key in raw_runtime_bodies.results[name]]
    assert [base64.b64decode(r["Body"]) for r in sent] == local_bodies  # same requests, same order
    assert all(r["Accept"] == "application/json" for r in sent)
    inference_ids = [next(v for k, v in r.items() if k.lower() == "x-amzn-sagemaker-inference-id") for r in sent]
    assert len(set(inference_ids)) == 6 and all(i.startswith("sim-") for i in inference_ids)
    # the answers were read: the same predictions and labels as the local run, under the ids SageMaker captures
    assert remote["ok"] == 6 and remote["predicted_classes"] == local["predicted_classes"]
    assert remote["endpoint"] == f"sagemaker:{name}"
    aws_labels = pd.read_csv(remote["labels_file"])
    local_labels = pd.read_csv(local["labels_file"])
    assert aws_labels["inference_id"].tolist() == inference_ids
    assert aws_labels["label"].tolist() == local_labels["label"].tolist()


def test_sagemaker_traffic_help_says_it_is_billed(capsys) -> None:
    with pytest.raises(SystemExit):
        dermaops(["traffic", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--endpoint-name" in text and "REAL INFERENCE ON AWS, billed per request" in text
    with pytest.raises(SystemExit) as both:
        dermaops(["traffic", "--endpoint-name", "x", "--endpoint", "http://127.0.0.1:1", "--images", "."])
    assert both.value.code == 2
