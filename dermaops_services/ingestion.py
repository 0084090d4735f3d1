"""Ingestion service: validate a raw dataset and publish it content-addressed.

Called by the ``raw_images`` asset. Every accepted image is stored once under
``images/<sha[:2]>/<sha><ext>`` in the raw bucket, so re-ingesting an unchanged
dataset copies nothing; the manifest (one row per accepted image) and the
quarantine list (one row per rejected row or file, with its reason) are
published under ``manifests/<manifest_sha256>/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ml_code.data import ingest
from ml_code.gc_scope import older_objects_frozen

from dermaops_resources.handles import RawImagesHandle
from dermaops_resources.object_store import ObjectStore
from dermaops_services.raw_source import SYMLINK_REASON, NotFollowed, RawSource, RawSourceError, batch_ref, batches_still_arriving

BATCH_ERRORS = (RawSourceError, ingest.MetadataError, PermissionError, IsADirectoryError)
"""What makes a landed batch unreadable as a whole (its own fault, not the platform's): it is
quarantined and the rest ingested. Other errors (a network failure) still fail the run, which
Dagster retries, rather than silently dropping a good batch."""


@dataclass
class IngestStats:
    copied: int = 0
    already_stored: int = 0
    quarantined_batches: list[tuple[str, str]] = field(default_factory=list)
    """(batch_ref, reason) of each landed batch left out whole; the reason names no file or folder."""
    arriving_batches: list[str] = field(default_factory=list)
    """batch_ref of each landed batch skipped because the landing sensor has not yet seen it complete."""
    remembered: int = 0
    """Images not decoded again: an earlier run accepted the same bytes (the validation memo)."""
    unread: int = 0
    """Of those, images not even read and hashed: the file's version (``RawSource.version``) is the one
    an earlier run read."""
    manifest: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ingest.MANIFEST_COLUMNS)))
    """The published manifest as the typed frame it was written from (rows in metadata order; the
    published CSV is sorted by image id), so a caller that needs more from it (the ``raw_images``
    asset's near-duplicate table) does not read back and parse the file just published."""


MIN_SALT_CHARS = 32
"""Shortest pseudonym salt accepted: 128 bits of entropy as hex. A short or empty salt makes the
salted patient references guessable from a list of patient ids."""


def pseudonym_salt(home: Path, configured: str = "", secret_arn: str = "", region: str = "") -> str:
    """The salt for pseudonymising patient identifiers, never logged or committed.

    In order: ``configured`` (DERMAOPS_PSEUDONYM_SALT); the AWS Secrets Manager secret
    ``secret_arn`` (the AWS backend, created by infra/); else a random salt created once under
    ``home/secrets/pseudonym_salt`` (0600), written to a temporary file and linked into place,
    so two first runs at once end with one salt, and a crash leaves no empty file behind.
    Raises ValueError when the salt found is shorter than :data:`MIN_SALT_CHARS`.
    """
    if configured:
        return _checked_salt(configured, "DERMAOPS_PSEUDONYM_SALT")
    if secret_arn:
        import boto3

        client = boto3.client("secretsmanager", region_name=region or None)
        return _checked_salt(client.get_secret_value(SecretId=secret_arn)["SecretString"].strip(),
                             "the Secrets Manager secret DERMAOPS_PSEUDONYM_SALT_SECRET_ARN names")
    path = home / "secrets" / "pseudonym_salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".salt-", dir=path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic create-if-absent: the first run's salt wins
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    return _checked_salt(path.read_text().strip(), f"the salt file {path}")


def _checked_salt(salt: str, where: str) -> str:
    if len(salt) < MIN_SALT_CHARS:
        raise ValueError(
            f"{where} holds a pseudonym salt of {len(salt)} characters, fewer than {MIN_SALT_CHARS}: patient "
            "references would be guessable. Restore the salt from your backup (references made with it only "
            "match with it), or, for a new deployment with nothing ingested yet, set a random one "
            "(`python -c 'import secrets; print(secrets.token_hex(32))'`) or delete the file to generate one.")
    return salt


@older_objects_frozen()  # a rerun's bookkeeping builds ~10^5 objects: see ml_code.gc_scope
def ingest_dataset(source_uri: str | Sequence[str], store: ObjectStore, salt: str,
                   limits: ingest.ImageLimits | None = None, log: Callable[[str], None] = lambda msg: None,
                   max_workers: int = 8) -> tuple[RawImagesHandle, IngestStats]:
    """Validate every metadata row and image of the source(s); store accepted images once.

    Works the same for a local folder and an ``s3://`` prefix; the per-row and per-file
    rules are ``ml_code.data.ingest``'s. Several sources (the dataset, then landed batches) make
    one manifest; an image id that an earlier source already holds is quarantined, since a
    batch may add pictures but not silently replace a labelled one. Two rows whose files
    have identical bytes keep only the first (the same picture under two ids would otherwise
    leak across splits).

    The first source is the dataset: if its metadata cannot be read the run fails with that
    error (there is nothing to train on). A later source (a landed batch) whose metadata
    cannot be read at all, or which is a symbolic link, is quarantined as a whole with its
    reason (``IngestStats.quarantined_batches`` and one ``stage=batch`` quarantine row) and
    everything else is ingested exactly as if it were absent: one clinic's broken export must
    not stop every retraining. A landed batch the landing sensor still sees arriving is left
    for the run the sensor requests once it is complete (``batches_still_arriving``)."""
    limits = limits or ingest.ImageLimits()
    uris = [source_uri] if isinstance(source_uri, str) else list(source_uri)
    sources: list[RawSource] = []
    frames, quarantine_frames, layouts = [], [], []
    first_source: dict[str, str] = {}
    stats = IngestStats()
    ingested_uris = []
    arriving = batches_still_arriving(store) if len(uris) > 1 else set()
    for position, uri in enumerate(uris):
        label = _redact(uri)
        if position and batch_ref(_folder_name(uri), salt) in arriving:
            stats.arriving_batches.append(batch_ref(_folder_name(uri), salt))
            log(f"landed batch {batch_ref(_folder_name(uri), salt)} is still arriving (landing sensor); left for its own run")
            continue
        try:
            source = RawSource(uri)
            if position and source.root_is_link:
                raise NotFollowed(f"the batch folder is a {SYMLINK_REASON}")
            name = source.metadata_name()
            metadata = ingest.read_metadata(name, source.read(name))
            layout = ingest.detect_layout(metadata)
        except BATCH_ERRORS as exc:
            if not position:
                raise
            ref = batch_ref(_folder_name(uri), salt)
            reason = f"metadata unreadable, batch not ingested: {_without_location(str(exc), uri, f'batch {ref}')}"
            stats.quarantined_batches.append((ref, reason))
            quarantine_frames.append(ingest.quarantine_frame([
                {"image_id": "", "stage": "batch", "reason": f"landed batch {label!r} (ref {ref}): {reason}"}]))
            log(f"landed batch {ref} quarantined as a whole: {reason}")
            continue
        good, quarantined = ingest.normalise_metadata(metadata, layout, salt)
        dialect = ingest.describe_dialect(metadata)
        ids = good["image_id"].astype(str)
        earlier = ids.map(first_source)  # the source that already holds each id, NaN if none
        clash = earlier.notna()
        if clash.any():
            quarantined = pd.concat([quarantined, ingest.quarantine_frame([
                {"image_id": image_id, "stage": "metadata",
                 "reason": f"image id already ingested from {where!r}; a batch adds images, it cannot replace "
                           "one: give the new picture its own id, or correct the row where it was first ingested"}
                for image_id, where in zip(ids[clash], earlier[clash])])], ignore_index=True)
            good, ids = good[~clash], ids[~clash]
        first_source.update(dict.fromkeys(ids.tolist(), label))
        log(f"metadata of {label if not position else batch_ref(_folder_name(uri), salt)}: {len(metadata)} rows in {layout} "
            f"layout ({dialect}), {len(good)} valid, {len(quarantined)} quarantined")
        frames.append(good.assign(_source=len(sources)))
        quarantine_frames.append(quarantined)
        layouts.append(layout)
        sources.append(source)
        ingested_uris.append(uri)
    good = pd.concat(frames, ignore_index=True)

    version = ingest.validation_version(limits)
    memo = _load_memo(store, version)
    checker = _ImageChecker(sources, store, limits, memo.accepted, stats, memo.versions)
    image_ids = good["image_id"].tolist()
    # Rows whose file version an earlier run accepted are answered from the memo in one pass (a
    # stat per file, no read); only the rest go through the worker threads, in row order.
    infos = checker.recall(image_ids, good["_source"].tolist())
    reasons = [""] * len(infos)
    unknown = [position for position, info in enumerate(infos) if info is None]
    if unknown:
        checked = checker.check(_records(good.iloc[unknown]), max_workers)
        for position, (_, info, reason) in zip(unknown, checked, strict=True):
            infos[position], reasons[position] = info, reason
    log(f"images: {checker.decoded} decoded and checked, {stats.remembered} known by content from an earlier "
        "run (not decoded again)")
    _save_memo(store, version, checker.seen, checker.seen_versions, memo)
    accepted, rejects = _accepted_rows(image_ids, infos, reasons)
    manifest = ingest.manifest_frame(good.iloc[accepted], [infos[position] for position in accepted],
                                     metadata_checked=True)  # `good` is normalise_metadata's, validated
    quarantine = pd.concat([*quarantine_frames, ingest.quarantine_frame(rejects)], ignore_index=True)
    manifest_csv = ingest.canonical_manifest_csv(manifest)
    mhash = ingest.manifest_csv_hash(manifest_csv)
    # The quarantine is published first: a manifest key never exists without its quarantine list.
    quarantine_uri = store.put_bytes("raw", f"manifests/{mhash}/quarantine.csv", _csv(quarantine))
    manifest_uri = store.put_bytes("raw", f"manifests/{mhash}/manifest.csv", manifest_csv)
    stats.manifest = manifest
    counts = manifest["dx"].value_counts().sort_index()
    handle = RawImagesHandle(
        manifest_uri=manifest_uri, manifest_hash=mhash, images_prefix_uri=store.uri("raw", "images"),
        quarantine_uri=quarantine_uri, num_images=len(manifest), num_quarantined=len(quarantine),
        class_counts={str(k): int(v) for k, v in counts.items()},
        source_uri=" + ".join(_redact(uri) for uri in ingested_uris), source_layout="+".join(dict.fromkeys(layouts)),
    )
    return handle, stats


MEMO_PREFIX = "ingest-memo"
"""Raw-bucket prefix of the validation memo: ``<prefix>/<validation_version>.json`` (the base) and
``<prefix>/<validation_version>/<hash>.json`` (deltas), each a :data:`MEMO_FORMAT` file."""
MEMO_FORMAT = "dermaops-ingest-memo-v2"
"""One JSON object: ``accepted``, accepted files as columns (:data:`MEMO_COLUMNS`), one entry per
file, and ``versions``, columns ``version_key`` and ``source_sha256`` of the files a run read, so a
rerun can skip reading and hashing an unchanged file (``_version_key``). Each file is published at
once. JSON, not CSV: a 10,000-file memo loads and saves in a few hundredths of a second instead of
tenths."""
MEMO_COLUMNS = ("source_sha256", *ingest.ImageInfo._fields)
MAX_MEMO_DELTAS = 8
"""Deltas a memo may gather before a run rewrites it as one base (:func:`_save_memo`)."""


@dataclass
class _Memo:
    """What :func:`_load_memo` read: accepted files by source sha256, the source sha256 of each file
    version, and the delta files it merged (a rewrite of the base removes them)."""
    accepted: dict[str, ingest.ImageInfo] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    deltas: list[str] = field(default_factory=list)


def _version_key(source: RawSource, name: str, version: str) -> str:
    """The memo's key of one file's version: a hash, so the memo names no folder or file."""
    return hashlib.sha256(f"{source.uri}\0{name}\0{version}".encode()).hexdigest()


def _memo_key(version: str) -> str:
    return f"{MEMO_PREFIX}/{version}.json"


def _load_memo(store: ObjectStore, version: str) -> _Memo:
    """Accepted files by the sha256 of their source bytes, for this validation version, and the
    source sha256 of each file version read: the base and its deltas merged. Empty when there is no
    base or any part cannot be read (it is only a cache); the deltas found are listed either way."""
    memo = _Memo()
    try:
        memo.deltas = sorted(store.list_keys(store.uri("raw", f"{MEMO_PREFIX}/{version}/")))
        base = store.uri("raw", _memo_key(version))
        if not store.exists(base):
            return memo
        for uri in [base, *(store.uri("raw", key) for key in memo.deltas)]:
            stored = json.loads(store.get_bytes(uri))
            if stored.get("format") != MEMO_FORMAT:
                return _Memo(deltas=memo.deltas)
            accepted = stored["accepted"]
            if not all(isinstance(v, int) for c in ("width", "height") for v in accepted[c]):
                return _Memo(deltas=memo.deltas)
            infos = map(ingest.ImageInfo._make, zip(*(accepted[c] for c in ingest.ImageInfo._fields), strict=True))
            memo.accepted.update(zip(accepted["source_sha256"], infos, strict=True))
            memo.versions.update(zip(stored["versions"]["version_key"], stored["versions"]["source_sha256"],
                                     strict=True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return _Memo(deltas=memo.deltas)
    memo.versions = {k: v for k, v in memo.versions.items() if v in memo.accepted}
    return memo


def _memo_payload(accepted: dict[str, ingest.ImageInfo], versions: dict[str, str]) -> bytes:
    sources = sorted(accepted)
    fields = ingest.info_columns([accepted[source] for source in sources])
    pairs = sorted(versions.items())
    return json.dumps({
        "format": MEMO_FORMAT,
        "accepted": {"source_sha256": sources, **{c: list(fields[c]) for c in MEMO_COLUMNS[1:]}},
        "versions": {"version_key": [k for k, _ in pairs], "source_sha256": [v for _, v in pairs]},
    }, separators=(",", ":")).encode()


def _save_memo(store: ObjectStore, version: str, seen: dict[str, ingest.ImageInfo],
               seen_versions: dict[str, str] | None = None, loaded: _Memo | None = None) -> None:
    """Publish this run's accepted files (``seen``) and file versions as the memo for ``version``.

    When the memo ``loaded`` at the start of the run already holds nearly all of them (at most a
    tenth of its files gone since, fewer than :data:`MAX_MEMO_DELTAS` deltas), only what this run
    adds is published, as a delta: a rerun that adds 1% of a dataset writes 1% of a memo, not all of
    it again. Otherwise the memo is rewritten as one base and the deltas it replaces are deleted
    after it is published. Entries a delta leaves behind for files since removed are still true
    (an accepted file is named by the hash of its bytes, a version by the file's identity), so a
    lingering or doubly-merged delta can make the cache larger, never wrong."""
    versions = {k: v for k, v in (seen_versions or {}).items() if v in seen}
    loaded = loaded or _Memo()
    gone = sum(1 for source in loaded.accepted if source not in seen)
    if loaded.accepted and gone <= len(loaded.accepted) // 10 and len(loaded.deltas) < MAX_MEMO_DELTAS:
        added = {s: info for s, info in seen.items() if s not in loaded.accepted}
        added_versions = {k: v for k, v in versions.items() if loaded.versions.get(k) != v}
        if added or added_versions:
            payload = _memo_payload(added, added_versions)
            store.put_bytes("raw", f"{MEMO_PREFIX}/{version}/{hashlib.sha256(payload).hexdigest()[:32]}.json",
                            payload)
        return
    store.put_bytes("raw", _memo_key(version), _memo_payload(seen, versions))
    for key in loaded.deltas:
        store.delete(store.uri("raw", key))


class _ImageChecker:
    """Reads, checks, scrubs and stores each metadata row's image, streaming.

    At most ``window`` rows are in flight (read but not yet handed back), whatever the dataset
    size, and what is handed back holds no image bytes: each file is stored as soon as it is
    accepted (the first row to claim a content hash stores it; a later row with the same bytes
    stores nothing), so memory stays flat as a dataset grows (``benchmarks/ingest_scale.py``).

    A file whose source bytes the memo knows (accepted by an earlier run under the same
    ``validation_version``) and whose stored copy is still in the store is not decoded again:
    the memo's verdict is the one a decode would give, since it depends only on those bytes and
    that version. :meth:`recall` answers, without reading them, the files whose version (size,
    times, inode; size and ETag on S3) an earlier run read; :meth:`check` reads the rest."""

    def __init__(self, sources: list[RawSource], store: ObjectStore, limits: ingest.ImageLimits,
                 memo: dict[str, ingest.ImageInfo], stats: IngestStats, versions: dict[str, str] | None = None):
        self.sources, self.store, self.limits, self.memo, self.stats = sources, store, limits, memo, stats
        self.versions = versions or {}
        self.seen: dict[str, ingest.ImageInfo] = {}
        """source sha256 -> accepted info, of this run: the next run's memo."""
        self.seen_versions: dict[str, str] = {}
        """``_version_key`` -> source sha256 of this run's accepted files: the next run's versions."""
        self.decoded = 0
        self._claimed: set[str] = set()
        self._stored_keys: set[str] | None = None
        self._lock = threading.Lock()

    def check(self, records: Iterable[dict], max_workers: int = 8,
              window: int | None = None) -> Iterator[tuple[dict, ingest.ImageInfo | None, str]]:
        """``(meta, info or None, reason)`` per record, in order; records are read lazily."""
        window = window or 4 * max_workers
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            pending: deque = deque()
            for meta in records:
                pending.append(pool.submit(self._one, meta))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def recall(self, image_ids: list[object], sources: list[int]) -> list[ingest.ImageInfo | None]:
        """The memo's answer for each row (an image id and the position of its source) whose file
        version an earlier run read and accepted and whose stored copy is still there, without
        reading the file; None where the file must be read (:meth:`check`).

        One pass before any thread starts: a thread and a future per file cost more than the
        answer (a stat and two lookups), and 10,000 of them contend for the GIL."""
        answers: list[ingest.ImageInfo | None] = [None] * len(image_ids)
        if not self.versions:
            return answers
        rows_of: dict[int, list[int]] = {}
        for row, position in enumerate(sources):
            rows_of.setdefault(position, []).append(row)
        for position, rows in rows_of.items():
            source = self.sources[position]
            names = [source.image_index.get(str(image_ids[row])) for row in rows]
            candidates = []  # (row, version key, source sha256, the memo's info) of each file it knows
            for row, file_name, file_version in zip(rows, names, source.versions(names), strict=True):
                if not file_version:
                    continue
                version_key = _version_key(source, file_name, file_version)
                source_sha = self.versions.get(version_key)
                known = self.memo.get(source_sha) if source_sha else None
                if known is not None:
                    candidates.append((row, version_key, source_sha, known))
            in_store = self._in_store([known for *_, known in candidates])
            for (row, version_key, source_sha, known), stored in zip(candidates, in_store, strict=True):
                if not stored:
                    continue  # read by check(); a stored copy deleted since is decoded and stored again
                self.stats.remembered += 1
                self.stats.unread += 1
                self.seen[source_sha] = known
                self.seen_versions[version_key] = source_sha
                answers[row] = known
        return answers

    def _one(self, meta: dict) -> tuple[dict, ingest.ImageInfo | None, str]:
        image_id = str(meta["image_id"])
        source = self.sources[int(meta.pop("_source"))]
        file_name = source.image_index.get(image_id)
        if file_name is None:
            return meta, None, (f"no image file {image_id}.jpg/.jpeg/.png in the dataset (looked under "
                                "images/ and the HAM10000 part folders); add the file or drop the row")
        file_version = source.version(file_name)  # recorded for the next run (``recall`` had no answer)
        version_key = _version_key(source, file_name, file_version) if file_version else None
        try:
            data = source.read(file_name)
        except NotFollowed as exc:
            return meta, None, exc.reason
        source_sha = hashlib.sha256(data).hexdigest()
        known = self.memo.get(source_sha)
        if known is not None and self._in_store([known])[0]:
            with self._lock:
                self.stats.remembered += 1
                self.seen[source_sha] = known
                if version_key:
                    self.seen_versions[version_key] = source_sha
            return meta, known, ""
        try:
            info = ingest.inspect_image(data, Path(file_name).name, self.limits)
            # what is stored, hashed and keyed is the image without its metadata (EXIF dates, serials, GPS)
            data, info = ingest.scrub_image(data, info, self.limits)
        except ingest.ImageRejected as exc:
            return meta, None, exc.reason
        finally:
            with self._lock:
                self.decoded += 1
        self._store(info, data)
        with self._lock:
            self.seen[source_sha] = info
            if version_key:
                self.seen_versions[version_key] = source_sha
        return meta, info, ""

    def _claim(self, sha256: str) -> bool:
        """True for the first row of this run to hold these stored bytes: it alone stores and counts them."""
        with self._lock:
            return self._claim_held(sha256)

    def _claim_held(self, sha256: str) -> bool:
        """:meth:`_claim` for a caller that holds the lock."""
        first = sha256 not in self._claimed
        self._claimed.add(sha256)
        return first

    def _stored(self) -> set[str]:
        """Keys under ``raw/images/`` from one listing, made on the first remembered file: a rerun over
        10,000 remembered files asked the store 10,000 times (a third of a millisecond each locally,
        a HEAD request each on S3)."""
        with self._lock:
            if self._stored_keys is None:
                self._stored_keys = self.store.list_keys(self.store.uri("raw", "images"))
            return self._stored_keys

    def _in_store(self, infos: Sequence[ingest.ImageInfo]) -> list[bool]:
        """Whether the stored copy of each remembered file is still in the store (each stored copy
        counted once); one lock for them all, as :meth:`recall` asks about thousands at once."""
        stored = self._stored()
        answers = []
        with self._lock:
            for info in infos:
                exists = f"images/{info.image_key}" in stored
                if exists and self._claim_held(info.sha256):
                    self.stats.already_stored += 1
                answers.append(exists)
        return answers

    def _store(self, info: ingest.ImageInfo, data: bytes) -> None:
        """Store ``data`` under the info's content-addressed key unless it is there already."""
        if not self._claim(info.sha256):
            return
        key = f"images/{info.image_key}"
        exists = self.store.exists(self.store.uri("raw", key))
        if not exists:
            self.store.put_bytes("raw", key, data)
        with self._lock:
            if exists:
                self.stats.already_stored += 1
            else:
                self.stats.copied += 1


def _records(df: pd.DataFrame) -> Iterator[dict]:
    """``df.to_dict("records")``, lazily and from whole columns: iterating pandas' Arrow-backed
    string columns value by value cost more than the rest of a 10,000-row rerun's bookkeeping."""
    columns = list(df.columns)
    for values in zip(*(df[c].tolist() for c in columns)):
        yield dict(zip(columns, values))


def _accepted_rows(image_ids: list[object], infos: list[ingest.ImageInfo | None],
                   reasons: list[str]) -> tuple[list[int], list[dict[str, str]]]:
    """Positions of the rows that make the manifest, and the image-stage quarantine rows, in row
    order: a row whose image was rejected is quarantined with its reason; of rows whose stored
    bytes are identical the first is kept (the same picture under two ids would leak across
    splits)."""
    by_sha: dict[str, str] = {}
    accepted: list[int] = []
    rejects: list[dict[str, str]] = []
    for position, (image_id, info) in enumerate(zip(image_ids, infos, strict=True)):
        image_id = str(image_id)
        if info is None:
            rejects.append({"image_id": image_id, "stage": "image", "reason": reasons[position]})
        elif info.sha256 in by_sha:
            rejects.append({"image_id": image_id, "stage": "image",
                            "reason": f"same bytes as image {by_sha[info.sha256]!r}; duplicate pictures are "
                                      "kept once (they would leak across splits)"})
        else:
            by_sha[info.sha256] = image_id
            accepted.append(position)
    return accepted, rejects


def _folder_name(uri: str) -> str:
    """A landed batch's folder name, as the landing sensor names it (its reference is a hash of it)."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _without_location(text: str, uri: str, stand_in: str) -> str:
    """``text`` with the batch's location and folder name replaced: a folder may be named after
    a patient, and the reason reaches logs and the UI."""
    local = str(Path(uri.removeprefix("file://")).expanduser())
    for variant in sorted({uri, uri.rstrip("/"), local, _redact(uri), _folder_name(uri)}, key=len, reverse=True):
        if variant:
            text = text.replace(variant, stand_in)
    return text


def _csv(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()


def _redact(uri: str) -> str:
    """Only the location's scheme and name: a local path may contain a user's name."""
    return uri if uri.startswith("s3://") else Path(uri.removeprefix("file://")).name or uri
