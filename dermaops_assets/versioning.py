"""Code versions derived from source: an asset is stale exactly when the code its job runs changed.

A hand-kept list of modules per stage drifts: ``processed_splits`` once left out the module
holding the crop and resize, so editing it kept stale splits while the endpoint served the new
pixels. Here a stage names only its job's entry module; the version hashes the source of every
``ml_code`` module that entry imports, directly or not (its import closure, read statically
from the source with :mod:`ast`, so nothing is imported or executed to compute it).
"""

import ast
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FOLLOWED_PACKAGES: tuple[str, ...] = ("ml_code",)
#: Modules that carry a whole package's source with them: the package writer copies every
#: module of ``ml_code/package`` into ``model.tar.gz``, imported or not.
CARRIES_PACKAGE: dict[str, str] = {"ml_code.package.loader": "ml_code.package"}


def module_path(name: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of dotted module ``name`` under ``root`` (a module or a package's
    ``__init__.py``), or None when it is not a file of this repository."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(name: str, path: Path) -> frozenset[str]:
    """Dotted names a module imports (``from a import b`` yields ``a`` and ``a.b``, since ``b``
    may be a submodule), relative imports resolved against the module's package.

    Parsed once per process for a given source text: the stages' closures overlap, and parsing
    every module again for each stage was about a third of loading the definitions (the
    ``dagster`` command, each run's step server, the UI's code server)."""
    source = path.read_bytes()
    return _imported_names_of(name, path.name == "__init__.py", str(path), source)


@functools.lru_cache(maxsize=1024)
def _imported_names_of(name: str, is_package: bool, filename: str, source: bytes) -> frozenset[str]:
    tree = ast.parse(source, filename=filename)
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


_STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers", "cases")


def _statements(body: list[ast.stmt]) -> Iterable[ast.AST]:
    """Every statement of ``body``, nested ones included (function and class bodies, branches,
    loops, ``with``, ``try`` handlers, ``match`` cases), without visiting expressions: an import
    is always a statement, and skipping the expression nodes, most of a tree, makes this cheaper
    than :func:`ast.walk` on the same tree (what every definitions load pays)."""
    todo = list(body)
    while todo:
        node = todo.pop()
        yield node
        for field in _STATEMENT_LISTS:
            todo.extend(getattr(node, field, ()))


def import_closure(entries: Iterable[str], root: Path = REPO_ROOT,
                   follow: tuple[str, ...] = FOLLOWED_PACKAGES) -> list[str]:
    """Sorted module names reachable from ``entries`` through imports, within ``follow``
    packages (plus the entries themselves and every parent package, whose ``__init__`` runs)."""
    todo, seen = list(entries), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name, root)
        if path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(n for n in _imported_names(name, path)
                    if n.split(".")[0] in follow and n not in seen)
        if name in CARRIES_PACKAGE:
            carried = CARRIES_PACKAGE[name]
            folder = root.joinpath(*carried.split("."))
            todo.extend(f"{carried}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")
    return sorted(seen)


def code_version(*entries: str, root: Path = REPO_ROOT) -> str:
    """12-hex hash of the source of ``entries`` and their ``ml_code`` import closure.

    Raises ValueError when an entry is not a module of the repository, so a renamed entry
    point cannot silently hash nothing."""
    missing = [e for e in entries if module_path(e, root) is None]
    if missing:
        raise ValueError(f"code_version: no module {missing} under {root}; name the job's entry module "
                         "(for example ml_code.data.preprocess)")
    h = hashlib.sha256()
    for name in import_closure(entries, root):
        h.update(name.encode() + b"\0")
        h.update(module_path(name, root).read_bytes() + b"\0")
    return h.hexdigest()[:12]
