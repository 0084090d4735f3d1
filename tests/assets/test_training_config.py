"""The trained_model run config: typed fields built from ml_code's TrainOptions, plus the recipe."""

from __future__ import annotations

import dagster as dg
import pytest

from dermaops_assets.training import TrainConfig


def test_runs_without_a_recipe_follow_the_deployment_recipe(monkeypatch) -> None:
    monkeypatch.delenv("DERMAOPS_TRAIN_RECIPE", raising=False)
    assert "recipe" not in TrainConfig().hyperparameters()
    monkeypatch.setenv("DERMAOPS_TRAIN_RECIPE", "ham10000")  # what a sensor-started retrain then trains with
    assert TrainConfig().hyperparameters()["recipe"] == "ham10000"
    assert TrainConfig(recipe="other").hyperparameters()["recipe"] == "other"  # a run's own config wins


def test_typed_fields_join_the_recipe(monkeypatch) -> None:
    """Options once reachable only through the extra_hyperparameters JSON are typed fields;
    only the fields a run sets are passed, so the recipe supplies the rest."""
    monkeypatch.delenv("DERMAOPS_TRAIN_RECIPE", raising=False)
    hps = TrainConfig(recipe="ham10000", seed=7, tta_views=1, mixup=0.3, balance="loss").hyperparameters()
    assert hps == {"recipe": "ham10000", "seed": 7, "tta_views": 1, "mixup": 0.3, "balance": "loss"}
    assert TrainConfig().hyperparameters() == {}


def test_extra_hyperparameters_is_refused_unless_empty(monkeypatch) -> None:
    """Kept only so saved run configs carrying its old default ("{}") still launch; any content
    fails before a job starts, saying to use the typed fields."""
    monkeypatch.delenv("DERMAOPS_TRAIN_RECIPE", raising=False)
    assert TrainConfig(extra_hyperparameters="{}").hyperparameters() == {}
    with pytest.raises(dg.Failure, match="no longer read") as err:
        TrainConfig(extra_hyperparameters='{"mixup": 0.2}').hyperparameters()
    assert "field of trained_model's config" in str(err.value) and "mixup: 0.2" in str(err.value)
