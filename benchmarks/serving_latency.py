"""Local endpoint over HTTP against the same package's handlers called directly, same run.

    .venv/bin/python benchmarks/serving_latency.py [--quick] [--model model.tar.gz] [--images DIR]

The server is ``python -m ml_code.serving.serve`` (uvicorn workers, one per core: the
default), started here on 127.0.0.1 with data capture on, exactly as the deployer starts it.
Requests are real HAM10000 JPEGs sent by real HTTP clients (``http.client``, one persistent
connection per client thread). Measured:

* p50 / p99 latency at concurrency 1 against the baseline: the package's own handlers
  (``input_fn -> predict_fn -> output_fn``, i.e. decode + forward + JSON) called in this
  process, with as many torch threads as one server worker gets, alternating request by
  request with the HTTP ones (the machine's other load then falls on both). Target: p50 <= 1.25x.
* throughput at concurrency 8 against concurrency 1 (target >= 1.6x on 2 cores);
* errors (target 0); requests/second per core; cost per 1,000 inferences on ml.m5.large
  (``dermaops_resources.cost.INSTANCE_PRICES``, 2 vCPUs: this machine's requests/second per
  core times 2 per instance-hour);
* what the machine gives at that moment: ``workers`` processes calling the handlers at once
  (no HTTP) against one, printed: on a shared machine the c8 / c1 ratio cannot exceed it;
* for the micro-batching decision: one forward pass of 8 decoded images against 8 passes of
  one (the package's ``predict_fn`` on arrays), printed, not a target.

The package: ``--model``, else the trained HAM10000 EfficientNet-Lite package of the issue-18
recipe run when it is on this machine, else a small resnet18 package built like the tests'
(``tests.support.endpoint_packages.build_real_package``). No HAM10000 images: ``BENCH_SKIP``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dermaops_resources.cost import price
from ml_code.package.loader import open_package
from ml_code.serving.serve import available_cores, plan_workers

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "ham10000" / "images"
TRAINED_PACKAGE = Path("/tmp/bench18/seed42/recipe/store/models/sha256/"
                       "1b82c90acfe5031a6a03d6099bb5469a54884fd1308fbb13780e5affede32e42/model.tar.gz")
INSTANCE = "ml.m5.large"
INSTANCE_VCPUS = 2


def result(metric: str, ours: float, baseline: float | None, target: str, met: bool | None, unit: str) -> None:
    ratio = None if baseline in (None, 0) else ours / baseline
    print("BENCH_RESULT " + json.dumps({"stage": "serving", "metric": metric, "ours": round(ours, 4),
                                        "baseline": None if baseline is None else round(baseline, 4),
                                        "ratio": None if ratio is None else round(ratio, 4), "target": target,
                                        "met": met, "unit": unit}))


def pick_package(arg: Path | None, workdir: Path) -> Path:
    if arg is not None:
        return arg
    if TRAINED_PACKAGE.is_file():
        return TRAINED_PACKAGE
    from tests.support.endpoint_packages import build_real_package

    return build_real_package(workdir / "resnet18" / "model.tar.gz")


class Handlers:
    """The package opened in this process: the baseline calls its handlers directly."""

    def __init__(self, package_tar: Path, workdir: Path, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.package = open_package(package_tar, workdir / "baseline", "bench")

    def ms(self, body: bytes) -> float:
        """Milliseconds of decode + forward + JSON for one request body."""
        h, model = self.package.handlers, self.package.model
        t0 = time.perf_counter()
        h.output_fn(h.predict_fn(h.input_fn(body, "image/jpeg"), model), "application/json")
        return (time.perf_counter() - t0) * 1000

    def batching_speedup(self, bodies: list[bytes]) -> float:
        """Seconds of 8 one-image forward passes over one pass of 8 images (NaN for a foreign package)."""
        h, api, model = self.package.handlers, self.package.api, self.package.model
        if getattr(api, "load_image_square", None) is None or getattr(model, "image_size", None) is None:
            return float("nan")
        images = np.stack([api.load_image_square(b, model.image_size) for b in bodies[:8]])
        h.predict_fn({"images": images}, model)
        t0 = time.perf_counter()
        h.predict_fn({"images": images}, model)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(len(images)):
            h.predict_fn({"images": images[i:i + 1]}, model)
        return (time.perf_counter() - t0) / batched


def http_ms(conn: http.client.HTTPConnection, body: bytes) -> tuple[float, bool]:
    t0 = time.perf_counter()
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
    resp = conn.getresponse()
    resp.read()
    return (time.perf_counter() - t0) * 1000, resp.status == 200


def raw_child(package_tar: Path, images: list[Path], threads: int) -> int:
    """``--raw-child``: open the package, say ready, wait for a line on stdin, print requests/s."""
    with tempfile.TemporaryDirectory(prefix="dermaops-bench-raw-") as tmp:
        handlers = Handlers(package_tar, Path(tmp), threads)
        bodies = [p.read_bytes() for p in images]
        for body in bodies[:3]:
            handlers.ms(body)
        print("ready", flush=True)
        sys.stdin.readline()
        seconds = sum(handlers.ms(body) for body in bodies) / 1000
        print(len(bodies) / seconds, flush=True)
    return 0


def raw_processes_rps(package_tar: Path, images: Path, count: int, procs: int, threads: int) -> float:
    """Requests/s of ``procs`` processes calling the handlers at once, no HTTP: what this machine
    can give right now (other load on it included), the ceiling for the c8 / c1 ratio."""
    cmd = [sys.executable, __file__, "--raw-child", "--model", str(package_tar), "--images", str(images),
           "--count", str(count), "--threads", str(threads)]
    children = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
                for _ in range(procs)]
    for child in children:
        assert child.stdout.readline().strip() == "ready", "a raw-handler process did not start"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    total = sum(float(child.stdout.readline()) for child in children)
    for child in children:
        child.wait(timeout=60)
    return total


def start_server(package_tar: Path, workdir: Path) -> tuple[subprocess.Popen, dict]:
    state_file = workdir / "server.json"
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "ml_code.serving.serve", "--model-tar", str(package_tar),
                             "--port", "0", "--capture-dir", str(workdir / "capture"), "--package-version", "1",
                             "--state-file", str(state_file), "--log-level", "WARNING"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {(workdir / 'serve.log').read_text()[-2000:]}")
        if state_file.is_file():
            return proc, json.loads(state_file.read_text())
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the server did not become healthy within 300 s")


def load(port: int, bodies: list[bytes], concurrency: int, total: int) -> tuple[list[float], int, float]:
    """(per-request ms, errors, seconds) of ``total`` requests from ``concurrency`` client threads."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in counter:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "image/jpeg"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
                errors[0] += not ok
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests (for tests): well under a minute")
    parser.add_argument("--model", type=Path, default=None, help="model.tar.gz to serve")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of HAM10000 .jpg images")
    parser.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_child:
        return raw_child(args.model, sorted(args.images.glob("*.jpg"))[: args.count], args.threads)
    files = sorted(args.images.glob("*.jpg"))[: 40 if args.quick else 400] if args.images.is_dir() else []
    if not files:
        print(f"BENCH_SKIP no HAM10000 .jpg images in {args.images}")
        return 0
    n1, n8 = (10, 24) if args.quick else (200, 400)
    bodies = [p.read_bytes() for p in files]
    cores = available_cores()
    workers, _, threads = plan_workers(0, 8, cores)
    with tempfile.TemporaryDirectory(prefix="dermaops-bench-serving-") as tmp:
        workdir = Path(tmp)
        package = pick_package(args.model, workdir)
        package_mb = package.stat().st_size / 1e6  # a package built here goes with the folder
        handlers = Handlers(package, workdir, threads)
        batching = handlers.batching_speedup(bodies)
        proc, state = start_server(package, workdir)
        try:
            load(state["port"], bodies[:8], 2, 16)  # warm-up: every worker has answered
            for body in bodies[:3]:
                handlers.ms(body)
            # Concurrency 1, interleaved with the baseline request by request, so the load other
            # processes put on the machine falls on both alike.
            conn = http.client.HTTPConnection("127.0.0.1", state["port"], timeout=60)
            raw, c1, errors1 = [], [], 0
            for i in range(n1):
                raw.append(handlers.ms(bodies[i % len(bodies)]))
                ms, ok = http_ms(conn, bodies[i % len(bodies)])
                c1.append(ms)
                errors1 += not ok
            conn.close()
            c8, errors8, secs8 = load(state["port"], bodies, 8, n8)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        ceiling = {n: raw_processes_rps(package, args.images, n1, n, threads) for n in sorted({1, workers})}
    rps1, rps8 = 1000.0 / float(np.mean(c1)), n8 / secs8
    errors = errors1 + errors8
    per_core = rps8 / cores
    usd_per_1000 = price(INSTANCE) / 3600.0 / (per_core * INSTANCE_VCPUS) * 1000
    p50, p99, raw50, raw99 = (float(np.percentile(c1, 50)), float(np.percentile(c1, 99)),
                              float(np.percentile(raw, 50)), float(np.percentile(raw, 99)))
    print(f"package {package} ({package_mb:.1f} MB); {len(bodies)} HAM10000 JPEGs; {cores} core(s); "
          f"server: {workers} worker(s) x {threads} torch thread(s); baseline: the handlers called here, {threads} thread(s)")
    print(f"concurrency 1: HTTP p50 {p50:.1f} ms p99 {p99:.1f} ms | handlers p50 {raw50:.1f} ms p99 {raw99:.1f} ms")
    print(f"throughput: c1 {rps1:.1f} req/s, c8 {rps8:.1f} req/s ({rps8 / rps1:.2f}x); c8 p50 "
          f"{np.percentile(c8, 50):.1f} ms p99 {np.percentile(c8, 99):.1f} ms; errors {errors}")
    print(f"{per_core:.1f} req/s per core -> {INSTANCE} ({INSTANCE_VCPUS} vCPU, ${price(INSTANCE)}/h): "
          f"${usd_per_1000:.5f} per 1,000 inferences")
    print(f"machine ceiling now: {workers} process(es) calling the handlers give {ceiling[workers]:.1f} req/s, "
          f"one gives {ceiling[1]:.1f} ({ceiling[workers] / ceiling[1]:.2f}x) - the most c8 / c1 can show here")
    print(f"micro-batching: one forward pass of 8 images is {batching:.2f}x as fast as 8 passes of one")
    print(f"concurrency 1 throughput: 1000 / mean latency; concurrency 8: {n8} requests / wall time")
    result("p50_latency_c1", p50, raw50, "<= 1.25x", bool(p50 <= 1.25 * raw50), "ms")
    result("p99_latency_c1", p99, raw99, "report", None, "ms")
    result("throughput_c8_vs_c1", rps8, rps1, ">= 1.6x", bool(rps8 >= 1.6 * rps1), "req/s")
    result("errors", float(errors), None, "== 0", errors == 0, "requests")
    result("throughput_per_core_c8", per_core, None, "report", None, "req/s/core")
    result("usd_per_1000_inferences_m5_large", usd_per_1000, None, "report", None, "USD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
