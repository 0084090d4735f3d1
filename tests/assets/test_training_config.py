"""The trained_model run config: typed fields built from ml_code's TrainOptions, plus the recipe."""

from __future__ import annotations

import dagster as dg
import pytest

from dermaops_assets.training import TrainConfig


def test_runs_without_a_recipe_follow_the_deployment_recipe(monkeypatch) -> None:
    monkeypatch.delenv("DERMAOPS_TRAIN_RECIPE", raising=False)
    assert TrainConfig().hyperparameters()["recipe"] == "synthetic_demo"  # the data's recipe
    monkeypatch.setenv("DERMAOPS_TRAIN_RECIPE", "ham10000")  # what a sensor-started retrain then trains with
    assert TrainConfig().hyperparameters()["recipe"] == "ham10000"
    assert TrainConfig(recipe="other").hyperparameters()["recipe"] == "other"  # a run's own config wins


def test_typed_fields_join_the_recipe(monkeypatch) -> None:
    """Options once reachable only through the extra_hyperparameters JSON are typed fields;
    only the fields a run sets are passed, so the recipe supplies the rest."""
    monkeypatch.delenv("DERMAOPS_TRAIN_RECIPE", raising=False)
    hps = TrainConfig(recipe="ham10000", seed=7, tta_views=1, mixup=0.3, balance="loss").hyperparameters()
    assert hps == {"recipe": "ham10000", "seed": 7, "tta_views": 1, "mixup": 0.3, "balance": "loss"}
    assert TrainConfig().hyperparameters() == {"recipe": "synthetic_demo"}


def test_extra_hyperparameters_is_refused_unless_empty(monkeypatch) -> None:
    """Kept only so saved run configs carrying its old default ("{}") still launch; any content
    fails before a job starts, saying to use the typed fields."""
    monkeypatch.delenv("DERMAOPS_TRAIN_RECIPE", raising=False)
    assert TrainConfig(extra_hyperparameters="{}").hyperparameters() == {"recipe": "synthetic_demo"}
    with pytest.raises(dg.Failure, match="no longer read") as err:
        TrainConfig(extra_hyperparameters='{"mixup": 0.2}').hyperparameters()
    assert "field of trained_model's config" in str(err.value) and "mixup: 0.2" in str(err.value)


def test_real_data_trains_the_pretrained_recipe_with_no_setting(monkeypatch):
    """Pointed at real data, a run with no config trains the real-data recipe (the pretrained
    network); the synthetic demo set its own (the quick job defaults, resnet18's own stem); a
    named recipe still wins."""
    monkeypatch.delenv("DERMAOPS_TRAIN_RECIPE", raising=False)
    assert TrainConfig().hyperparameters(real_data=True)["recipe"] == "ham10000"
    assert TrainConfig().hyperparameters(real_data=False)["recipe"] == "synthetic_demo"
    assert TrainConfig(recipe="ham10000_scratch").hyperparameters(real_data=True)["recipe"] == "ham10000_scratch"
    from ml_code.training.options import RECIPES

    assert RECIPES["ham10000"]["arch"] == "efficientnet_lite0"


def test_real_data_splits_default_to_the_recipes_image_size(tmp_path):
    import pandas as pd

    from dermaops_assets.preprocessing import REAL_DATA_IMAGE_SIZE, SplitsConfig, is_real_data
    from dermaops_resources.handles import RawImagesHandle
    from dermaops_resources.object_store import LocalObjectStore

    store = LocalObjectStore(root=str(tmp_path))

    def handle(dx_types: list[str]) -> RawImagesHandle:
        uri = store.put_bytes("raw", f"manifests/{len(dx_types)}/manifest.csv",
                              pd.DataFrame({"dx_type": dx_types}).to_csv(index=False).encode())
        return RawImagesHandle.model_construct(manifest_uri=uri)

    synthetic, real = handle(["synthetic"] * 3), handle(["synthetic", "histo", "follow_up", "consensus"])
    assert not is_real_data(store, synthetic) and is_real_data(store, real)
    assert SplitsConfig().options(real_data=True).image_size == REAL_DATA_IMAGE_SIZE == 96
    assert SplitsConfig().options(real_data=False).image_size == 64
    assert SplitsConfig(image_size=128).options(real_data=True).image_size == 128
