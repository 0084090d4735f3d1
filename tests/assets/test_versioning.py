"""Code versions follow the source a stage's job runs, found through its imports."""

import shutil
from pathlib import Path

import pytest

from dermaops_assets import evaluation, preprocessing, training
from dermaops_assets.versioning import REPO_ROOT, code_version, import_closure


@pytest.fixture()
def repo_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO_ROOT / "ml_code", tmp_path / "ml_code", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_changing_the_crop_changes_the_splits_version(repo_copy: Path):
    """The crop and resize live in ml_code/package/imaging.py, which preprocess imports: editing
    it must mark processed_splits stale (a hand-kept list once left that module out)."""
    assert preprocessing.PREPROCESS_CODE_VERSION == code_version("ml_code.data.preprocess")
    before = code_version("ml_code.data.preprocess", root=repo_copy)
    assert before == preprocessing.PREPROCESS_CODE_VERSION
    _edit(repo_copy / "ml_code/package/imaging.py", "left, top = (w - side) / 2, (h - side) / 2",
          "left, top = (w - side) // 2, (h - side) // 2")
    assert code_version("ml_code.data.preprocess", root=repo_copy) != before


def test_an_unrelated_module_leaves_the_version_alone(repo_copy: Path):
    before = code_version("ml_code.data.preprocess", root=repo_copy)
    _edit(repo_copy / "ml_code/monitoring/drift.py", "PSI_EPS = 1e-4", "PSI_EPS = 2e-4")
    assert code_version("ml_code.data.preprocess", root=repo_copy) == before


def test_training_and_evaluation_versions_cover_what_the_package_ships():
    """Training writes every module of ml_code/package into model.tar.gz (handlers included, though
    training never imports them), and evaluation opens packages through the same loader."""
    shipped = {f"ml_code.package.{p.stem}" for p in (REPO_ROOT / "ml_code/package").glob("*.py") if p.stem != "__init__"}
    assert shipped <= set(import_closure(["ml_code.training.train"]))
    assert {"ml_code.metrics", "ml_code.training.models"} <= set(import_closure(["ml_code.training.train"]))
    assert training.TRAIN_CODE_VERSION == code_version("ml_code.training.train")
    assert "ml_code.package.loader" in import_closure(["ml_code.evaluation.evaluate"])
    assert evaluation.EVALUATE_CODE_VERSION == code_version("ml_code.evaluation.evaluate")


def test_a_missing_entry_module_is_an_error():
    with pytest.raises(ValueError, match="no module"):
        code_version("ml_code.preprocess")
