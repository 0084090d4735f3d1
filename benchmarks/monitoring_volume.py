"""Benchmark: the monitoring assets over 100,000 captured requests (issue 19, P5).

    python benchmarks/monitoring_volume.py [--quick] [--records N] [--dir DIR]

Writes ``--records`` capture lines (default 100,000; ``--quick`` 2,000) in the local endpoint's
layout (``CaptureWriter`` keys, ``capture_record`` lines, 100 requests a file, 128x96 JPEG
bodies, spread over the last 20 hours; each answer carries the ``image_features`` and
``drift_embedding`` the served package's handlers return for its body, as today's endpoint
writes them) for a 96 px model (the ``ham10000`` recipe's size; a tiny untrained network, so
the model's own cost does not hide the monitor's) with its baseline (and times what
``image_features`` and ``drift_embedding`` add to each served request), then runs, each in a
fresh process (``dg.materialize``, as a run does), timed around the materialization (the imports
and the Dagster instance made before), with its peak memory (the process plus its largest worker)
and its CPU seconds (the process and its workers: the machine may be shared, wall time alone can
mislead; they include the imports):

1. ``inference_log`` over every record (the first run after a backlog);
2. ``inference_log`` again after 1,000 more records landed (the hourly incremental run);
3. ``drift_report`` (defaults: the last 24 hours, the newest 500 requests, MMD with 1,999
   permutations) over the log of all of them; it reads those 500 requests' projected embeddings
   from their answers in the capture lines (``drift_embedding``, which the served handlers return),
   so it decodes no image and does not import torch (the benchmark says whether it did).

Baseline in the same run: the full re-read, i.e. run 1, which is what reading every capture
file again costs (the incremental run's ratio), and the previous path, which decoded every
request's image to compute its features, measured on a sample (``--baseline-records``): capture
files parsed one after another in-process by ``parse_lines(..., keep_images=True)`` (the decode
path, which older captures without ``image_features`` still take) - its rate, scaled to
``--records``, against run 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 96
BODY_W, BODY_H = 128, 96
PER_FILE = 100


def _result(stage: str, metric: str, ours: float, baseline: float | None, target: str, met: bool, unit: str) -> None:
    ratio = None if baseline is None else round(baseline / ours, 2) if ours else None
    print("BENCH_RESULT " + json.dumps({"stage": stage, "metric": metric, "ours": round(ours, 3),
                                        "baseline": None if baseline is None else round(baseline, 3),
                                        "ratio": ratio, "target": target, "met": bool(met), "unit": unit}))


def _world(root: Path, records: int) -> None:
    """The store (package, baseline, registry, handles) and ``records`` capture lines."""
    import numpy as np

    from dermaops_resources.handles import EndpointHandle
    from dermaops_resources.monitoring_handles import BaselineHandle
    from dermaops_resources.object_store import LocalObjectStore
    from dermaops_resources.registry import SqliteModelRegistry
    from ml_code.monitoring.baseline import compute_baseline
    from tests.support.monitoring_synth import lesion_images
    from tests.support.monitoring_world import (
        jpeg_bodies, model_package, served_answer_fields, utc_now, write_captures,
    )

    store = LocalObjectStore(root=str(root / "store"))
    splits = root / "splits"
    splits.mkdir(parents=True)
    np.save(splits / "train_images.npy", lesion_images(400, SIZE, seed=1))
    np.save(splits / "val_images.npy", lesion_images(150, SIZE, seed=2))
    tar = model_package(root, SIZE)
    model_uri = store.put_file("models", "jobs/train/t1/model.tar.gz", tar)
    compute_baseline(splits, tar, root / "baseline", max_embeddings=150)
    baseline_uri = store.upload_dir("models", "jobs/baseline/b1/baseline", root / "baseline")
    registry = SqliteModelRegistry(db_path=str(root / "registry.db"))
    registry.register("g", model_uri, "hash1", {"balanced_accuracy": 0.9}, "", {})
    registry.set_status("g", 1, "Approved")
    endpoint = EndpointHandle(name="ep", url="http://127.0.0.1:9", package_version=1, model_uri=model_uri,
                              capture_uri=store.uri("logs", "datacapture"))
    stats = json.loads((root / "baseline" / "statistics.json").read_text())
    baseline = BaselineHandle(baseline_uri=baseline_uri, model_uri=model_uri, model_hash="hash1", item_count=400,
                              n_embeddings=150, embedding_split="val", features=[f["name"] for f in stats["features"]])
    for key, handle in (("live_endpoint", endpoint), ("model_baseline", baseline)):
        cls = type(handle)
        store.put_json("models", f"handles/{key}.json", {"type": f"{cls.__module__}:{cls.__qualname__}",
                                                         "handle": handle.model_dump()})
    bodies = jpeg_bodies(lesion_images(64, SIZE, seed=30), BODY_W, BODY_H)
    (root / "bodies.json").write_text(json.dumps([b.hex() for b in bodies]))
    fields = served_answer_fields(bodies, tar, root / "served")
    (root / "answer_fields.json").write_text(json.dumps(fields))
    write_captures(_capture_dir(root), bodies, records, PER_FILE, utc_now() - timedelta(hours=20), 19 * 3600,
                   image_size=SIZE, answer_fields=fields)


def _capture_dir(root: Path) -> Path:
    return root / "store" / "logs" / "datacapture" / "ep" / "AllTraffic"


def _resources(root: Path) -> dict:
    from dermaops_resources.metrics import LocalMetricsStore
    from dermaops_resources.notifier import LocalNotifier
    from dermaops_resources.object_store import LocalObjectStore
    from dermaops_resources.registry import SqliteModelRegistry
    from tests.support.dagster_io import HandleIO

    store = LocalObjectStore(root=str(root / "store"))
    return {"store": store, "registry": SqliteModelRegistry(db_path=str(root / "registry.db")),
            "io_manager": HandleIO(store), "metrics": LocalMetricsStore(db_path=str(root / "metrics.db")),
            "notifier": LocalNotifier(alerts_path=str(root / "alerts.jsonl"))}


def _stage(root: Path, stage: str) -> dict:
    """Run one stage in this process; its seconds and what it produced."""
    import os

    import dagster as dg

    from dermaops_assets.monitoring import drift_report, inference_log

    os.environ.setdefault("DERMAOPS_MODEL_PACKAGE_GROUP", "g")
    resources = _resources(root)
    if stage == "drift":
        assets, selection = [dg.AssetSpec("live_endpoint"), dg.AssetSpec("model_baseline"),
                             dg.AssetSpec("inference_log"), drift_report], ["drift_report"]
    else:
        assets, selection = [dg.AssetSpec("live_endpoint"), inference_log], ["inference_log"]
    # Made before the clock starts, like the imports above: a process's first Dagster instance imports
    # sqlalchemy and alembic (about 1.3 s here), start-up that every run pays whatever it reads
    # (benchmarks/pipeline_overhead.py measures it), not the monitor's work.
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.perf_counter()
    result = dg.materialize(assets, resources=resources, selection=selection, instance=instance)
    seconds = time.perf_counter() - t0
    assert result.success
    out = {"seconds": seconds}
    for event in result.get_asset_materialization_events():
        md = event.materialization.metadata
        for key in ("num_new_records", "total", "files_read", "n_requests", "drift_score", "status",
                    "requests_decoded", "embeddings_from_answers", "embeddings_recomputed"):
            if key in md:
                out[key] = md[key].value
    return out


def _endpoint_feature_ms(size: int, n: int = 200) -> float:
    """Milliseconds the served handlers spend per request on ``image_features`` (one view of ``size`` px)."""
    import numpy as np

    from ml_code.package.image_features import answer_features

    views = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    for view in views:
        answer_features(view, (600, 450))
    return (time.perf_counter() - t0) / n * 1e3


def _endpoint_embedding_ms(width: int = 1280, n: int = 2000) -> float:
    """Milliseconds the served handlers spend per request turning the penultimate embedding they have
    (``width`` numbers: EfficientNet-Lite's) into the answer's ``drift_embedding`` (projection, then
    base64 of its float32s). A package without OOD statistics also taps its layers' pooled statistics for it, not timed."""
    import numpy as np

    from ml_code.package.drift_embedding import answer_embedding, project

    rows = np.random.default_rng(0).normal(size=(n, 1, width)).astype(np.float32)
    project(rows[0])  # the matrix is drawn once a width (cached), as in a serving worker
    t0 = time.perf_counter()
    for row in rows:
        answer_embedding(project(row)[0])
    return (time.perf_counter() - t0) / n * 1e3


def _embedding_bytes(root: Path) -> float:
    """Mean bytes the ``drift_embedding`` field adds to a capture line (the answer as the line holds it:
    a JSON string inside the line's JSON)."""
    from ml_code.package.drift_embedding import ANSWER_FIELD

    fields = json.loads((root / "answer_fields.json").read_text())
    return sum(len(json.dumps(json.dumps({ANSWER_FIELD: f[ANSWER_FIELD]}))) - 4 for f in fields) / len(fields)


def _baseline_rate(root: Path, records: int) -> float:
    """Seconds per request of the previous path: every request's image decoded to its model view and
    the features computed from it (``parse_lines`` with ``keep_images``, as the log's reader
    called it), capture files one after another in this process."""
    from ml_code.monitoring.capture import parse_lines

    files = sorted(_capture_dir(root).rglob("*.jsonl"))
    t0 = time.perf_counter()
    n = 0
    for path in files:
        n += len(parse_lines(path.read_bytes().splitlines(), image_size=SIZE, keep_images=True).rows)
        if n >= records:
            break
    return (time.perf_counter() - t0) / n


class _PeakRSS:
    """Peak resident memory of this process and its workers together (psutil, sampled every 20 ms).
    ``ru_maxrss`` cannot tell it: on Linux a child inherits its parent's high-water mark across exec."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.me, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        total = self.me.memory_info().rss
        for child in self.me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak / 2**20


def _child(root: Path, stage: str, records: int = 0, sample: int = 0) -> dict:
    """One stage in a fresh interpreter (imports and memory of its own); what it printed."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r});"
            "from benchmarks.monitoring_volume import _in_child; from pathlib import Path;"
            f"print('STAGE ' + json.dumps(_in_child(Path({str(root)!r}), {stage!r}, {records}, {sample}), "
            "default=str))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"stage {stage} failed:\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("STAGE "))
    return json.loads(line[6:])


