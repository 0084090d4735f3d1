"""Object store: where every byte of DermaOps lives (images, shards, models, captures).

One interface, two implementations: ``LocalObjectStore`` (a folder per bucket under
``DERMAOPS_HOME/store``) and ``S3ObjectStore`` (``dermaops_resources.aws.s3``).
Writes are atomic in both: bytes go to a temporary key first and are published
under the final key only when complete, so a crash never leaves a half object
behind a name that readers trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat as stat_mod
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import dagster as dg

from ml_code.atomic import atomic_open, sync_folder
from pydantic import PrivateAttr

Bucket = str  # one of settings.BUCKETS


@dataclass(frozen=True)
class StoredObject:
    uri: str
    key: str
    size: int
    modified: float
    version: str = ""
    """What changes whenever the bytes change: the ETag on S3; locally size, mtime, ctime and
    inode (ctime cannot be preserved by ``cp -p``/``rsync -a``/unzip, mtime can)."""


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
"""Modes of everything DermaOps creates under ``DERMAOPS_HOME`` (patient images, registry,
metrics, alerts, job folders): only the owner may read. Set explicitly on each folder and
file, never through the process umask, which library code must not change."""
CHILD_UMASK = 0o077
"""Umask of the child processes DermaOps starts (local jobs, the local endpoint server), given
to ``subprocess.Popen(umask=...)``: it applies in the child only, so whatever ``ml_code``
writes there (checkpoints, captures, failure files) is owner-only without this process's
umask changing."""


def private_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` where every folder it creates is ``0700`` (existing folders are left as
    they are: ``secure_home`` tightens the top one).

    ``Path.mkdir(parents=True, mode=...)`` applies ``mode`` to the last folder only and the
    umask to all of them, so each missing folder is made and chmodded here, top down."""
    path = Path(path)
    if path.is_dir():
        return path
    missing: list[Path] = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made by a concurrent writer (with this same function)
        os.chmod(folder, PRIVATE_DIR_MODE)  # the umask may have taken owner bits away
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder; move it away so DermaOps can use it.")
    return path


def secure_home(path: str | os.PathLike) -> Path:
    """``DERMAOPS_HOME``: created ``0700``, and tightened to ``0700`` when it already exists
    with wider permissions (a home made by an older DermaOps), so that nothing below it is
    reachable by other users even where older files are still ``0644``."""
    path = private_dir(path)
    st = path.stat()
    if st.st_mode & 0o077:
        if st.st_uid != os.getuid():
            raise PermissionError(f"DERMAOPS_HOME {path} is readable by other users and belongs to uid "
                                  f"{st.st_uid}, not to this user ({os.getuid()}); point DERMAOPS_HOME at a "
                                  "folder of your own.")
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def _tighten(path: Path) -> None:
    """chmod ``path`` to 0600 when it is wider (a file written before this rule existed)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if mode != PRIVATE_FILE_MODE:
        os.chmod(path, PRIVATE_FILE_MODE)


def private_file(path: str | os.PathLike) -> Path:
    """Make sure ``path`` exists as an owner-only (0600) file, creating it empty if missing."""
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE_MODE)
    os.close(fd)
    _tighten(path)
    return path


def private_sqlite(db_path: str | os.PathLike) -> Path:
    """Prepare a SQLite database path so that the database and its ``-wal``/``-shm``/``-journal``
    companions are 0600: SQLite creates the companions with the database file's own
    permissions, so the database is created 0600 first (an empty file is a valid empty
    database); companions left by an older version are tightened too."""
    path = private_file(db_path)
    for suffix in ("-wal", "-shm", "-journal"):
        _tighten(Path(f"{path}{suffix}"))
    return path


def open_private_append(path: str | os.PathLike, binary: bool = False):
    """``open(path, "a")`` (text, UTF-8; ``"ab"`` with ``binary``) on an owner-only file:
    created 0600, tightened if older. Appends of one ``write`` each stay whole lines."""
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab") if binary else os.fdopen(fd, "a", encoding="utf-8")


def local_version(st: os.stat_result) -> str:
    """A local file's change fingerprint (see ``StoredObject.version``)."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"




