"""The model packages one server worker holds: load + health check, and the serving reference.

Why its own module: the HTTP layer (``ml_code.serving.app``) asks a :class:`ModelHolder` for a
model per request and never touches packages itself, so a later change that serves two named
variants (champion/challenger with traffic weights, or a shadow that is scored but not
answered: issue 21) is a holder per variant name and a routing choice in front of
``acquire``: every worker has a holder for the champion (SageMaker's variant name
``AllTraffic``, so capture paths and deployment records stay where they were) and one for the
``Challenger``. The two holders share one lock, because a promotion moves the challenger's
loaded model into the champion's holder (no reload, no request refused) and its in-flight
count must stay consistent whichever holder a request took it from.

A swap never happens inside a request: a request acquires the active :class:`LoadedModel`
(a reference count), finishes on it, and releases it; a retired model is deleted from disk
and ``sys.modules`` when its last request ends.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_code.package.loader import OpenedPackage, PackageError, open_package
from ml_code.serving.transform import InferenceError, transform

#: SageMaker's name for the one production variant of an endpoint (capture files go under it).
VARIANT = "AllTraffic"
#: The second variant of a champion/challenger endpoint (weighted traffic or shadow).
CHALLENGER = "Challenger"


@dataclass
class LoadedModel:
    """One extracted, imported and health-checked package; immutable once serving.

    ``generation`` is the server-wide swap counter (``ml_code.serving.control``) under which
    this copy was loaded: the same package version may be swapped in twice."""

    version: int
    model_tar: str
    workdir: Path
    package: OpenedPackage
    loaded_at: float
    generation: int = 0
    inflight: int = 0
    retired: bool = False

    @property
    def model(self) -> Any:
        return self.package.model

    def cleanup(self) -> None:
        """Forget the package's modules and delete the extracted files (only when nobody uses them)."""
        self.package.forget_modules()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _test_image(model_dir: Path) -> bytes:
    """A deterministic noise JPEG at the package's image size: enough to exercise every handler."""
    from PIL import Image

    size = 64
    cfg_path = model_dir / "model_config.json"
    if cfg_path.is_file():
        try:
            size = int(json.loads(cfg_path.read_text()).get("image_size", size))
        except (ValueError, TypeError, json.JSONDecodeError):
            pass
    rng = random.Random(1234)
    img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def health_check(package: OpenedPackage) -> dict[str, Any]:
    """Run one prediction end-to-end through :func:`transform` and insist on a valid probability vector."""
    try:
        text = transform(package, _test_image(package.model_dir), "image/jpeg", "application/json")
    except InferenceError as exc:
        raise PackageError(f"test prediction failed: {exc}") from exc
    try:
        response = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackageError(f"output_fn did not return JSON: {exc}") from exc
    probs = response.get("probabilities") if isinstance(response, dict) else None
    if not isinstance(probs, dict) or not probs:
        raise PackageError("output_fn JSON has no 'probabilities' mapping of class -> probability")
    values = list(probs.values())
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in values):
        raise PackageError(f"probabilities are not all finite numbers in [0, 1]: {probs}")
    total = float(sum(values))
    if abs(total - 1.0) > 1e-3:
        raise PackageError(f"probabilities sum to {total:.6f}, not 1")
    if response.get("predicted_class") not in probs:
        raise PackageError(f"predicted_class {response.get('predicted_class')!r} is not one of {sorted(probs)}")
    return response


def load_package(model_tar: str | os.PathLike, version: int, generation: int = 0) -> LoadedModel:
    """Extract, import, model_fn, health-check. Raises PackageError with the reason; leaves nothing behind."""
    tar_path = Path(model_tar)
    if not tar_path.is_file():
        raise PackageError(f"model package {tar_path} does not exist")
    workdir = Path(tempfile.mkdtemp(prefix=f"dermaops-serve-v{version}-"))
    package = None
    try:
        package = open_package(tar_path, workdir / "model", f"v{version}")
        health_check(package)
        return LoadedModel(version=version, model_tar=str(tar_path), workdir=workdir, package=package,
                           loaded_at=time.time(), generation=generation)
    except BaseException:
        if package is not None:
            package.forget_modules()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


class ModelHolder:
    """The active model of one variant in one worker.

    A swap is two steps so that every worker of a server can switch at the same instant: the
    worker loads and health-checks what it will serve beside what it serves (no request sees
    it; ``ml_code.serving.app.Worker``), then :meth:`replace` / :meth:`install` make it the
    active one. Requests in flight finish on the model they acquired; a retired model is
    cleaned up when its count reaches zero.
    """

    def __init__(self, variant: str = VARIANT, lock: threading.RLock | None = None) -> None:
        self.variant = variant
        self.active: LoadedModel | None = None
        self._lock = lock if lock is not None else threading.RLock()

    def acquire(self) -> LoadedModel | None:
        with self._lock:
            model = self.active
            if model is not None:
                model.inflight += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.inflight -= 1
            done = model.retired and model.inflight == 0
        if done:
            model.cleanup()

    def install(self, new: LoadedModel) -> LoadedModel | None:
        """Make ``new`` the active model; the old one is cleaned up once its last request ends."""
        old = self.replace(new)
        if old is not None and old is not new:
            self.retire(old)
        return old

    def replace(self, new: LoadedModel | None) -> LoadedModel | None:
        """Make ``new`` (None: no model) the active one and return the old one WITHOUT retiring it:
        the caller retires it, or keeps serving it from another holder (a promotion)."""
        with self._lock:
            old, self.active = self.active, new
        return old

    def retire(self, model: LoadedModel) -> None:
        """``model`` serves no new request; it is cleaned up when its last one ends."""
        with self._lock:
            model.retired = True
            done = model.inflight == 0
        if done:
            model.cleanup()

    def close(self) -> None:
        """Clean up the active model (shutdown: no request is in flight any more)."""
        with self._lock:
            model, self.active = self.active, None
        if model is not None:
            model.cleanup()
