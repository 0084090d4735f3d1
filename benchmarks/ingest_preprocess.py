"""Benchmark (issue 19, P1): ingestion + preprocessing on HAM10000, first run and incremental rerun.

    python benchmarks/ingest_preprocess.py [--quick] [--data DIR] [--images N] [--image-size 96]
        [--new-fraction 0.01] [--workers N] [--rerun-repeats N] [--profile N]

Runs what ``raw_images`` and ``processed_splits`` run (``dermaops_services.ingestion.ingest_dataset``,
the asset's near-duplicate table of the manifest it returns, ``ml_code.data.preprocess.run`` as the job
entry point runs it, the local job runner's upload of its output into the object store, and the asset's
``complete_from_previous``, which links the earlier segments a rerun names), on a copy of
HAM10000 made under /tmp, in three steps measured in this one run. Not timed: starting the job's
Python process (the local job runner starts one per job, about a second) and Dagster's own
bookkeeping.

1. first run on the dataset less its last ``--new-fraction`` rows (nothing remembered yet);
2. a naive single-process PIL loop (the baseline): for every image of the first run's splits,
   in their order, open the file, convert to RGB, centre-crop the shorter side, Lanczos-resize to
   ``--image-size``, stack and ``np.save`` per split. Its arrays must equal the job's byte for
   byte; where JPEG draft decoding applies (a small ``--image-size``), within the tolerance of
   ``tests/ml_code/test_preprocess_incremental.py::DRAFT_TOLERANCE`` (max 32, mean 2.5 per image),
   and the differences are printed;
3. rerun on the whole dataset (the new rows added), with the first run's store and splits;
   ``--rerun-repeats N`` (default 5) reruns N times, each from a snapshot of the first run's store, and reports
   the median (a rerun takes about two seconds, and one run on a shared machine is noisy).

BENCH_RESULT lines: ``preprocess`` (job vs naive loop, ratio = naive / job, target >= 1.5x) and
``ingest+preprocess`` (rerun / first run, target <= 0.03); each run's ``gc_s`` is the time the
cyclic garbage collector ran in it. ``--quick`` uses the first 1,000 rows.
``--profile N`` also runs the rerun under ``cProfile`` and prints its N costliest functions by
cumulative time (to stderr; the profiler slows Python-heavy parts, so the rerun's timed figures
then include its overhead): where an incremental run's time goes.
Prints ``BENCH_SKIP`` when HAM10000 is absent. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from dermaops_assets.preprocessing import complete_from_previous  # noqa: E402
from dermaops_resources.object_store import LocalObjectStore  # noqa: E402
from dermaops_services.ingestion import ingest_dataset  # noqa: E402
from ml_code.data import near_duplicates, preprocess  # noqa: E402
from ml_code.data.split_reader import open_split_images  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000"
SPLITS = ("train", "val", "test")
TARGET_SPEEDUP = 1.5
TARGET_RERUN_FRACTION = 0.03
DRAFT_TOLERANCE = {"max": 32, "mean": 2.5}
SALT = "benchmark-salt-" + "0" * 32


def naive_square(path: Path, size: int) -> np.ndarray:
    """The baseline's one image: decode fully, centre-crop the shorter side, Lanczos resize."""
    img = Image.open(path).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) / 2, (img.height - side) / 2
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side)))


def naive_loop(dataset: Path, splits_dir: Path, size: int, out: Path) -> dict[str, np.ndarray]:
    """The baseline, in one process: every image of the job's splits, in their order."""
    arrays = {}
    for split in SPLITS:
        ids = pd.read_csv(splits_dir / f"{split}_index.csv", dtype=str)["image_id"]
        arr = np.stack([naive_square(dataset / "images" / f"{i}.jpg", size) for i in ids]) if len(ids) else \
            np.zeros((0, size, size, 3), np.uint8)
        np.save(out / f"{split}_images.npy", arr)
        arrays[split] = arr
    return arrays


