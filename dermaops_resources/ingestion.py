"""Ingestion service: validate a raw dataset and publish it content-addressed.

Called by the ``raw_images`` asset. Every accepted image is stored once under
``images/<sha[:2]>/<sha><ext>`` in the raw bucket, so re-ingesting an unchanged
dataset copies nothing; the manifest (one row per accepted image) and the
quarantine list (one row per rejected row or file, with its reason) are
published under ``manifests/<manifest_sha256>/``.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml_code import ingest

from .handles import RawImagesHandle
from .object_store import ObjectStore
from .raw_source import RawSource


@dataclass
class IngestStats:
    copied: int = 0
    already_stored: int = 0


def pseudonym_salt(home: Path) -> str:
    """Salt for pseudonymising patient identifiers: from DERMAOPS_PSEUDONYM_SALT, else a random
    secret created once under DERMAOPS_HOME (0600). Never committed, never logged."""
    env = os.environ.get("DERMAOPS_PSEUDONYM_SALT", "")
    if env:
        return env
    path = home / "secrets" / "pseudonym_salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def ingest_dataset(source_uri: str, store: ObjectStore, salt: str, limits: ingest.ImageLimits | None = None,
                   log: Callable[[str], None] = lambda msg: None,
                   max_workers: int = 8) -> tuple[RawImagesHandle, IngestStats]:
    """Validate every metadata row and image of ``source_uri``; store accepted images once.

    Works the same for a local folder and an ``s3://`` prefix; the per-row and per-file
    rules are ``ml_code.ingest``'s. Two rows whose files have identical bytes keep only
    the first (the same picture under two ids would otherwise leak across splits)."""
    limits = limits or ingest.ImageLimits()
    source = RawSource(source_uri)
    name = source.metadata_name()
    metadata = ingest.read_metadata(name, source.read(name))
    layout = ingest.detect_layout(metadata)
    good, quarantined = ingest.normalise_metadata(metadata, layout, salt)
    log(f"metadata: {len(metadata)} rows in {layout} layout, {len(good)} valid, {len(quarantined)} quarantined")

    index = source.image_index
    stats = IngestStats()
    lock = threading.Lock()

    def check_one(meta: dict) -> tuple[dict, ingest.ImageInfo | None, bytes | None, str]:
        image_id = str(meta["image_id"])
        file_name = index.get(image_id)
        if file_name is None:
            return meta, None, None, (f"no image file {image_id}.jpg/.jpeg/.png in the dataset (looked under "
                                      "images/ and the HAM10000 part folders); add the file or drop the row")
        try:
            data = source.read(file_name)
            return meta, ingest.inspect_image(data, Path(file_name).name, limits), data, ""
        except ingest.ImageRejected as exc:
            return meta, None, None, exc.reason

    rows: list[dict] = []
    rejects: list[dict[str, str]] = []
    by_sha: dict[str, str] = {}

    def publish(info: ingest.ImageInfo, data: bytes) -> None:
        key = f"images/{info.image_key}"
        exists = store.exists(store.uri("raw", key))
        if not exists:
            store.put_bytes("raw", key, data)
        with lock:
            if exists:
                stats.already_stored += 1
            else:
                stats.copied += 1

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        uploads = []
        for meta, info, data, reason in pool.map(check_one, good.to_dict("records")):
            image_id = str(meta["image_id"])
            if info is None:
                rejects.append({"image_id": image_id, "stage": "image", "reason": reason})
            elif info.sha256 in by_sha:
                rejects.append({"image_id": image_id, "stage": "image",
                                "reason": f"same bytes as image {by_sha[info.sha256]!r}; duplicate pictures are "
                                          "kept once (they would leak across splits)"})
            else:
                by_sha[info.sha256] = image_id
                rows.append(ingest.manifest_row(meta, info))
                uploads.append(pool.submit(publish, info, data))
        for upload in uploads:
            upload.result()

    manifest = ingest.build_manifest(rows)
    quarantine = pd.concat([quarantined, ingest.quarantine_frame(rejects)], ignore_index=True)
    manifest_csv = ingest.canonical_manifest_csv(manifest)
    mhash = ingest.manifest_hash(manifest)
    # The quarantine is published first: a manifest key never exists without its quarantine list.
    quarantine_uri = store.put_bytes("raw", f"manifests/{mhash}/quarantine.csv", _csv(quarantine))
    manifest_uri = store.put_bytes("raw", f"manifests/{mhash}/manifest.csv", manifest_csv)
    counts = manifest["dx"].value_counts().sort_index()
    handle = RawImagesHandle(
        manifest_uri=manifest_uri, manifest_hash=mhash, images_prefix_uri=store.uri("raw", "images"),
        quarantine_uri=quarantine_uri, num_images=len(manifest), num_quarantined=len(quarantine),
        class_counts={str(k): int(v) for k, v in counts.items()}, source_uri=_redact(source_uri),
        source_layout=layout,
    )
    return handle, stats


def _csv(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()


def _redact(uri: str) -> str:
    """Only the location's scheme and name: a local path may contain a user's name."""
    return uri if uri.startswith("s3://") else Path(uri.removeprefix("file://")).name or uri
