"""A monitored endpoint's store for monitoring tests and benchmarks: a real (tiny, untrained)
model package, its baseline, the registry entry and the handles the monitoring assets read,
plus capture files written the way the local endpoint writes them (``CaptureWriter`` keys,
``capture_record`` lines, answers with the ``image_features`` and ``drift_embedding`` the served
handlers compute)."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from ml_code.package.image_features import ANSWER_FIELD, answer_features, sent_size
from ml_code.package.image_policy import decode_square_with_facts
from ml_code.serving.serve import capture_record

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def model_package(tmp: Path, size: int, classes: list[str] = CLASSES) -> Path:
    """A model.tar.gz of an untrained ``dermanet`` at ``size`` px (weights seeded: reproducible)."""
    import torch

    from ml_code.package import networks
    from ml_code.package.loader import write_code

    torch.manual_seed(0)
    model_dir = tmp / "pkg"
    model_dir.mkdir(parents=True)
    torch.save(networks.build_network("dermanet", len(classes)).state_dict(), model_dir / "model.pt")
    (model_dir / "model_config.json").write_text(json.dumps({
        "arch": "dermanet", "classes": classes, "image_size": size, "mean": [0.6, 0.45, 0.4],
        "std": [0.2, 0.2, 0.2], "temperature": 1.0}))
    write_code(model_dir)
    tar_path = tmp / "model.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(model_dir.rglob("*")):
            tar.add(p, arcname=p.relative_to(model_dir).as_posix(), recursive=False)
    return tar_path


def jpeg_bodies(images: np.ndarray, width: int, height: int) -> list[bytes]:
    """Each image resized to ``width`` x ``height`` and JPEG-encoded, as a client would send it."""
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).resize((width, height)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def endpoint_features(image: bytes, image_size: int) -> dict[str, float]:
    """The ``image_features`` the served handlers put in their answer to ``image`` (the image file's
    bytes) for a model of ``image_size`` px: the package's own decode and feature code, as
    ``inference.predict_fn`` calls them."""
    view, facts = decode_square_with_facts(image, image_size)
    return answer_features(view, sent_size(facts))


def served_answer_fields(bodies: list[bytes], model_tar: Path, workdir: Path) -> list[dict]:
    """The monitoring fields (``image_features``, ``drift_embedding``) of the package's own answer to
    each body (its served handlers, ``input_fn`` -> ``predict_fn`` -> ``output_fn``): what today's
    endpoint serving ``model_tar`` returns besides the prediction."""
    from ml_code.monitoring.baseline import load_packaged_model
    from ml_code.package.drift_embedding import ANSWER_FIELD as EMBEDDING_FIELD

    api, model = load_packaged_model(model_tar, workdir)
    out = []
    for body in bodies:
        answer = json.loads(api.output_fn(api.predict_fn(api.input_fn(body, "image/jpeg"), model), "application/json"))
        out.append({ANSWER_FIELD: answer[ANSWER_FIELD], EMBEDDING_FIELD: answer[EMBEDDING_FIELD]})
    return out


def write_captures(folder: Path, bodies: list[bytes], n_records: int, per_file: int, start: datetime,
                   seconds: float, seed: int = 0, first_id: int = 0, *, image_size: int | None,
                   answer_fields: list[dict] | None = None) -> list[Path]:
    """``n_records`` capture lines in files of ``per_file`` under ``folder`` (the endpoint's
    ``<capture root>/<endpoint>/AllTraffic``), in the ``CaptureWriter`` key layout
    ``yyyy/mm/dd/hh/<yyyymmddThhmmssffffff>-<uuid8>.jsonl``, requests spread evenly over
    ``seconds`` from ``start``. Bodies cycle through ``bodies``; answers are random probabilities
    with, as today's endpoint answers, the ``image_features`` of each body at ``image_size`` px
    (:func:`endpoint_features`); ``image_size=None`` writes answers without them, as packages
    before them did. ``answer_fields`` (one dict a body, :func:`served_answer_fields`) replaces those
    features with the served package's own monitoring fields, the projected embedding too."""
    rng = np.random.default_rng(seed)
    if answer_fields is None:
        answer_fields = [{} if image_size is None else {ANSWER_FIELD: endpoint_features(b, image_size)} for b in bodies]
    paths = []
    for f0 in range(0, n_records, per_file):
        n = min(per_file, n_records - f0)
        lines = []
        probs = rng.dirichlet(np.ones(len(CLASSES)), size=n)
        for j in range(n):
            i = f0 + j
            when = start + timedelta(seconds=seconds * i / max(1, n_records))
            p = probs[j]
            answer = {"predicted_class": CLASSES[int(p.argmax())],
                      "probabilities": {c: float(v) for c, v in zip(CLASSES, p)}}
            answer.update(answer_fields[(first_id + i) % len(bodies)])
            lines.append(json.dumps(capture_record(
                body=bodies[(first_id + i) % len(bodies)], content_type="image/jpeg", response_text=json.dumps(answer),
                event_id=str(uuid.UUID(int=first_id + i + 1)), inference_id=f"bench-{first_id + i:09d}",
                inference_time=when.timestamp(), package_version=1, latency_ms=float(rng.uniform(5, 40))),
                separators=(",", ":")))
        published = start + timedelta(seconds=seconds * (f0 + n) / max(1, n_records))
        path = folder / published.strftime("%Y/%m/%d/%H") / (
            f"{published.strftime('%Y%m%dT%H%M%S%f')}-{uuid.UUID(int=first_id + f0 + 1).hex[-8:]}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def solid_capture(store, key: str, values: list[int], side: int = 4) -> str:
    """A capture file at ``key`` (logs bucket) of one request per value: a ``side`` px PNG of that
    grey level, so a decoded model view says which line it came from. Returns the file's URI."""
    lines = []
    for i, value in enumerate(values):
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (value,) * 3).save(buf, format="PNG")
        lines.append(json.dumps(capture_record(
            body=buf.getvalue(), content_type="image/png", response_text=json.dumps({"predicted_class": "nv"}),
            event_id=f"e{value}", inference_id=f"i{value}", inference_time=1.7e9 + i, package_version=1)))
    return store.put_bytes("logs", key, ("\n".join(lines) + "\n").encode())


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
