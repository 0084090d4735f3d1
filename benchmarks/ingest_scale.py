"""Benchmark (issue 19, P1b): ingestion's memory and time as the dataset grows.

    python benchmarks/ingest_scale.py [--quick] [--sizes 10000 100000] [--cache /tmp/dermaops-bench-100k]

Ingests synthetic datasets of tiny distinct JPEGs (32 x 32, the smallest side ingestion accepts,
HAM10000 layout) with ``dermaops_services.ingestion.ingest_dataset``, as ``raw_images`` does, each
size in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its own. The images are
generated once and cached under ``--cache`` (the smaller sets are hard links to the first files
of the largest), so only the first run pays for them.

BENCH_RESULT lines: ``peak RSS`` at the largest size (absolute target < 1 GB: ingestion streams,
so memory must not grow with the image count) and ``time per 1,000 images`` at the largest size
against the smallest (ratio = largest / smallest, target <= 1.2: time linear in images).
``--quick`` uses 2,000 and 10,000 images. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_PEAK_GB = 1.0
TARGET_LINEARITY = 1.2
SIDE = 32
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def generate(folder: Path, n: int) -> None:
    """``n`` distinct 32 x 32 JPEGs and their HAM10000 metadata in ``folder`` (skipped when a
    complete set is there). Each image is a random colour field with its index written into
    the pixels, so no two share bytes (exact duplicates would be quarantined)."""
    import numpy as np
    from PIL import Image

    done = folder / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    base = rng.integers(60, 200, size=(SIDE, SIDE, 3), dtype=np.uint8)
    for i in range(n):
        image_id = f"SCALE_{i:07d}"
        if not (images / f"{image_id}.jpg").is_file():
            px = base.copy()
            px[:8, :8] = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
            px[8:12, :, 0] = [(i >> b & 1) * 255 for b in range(SIDE)]  # the index, bit by bit
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, format="JPEG", quality=90)
            (images / f"{image_id}.jpg").write_bytes(buf.getvalue())
        rows.append(f"L_{i:07d},{image_id},{CLASSES[i % len(CLASSES)]},histo,{30 + i % 50},female,back")
    (folder / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    done.write_text(str(n))


def subset(full: Path, folder: Path, n: int) -> None:
    """The first ``n`` images of ``full`` as their own dataset (hard links: no copy)."""
    done = folder / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = (full / "HAM10000_metadata.csv").read_text().splitlines()[: n + 1]
    for line in lines[1:]:
        name = line.split(",")[1] + ".jpg"
        target = folder / "images" / name
        if not target.exists():
            try:
                os.link(full / "images" / name, target)
            except OSError:
                target.write_bytes((full / "images" / name).read_bytes())
    (folder / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    done.write_text(str(n))


def child(dataset: Path) -> None:
    """Ingest ``dataset`` into a fresh temporary store; print seconds and peak RSS as JSON."""
    from dermaops_resources.object_store import LocalObjectStore
    from dermaops_services.ingestion import ingest_dataset

    with tempfile.TemporaryDirectory(prefix="dermaops-scale-store-") as tmp:
        store = LocalObjectStore(root=tmp)
        t0 = time.perf_counter()
        handle, _ = ingest_dataset(str(dataset), store, "scale-benchmark-salt-" + "0" * 32)
        seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"images": handle.num_images, "quarantined": handle.num_quarantined, "seconds": seconds,
                      "peak_rss_gb": peak_kb * 1024 / 1e9}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 and 10,000 images")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image counts (default 10,000 100,000)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dermaops-bench-100k")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    sizes = sorted(args.sizes or ([2_000, 10_000] if args.quick else [10_000, 100_000]))
    t0 = time.perf_counter()
    full = args.cache / f"n{sizes[-1]}"
    generate(full, sizes[-1])
    for n in sizes[:-1]:
        subset(full, args.cache / f"n{n}", n)
    print(f"[ingest_scale] datasets ready in {time.perf_counter() - t0:.1f}s under {args.cache}", flush=True)
    runs = {}
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--child", str(args.cache / f"n{n}")], check=False,
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        if runs[n]["images"] != n:
            print(f"{n} images: only {runs[n]['images']} accepted ({runs[n]['quarantined']} quarantined)", file=sys.stderr)
            return 1
        runs[n]["seconds_per_1000"] = runs[n]["seconds"] / n * 1000
        print(f"[ingest_scale] {n:,} images: {runs[n]['seconds']:.1f}s ({runs[n]['seconds_per_1000']:.2f}s per 1,000), "
              f"peak RSS {runs[n]['peak_rss_gb']:.3f} GB", flush=True)
    small, large = runs[sizes[0]], runs[sizes[-1]]
    linearity = large["seconds_per_1000"] / small["seconds_per_1000"]
    print(json.dumps({str(n): {k: round(v, 4) for k, v in r.items()} for n, r in runs.items()}, indent=2))
    print("BENCH_RESULT " + json.dumps({
        "stage": "ingest", "metric": f"peak RSS ingesting {sizes[-1]:,} images (at {sizes[0]:,}: "
                                     f"{small['peak_rss_gb']:.3f} GB)",
        "ours": round(large["peak_rss_gb"], 4), "baseline": None, "ratio": None,
        "target": f"< {TARGET_PEAK_GB:g} GB", "met": large["peak_rss_gb"] < TARGET_PEAK_GB, "unit": "GB"}))
    print("BENCH_RESULT " + json.dumps({
        "stage": "ingest", "metric": f"seconds per 1,000 images at {sizes[-1]:,} vs at {sizes[0]:,}",
        "ours": round(large["seconds_per_1000"], 4), "baseline": round(small["seconds_per_1000"], 4),
        "ratio": round(linearity, 3), "target": f"<= {TARGET_LINEARITY:g}", "met": linearity <= TARGET_LINEARITY,
        "unit": "s"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
