"""Reader of the splits channel that :mod:`ml_code.data.preprocess` writes.

It lives next to its writer so the on-disk format (docs/ARCHITECTURE.md, "Processing job")
is read and written in one package; training, evaluation, monitoring and the benchmarks
all open splits through :func:`load_splits` (or :func:`open_split_images` for one split's pixels).

A split's pixels are rows of immutable, content-addressed **segments**: ``pixels/<sha256>.npy``
files, uint8 ``(n, S, S, 3)``, named by the sha256 of their bytes. ``{split}_pixels.json``
(:data:`PIXELS_FORMAT`) lists the segments a split reads and, in the split's row order, runs
``[segment number, first row in it, rows]``. A rerun after new images arrive writes one small
segment of the new images and names the earlier segments again instead of rewriting their
bytes; the object store then copies those server-side (``ObjectStore.copy``; a hard link
locally), so a 1 % rerun moves 1 % of the pixels. A split written before segments existed
(``{split}_images.npy`` alone) is read as one segment.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_code.package import descriptors

PIXELS_FORMAT = "dermaops-split-pixels-v1"
"""``format`` of ``{split}_pixels.json``: ``{"format", "shape": [N, S, S, 3], "segments": [names
relative to the splits folder], "runs": [[segment number, first row, rows], ...]}``."""
SEGMENT_FOLDER = "pixels"


def pixels_manifest_name(split: str) -> str:
    """File name of a split's pixel map in the splits folder."""
    return f"{split}_pixels.json"


def previous_input_files(splits: Sequence[str]) -> list[str]:
    """The files of an earlier splits output that the processing job reads to reuse its pixels
    (:class:`ml_code.data.preprocess.PreviousPixels`), relative to its folder: ``summary.json`` and
    each split's pixel map and index: one CSV row per image, where the segments hold
    ``size * size * 3`` bytes per image. The ``previous`` input stages only these
    (``JobSpec.input_files``); the segments they name stay in the store."""
    return ["summary.json", *(name for split in splits for name in (pixels_manifest_name(split), f"{split}_index.csv"))]


def has_split_pixels(folder: Path, split: str) -> bool:
    """Whether ``folder`` holds pixels of ``split`` (a pixel map, or a single-file split)."""
    folder = Path(folder)
    return (folder / pixels_manifest_name(split)).is_file() or (folder / f"{split}_images.npy").is_file()


class SegmentedImages:
    """A split's uint8 ``(N, S, S, 3)`` pixels gathered from memory-mapped segments, indexed like
    an array: ``x[i]`` (one image), ``x[a:b]``, ``x[::k]``, ``x[int array]`` return ndarrays (a
    copy of just those rows), ``np.asarray(x)`` the whole split. Only a rerun's splits need this:
    a split that is one whole segment opens as that segment's memory map (:func:`open_split_images`).

    Rows are looked up in two int arrays of ``N`` (segment, row): a few bytes per image."""

    def __init__(self, segments: list[np.ndarray], segment_of_row: np.ndarray, row_in_segment: np.ndarray):
        self.segments = segments
        self.segment_of_row, self.row_in_segment = segment_of_row, row_in_segment
        side = segments[0].shape[1:] if segments else (0, 0, 3)
        self.shape = (len(segment_of_row), *side)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        seg, at = self.segment_of_row[rows], self.row_in_segment[rows]
        for s in np.unique(seg):
            mine = np.flatnonzero(seg == s)
            src = at[mine]
            if len(src) > 1 and np.all(np.diff(src) == 1):  # a contiguous run: one slice, no fancy index
                out[mine] = self.segments[s][src[0]:src[-1] + 1]
            else:
                out[mine] = self.segments[s][src]
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"image {key} out of range for a split of {len(self)}")
            return self.segments[self.segment_of_row[i]][self.row_in_segment[i]]
        if isinstance(key, slice):
            return self._gather(np.arange(len(self))[key])
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self._gather(rows.astype(np.int64, copy=False))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._gather(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)