def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def join_uri(prefix: str, *parts: str) -> str:
    out = prefix.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


class ObjectStore(dg.ConfigurableResource, ABC):
    """Bucketed blob storage addressed by URIs (``file://`` locally, ``s3://`` on AWS)."""

    @abstractmethod
    def uri(self, bucket: Bucket, key: str) -> str: ...

    @abstractmethod
    def put_bytes(self, bucket: Bucket, key: str, data: bytes) -> str:
        """Atomically publish ``data`` under bucket/key; returns its URI."""

    @abstractmethod
    def put_file(self, bucket: Bucket, key: str, path: str | os.PathLike) -> str: ...

    @abstractmethod
    def get_bytes(self, uri: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none (on every backend)."""

    @abstractmethod
    def download_file(self, uri: str, dest: str | os.PathLike) -> Path: ...

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def list(self, prefix_uri: str, start_after: str | None = None) -> Iterator[StoredObject]:
        """Objects under a prefix in key order, strictly after ``start_after`` (a key) if given."""

    def list_keys(self, prefix_uri: str) -> set[str]:
        """The keys under a prefix, without sizes or versions: a membership test over a whole
        prefix (ingestion's "is this remembered image still stored?") in one listing. Backends
        override it where a key costs less than an object (locally: no stat per file)."""
        return {obj.key for obj in self.list(prefix_uri)}

    @abstractmethod
    def delete(self, uri: str) -> None: ...

    @abstractmethod
    def copy(self, src_uri: str, bucket: Bucket, key: str) -> str:
        """Publish the object at ``src_uri`` (of this store) under bucket/key as well, without its
        bytes passing through this process: a server-side copy on S3, a hard link locally (an
        object is never written in place, only replaced, so two names may share one file).
        FileNotFoundError when there is no object at ``src_uri``. For large immutable objects
        referenced again, such as a rerun's earlier split segments; returns the new URI."""

    def list_level(self, prefix_uri: str) -> tuple[list[str], list[StoredObject]]:
        """One level of a folder-like prefix: (names of the sub-folders, objects directly in it).

        The prefix is a folder: ``landing`` never matches ``landing-archive/``. Backends
        override this with a cheaper call (S3 ``Delimiter='/'``); this fallback lists all."""
        base = prefix_uri.rstrip("/") + "/"
        folders: set[str] = set()
        objects = []
        for obj in self.list(prefix_uri):
            if not obj.uri.startswith(base):
                continue
            rel = obj.uri[len(base):]
            if "/" in rel:
                folders.add(rel.split("/", 1)[0])
            else:
                objects.append(obj)
        return sorted(folders), objects

    def local_path(self, uri: str) -> Path | None:
        """A filesystem path for ``uri`` when the bytes are already local (no copy), else None."""
        return None

    # -- helpers shared by both backends -------------------------------------------------
    def split_uri(self, uri: str) -> tuple[Bucket, str]:
        """(logical bucket, key) of a URI written by this store."""
        from .settings import BUCKETS

        for bucket in BUCKETS:
            base = self.uri(bucket, "").rstrip("/")
            if uri.rstrip("/") == base or uri.startswith(base + "/"):
                return bucket, uri[len(base) + 1:].rstrip("/")
        raise ValueError(f"{uri!r} is not in any DermaOps bucket of this store")

    def upload_dir(self, bucket: Bucket, prefix: str, local_dir: str | os.PathLike) -> str:
        """Upload every file under ``local_dir`` to bucket/prefix/...; returns the prefix URI."""
        root = Path(local_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.put_file(bucket, f"{prefix.rstrip('/')}/{path.relative_to(root).as_posix()}", path)
        return self.uri(bucket, prefix.rstrip("/"))

    def download_dir(self, prefix_uri: str, dest: str | os.PathLike) -> Path:
        dest = Path(dest)
        base = prefix_uri.rstrip("/") + "/"
        for obj in self.list(prefix_uri):
            rel = obj.uri[len(base):] if obj.uri.startswith(base) else Path(obj.key).name
            self.download_file(obj.uri, dest / rel)
        return dest

    def materialize_dir(self, prefix_uri: str, scratch: str | os.PathLike) -> Path:
        """A local directory with the prefix's content: the store's own folder when local."""
        return self.local_path(prefix_uri) or self.download_dir(prefix_uri, scratch)

    def materialize_files(self, prefix_uri: str, names: list[str], dest: str | os.PathLike) -> Path:
        """A local folder ``dest`` holding only ``names`` (relative to ``prefix_uri``, sub-folders
        kept): hard links to the store's own files when they are local (a copy where a link cannot
        be made), downloads otherwise. What a job staged from a manifest sees (``JobSpec.input_files``):
        kilobytes of an earlier output instead of all of it. FileNotFoundError names the first file
        that is not there."""
        dest = Path(dest)
        private_dir(dest)
        base = prefix_uri.rstrip("/")
        for rel in names:
            uri, target = f"{base}/{rel}", dest / rel
            private_dir(target.parent)
            local = self.local_path(uri)
            if local is not None and local.is_file():
                try:
                    os.link(local, target)
                    continue
                except OSError:  # another filesystem: copied below
                    pass
            try:
                self.download_file(uri, target)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"No object at {uri}: a job's declared input file is missing") from exc
        return dest

    def put_json(self, bucket: Bucket, key: str, payload: object) -> str:
        import json

        return self.put_bytes(bucket, key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def get_json(self, uri: str):
        import json

        return json.loads(self.get_bytes(uri))

    def get_json_or(self, uri: str, default: Any) -> Any:
        """``get_json(uri)``, or ``default`` when the object does not exist yet (a monitor's
        first cursor, a training job that died before writing its history). Any other error
        is real and propagates."""
        try:
            return self.get_json(uri)
        except FileNotFoundError:
            return default


def walk_after(root: str | os.PathLike, start_after: str | None = None,
               mtimes: bool = True) -> Iterator[tuple[str, float]]:
    """(relative key, mtime) of files under ``root`` in path-component order, strictly after
    ``start_after``. Folders wholly before the cursor are never opened, so a listing costs the
    depth of the cursor plus the new files, not the whole tree (what S3's StartAfter gives).
    Hidden names (``.x``: unpublished temporary files of atomic writes) are skipped. With
    ``mtimes=False`` the mtime is 0.0 and no file is stat'ed (keys only)."""
    after = [p for p in start_after.split("/") if p] if start_after else []

    def walk(folder: str, rel: list[str], on_path: bool) -> Iterator[tuple[str, float]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        depth = len(rel)
        for entry in entries:
            here_on_path = False
            if on_path and depth < len(after):
                if entry.name < after[depth]:
                    continue
                here_on_path = entry.name == after[depth]
            if entry.is_dir(follow_symlinks=False):
                yield from walk(entry.path, rel + [entry.name], here_on_path)
            elif entry.is_file(follow_symlinks=False):  # a symbolic link is neither: never followed
                if here_on_path and depth == len(after) - 1:
                    continue  # the cursor file itself
                yield "/".join(rel + [entry.name]), entry.stat().st_mtime if mtimes else 0.0

    yield from walk(str(root), [], bool(after))


def file_uri_to_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"{uri!r} is not a local file URI")
    return Path(unquote(parsed.path)) if parsed.scheme else Path(uri)


class LocalObjectStore(ObjectStore):
    """Buckets are folders under ``root``; publish is write-to-temp + ``os.replace``.

    Every key stays inside ``root``: a key with a ``..`` part, a bucket that is not a plain
    folder name, or a folder that is a symbolic link out of the store is refused with
    ``ValueError`` on write and on read (patient data must not be written, or read, from
    wherever a crafted key points). Folders are created 0700 and objects 0600."""

    root: str

    _made: set = PrivateAttr(default_factory=set)

    def _bucket_dir(self, bucket: Bucket) -> Path:
        if not bucket or bucket in (".", "..") or "/" in bucket or "\\" in bucket or bucket.startswith("."):
            raise ValueError(f"Bucket {bucket!r} is not a plain folder name; use one of the DermaOps buckets "
                             "(raw, processed, models, logs).")
        path = Path(self.root) / bucket
        if bucket not in self._made:
            private_dir(path)
            self._made.add(bucket)
        return path

    def _key_path(self, bucket: Bucket, key: str) -> Path:
        """``root/bucket/key``, refusing keys that climb out with ``..`` (checked on the text:
        a missing folder cannot be resolved yet)."""
        rel = key.lstrip("/")
        if any(part == ".." for part in rel.replace("\\", "/").split("/")):
            raise ValueError(f"Key {key!r} in bucket {bucket!r} has a '..' part and would escape the local object "
                             f"store at {self.root}; use a key without '..'.")
        return self._bucket_dir(bucket) / rel

    def _inside(self, path: Path, what: str) -> Path:
        """``path`` resolved (symbolic links followed), or ValueError when that is outside ``root``."""
        resolved = path.resolve()
        root = Path(self.root).resolve()
        if resolved != root and root not in resolved.parents:
            raise ValueError(f"{what} resolves to {resolved}, outside the local object store at {root} (a symbolic "
                             "link or '..' leads out of it); remove the link or use another key.")
        return resolved

    def uri(self, bucket: Bucket, key: str) -> str:
        return self._key_path(bucket, key).as_uri()

    def _path(self, uri: str) -> Path:
        return self._inside(file_uri_to_path(uri), repr(uri))

    def _final_path(self, bucket: Bucket, key: str) -> Path:
        """Where bucket/key is published, its folder created (owner-only) inside the store."""
        final = self._key_path(bucket, key)
        where = f"The folder of key {key!r} in bucket {bucket!r}"
        existing = final.parent
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        self._inside(existing, where)  # before creating folders: never mkdir through a link out
        private_dir(final.parent)
        self._inside(final.parent, where)
        return final

    def _publish(self, bucket: Bucket, key: str, write) -> str:
        final = self._final_path(bucket, key)
        with atomic_open(final, mode=0o600) as fh:  # patient data: owner only
            write(fh)
        return final.as_uri()

    def put_bytes(self, bucket: Bucket, key: str, data: bytes) -> str:
        return self._publish(bucket, key, lambda fh: fh.write(data))

    def put_file(self, bucket: Bucket, key: str, path: str | os.PathLike) -> str:
        def copy(fh):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        return self._publish(bucket, key, copy)

    def get_bytes(self, uri: str) -> bytes:
        path = self._path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"No object at {uri}")
        return path.read_bytes()

    def download_file(self, uri: str, dest: str | os.PathLike) -> Path:
        """A copy of the object at ``dest``, owner-only (0600) like the object itself;
        FileNotFoundError (``dest`` left untouched) when there is no object at ``uri``."""
        dest = Path(dest)
        src = self._path(uri)
        try:
            fh = open(src, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"No object at {uri}") from None
        with fh:
            private_dir(dest.parent)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), PRIVATE_FILE_MODE)
                shutil.copyfileobj(fh, out, 1 << 20)
        return dest

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def list(self, prefix_uri: str, start_after: str | None = None) -> Iterator[StoredObject]:
        base = self._path(prefix_uri)
        if not base.exists():
            return
        bucket, prefix = self.split_uri(base.as_uri())
        if base.is_file():
            if start_after is None or prefix > start_after:
                stat = base.stat()
                yield StoredObject(uri=base.as_uri(), key=prefix, size=stat.st_size, modified=stat.st_mtime,
                                   version=local_version(stat))
            return
        lead = f"{prefix}/" if prefix else ""
        relative_after = None
        if start_after is not None and start_after.startswith(lead):
            relative_after = start_after[len(lead):]  # resume inside this prefix without a full walk
        for rel, modified in walk_after(base, relative_after):
            key = lead + rel
            if start_after is not None and relative_after is None and key <= start_after:
                continue
            path = base / rel
            stat = path.stat(follow_symlinks=False)
            yield StoredObject(uri=path.as_uri(), key=key, size=stat.st_size, modified=modified,
                               version=local_version(stat))

    def list_keys(self, prefix_uri: str) -> set[str]:
        base = self._path(prefix_uri)
        if not base.is_dir():
            return {obj.key for obj in self.list(prefix_uri)}  # a single file, or nothing
        bucket, prefix = self.split_uri(base.as_uri())
        lead = f"{prefix}/" if prefix else ""
        return {lead + rel for rel, _ in walk_after(base, mtimes=False)}

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)

    def copy(self, src_uri: str, bucket: Bucket, key: str) -> str:
        src = self._path(src_uri)
        if not src.is_file():
            raise FileNotFoundError(f"No object at {src_uri}")
        final = self._final_path(bucket, key)
        if final.exists() and os.path.samefile(src, final):
            return final.as_uri()
        link = final.with_name(f".{final.name}.{uuid.uuid4().hex}.link")
        try:
            os.link(src, link)
        except OSError:  # links not allowed here (another file system under the root): copy the bytes
            return self.put_file(bucket, key, src)
        try:
            os.replace(link, final)
        except BaseException:
            link.unlink(missing_ok=True)
            raise
        sync_folder(final.parent)
        return final.as_uri()

    def local_path(self, uri: str) -> Path | None:
        path = self._path(uri)
        return path if path.exists() else None