def _in_child(root: Path, stage: str, records: int, sample: int) -> dict:
    if stage == "world":
        t0 = time.perf_counter()
        _world(root, records)
        return {"seconds": time.perf_counter() - t0, "per_request": _baseline_rate(root, sample),
                "endpoint_ms": {size: _endpoint_feature_ms(size) for size in (SIZE, 224)},
                "embedding_ms": _endpoint_embedding_ms(),
                "embedding_bytes": _embedding_bytes(root)}
    if stage == "incremental":  # 1,000 more requests land after the first run
        from tests.support.monitoring_world import utc_now, write_captures

        bodies = [bytes.fromhex(h) for h in json.loads((root / "bodies.json").read_text())]
        write_captures(_capture_dir(root), bodies, 1000, PER_FILE, utc_now() - timedelta(minutes=30), 600,
                       seed=1, first_id=10**8, image_size=SIZE,
                       answer_fields=json.loads((root / "answer_fields.json").read_text()))
    import os

    peak = _PeakRSS()
    cpu0 = os.times()
    out = _stage(root, stage)
    cpu1 = os.times()
    out["peak_mb"] = peak.stop()
    out["torch_imported"] = "torch" in sys.modules
    # this process and its (joined) workers: user + system seconds
    out["cpu_s"] = sum(getattr(cpu1, k) - getattr(cpu0, k) for k in ("user", "system", "children_user",
                                                                      "children_system"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 records, 200-record baseline sample")
    p.add_argument("--records", type=int, default=None)
    p.add_argument("--baseline-records", type=int, default=None)
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed afterwards)")
    args = p.parse_args(argv)
    records = args.records or (2000 if args.quick else 100_000)
    sample = args.baseline_records or (200 if args.quick else 3000)
    with tempfile.TemporaryDirectory(prefix="dermaops-monitoring-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        world = _child(root, "world", records, sample)
        print(f"wrote {records} capture records and the model's baseline in {world['seconds']:.1f}s "
              f"({BODY_W}x{BODY_H} JPEG bodies, {PER_FILE} a file, model view {SIZE} px)")
        per_request = world["per_request"]
        full = _child(root, "full")
        incremental = _child(root, "incremental")
        drift = _child(root, "drift")
    assert full["num_new_records"] == records and incremental["num_new_records"] == 1000, (full, incremental)
    print(f"inference_log, {records} records: {full['seconds']:.2f}s, {full['cpu_s']:.1f} CPU s "
          f"({full['peak_mb']:.0f} MB peak with workers, {full.get('requests_decoded')} requests decoded)")
    print(f"inference_log, 1,000 more: {incremental['seconds']:.2f}s, {incremental['cpu_s']:.1f} CPU s "
          f"({incremental['peak_mb']:.0f} MB peak)")
    print(f"drift_report over the log: {drift['seconds']:.2f}s, {drift['cpu_s']:.1f} CPU s, "
          f"{drift.get('n_requests')} requests judged, status {drift.get('status')} ({drift['peak_mb']:.0f} MB peak; "
          f"embeddings read from {drift.get('embeddings_from_answers')} answers, "
          f"{drift.get('embeddings_recomputed')} recomputed; torch imported: {drift['torch_imported']})")
    print("the endpoint's cost of image_features per request: " + ", ".join(
        f"{ms:.2f} ms at {size} px" for size, ms in world["endpoint_ms"].items())
          + f"; of drift_embedding (1,280 numbers projected to 32): {world['embedding_ms']:.3f} ms, "
          f"{world['embedding_bytes']:.0f} bytes more a capture line")
    print(f"previous path (decode every request): {per_request * 1e3:.2f} ms a request on {sample} requests "
          f"-> {per_request * records:.1f}s for {records}")
    scale = records / 100_000  # the absolute targets are for 100,000 records
    _result("monitoring", "inference_log_full_seconds", full["seconds"], None, f"<= {15 * scale:g} s",
            full["seconds"] <= 15 * scale, "s")
    _result("monitoring", "inference_log_vs_previous_path", full["seconds"], per_request * records, ">= 1x",
            full["seconds"] <= per_request * records, "s")
    _result("monitoring", "inference_log_incremental_seconds", incremental["seconds"], None, "<= 2 s",
            incremental["seconds"] <= 2.0, "s")
    _result("monitoring", "inference_log_incremental_vs_full_reread", incremental["seconds"], full["seconds"],
            ">= 1x", incremental["seconds"] <= full["seconds"], "s")
    _result("monitoring", "drift_report_seconds", drift["seconds"], None, "<= 15 s", drift["seconds"] <= 15, "s")
    peak = max(s["peak_mb"] for s in (full, incremental, drift))
    _result("monitoring", "peak_rss_mb", peak, None, "< 1024 MB", peak < 1024, "MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
