"""The trained_model run config: named fields plus a JSON object of further train.py options."""

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


def test_extra_hyperparameters_join_the_named_ones() -> None:
    hps = TrainConfig(recipe="ham10000", extra_hyperparameters='{"seed": 7, "tta_views": 1}').hyperparameters()
    assert hps["recipe"] == "ham10000" and hps["seed"] == 7 and hps["tta_views"] == 1


@pytest.mark.parametrize("text, words", [("{mixup: 0.2}", "not valid JSON"), ('["epochs", 3]', "not a list"),
                                         ('"ham10000"', "not a str")])
def test_extra_hyperparameters_that_are_not_an_object_fail_clearly(text: str, words: str) -> None:
    with pytest.raises(dg.Failure, match=words) as err:
        TrainConfig(extra_hyperparameters=text).hyperparameters()
    assert "JSON object" in str(err.value) and '{"mixup": 0.2' in str(err.value)
