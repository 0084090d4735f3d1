"""Reading a user's raw dataset (a local folder or an ``s3://`` prefix) for ingestion.

The dataset is outside DermaOps's own buckets: a HAM10000 download, an ISIC Archive
export, or a hospital drop. It is only read, never modified.
"""

from __future__ import annotations

import hashlib
import os
import stat
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from dermaops_resources.object_store import local_version
from ml_code.data.ingest import IMAGE_SUBDIRS, METADATA_FILE_NAMES

# ml_code.data.ingest's image folders ("" = the dataset root), plus the ISIC Archive download's folder.
IMAGE_DIRS = frozenset([*(d or "." for d in IMAGE_SUBDIRS), "ISIC-images"])


SYMLINK_REASON = "symbolic link: not followed; copy the file itself"
"""Why a link in a raw or landing folder is skipped: following it would let a drop read (and
publish into the raw store) any file the worker can reach, e.g. another patient's records."""


class RawSourceError(ValueError):
    """The raw dataset location is unusable as a whole (missing, no metadata file...)."""


class NotFollowed(RawSourceError):
    """A name in the dataset is a symbolic link, which is never followed; ``reason`` says so."""

    def __init__(self, reason: str = SYMLINK_REASON):
        super().__init__(reason)
        self.reason = reason


LANDING_STATE_PREFIX = "sensor-state/raw_landing"
"""Where the landing sensor keeps what it has observed (``dermaops_assets.sensors``): one small
immutable JSON object per state change in the ``logs`` bucket, ``<prefix>/<seq>.json``, holding
per pending batch [digest, time the sensor first saw that digest, files] and per completed
batch its digest, all keyed by ``batch_ref``."""


def batches_still_arriving(store) -> set[str]:
    """References of the landed batches the landing sensor has seen but not yet judged complete
    (newest state it wrote; empty when it has written none, e.g. no sensor runs here).

    Ingestion skips them: a run started for another batch, or by drift, must not take a batch
    that is still being copied; the sensor requests its own run once the batch is complete."""
    states = list(store.list(store.uri("logs", LANDING_STATE_PREFIX)))
    if not states:
        return set()
    return set(store.get_json(states[-1].uri).get("pending", {}))


def batch_ref(name: str, salt: str) -> str:
    """A stable pseudonym for a landed batch folder (12 hex of a salted sha256).

    Folder names are chosen by uploaders and may name a patient (``Smith_John_MRN12345/``), so
    run keys, tags, sensor cursors and UI metadata carry this reference instead; the name stays
    in the store. Salted with the deployment's pseudonym secret so it cannot be reversed by
    hashing candidate names."""
    return hashlib.sha256(f"{salt}\x00landing-batch\x00{name}".encode()).hexdigest()[:12]


