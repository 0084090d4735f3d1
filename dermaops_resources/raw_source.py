"""Reading a user's raw dataset (a local folder or an ``s3://`` prefix) for ingestion.

The dataset is outside DermaOps's own buckets: a HAM10000 download, an ISIC Archive
export, or a hospital drop. It is only read, never modified.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

METADATA_NAMES = ("HAM10000_metadata.csv", "metadata.csv", "HAM10000_metadata")
IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "ISIC-images", ".")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class RawSourceError(ValueError):
    """The raw dataset location is unusable as a whole (missing, no metadata file...)."""


class RawSource:
    """A dataset laid out like HAM10000 or an ISIC export: one metadata CSV and image files."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.is_s3 = uri.startswith("s3://")
        self._index: dict[str, str] | None = None
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
        keys = set(self._keys_cached())
        for name in METADATA_NAMES:
            if name in keys:
                return name
        raise RawSourceError(
            f"No metadata CSV in {self.uri}: expected one of {', '.join(METADATA_NAMES[:2])} at its top level "
            "(HAM10000: lesion_id,image_id,dx,dx_type,age,sex,localization; ISIC export: isic_id,diagnosis,...)."
        )

    def _keys_cached(self) -> list[str]:
        if not hasattr(self, "_all_keys"):
            self._all_keys = self._keys()
        return self._all_keys

    def image_index(self) -> dict[str, str]:
        """image_id -> relative file name, for every image-like file in the known image folders."""
        if self._index is None:
            index: dict[str, str] = {}
            for name in self._keys_cached():
                path = Path(name)
                folder = path.parent.as_posix() or "."
                if path.suffix in IMAGE_EXTS and (folder in IMAGE_DIRS or folder == "."):
                    index.setdefault(path.stem, name)
                elif folder in IMAGE_DIRS and not path.name.startswith("."):
                    # A file with an unexpected extension in an image folder: still offer it, so that
                    # validation quarantines it with a reason instead of calling the image missing.
                    index.setdefault(path.stem, name)
            self._index = index
        return self._index

    def read(self, name: str) -> bytes:
        if self.is_s3:
            key = f"{self.prefix.rstrip('/')}/{name}" if self.prefix else name
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return (self.root / name).read_bytes()