def rows_of_runs(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``(segment, row in it)`` from a pixel map's int ``(R, 3)`` runs ``[segment, first
    row, rows]``: two int64 arrays of ``runs[:, 2].sum()``. Inverse of :func:`runs_of_rows`."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 3)
    if not len(runs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    segment_of_row = np.repeat(runs[:, 0], runs[:, 2])
    row_in_segment = np.concatenate([np.arange(a, a + n) for _, a, n in runs])
    return segment_of_row, row_in_segment


def runs_of_rows(segment_of_row: np.ndarray, row_in_segment: np.ndarray) -> list[list[int]]:
    """``[segment, first row, rows]`` runs of consecutive rows of one segment, in row order (what
    ``{split}_pixels.json`` stores). Inverse of :func:`rows_of_runs`."""
    if not len(segment_of_row):
        return []
    breaks = np.flatnonzero((np.diff(segment_of_row) != 0) | (np.diff(row_in_segment) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    counts = np.diff(np.concatenate([starts, [len(segment_of_row)]]))
    return [[int(segment_of_row[a]), int(row_in_segment[a]), int(c)] for a, c in zip(starts, counts)]


def read_pixel_map(folder: Path, split: str) -> dict | None:
    """``{split}_pixels.json`` of ``folder``, checked; None when the split has none."""
    path = Path(folder) / pixels_manifest_name(split)
    if not path.is_file():
        return None
    pixel_map = json.loads(path.read_text())
    if pixel_map.get("format") != PIXELS_FORMAT:
        raise ValueError(f"{path} is {pixel_map.get('format')!r}, not {PIXELS_FORMAT!r}; re-run preprocessing "
                         "with this version of DermaOps")
    runs = np.asarray(pixel_map["runs"], dtype=np.int64).reshape(-1, 3)
    if int(runs[:, 2].sum()) != int(pixel_map["shape"][0]) or (len(runs) and (
            runs.min() < 0 or runs[:, 0].max() >= len(pixel_map["segments"]))):
        raise ValueError(f"{path}: its runs do not cover its {pixel_map['shape'][0]} rows with its "
                         f"{len(pixel_map['segments'])} segments; the file is damaged, re-run preprocessing")
    pixel_map["runs"] = runs
    return pixel_map


def open_split_images(folder: Path, split: str) -> np.ndarray | SegmentedImages | None:
    """A split's uint8 ``(N, S, S, 3)`` pixels, memory-mapped: an ``np.memmap`` when the split is
    one whole segment (a first run, or a single-file split), else :class:`SegmentedImages`.
    None when ``folder`` has no pixels of ``split``. FileNotFoundError names a listed segment
    that is missing (an upload cut short); ValueError a segment of the wrong shape or size."""
    folder = Path(folder)
    pixel_map = read_pixel_map(folder, split)
    if pixel_map is None:
        single = folder / f"{split}_images.npy"
        return np.load(single, mmap_mode="r") if single.is_file() else None
    segments = []
    for name in pixel_map["segments"]:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"segment {name} that {pixels_manifest_name(split)} lists is missing from "
                                    f"{folder}: the splits were not copied whole; materialize processed_splits again")
        segment = np.load(path, mmap_mode="r")
        if segment.dtype != np.uint8 or segment.ndim != 4 or tuple(segment.shape[1:]) != tuple(pixel_map["shape"][1:]):
            raise ValueError(f"segment {path} is {segment.dtype} {segment.shape}; the pixel map expects uint8 "
                             f"(n, {', '.join(map(str, pixel_map['shape'][1:]))})")
        segments.append(segment)
    runs = pixel_map["runs"]
    for s, first, count in runs:
        if first + count > len(segments[s]):
            raise ValueError(f"{pixels_manifest_name(split)} reads rows {first}..{first + count} of "
                             f"{pixel_map['segments'][s]}, which holds {len(segments[s])}")
    if len(runs) == 1:
        s, first, count = (int(v) for v in runs[0])
        return segments[s][first:first + count]
    if len(runs) == 0:
        return np.zeros((0, *pixel_map["shape"][1:]), np.uint8)
    segment_of_row, row_in_segment = rows_of_runs(runs)
    return SegmentedImages(segments, segment_of_row.astype(np.int32), row_in_segment)


@dataclass
class Split:
    """One split as training reads it: arrays stay memory-mapped, nothing is copied."""

    images: np.ndarray | SegmentedImages  # uint8 (N, S, S, 3), memory-mapped (:func:`open_split_images`)
    labels: np.ndarray  # int64 (N,)
    clinical: np.ndarray | None = None  # float32 (N, len(descriptors.CLINICAL_FEATURES)), NaN = unknown


def load_clinical(index_path: Path, n: int) -> np.ndarray | None:
    """Clinical features of a split from its ``{split}_index.csv`` (None when the file or the
    age/sex/localization columns are absent, e.g. splits written before they were added)."""
    if not index_path.is_file():
        return None
    with index_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != n:
        raise ValueError(f"{index_path} has {len(rows)} rows but the split holds {n} images; re-run preprocessing")
    if not rows or not {"age", "sex", "localization"} <= set(rows[0]):
        return None
    return descriptors.clinical_features([r["age"] for r in rows], [r["sex"] for r in rows],
                                         [r["localization"] for r in rows])


def _load_split(folder: Path, name: str, classes: list[str]) -> Split | None:
    """One split's arrays, checked; None for a missing test split (train and val are required)."""
    lab_path = folder / f"{name}_labels.npy"
    img_path = folder / (pixels_manifest_name(name) if (folder / pixels_manifest_name(name)).is_file()
                         else f"{name}_images.npy")
    if not has_split_pixels(folder, name) or not lab_path.is_file():
        if name == "test":
            return None
        raise FileNotFoundError(f"{name}_pixels.json (or {name}_images.npy) / {lab_path.name} missing from the "
                                f"splits channel {folder}")
    images = open_split_images(folder, name)
    labels = np.asarray(np.load(lab_path), dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{img_path} must be uint8 (N, S, S, 3); got {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{lab_path} has labels outside [0, {len(classes)}) for classes {classes}")
    return Split(images, labels, load_clinical(folder / f"{name}_index.csv", len(labels)))


def load_splits(folder: Path) -> tuple[dict[str, Split], list[str]]:
    """Open the preprocess output: ``({"train", "val"[, "test"]: Split}, classes)``.

    Train and val must be non-empty and of one image size; test is optional (training
    does not need it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"splits channel folder {folder} does not exist; pass the preprocess job's 'splits' output")
    classes_path = folder / "classes.json"
    if not classes_path.is_file():
        raise FileNotFoundError(
            f"{classes_path} is missing: the 'splits' channel must be the ml_code.data.preprocess output folder "
            f"(found {sorted(p.name for p in folder.iterdir())[:10]})"
        )
    classes = json.loads(classes_path.read_text())
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        split = _load_split(folder, name, classes)
        if split is not None:
            splits[name] = split
    if len(splits["train"].labels) == 0 or len(splits["val"].labels) == 0:
        raise ValueError(f"train and val splits must be non-empty (sizes {[len(s.labels) for s in splits.values()]})")
    if splits["train"].images.shape[1:] != splits["val"].images.shape[1:]:
        raise ValueError("train and val images differ in size")
    return splits, classes