class RawSource:
    """A dataset laid out like HAM10000 or an ISIC export: one metadata CSV and image files."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.is_s3 = uri.startswith("s3://")
        self.root_is_link = False
        self._versions: dict[str, str] = {}  # S3: name -> size and ETag, from the listing
        self._unlinked_folders: dict[str, bool] = {}  # local: folder -> no symbolic link on its way
        if self.is_s3:
            import boto3

            parsed = urlparse(self.uri)
            self.bucket, self.prefix = parsed.netloc, parsed.path.lstrip("/")
            self._s3 = boto3.client("s3")
        else:
            self.root = Path(uri[7:] if uri.startswith("file://") else uri).expanduser()
            # A configured dataset root may be a link (the operator chose it); a landed batch
            # folder that is a link is refused by ingestion (see ``root_is_link``).
            self.root_is_link = self.root.is_symlink()
            if not self.root.is_dir():
                raise RawSourceError(
                    f"Raw dataset folder {self.root} does not exist. Set DERMAOPS_RAW_URI to a folder holding "
                    "HAM10000_metadata.csv (or an ISIC metadata.csv) and the images, or run `dermaops demo-data`."
                )

    # -- listing ------------------------------------------------------------------------
    @cached_property
    def _keys(self) -> list[str]:
        """Relative names of every file in the dataset (one listing, reused).

        S3 lists ``<prefix>/``, with its slash: without it a sibling such as ``landing-archive/``
        would be read as part of ``landing``. Locally the walk never follows a symbolic link:
        links are listed (so a row naming one is quarantined with ``SYMLINK_REASON`` rather than
        called missing) but their targets are never opened."""
        if self.is_s3:
            names = []
            folder = f"{self.prefix.rstrip('/')}/" if self.prefix.strip("/") else ""
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            for page in pages:
                for obj in page.get("Contents", []):
                    names.append(obj["Key"][len(folder):])
                    self._versions[names[-1]] = f"s3:{obj.get('Size')}:{obj.get('ETag', '')}"
            return names
        names: list[str] = []
        links: set[str] = set()

        def walk(folder: str, rel: str) -> None:
            # os.walk's split (a link to a folder is a folder, not walked; a link to a file or a broken
            # link is a file), with the link test from the directory entry: no lstat per file
            try:
                entries = list(os.scandir(folder))
            except OSError:  # an unreadable sub-folder is skipped, as os.walk does
                return
            for entry in entries:
                name = f"{rel}{entry.name}"
                if entry.is_symlink():
                    links.add(name)
                if entry.is_dir():
                    if not entry.is_symlink():
                        walk(entry.path, f"{name}/")
                else:
                    names.append(name)

        walk(str(self.root), "")
        self._links = links
        return sorted(names)

    @property
    def links(self) -> set[str]:
        """Relative names that are symbolic links (never followed); always empty on S3."""
        self._keys  # noqa: B018 - the walk fills it
        return getattr(self, "_links", set())

    def metadata_name(self) -> str:
        keys = set(self._keys)
        for name in METADATA_FILE_NAMES:
            if name in keys:
                if name in self.links:
                    raise NotFollowed(f"metadata file {name} is a {SYMLINK_REASON}")
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
        for name in self._keys:  # string splits, not Path objects: this runs once per file
            folder, _, base = name.rpartition("/")
            if (folder or ".") in IMAGE_DIRS and not base.startswith("."):
                dot = base.rfind(".")
                stem = base[:dot] if 0 < dot < len(base) - 1 else base  # what Path(base).stem gives
                index.setdefault(stem, name)
        return index

    def version(self, name: str) -> str | None:
        """A cheap identity of the file's current bytes, without reading them: its size and ETag on
        S3 (from the listing), its size, times and inode locally; None when it
        cannot be told (not listed, a symbolic link on the way or at the end, not a regular file),
        and the caller reads the bytes. Ingestion's memo skips reading and hashing a file whose
        version an earlier run recorded. Locally the object store's ``local_version`` (size, mtime,
        ctime, inode): a rewrite in place changes the ctime even when a tool restores the mtime."""
        if self.is_s3:
            self._keys  # noqa: B018 - the listing fills the versions
            return self._versions.get(name)
        return self.versions([name])[0]

    def versions(self, names: list[str | None]) -> list[str | None]:
        """:meth:`version` of each name (None for a None name), in one pass: a rerun asks for every
        file of the dataset, and the per-call path joins and checks cost more than the stat."""
        if self.is_s3:
            return [self.version(name) if name is not None else None for name in names]
        root, lstat, regular = self._root_text + os.sep, os.lstat, stat.S_ISREG
        found: list[str | None] = []
        for name in names:
            if name is None:
                found.append(None)
                continue
            folder = name.rpartition("/")[0]
            if folder and not self._folder_unlinked(folder):
                found.append(None)
                continue
            try:
                st = lstat(root + name)
            except OSError:
                found.append(None)
                continue
            found.append(f"file:{local_version(st)}" if regular(st.st_mode) else None)
        return found

    @cached_property
    def _root_text(self) -> str:
        return str(self.root)

    def _folder_unlinked(self, folder: str) -> bool:
        """Whether no folder on the way from the root to ``folder`` (relative) is a symbolic link.
        Asked once per folder for :meth:`version`: its answer only picks between the memo and a
        read, and the read checks every folder again as it opens the file; a file reached through
        a link swapped in later has another inode, so its version matches nothing remembered."""
        known = self._unlinked_folders.get(folder)
        if known is None:
            parts = folder.split("/")
            known = not any(os.path.islink(os.path.join(self._root_text, *parts[:i]))
                            for i in range(1, len(parts) + 1))
            self._unlinked_folders[folder] = known
        return known

    def read(self, name: str) -> bytes:
        """The bytes of one file; ``NotFollowed`` for a symbolic link (checked on every folder
        below the root and, with O_NOFOLLOW, on the file itself as it is opened)."""
        if self.is_s3:
            key = f"{self.prefix.rstrip('/')}/{name}" if self.prefix else name
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        path = self.root / name
        parts = Path(name).parts
        if any((self.root.joinpath(*parts[:i])).is_symlink() for i in range(1, len(parts))):
            raise NotFollowed()
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            if path.is_symlink():
                raise NotFollowed() from exc
            raise
        with os.fdopen(fd, "rb") as fh:
            return fh.read()


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
    source = RawSource(uri)
    batches = set()
    for key in source._keys:
        folder, _, file_name = key.partition("/")
        if file_name in METADATA_FILE_NAMES:  # a metadata CSV directly inside a top-level folder
            batches.add(folder)
    # A top-level link to a folder is offered too (its target is not read here), so that
    # ingestion quarantines it with SYMLINK_REASON instead of ignoring it without a word.
    batches.update(link for link in source.links if "/" not in link and (source.root / link).is_dir())
    return [f"{uri}/{name}" for name in sorted(batches)]

