"""Each job's options are declared once in ml_code and the asset's dg.Config is built from them:
same names, types and default semantics; an unknown option fails at launch and in the job."""

from __future__ import annotations

from typing import Optional

import dagster as dg
import pytest

from dermaops_assets.evaluation import EvaluationConfig
from dermaops_assets.preprocessing import SplitsConfig
from dermaops_assets.training import TrainConfig
from ml_code.data.options import PreprocessOptions, parse_preprocess_options
from ml_code.evaluation.options import EvaluationOptions, parse_evaluation_options
from ml_code.options import base_type
from ml_code.training.options import RECIPES, TrainOptions, parse_options, validate_options


@pytest.fixture(scope="module")
def retrain_job() -> dg.JobDefinition:
    from dermaops_assets.definitions import defs

    return defs.resolve_job_def("retrain_job")


def test_every_train_option_is_a_typed_optional_field_of_the_asset_config() -> None:
    """None in the asset means "the recipe's value, else the job default", so every option is
    Optional of its own type there; the description carries the job's default and help."""
    for name, info in TrainOptions.model_fields.items():
        if name == "recipe":
            continue
        field = TrainConfig.model_fields[name]
        assert field.annotation == Optional[base_type(info.annotation)], name
        assert field.default is None, name
        assert f"job default: {info.default}" in field.description and info.description in field.description
    assert TrainConfig.model_fields["recipe"].default == ""  # "" = DERMAOPS_TRAIN_RECIPE, else the data's recipe
    assert set(TrainConfig.model_fields) - set(TrainOptions.model_fields) == {"gpu", "extra_hyperparameters"}
    # Unset everywhere: the job resolves exactly its own defaults overlaid by the data's recipe.
    assert validate_options(TrainConfig().hyperparameters(real_data=False)) == \
        TrainOptions(recipe="synthetic_demo", **RECIPES["synthetic_demo"])


@pytest.mark.parametrize("op, config, words", [
    ("trained_model", {"mixupp": 0.2}, 'unexpected config entry "mixupp"'),
    ("trained_model", {"mixup": "lots"}, "mixup"),
    ("evaluation_report", {"n_bootstraps": 10}, 'unexpected config entry "n_bootstraps"'),
    ("processed_splits", {"imagesize": 32}, 'unexpected config entry "imagesize"'),
])
def test_unknown_or_mistyped_option_fails_at_launch(retrain_job, op: str, config: dict, words: str) -> None:
    with pytest.raises(dg.DagsterInvalidConfigError, match=words):
        dg.validate_run_config(retrain_job, {"ops": {op: {"config": config}}})
    dg.validate_run_config(retrain_job, {"ops": {op: {"config": {}}}})  # and the defaults launch


@pytest.mark.parametrize("parse, words", [
    (lambda: parse_options({"epochs": 1, "mixupp": 0.2}), "unknown training option(s) ['mixupp']"),
    (lambda: parse_evaluation_options({"n_bootstraps": 10}), "unknown evaluation option(s) ['n_bootstraps']"),
    (lambda: parse_preprocess_options({"imagesize": 32}), "unknown preprocessing option(s) ['imagesize']"),
])
def test_unknown_option_fails_in_the_job_parser_naming_it(parse, words: str) -> None:
    with pytest.raises(ValueError) as err:
        parse()
    assert words in str(err.value) and "known options:" in str(err.value)


def test_sagemaker_keys_are_not_options() -> None:
    assert parse_options({"sagemaker_program": "x", "_tuning_objective_metric": "y"}).epochs == 14


def test_evaluation_asset_and_job_share_names_and_defaults() -> None:
    """One bootstrap name (n_bootstrap) and one melanoma target (0.9) in the asset and the job."""
    for name, info in EvaluationOptions.model_fields.items():
        assert EvaluationConfig.model_fields[name].default == info.default, name
    assert EvaluationOptions().n_bootstrap == 1000 and EvaluationOptions().target_sensitivity == 0.9
    hps = EvaluationConfig().hyperparameters()
    assert parse_evaluation_options(hps) == EvaluationOptions()
    assert hps["n_bootstrap"] == 1000 and hps["target_sensitivity"] == 0.9
    assert EvaluationConfig(n_bootstrap=50, target_sensitivity=0.95).hyperparameters()["n_bootstrap"] == 50


def test_old_evaluation_names_still_launch_as_deprecated_aliases() -> None:
    hps = EvaluationConfig(bootstrap_samples=100, melanoma_target_sensitivity=0.8).hyperparameters()
    assert hps["n_bootstrap"] == 100 and hps["target_sensitivity"] == 0.8
    assert "bootstrap_samples" not in hps and "melanoma_target_sensitivity" not in hps
    with pytest.raises(dg.Failure, match="disagree"):
        EvaluationConfig(bootstrap_samples=100, n_bootstrap=200).hyperparameters()
    assert parse_evaluation_options({"bootstrap_samples": 7}).n_bootstrap == 7  # the job reads it too


def test_preprocessing_asset_and_job_share_names_and_defaults() -> None:
    """Same names; unset fields take the job's defaults (the image size follows the data: the
    synthetic demo's is the job default)."""
    assert set(PreprocessOptions.model_fields) <= set(SplitsConfig.model_fields)
    assert all(SplitsConfig.model_fields[name].default is None for name in PreprocessOptions.model_fields)
    assert SplitsConfig().options(real_data=False) == PreprocessOptions()
    with pytest.raises(dg.Failure, match="image_size must be 8..1024"):
        SplitsConfig(image_size=4).options(real_data=False)
