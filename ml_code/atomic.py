"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

One helper for what used to be hand-written in nine places. Every writer works the same
way (the POSIX idiom; see ``rename(2)``, and ``os.replace`` in the Python docs):

1. create a temporary file *in the destination's folder* (``os.replace`` is atomic only
   within one file system) under a dot-name, ``.<name>.<random>.tmp``, which the store
   listings and the capture/label readers skip; ``O_EXCL`` so two writers never share one;
2. write it, ``fsync`` it (so a crash after the rename cannot leave an empty or partial
   file under the final name, see ext4's ``auto_da_alloc`` discussion);
3. ``os.replace`` it over the destination, then ``fsync`` the folder (best effort) so the
   rename itself survives a crash;
4. on any error the temporary file is removed and the destination is left untouched.

Permissions: ``mode=None`` gives what ``open(path, "w")`` gives (``0o666`` less the
umask); an explicit ``mode`` (``0o600`` for patient data) is applied exactly, whatever the
umask, and before the file is visible under its final name.

Standard library only, and nothing heavy imported at module level, so any part of
``ml_code`` can use it. (The model package, ``ml_code/package/``, still cannot: it runs
where ``ml_code`` is not installed and imports only its own modules.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "sync_file", "sync_folder", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]

_DEFAULT_MODE = 0o666  # what open() asks for; the umask then applies


def _temp_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}")


def _create_exclusive(path: Path, suffix: str, mode: int | None) -> tuple[int, Path]:
    """Create and open a fresh temporary file next to ``path``; returns ``(fd, temp_path)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = _temp_name(path, suffix)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         _DEFAULT_MODE if mode is None else mode)
        except FileExistsError:
            continue
        if mode is not None and hasattr(os, "fchmod"):
            try:
                os.fchmod(fd, mode)  # exact, whatever the umask
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


def sync_file(path: str | os.PathLike[str]) -> None:
    """``fsync`` the file at ``path`` (its data and size reach the disk before a rename publishes it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Persist every rename made so far in ``folder`` (POSIX; a no-op where folders cannot be
    opened). A writer that publishes many files into one fresh folder and only then reports
    success (a processing job's output) passes ``sync_folder=False`` to each write and calls
    this once: each folder sync is a journal commit, tens of milliseconds on a VM disk."""
    _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, fsync: bool) -> None:
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int | None = None, *, suffix: str = "",
                fsync: bool = True, sync_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for writers that want a file name
    (``DataFrame.to_parquet``, ``np.save``, ``np.lib.format.open_memmap``, a download);
    on a clean exit it is synced and renamed over ``path``, on an error it is deleted.

    The file already exists (empty, with its permissions set) when the block starts; writers
    that truncate it keep those permissions. ``suffix`` ends the temporary name, for writers
    that append an extension when it is missing (``np.save`` adds ``.npy``, ``np.savez``
    ``.npz``). ``sync_folder=False`` leaves the folder sync to the caller (:func:`sync_folder`)."""
    path = Path(path)
    fd, tmp = _create_exclusive(path, suffix, mode)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            sync_file(tmp)
        _publish(tmp, path, fsync and sync_folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: int | None = None, *, text: bool = False,
                encoding: str = "utf-8", newline: str | None = None, fsync: bool = True,
                sync_folder: bool = True) -> Iterator[IO[Any]]:
    """Yield a file handle (binary, or text with ``text=True``) for writers that want one
    (``torch.save``, ``np.save``, ``csv``); on a clean exit the data is flushed, synced and
    renamed over ``path``; on an error the temporary file is deleted and ``path`` untouched."""
    path = Path(path)
    fd, tmp = _create_exclusive(path, "", mode)
    try:
        fh = os.fdopen(fd, "w", encoding=encoding, newline=newline) if text else os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        _publish(tmp, path, fsync and sync_folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, mode: int | None = None, *,
                       fsync: bool = True, sync_folder: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module docstring); returns ``path``."""
    with atomic_open(path, mode, fsync=fsync, sync_folder=sync_folder) as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, mode: int | None = None, *,
                      encoding: str = "utf-8", fsync: bool = True, sync_folder: bool = True) -> Path:
    """Replace ``path`` with ``text`` (encoded as given, newlines written as they are)."""
    return write_bytes_atomic(path, text.encode(encoding), mode, fsync=fsync, sync_folder=sync_folder)


def write_json_atomic(path: str | os.PathLike[str], payload: Any, mode: int | None = None, *,
                      fsync: bool = True, **dumps_kwargs: Any) -> Path:
    """Replace ``path`` with ``json.dumps(payload, **dumps_kwargs)`` (``indent=2`` unless
    given). The payload is serialised before any file is touched, so an unserialisable
    payload leaves nothing behind."""
    dumps_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(payload, **dumps_kwargs), mode, fsync=fsync)
