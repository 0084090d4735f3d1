"""The one way to write and to open a model package (``model.tar.gz``).

Layout of a package (SageMaker PyTorch inference container conventions)::

    model.pt  model_config.json  [descriptors.npz]
    code/inference.py            two lines: ``from dermaops_model.inference import *``
    code/dermaops_model/*.py     this folder (``ml_code/package``), verbatim
    code/requirements.txt        empty: torch, torchvision, Pillow, NumPy come with the image

Why a sub-package rather than flat files in ``code/``: the modules import each other
relatively (``from .networks import build_network``), so the same source is importable as
``ml_code.package`` in the repository and as ``dermaops_model`` in the container, and two
packages opened side by side (the endpoint's hot swap) get distinct module names and never
share state. Serving, evaluation, scoring, the drift baseline and monitoring all open a
package through :func:`open_package`, so each of them sees what the endpoint serves.

Packages written before this layout (one flat ``code/inference.py``) still open: their
handler module also exposes the helpers (``preprocess_array``, ``embed_fn``, ...).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

PACKAGE_NAME = "dermaops_model"
HANDLERS = ("model_fn", "input_fn", "predict_fn", "output_fn")
#: What other stages reuse besides the handlers (``OpenedPackage.api``).
API = ("preprocess_array", "predict_images", "network_log_probs", "fuse_log_probs", "embed_fn", "gradcam")
_SHIM = (f'"""SageMaker entry point: the DermaOps handlers live in the {PACKAGE_NAME} package beside this file."""\n'
         f"from {PACKAGE_NAME}.inference import input_fn, model_fn, output_fn, predict_fn  # noqa: F401\n")


class PackageError(RuntimeError):
    """A model package that cannot be opened or served; the message says why and what to do."""


@dataclass
class OpenedPackage:
    """An extracted package, its code imported under private names, and ``model_fn``'s result.

    ``handlers`` has the four SageMaker handlers; ``api`` those plus the helpers other stages
    reuse (:data:`API`, ``load_image_square`` and the ``descriptors`` module).
    """

    model_dir: Path
    handlers: ModuleType
    api: Any
    model: Any
    module_names: tuple[str, ...]

    def forget_modules(self) -> None:
        """Drop this package's modules from ``sys.modules`` (the endpoint retires old packages)."""
        for name in self.module_names:
            sys.modules.pop(name, None)


def write_code(model_dir: str | os.PathLike) -> Path:
    """Write ``code/`` into a model directory: this package's modules, the shim, requirements."""
    code = Path(model_dir) / "code"
    target = code / PACKAGE_NAME
    tmp = code / f".{PACKAGE_NAME}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    for source in sorted(Path(__file__).parent.glob("*.py")):
        shutil.copyfile(source, tmp / source.name)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for name, text in (("inference.py", _SHIM), ("requirements.txt", "")):
        part = code / f".{name}.tmp"
        part.write_text(text)
        os.replace(part, code / name)
    return code


def extract(model_input: str | os.PathLike, into: str | os.PathLike) -> Path:
    """The model directory of ``model_input``: a ``model.tar.gz`` (or a folder holding one)
    extracted into ``into`` with the tar 'data' filter (no absolute paths, '..' or devices),
    or an already extracted model directory itself."""
    model_input, into = Path(model_input), Path(into)
    tar_path = model_input if model_input.is_file() else model_input / "model.tar.gz"
    if tar_path.is_file():
        into.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                tar.extractall(into, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PackageError(f"cannot extract model package {tar_path}: {exc}. It must be the gzip'd tar "
                               "a DermaOps training job writes (model.pt, model_config.json, code/).") from exc
        return into
    if (model_input / "model.pt").is_file():
        return model_input
    found = sorted(p.name for p in model_input.iterdir()) if model_input.is_dir() else "nothing (path missing)"
    raise PackageError(f"No model.tar.gz at {model_input} (found {found}); pass a training job's model artefact "
                       "folder or the package file itself.")


def _import_file(name: str, path: Path, package_dir: Path | None = None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(package_dir)] if package_dir else None)
    if spec is None or spec.loader is None:
        raise PackageError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_code(model_dir: str | os.PathLike, tag: str = "pkg") -> tuple[ModuleType, Any, tuple[str, ...]]:
    """Import a package's code under unique names: (handlers, helper api, module names)."""
    code = Path(model_dir) / "code"
    unique = f"{PACKAGE_NAME}_{tag}_{uuid.uuid4().hex[:8]}"
    package_dir = code / PACKAGE_NAME
    def own_modules() -> tuple[str, ...]:  # never third-party modules first imported meanwhile
        return tuple(sorted(n for n in list(sys.modules) if n == unique or n.startswith(unique + ".")))

    try:
        if (package_dir / "__init__.py").is_file():
            _import_file(unique, package_dir / "__init__.py", package_dir)
            handlers = importlib.import_module(f"{unique}.inference")
            model_module = importlib.import_module(f"{unique}.model")
            api = SimpleNamespace(
                **{fn: getattr(handlers, fn) for fn in HANDLERS},
                **{fn: getattr(model_module, fn) for fn in API},
                load_image_square=importlib.import_module(f"{unique}.imaging").load_image_square,
                descriptors=importlib.import_module(f"{unique}.descriptors"))
        elif (code / "inference.py").is_file():  # a package from before the sub-package layout
            sys.path.insert(0, str(code))  # like the SageMaker toolkit: siblings import at load time
            try:
                handlers = api = _import_file(unique, code / "inference.py")
            finally:
                sys.path.remove(str(code))
        else:
            raise PackageError(f"model package has no code/inference.py (looked in {code}); re-run training to "
                               "re-package it.")
    except PackageError:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of packaged code is a package failure
        for name in own_modules():
            sys.modules.pop(name, None)
        raise PackageError(f"importing the package's code failed: {type(exc).__name__}: {exc}") from exc
    names = own_modules()
    missing = [fn for fn in HANDLERS if not callable(getattr(handlers, fn, None))]
    if missing:
        for name in names:
            sys.modules.pop(name, None)
        raise PackageError(f"the package's code lacks handler(s) {missing}; it must define {', '.join(HANDLERS)}.")
    return handlers, api, names


def open_package(model_input: str | os.PathLike, workdir: str | os.PathLike, tag: str = "pkg") -> OpenedPackage:
    """Extract ``model_input`` into ``workdir``, import its own code and run its ``model_fn``.

    Raises :class:`PackageError` with the reason; the caller owns ``workdir`` (removing it
    removes everything this made on disk)."""
    model_dir = extract(model_input, workdir)
    handlers, api, names = import_code(model_dir, tag)
    try:
        model = handlers.model_fn(str(model_dir))
    except Exception as exc:  # noqa: BLE001
        for name in names:
            sys.modules.pop(name, None)
        raise PackageError(f"model_fn failed: {type(exc).__name__}: {exc}") from exc
    if model is None:
        raise PackageError("model_fn returned None")
    return OpenedPackage(model_dir=Path(model_dir), handlers=handlers, api=api, model=model, module_names=names)
