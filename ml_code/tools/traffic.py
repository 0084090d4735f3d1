"""Traffic simulator: sends lesion images to an endpoint like a clinic would.

Used to exercise monitoring end to end: in-distribution traffic (held-out images) must
not raise a drift alarm, traffic from a "different acquisition" (``--perturb``) must, and
ground-truth labels dropped into the labels landing folder (optionally partly wrong, to
simulate a quality drop) feed the model-quality monitor.

    python -m ml_code.tools.traffic --endpoint http://127.0.0.1:8080 --images DIR \
        [--rate 5] [--limit 100] [--max-seconds 300] [--perturb colour-shift|blur|brightness|contrast] \
        [--metadata HAM10000_metadata.csv] [--with-context] [--labels-out DIR] [--wrong-labels 0.3] \
        [--allow-remote] [--token-file FILE]

``--with-context`` sends each image as the JSON request with its clinical context from
``--metadata`` (``age``, ``sex``, ``localization`` as ``anatom_site``), as a clinic's
system would, so the case-mix monitor has something to watch.

``--token-file`` names a file holding the endpoint's invocation token (a local endpoint
configured with ``DERMAOPS_ENDPOINT_TOKEN``); it is sent as ``Authorization: Bearer <token>``
and never printed.

``--endpoint-name NAME`` sends the same requests to a SageMaker endpoint through
``sagemaker-runtime`` InvokeEndpoint (boto3, your AWS credentials and region), each with an
``InferenceId`` so its data-capture line can be joined with the labels written here. That is
real inference on AWS, billed per request and captured like a clinic's.

Safety: only loopback endpoints are contacted unless ``--allow-remote`` is given (a SageMaker
endpoint is named explicitly with ``--endpoint-name``), and every run is bounded by
``--limit`` requests and ``--max-seconds``. Labels files hold only inference ids and
diagnosis labels (no patient data).
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ml_code.atomic import atomic_open

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
REQUEST_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"  # the endpoint echoes it as X-Inference-Id
PERTURBATIONS = ("colour-shift", "blur", "brightness", "contrast")


def _grey_world(img: Image.Image) -> Image.Image:
    """Grey-world colour normalisation (a common stain/colour-constancy step at other sites)."""
    x = np.asarray(img, dtype=np.float32)
    means = x.reshape(-1, 3).mean(axis=0)
    x = x * (means.mean() / np.maximum(means, 1.0))
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


PERTURB_FNS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "colour-shift": _grey_world,
    "blur": lambda img: img.filter(ImageFilter.GaussianBlur(radius=2.5)),
    "brightness": lambda img: ImageEnhance.Brightness(img).enhance(1.5),
    "contrast": lambda img: ImageEnhance.Contrast(ImageOps.autocontrast(img, cutoff=2)).enhance(1.6),
}


def check_loopback(url: str, allow_remote: bool = False) -> str:
    """Return the normalised base URL; refuse non-loopback hosts unless allowed."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"--endpoint {url!r} is not an http(s) URL like http://127.0.0.1:8080")
    host = parsed.hostname
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not loopback and not allow_remote:
        raise ValueError(f"refusing to send traffic to non-loopback host {host!r}; the simulator only talks to "
                         "127.0.0.1/localhost unless you pass --allow-remote deliberately.")
    base = url.rstrip("/")
    return base[: -len("/invocations")] if base.endswith("/invocations") else base


