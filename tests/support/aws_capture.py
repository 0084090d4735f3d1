"""SageMaker data-capture files made from traffic the local endpoint really served.

The local endpoint writes SageMaker's capture line plus what SageMaker does *not* write
(``modelPackageVersion``, ``dermaopsStatus``, ``dermaopsLatencyMs``) and always an
``inferenceId`` (the event id when the client sent none). A real SageMaker endpoint with
``CaptureContentTypeHeader.JsonContentTypes = ["application/json"]`` (what
``SageMakerEndpointDeployer`` configures) writes, per request:

- ``captureData.endpointInput``: ``observedContentType``, ``mode: INPUT``, ``data``,
  ``encoding``: ``JSON`` with the body as text for JSON content types, ``BASE64`` otherwise;
- ``captureData.endpointOutput``: the same for the answer (``application/json`` -> ``JSON``);
- ``eventMetadata``: ``eventId`` (SageMaker's own UUID, which the caller never sees),
  ``inferenceId`` only when the caller passed ``InferenceId`` to InvokeEndpoint, and
  ``inferenceTime`` to the second (``2026-01-01T10:00:00Z``);
- ``eventVersion: "0"``;

one JSONL file per delivery under ``{DestinationS3Uri}/{endpoint}/{variant}/yyyy/mm/dd/hh/``,
the hour being the requests'. :func:`sagemaker_record` rewrites one local line that way and
:func:`publish_sagemaker_capture` uploads a local capture folder in that layout, so the same
requests can be monitored on both backends and the figures compared.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

JSON_CONTENT_TYPES = ("application/json",)  # SageMakerEndpointDeployer's CaptureContentTypeHeader


def _channel(content_type: str, mode: str, body: bytes) -> dict[str, Any]:
    if content_type.split(";")[0].strip().lower() in JSON_CONTENT_TYPES:
        return {"observedContentType": content_type, "mode": mode, "data": body.decode("utf-8"), "encoding": "JSON"}
    return {"observedContentType": content_type, "mode": mode, "data": base64.b64encode(body).decode("ascii"),
            "encoding": "BASE64"}


def _body(channel: dict[str, Any]) -> bytes:
    data = channel.get("data", "")
    if str(channel.get("encoding", "BASE64")).upper() == "BASE64":
        return base64.b64decode(data)
    return data.encode("utf-8") if isinstance(data, str) else json.dumps(data).encode("utf-8")


def sagemaker_record(local: dict[str, Any], event_id: str | None = None) -> dict[str, Any] | None:
    """The line SageMaker would have written for the request behind one local capture line, or
    None for a request the model did not answer (status other than 200: SageMaker's model-error
    responses are not model outputs the monitors could use). The local server uses its event id
    as inference id when the client sent none, so ``inferenceId == eventId`` means "none sent"."""
    meta = local["eventMetadata"]
    if int(meta.get("dermaopsStatus", 200)) != 200:
        return None
    inp, out = local["captureData"]["endpointInput"], local["captureData"]["endpointOutput"]
    when = datetime.fromisoformat(meta["inferenceTime"])
    new_meta: dict[str, Any] = {"eventId": event_id or str(uuid.uuid4())}
    if meta.get("inferenceId") and meta["inferenceId"] != meta.get("eventId"):
        new_meta["inferenceId"] = meta["inferenceId"]
    new_meta["inferenceTime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "captureData": {
            "endpointInput": _channel(inp["observedContentType"], "INPUT", _body(inp)),
            "endpointOutput": _channel(out["observedContentType"], "OUTPUT", _body(out)),
        },
        "eventMetadata": new_meta,
        "eventVersion": "0",
    }


def local_capture_files(root: Path) -> list[Path]:
    """The local endpoint's capture files in publish order (their names are publish timestamps)."""
    return sorted(root.rglob("*.jsonl"), key=lambda p: p.relative_to(root).as_posix())


def publish_sagemaker_capture(store: Any, capture_uri: str, endpoint: str, variant: str,
                              local_files: Iterable[Path]) -> list[str]:
    """Upload each local capture file's answered requests as SageMaker capture files under
    ``capture_uri/endpoint/variant/yyyy/mm/dd/hh/<mm-ss-fff>-<uuid>.jsonl`` (one file per local
    file and hour, in the same order). Returns the keys written."""
    bucket, prefix = store.split_uri(capture_uri)
    keys: list[str] = []
    for path in local_files:
        by_hour: dict[str, list[tuple[datetime, str]]] = {}
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            local = json.loads(line)
            record = sagemaker_record(local)
            if record is None:
                continue
            when = datetime.fromisoformat(local["eventMetadata"]["inferenceTime"])
            by_hour.setdefault(when.strftime("%Y/%m/%d/%H"), []).append((when, json.dumps(record)))
        for hour, lines in sorted(by_hour.items()):
            first = lines[0][0]
            name = f"{first.strftime('%M-%S')}-{first.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            key = "/".join(p for p in (prefix.strip("/"), endpoint, variant, hour, name) if p)
            store.put_bytes(bucket, key, ("\n".join(text for _, text in lines) + "\n").encode())
            keys.append(key)
    return keys