@dataclass(frozen=True)
class LandedFile:
    """A file in a landing location: key relative to it, size, change fingerprint, mtime."""

    key: str
    size: int = 0
    version: str = ""
    modified: float = 0.0


def _local_landing_root(landing_uri: str) -> Path:
    return file_uri_to_path(landing_uri) if landing_uri.startswith("file://") else Path(landing_uri)


def landing_folders(store: ObjectStore, landing_uri: str) -> list[str]:
    """Names of the folders directly under the landing location (the candidate batches), sorted.

    One cheap call whatever the number of files: S3 ``Delimiter='/'`` on ``<prefix>/`` (so
    ``landing-archive/`` is not inside ``landing``), one ``scandir`` locally. Hidden names and
    symbolic links are not batches: a link is never followed."""
    if landing_uri.startswith("s3://"):
        folders, _ = store.list_level(landing_uri)
        return [f for f in folders if not f.startswith(".")]
    try:
        with os.scandir(_local_landing_root(landing_uri)) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def landing_files(store: ObjectStore, landing_uri: str, folder: str) -> list[LandedFile]:
    """Every file of one landed batch folder, keys relative to ``landing_uri``, in key order.

    Hidden files are included (an upload tool's in-progress temporary file is a change the
    landing sensor must see); symbolic links are skipped, never followed."""
    if landing_uri.startswith("s3://"):
        base = landing_uri.rstrip("/") + "/"
        return [LandedFile(obj.uri[len(base):], obj.size, obj.version, obj.modified)
                for obj in store.list(base + folder) if obj.uri.startswith(base + folder + "/")]
    root = _local_landing_root(landing_uri)
    found = []
    for here, dirs, files in os.walk(root / folder, followlinks=False):
        dirs.sort()
        rel = Path(here).relative_to(root).as_posix()
        for name in files:
            try:
                st = os.lstat(os.path.join(here, name))
            except FileNotFoundError:
                continue  # removed while listing
            if not stat_mod.S_ISREG(st.st_mode):
                continue  # a symbolic link (or a socket, a fifo): not landed data
            found.append(LandedFile(f"{rel}/{name}", st.st_size, local_version(st), st.st_mtime))
    return sorted(found, key=lambda f: f.key)