def read_token(path: str | Path) -> str:
    """The invocation token held in ``path`` (surrounding whitespace removed); ValueError if unreadable or empty."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"--token-file {path}: cannot read it ({exc.strerror or exc}); give the file holding the "
                         "endpoint's invocation token") from None
    if not token:
        raise ValueError(f"--token-file {path} is empty; write the endpoint's invocation token into it")
    return token


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder of .jpg/.png lesion images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images under {folder}")
    return files


def load_labels(metadata_csv: str | Path) -> dict[str, str]:
    """image_id -> dx from a HAM10000-style metadata CSV (only those two columns are read)."""
    frame = pd.read_csv(metadata_csv, usecols=lambda c: c in ("image_id", "dx"))
    if not {"image_id", "dx"} <= set(frame.columns):
        raise ValueError(f"{metadata_csv} needs columns image_id and dx (HAM10000_metadata.csv layout)")
    return dict(zip(frame["image_id"].astype(str), frame["dx"].astype(str)))


def load_context(metadata_csv: str | Path) -> dict[str, dict[str, Any]]:
    """image_id -> the JSON request's clinical fields (``age``, ``sex``, ``anatom_site``) from a
    HAM10000-style metadata CSV; an unknown value is sent as null."""
    frame = pd.read_csv(metadata_csv, usecols=lambda c: c in ("image_id", "age", "sex", "localization"))
    missing = {"image_id", "age", "sex", "localization"} - set(frame.columns)
    if missing:
        raise ValueError(f"--with-context needs columns {sorted(missing)} in {metadata_csv} "
                         "(HAM10000_metadata.csv layout: image_id, age, sex, localization)")

    def known(value: Any) -> Any:
        return None if pd.isna(value) or str(value).strip().lower() in ("", "unknown") else value

    return {str(r.image_id): {"age": None if known(r.age) is None else float(r.age), "sex": known(r.sex),
                              "anatom_site": known(r.localization)}
            for r in frame.itertuples(index=False)}


def encode_request(path: Path, perturb: str | None, context: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """Body and content type: the file's own bytes, or a perturbed re-encoding as JPEG; with
    ``context``, the JSON request carrying that image as base64 and the clinical fields."""
    if perturb is None:
        ctype = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        body = path.read_bytes()
    elif perturb not in PERTURB_FNS:
        raise ValueError(f"unknown --perturb {perturb!r}; choose one of {', '.join(PERTURBATIONS)}")
    else:
        with Image.open(path) as img:
            out = PERTURB_FNS[perturb](img.convert("RGB"))
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=95)
        body, ctype = buf.getvalue(), "image/jpeg"
    if context is None:
        return body, ctype
    return json.dumps({"image": base64.b64encode(body).decode("ascii"), **context}).encode(), "application/json"


Sender = Callable[[bytes, str, str, float], tuple[int, str, str]]
"""Sends one request: (body, content type, inference id asked for, timeout s) -> (HTTP status,
inference id the endpoint reports, response text). Raises OSError when nothing came back."""


def http_sender(endpoint: str, allow_remote: bool = False, token: str | None = None) -> Sender:
    """POST to ``<endpoint>/invocations`` (the local endpoint or any server with the SageMaker HTTP
    contract); the id the endpoint echoes in ``X-Inference-Id`` wins over the one asked for."""
    base = check_loopback(endpoint, allow_remote)

    def send(body: bytes, content_type: str, asked: str, timeout: float) -> tuple[int, str, str]:
        req = urllib.request.Request(f"{base}/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": "application/json",
                                              REQUEST_ID_HEADER: asked,
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, headers, text = resp.status, resp.headers, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, headers, text = exc.code, exc.headers, exc.read().decode("utf-8", "replace")
        except urllib.error.URLError as exc:
            raise OSError(str(exc.reason)) from exc
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = {}
        reported = headers.get("X-Inference-Id") or (payload.get("inference_id") if isinstance(payload, dict)
                                                     else None) or asked
        return status, reported, text

    return send


def sagemaker_sender(endpoint_name: str, region: str | None = None, timeout: float = 30.0) -> Sender:
    """InvokeEndpoint on the SageMaker endpoint ``endpoint_name`` (boto3 ``sagemaker-runtime``; the
    usual credential chain, ``AWS_ENDPOINT_URL`` honoured). Each call is real, billed inference.

    The asked id goes as ``InferenceId``: SageMaker writes it into the capture line's
    ``eventMetadata.inferenceId``, the only id a label can be joined on (the line's ``eventId`` is
    never returned to the caller). A model error (the container answered 4xx/5xx) keeps the
    container's status and message (``OriginalStatusCode``/``OriginalMessage``)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.client("sagemaker-runtime", region_name=region,
                              config=Config(read_timeout=timeout, retries={"mode": "standard", "max_attempts": 3}))
    except BotoCoreError as exc:  # typically NoRegionError
        raise ValueError(f"cannot reach SageMaker endpoint {endpoint_name!r}: {exc}; pass --region or set "
                         "AWS_DEFAULT_REGION") from exc

    def send(body: bytes, content_type: str, asked: str, _timeout: float) -> tuple[int, str, str]:
        try:
            resp = client.invoke_endpoint(EndpointName=endpoint_name, Body=body, ContentType=content_type,
                                          Accept="application/json", InferenceId=asked)
            return 200, asked, resp["Body"].read().decode("utf-8", "replace")
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("OriginalStatusCode") or exc.response.get("ResponseMetadata", {}).get(
                "HTTPStatusCode") or 500
            message = exc.response.get("OriginalMessage") or error.get("Message") or error.get("Code", "")
            return int(status), asked, json.dumps({"error": str(message)})
        except BotoCoreError as exc:  # no credentials, no connection, read timeout
            raise OSError(f"{type(exc).__name__}: {exc}") from exc

    return send