def pipeline(dataset: Path, store: LocalObjectStore, scratch: Path, name: str, size: int, workers: int | None,
             previous_uri: str | None) -> tuple[dict, str]:
    """What raw_images and processed_splits run, timed by part; also the stored splits' URI."""
    with _collector_time() as gc_seconds:
        parts, splits_uri = _pipeline(dataset, store, scratch, name, size, workers, previous_uri)
    return {**parts, "gc_s": gc_seconds[0]}, splits_uri


@contextlib.contextmanager
def _collector_time():
    """Seconds Python's cyclic garbage collector ran inside the block (``gc.callbacks``), in a
    one-item list filled as it runs: what ``ml_code.gc_scope`` exists to cut."""
    spent, started = [0.0], [0.0]

    def clock(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - started[0]

    gc.callbacks.append(clock)
    try:
        yield spent
    finally:
        gc.callbacks.remove(clock)


def _pipeline(dataset: Path, store: LocalObjectStore, scratch: Path, name: str, size: int, workers: int | None,
              previous_uri: str | None) -> tuple[dict, str]:
    t0 = time.perf_counter()
    handle, stats = ingest_dataset(str(dataset), store, SALT)
    near_duplicates.pairs_table(stats.manifest.sort_values("image_id", kind="mergesort"))  # the asset's table
    t1 = time.perf_counter()
    out = scratch / name
    summary = preprocess.run(store.local_path(handle.manifest_uri).parent, store.local_path(handle.images_prefix_uri),
                             out, image_size=size, num_workers=workers,
                             previous_dir=store.local_path(previous_uri) if previous_uri else None,
                             link_previous=False)  # as the job entry point runs it
    t2 = time.perf_counter()
    splits_uri = store.upload_dir("processed", f"splits/{name}/splits", out)  # the local job runner's upload
    linked = complete_from_previous(store, splits_uri, previous_uri)
    t3 = time.perf_counter()
    return {"ingest_s": t1 - t0, "preprocess_s": t2 - t1, "store_s": t3 - t2, "total_s": t3 - t0,
            "images": handle.num_images, "remembered": stats.remembered, "decoded": summary["decoded"],
            "reused": summary["reused"], "segments_linked": linked}, splits_uri


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the first 1,000 rows only")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--images", type=int, default=None, help="use the first N rows (default: all; --quick 1,000)")
    p.add_argument("--image-size", type=int, default=96, help="the real-data recipe's 96 px")
    p.add_argument("--new-fraction", type=float, default=0.01)
    p.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: the CPUs)")
    p.add_argument("--rerun-repeats", type=int, default=5, metavar="N",
                   help="rerun N times, each from the first run's store; report the median rerun (its time is "
                        "~2 s and noisy on a shared machine)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile the rerun and print its N costliest functions (cumulative time)")
    args = p.parse_args(argv)
    if not (args.data / "HAM10000_metadata.csv").is_file():
        print(f"BENCH_SKIP HAM10000 not found at {args.data}")
        return 0
    limit = args.images or (1000 if args.quick else None)
    meta = pd.read_csv(args.data / "HAM10000_metadata.csv", dtype=str)
    if limit:
        meta = meta.head(limit)
    n_new = max(1, round(len(meta) * args.new_fraction))
    with tempfile.TemporaryDirectory(prefix="dermaops-ingest-bench-") as tmp_name:
        tmp = Path(tmp_name)
        dataset = tmp / "dataset"
        (dataset / "images").mkdir(parents=True)
        for image_id in meta["image_id"]:  # a copy: the dataset folder must hold files, not links
            shutil.copyfile(args.data / "images" / f"{image_id}.jpg", dataset / "images" / f"{image_id}.jpg")
        store = LocalObjectStore(root=str(tmp / "store"))

        meta.iloc[:-n_new].to_csv(dataset / "HAM10000_metadata.csv", index=False)
        first, first_uri = pipeline(dataset, store, tmp, "first", args.image_size, args.workers, None)
        stored_first = store.local_path(first_uri)
        (tmp / "naive").mkdir()
        t0 = time.perf_counter()
        naive = naive_loop(dataset, stored_first, args.image_size, tmp / "naive")
        naive_s = time.perf_counter() - t0
        worst_max, worst_mean = 0, 0.0
        for split in SPLITS:
            ours = np.asarray(open_split_images(stored_first, split))
            if ours.shape != naive[split].shape:
                print(f"{split}: job wrote {ours.shape}, naive loop {naive[split].shape}", file=sys.stderr)
                return 1
            if len(ours):
                diff = np.abs(ours.astype(np.int16) - naive[split].astype(np.int16))
                worst_max = max(worst_max, int(diff.max()))
                worst_mean = max(worst_mean, float(diff.reshape(len(ours), -1).mean(axis=1).max()))
        identical = worst_max == 0
        if worst_max > DRAFT_TOLERANCE["max"] or worst_mean > DRAFT_TOLERANCE["mean"]:
            print(f"job pixels differ from the naive loop beyond the draft tolerance {DRAFT_TOLERANCE}: max "
                  f"{worst_max}, worst per-image mean {worst_mean:.3f}", file=sys.stderr)
            return 1

        meta.to_csv(dataset / "HAM10000_metadata.csv", index=False)
        # each repeat starts from the first run's store: a snapshot of hard links, safe because the
        # local store replaces an object by renaming a new file over it, never by writing in place
        snapshot = tmp / "store-after-first-run"
        shutil.copytree(tmp / "store", snapshot, copy_function=os.link)
        reruns = []
        for repeat in range(args.rerun_repeats):
            if repeat:
                shutil.rmtree(tmp / "store")
                shutil.copytree(snapshot, tmp / "store", copy_function=os.link)
                store = LocalObjectStore(root=str(tmp / "store"))
            profiler = cProfile.Profile() if args.profile and not repeat else None
            if profiler is not None:
                profiler.enable()
            rerun, rerun_uri = pipeline(dataset, store, tmp, f"rerun{repeat}", args.image_size, args.workers,
                                        first_uri)
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(args.profile)
            reruns.append(rerun)
        rerun = sorted(reruns, key=lambda r: r["total_s"])[len(reruns) // 2]  # the median run
        stored_rerun = store.local_path(rerun_uri)
        for split in SPLITS:  # the rerun's stored splits are whole: every row readable, earlier segments linked
            rows = len(pd.read_csv(stored_rerun / f"{split}_index.csv", dtype=str))
            if len(np.asarray(open_split_images(stored_rerun, split))) != rows:
                print(f"rerun {split}: stored pixels do not cover its {rows} index rows", file=sys.stderr)
                return 1

    speedup = naive_s / first["preprocess_s"]
    fraction = rerun["total_s"] / first["total_s"]
    print(json.dumps({
        "images_first_run": first["images"], "images_added": n_new, "image_size": args.image_size,
        "first_run": {k: round(v, 3) if isinstance(v, float) else v for k, v in first.items()},
        "naive_loop_s": round(naive_s, 3),
        "pixels": "identical" if identical else f"draft decoding: max diff {worst_max}, worst image mean {worst_mean:.3f}",
        "rerun": {k: round(v, 3) if isinstance(v, float) else v for k, v in rerun.items()},
        "reruns_total_s": [round(r["total_s"], 3) for r in reruns],
    }, indent=2))
    print("BENCH_RESULT " + json.dumps({
        "stage": "preprocess", "metric": f"first run, {first['images']:,} images -> {args.image_size} px splits "
                                         f"({'byte-identical' if identical else 'within draft tolerance'})",
        "ours": round(first["preprocess_s"], 3), "baseline": round(naive_s, 3), "ratio": round(speedup, 3),
        "target": f">= {TARGET_SPEEDUP:g}x", "met": speedup >= TARGET_SPEEDUP, "unit": "s"}))
    print("BENCH_RESULT " + json.dumps({
        "stage": "ingest+preprocess",
        "metric": f"rerun after +{n_new:,} images ({args.new_fraction:.0%}) / first run"
                  + (f" (median of {len(reruns)} reruns)" if len(reruns) > 1 else ""),
        "ours": round(rerun["total_s"], 3), "baseline": round(first["total_s"], 3), "ratio": round(fraction, 4),
        "target": f"<= {TARGET_RERUN_FRACTION:g}", "met": fraction <= TARGET_RERUN_FRACTION, "unit": "s"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
