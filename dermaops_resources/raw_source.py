"""Reading a user's raw dataset (a local folder or an ``s3://`` prefix) for ingestion.

The dataset is outside DermaOps's own buckets: a HAM10000 download, an ISIC Archive
export, or a hospital drop. It is only read, never modified.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from ml_code.data.ingest import IMAGE_SUBDIRS, METADATA_FILE_NAMES

# ml_code.data.ingest's image folders ("" = the dataset root), plus the ISIC Archive download's folder.
IMAGE_DIRS = frozenset([*(d or "." for d in IMAGE_SUBDIRS), "ISIC-images"])


class RawSourceError(ValueError):
    """The raw dataset location is unusable as a whole (missing, no metadata file...)."""


class RawSource:
    """A dataset laid out like HAM10000 or an ISIC export: one metadata CSV and image files."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.is_s3 = uri.startswith("s3://")
        if self.is_s3:
            import boto3

            parsed = urlparse(self.uri)
            self.bucket, self.prefix = parsed.netloc, parsed.path.lstrip("/")
            self._s3 = boto3.client("s3")
        else:
            self.root = Path(uri[7:] if uri.startswith("file://") else uri).expanduser()
            if not self.root.is_dir():
                raise RawSourceError(
                    f"Raw dataset folder {self.root} does not exist. Set DERMAOPS_RAW_URI to a folder holding "
                    "HAM10000_metadata.csv (or an ISIC metadata.csv) and the images, or run `dermaops demo-data`."
                )

    # -- listing ------------------------------------------------------------------------
    @cached_property
    def _keys(self) -> list[str]:
        """Relative names of every file in the dataset (one listing, reused)."""
        if self.is_s3:
            names = []
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    names.append(obj["Key"][len(self.prefix):].lstrip("/"))
            return names
        return [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]

    def metadata_name(self) -> str:
        keys = set(self._keys)
        for name in METADATA_FILE_NAMES:
            if name in keys:
                return name
        raise RawSourceError(
            f"No metadata CSV in {self.uri}: expected one of {', '.join(METADATA_FILE_NAMES[:2])} at its top level "
            "(HAM10000: lesion_id,image_id,dx,dx_type,age,sex,localization; ISIC export: isic_id,diagnosis,...)."
        )

    @cached_property
    def image_index(self) -> dict[str, str]:
        """image_id -> relative file name of every file in the known image folders.

        Files with an unexpected extension are offered too, so that validation quarantines
        them with a reason instead of calling the image missing."""
        index: dict[str, str] = {}
        for name in self._keys:
            path = Path(name)
            if path.parent.as_posix() in IMAGE_DIRS and not path.name.startswith("."):
                index.setdefault(path.stem, name)
        return index

    def read(self, name: str) -> bytes:
        if self.is_s3:
            key = f"{self.prefix.rstrip('/')}/{name}" if self.prefix else name
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return (self.root / name).read_bytes()


def landed_batches(landing_uri: str) -> list[str]:
    """URIs of the batches in the landing location, in name order.

    A landed batch is a folder directly under the landing location laid out like a dataset
    (its own metadata CSV at its top level, its images beside it), so a clinic's export can
    be dropped as it is. Files outside such a folder are not a batch and are left alone. A
    landing folder that does not exist yet holds no batches."""
    uri = landing_uri.rstrip("/")
    if not uri:
        return []
    if not uri.startswith("s3://") and not Path(uri.removeprefix("file://")).expanduser().is_dir():
        return []
    batches = set()
    for key in RawSource(uri)._keys:
        folder, _, file_name = key.partition("/")
        if file_name in METADATA_FILE_NAMES:  # a metadata CSV directly inside a top-level folder
            batches.add(folder)
    return [f"{uri}/{name}" for name in sorted(batches)]