def write_labels_atomic(folder: str | Path, rows: list[tuple[str, str]]) -> Path:
    """Drop ``inference_id,label`` rows as a new CSV, published atomically (:mod:`ml_code.atomic`),
    owner-only (0600) as the captured requests they label."""
    name = f"labels-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}.csv"
    path = Path(folder) / name
    with atomic_open(path, 0o600, text=True) as fh:
        pd.DataFrame(rows, columns=["inference_id", "label"]).to_csv(fh, index=False)
    return path


def simulate_traffic(endpoint: str, images: Sequence[Path], *, rate: float = 5.0, limit: int = 100,
                     max_seconds: float = 300.0, perturb: str | None = None,
                     labels: dict[str, str] | None = None, labels_out: str | Path | None = None,
                     wrong_labels: float = 0.0, seed: int = 0, timeout: float = 30.0,
                     allow_remote: bool = False, classes: Sequence[str] | None = None,
                     context: dict[str, dict[str, Any]] | None = None,
                     token: str | None = None, sender: Sender | None = None) -> dict[str, Any]:
    """Send up to ``limit`` images at ``rate`` req/s for at most ``max_seconds``; return a summary.

    ``context`` (from :func:`load_context`) sends each image whose stem it lists as a JSON
    request with that clinical context; other images go as bare image bodies. ``token`` is sent
    as ``Authorization: Bearer <token>`` (an endpoint with an invocation token). ``sender``
    replaces the HTTP POST to ``endpoint`` (e.g. :func:`sagemaker_sender`); the requests, the
    order and the labels are built the same way whichever sends them."""
    send = sender or http_sender(endpoint, allow_remote, token)
    base = endpoint if sender is not None else check_loopback(endpoint, allow_remote)
    if rate <= 0 or limit <= 0 or max_seconds <= 0:
        raise ValueError("--rate, --limit and --max-seconds must be positive")
    if not 0.0 <= wrong_labels <= 1.0:
        raise ValueError(f"--wrong-labels {wrong_labels} must be a fraction in [0, 1]")
    rng = np.random.default_rng(seed)
    order = [images[i] for i in rng.permutation(len(images))[:limit]]
    label_classes = sorted(set(classes or (labels or {}).values()))
    statuses: Counter = Counter()
    predicted: Counter = Counter()
    latencies: list[float] = []
    label_rows: list[tuple[str, str]] = []
    n_wrong = 0
    started = time.monotonic()
    for i, path in enumerate(order):
        due = started + i / rate
        now = time.monotonic()
        if due - started > max_seconds or now - started > max_seconds:
            break
        if due > now:
            time.sleep(due - now)
        body, ctype = encode_request(path, perturb, (context or {}).get(path.stem))
        asked = f"sim-{uuid.uuid4().hex}"
        t0 = time.monotonic()
        try:
            status, inference_id, text = send(body, ctype, asked, timeout)
        except OSError as exc:
            statuses[f"connection_error:{type(exc).__name__}"] += 1
            continue
        latencies.append((time.monotonic() - t0) * 1000.0)
        statuses[str(status)] += 1
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = {}
        if status != 200 or not isinstance(payload, dict):
            continue
        predicted[str(payload.get("predicted_class"))] += 1
        if labels is not None and path.stem in labels:
            label = labels[path.stem]
            if wrong_labels > 0 and rng.random() < wrong_labels and len(label_classes) > 1:
                label = str(rng.choice([c for c in label_classes if c != label]))
                n_wrong += 1
            label_rows.append((inference_id, label))
    elapsed = time.monotonic() - started
    labels_file = write_labels_atomic(labels_out, label_rows) if labels_out and label_rows else None
    sent = sum(statuses.values())
    return {
        "endpoint": base,
        "perturb": perturb,
        "sent": sent,
        "ok": statuses.get("200", 0),
        "statuses": dict(statuses),
        "elapsed_seconds": round(elapsed, 3),
        "achieved_rate": round(sent / elapsed, 3) if elapsed > 0 else 0.0,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "predicted_classes": dict(predicted),
        "labels_file": str(labels_file) if labels_file else None,
        "labels_written": len(label_rows),
        "labels_flipped": n_wrong,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ml_code.tools.traffic", description=__doc__.split("\n\n")[0],
                                epilog="--endpoint-name costs money: every request is real inference on the "
                                       "SageMaker endpoint, billed by AWS, and is captured and monitored like "
                                       "clinical traffic.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="base URL, e.g. http://127.0.0.1:8080")
    target.add_argument("--endpoint-name", help="a SageMaker endpoint, invoked with boto3 sagemaker-runtime "
                        "InvokeEndpoint and your AWS credentials: REAL INFERENCE ON AWS, billed per request "
                        "(keep --limit small)")
    p.add_argument("--region", help="AWS region of --endpoint-name (default: the AWS configuration's)")
    p.add_argument("--images", required=True, help="folder of .jpg/.png images (searched recursively)")
    p.add_argument("--rate", type=float, default=5.0, help="requests per second (default 5)")
    p.add_argument("--limit", type=int, default=100, help="maximum number of requests (default 100)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop after this long (default 300)")
    p.add_argument("--perturb", choices=PERTURBATIONS, default=None, help="simulate a different acquisition")
    p.add_argument("--metadata", help="CSV with image_id,dx giving the true label of each image file stem")
    p.add_argument("--with-context", action="store_true",
                   help="send JSON requests with each image's age, sex and site from --metadata")
    p.add_argument("--labels-out", help="labels landing folder: an inference_id,label CSV is dropped there")
    p.add_argument("--wrong-labels", type=float, default=0.0, help="fraction of labels to flip (quality drop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback endpoint")
    p.add_argument("--token-file", help="file holding the endpoint's invocation token (sent as a bearer token)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.labels_out and not args.metadata:
            raise ValueError("--labels-out needs --metadata (the CSV of true labels per image_id)")
        if args.with_context and not args.metadata:
            raise ValueError("--with-context needs --metadata (the CSV with age, sex and localization per image_id)")
        if args.endpoint_name and (args.token_file or args.allow_remote):
            raise ValueError("--token-file and --allow-remote are for --endpoint URL; --endpoint-name uses your AWS "
                             "credentials")
        sender = sagemaker_sender(args.endpoint_name, args.region, args.timeout) if args.endpoint_name else None
        summary = simulate_traffic(
            args.endpoint or f"sagemaker:{args.endpoint_name}", list_images(args.images), rate=args.rate,
            limit=args.limit, sender=sender,
            max_seconds=args.max_seconds, perturb=args.perturb,
            labels=load_labels(args.metadata) if args.metadata else None, labels_out=args.labels_out,
            wrong_labels=args.wrong_labels, seed=args.seed, timeout=args.timeout, allow_remote=args.allow_remote,
            context=load_context(args.metadata) if args.with_context else None,
            token=read_token(args.token_file) if args.token_file else None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0 if summary["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
