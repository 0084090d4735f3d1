"""The tree says what may import what (docs/ARCHITECTURE.md), and the code keeps to it."""

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: package -> top-level packages of this repository it must never import
FORBIDDEN = {
    "ml_code": {"dermaops_assets", "dermaops_resources", "dermaops_services", "dermaops_cli", "dagster"},
    "dermaops_resources": {"dermaops_assets", "dermaops_services", "dermaops_cli"},
    "dermaops_services": {"dermaops_assets", "dermaops_cli"},
    "dermaops_assets": {"dermaops_cli"},
}
#: what ml_code/package may import: it ships alone in model.tar.gz and runs in the AWS PyTorch
#: inference container, which has these and nothing of this repository.
PACKAGE_ALLOWED = {"torch", "torchvision", "numpy", "PIL", "__future__"} | set(sys.stdlib_module_names)


def _imports(path: Path, module_level_only: bool = False) -> list[tuple[str, int]]:
    """(top-level module, level) of every import (or of those at module level only: what runs on
    import); level > 0 is a relative import."""
    out = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in (tree.body if module_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            out += [(alias.name.split(".")[0], 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(((node.module or "").split(".")[0], node.level))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_go_down_the_tree(package):
    bad = [f"{p.relative_to(REPO)} imports {name}" for p in (REPO / package).rglob("*.py")
           for name, level in _imports(p) if level == 0 and name in FORBIDDEN[package]]
    assert not bad, bad


def test_the_model_package_imports_only_what_the_container_has():
    """At import, and so at serving; a training-only function may import more lazily (the
    descriptor model's fit uses scikit-learn, which only the training job runs)."""
    bad = [f"{p.name} imports {name}" for p in (REPO / "ml_code" / "package").glob("*.py")
           for name, level in _imports(p, module_level_only=True) if level == 0 and name not in PACKAGE_ALLOWED]
    assert not bad, bad


def test_one_package_loader():
    """Serving, evaluation, scoring, the baseline and monitoring open packages through
    ml_code/package/loader.py; nothing else imports packaged code by file path."""
    users = sorted(str(p.relative_to(REPO)) for folder in ("ml_code", "dermaops_assets", "dermaops_resources",
                                                           "dermaops_services")
                   for p in (REPO / folder).rglob("*.py") if "spec_from_file_location" in p.read_text())
    assert users == ["ml_code/package/loader.py"], users


def test_no_long_functions_in_ml_code():
    longest = max(((node.end_lineno - node.lineno + 1, f"{p.relative_to(REPO)}:{node.name}")
                   for p in (REPO / "ml_code").rglob("*.py")
                   for node in ast.walk(ast.parse(p.read_text()))
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))))
    assert longest[0] <= 90, longest
