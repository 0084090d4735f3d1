"""Per-request cost of test-time views: one batched forward pass against a pass per view.

    .venv/bin/python benchmarks/tta_latency.py --model MODEL.tar.gz|MODEL_DIR [--images DIR] [--requests 100]

A package with ``tta_views`` 8 averages the network over eight flips/rotations of each image.
The endpoint (``ml_code.package.inference.network_log_probs``) sends those views through the
network as one batch; the baseline, measured in the same run on the same images, is how it
used to be done: one forward pass per view. Each request is one image, as the endpoint gets
them (decoded from the file's bytes by ``input_fn``). Prints the p50/p95 milliseconds of the
network part for both, their ratio, the whole handler chain (``input_fn`` -> ``predict_fn``,
descriptor model and fusion included) at the package's views and at one view, and checks
that both network paths give the same probabilities.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml_code.package import inference  # noqa: E402
from ml_code.package import views as d4
from ml_code.package import imaging
from ml_code.package import model as package_model
from ml_code.package.loader import extract  # noqa: E402

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "ham10000" / "images"


@torch.no_grad()
def view_by_view(x: torch.Tensor, model: package_model.ServedModel, views: int) -> np.ndarray:
    """The baseline: the view average with one forward pass per view."""
    order = d4.view_order(views)
    p = sum(torch.softmax(model(d4.dihedral_view(x, v)).float(), dim=1) for v in order)
    return (p / len(order)).numpy()


def per_request_ms(serve: Callable[[Any], object], requests: Sequence[Any]) -> np.ndarray:
    """Milliseconds of ``serve(request)`` for each request, after one warm-up call (first-call
    allocations are not a request's cost)."""
    serve(requests[0])
    out = []
    for request in requests:
        t0 = time.perf_counter()
        serve(request)
        out.append((time.perf_counter() - t0) * 1000.0)
    return np.array(out)


def percentiles(ms: list[float] | np.ndarray) -> str:
    return f"p50 {np.percentile(ms, 50):7.1f} ms  p95 {np.percentile(ms, 95):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model.tar.gz or an extracted model folder")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of .jpg/.png lesion images")
    parser.add_argument("--requests", type=int, default=100, help="single-image requests to time (default 100)")
    args = parser.parse_args()
    files = sorted(p for p in args.images.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.requests]
    if not files:
        print(f"no .jpg/.png images in {args.images}; pass --images DIR", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dermaops-tta-") as tmp:
        model_dir = args.model if args.model.is_dir() else extract(args.model, Path(tmp))
        model = inference.model_fn(str(model_dir))
    views = model.tta_views
    bodies = [(p.read_bytes(), "image/png" if p.suffix.lower() == ".png" else "image/jpeg") for p in files]
    tensors = [package_model.preprocess_array(imaging.load_image_square(body, model.image_size)[None], model)
               for body, _ in bodies]
    batched = per_request_ms(lambda x: package_model.network_log_probs(x, model, views, 1.0), tensors)
    baseline = per_request_ms(lambda x: view_by_view(x, model, views), tensors)
    agree = max(float(np.abs(np.exp(package_model.network_log_probs(x, model, views, 1.0))
                             - view_by_view(x, model, views)).max()) for x in tensors[:10])

    def whole_request(body_and_type: tuple[bytes, str], n: int) -> np.ndarray:
        data = inference.input_fn(*body_and_type)  # what the endpoint does with a bare image
        image = imaging.load_image_square(data["image_bytes"], model.image_size)[None]
        return inference.predict_fn({"images": image, "views": n}, model)

    handler = {n: per_request_ms(lambda b, n=n: whole_request(b, n), bodies) for n in sorted({views, 1}, reverse=True)}
    print(f"{len(files)} single-image requests from {args.images}; package serves {views} test-time views; "
          f"{torch.get_num_threads()} threads")
    print(f"network, one pass per view (baseline): {percentiles(baseline)}")
    print(f"network, views in one batch (served): {percentiles(batched)}")
    print(f"ratio baseline/served p50: {np.percentile(baseline, 50) / np.percentile(batched, 50):.2f}")
    print(f"max |probability difference| between the two: {agree:.2e}")
    for n, ms in handler.items():
        print(f"whole request (input_fn + predict_fn) at {n} view(s): {percentiles(ms)}")
    if agree > 1e-4:
        print("the batched views disagree with the per-view loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
