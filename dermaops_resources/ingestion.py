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
                   log: Callable[[str], None] = lambda msg: None, max_workers: int = 8) -> tuple[RawImagesHandle, IngestStats]:
    limits = limits or ingest.ImageLimits()
    source = RawSource(source_uri)
    metadata = source.read_metadata()
    layout = ingest.detect_layout(metadata)
    good, quarantined = ingest.normalise_metadata(metadata, layout, salt)
    log(f"metadata: {len(metadata)} rows in {layout} layout, {len(good)} valid, {len(quarantined)} quarantined")

    index = source.image_index()
    stats = IngestStats()
    rejects: list[dict] = []
    lock = threading.Lock()

    def store_one(row) -> dict | None:
        name = index.get(row.image_id)
        if name is None:
            rejects.append({"image_id": row.image_id, "stage": "image",
                            "reason": f"image file for {row.image_id} not found (looked for .jpg/.jpeg/.png "
                                      "under images/ and the HAM10000 part folders)"})
            return None
        try:
            data = source.read(name)
            info = ingest.inspect_image(data, name, limits)
        except ingest.ImageRejected as exc:
            rejects.append({"image_id": row.image_id, "stage": "image", "reason": f"{name}: {exc}"})
            return None
        key = f"images/{info.sha256[:2]}/{info.sha256}{info.extension}"
        exists = store.exists(store.uri("raw", key))
        if not exists:
            store.put_bytes("raw", key, data)
        with lock:
            if exists:
                stats.already_stored += 1
            else:
                stats.copied += 1
        return {"image_key": key.split("/", 1)[1], "sha256": info.sha256, "format": info.format,
                "width": info.width, "height": info.height}

    rows = list(good.itertuples(index=False))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        stored = list(pool.map(store_one, rows))
    keep = [i for i, s in enumerate(stored) if s is not None]
    manifest = good.iloc[keep].reset_index(drop=True)
    extra = pd.DataFrame([stored[i] for i in keep],
                         columns=["image_key", "sha256", "format", "width", "height"])
    manifest = pd.concat([manifest.drop(columns=[c for c in extra.columns if c in manifest.columns]), extra],
                         axis=1)
    manifest = ingest.finalise_manifest(manifest) if hasattr(ingest, "finalise_manifest") else manifest
    quarantine = pd.concat([quarantined, pd.DataFrame(rejects, columns=["image_id", "stage", "reason"])],
                           ignore_index=True)
    mhash = ingest.manifest_hash(manifest)

    manifest_uri = store.put_bytes("raw", f"manifests/{mhash}/manifest.csv", _csv(manifest))
    quarantine_uri = store.put_bytes("raw", f"manifests/{mhash}/quarantine.csv", _csv(quarantine))
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
