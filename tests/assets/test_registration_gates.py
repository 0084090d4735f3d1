"""The registration gates: each one failing skips registration, says which gate, and notifies."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from dermaops_assets.evaluation import champion_trained_on_test
from dermaops_assets.preprocessing import splits_uri_for
from dermaops_assets.registry import RegistrationConfig, registered_model_package, registration_gates
from dermaops_resources.handles import EvaluationHandle, ProcessedSplitsHandle, TrainedModelHandle
from dermaops_resources.metrics import LocalMetricsStore
from dermaops_resources.notifier import LocalNotifier
from dermaops_resources.object_store import LocalObjectStore
from dermaops_resources.registry import ModelPackage, SqliteModelRegistry
from ml_code.data.splits import grouped_stratified_split
from ml_code.tools.synthetic_metadata import synthetic_metadata
from tests.support.dagster_io import HandleIO as _HandleIO

GOOD = {"balanced_accuracy": 0.8, "melanoma_sensitivity_at_operating_point": 0.85}


def _champion(new_ba: float, old_ba: float, recalls: dict[str, tuple[float, float]] | None = None) -> dict:
    recalls = recalls or {"mel": (0.8, 0.8), "nv": (0.9, 0.9)}
    return {"version": 3, "model_hash": "old", "n_images": 500,
            "balanced_accuracy": {"challenger": new_ba, "champion": old_ba, "difference": new_ba - old_ba,
                                  "ci_low": new_ba - old_ba - 0.03, "ci_high": new_ba - old_ba + 0.03,
                                  "n_bootstrap": 100},
            "recall": {c: {"challenger": a, "champion": b} for c, (a, b) in recalls.items()}}


@pytest.mark.parametrize("metrics,champion,failed", [
    ({**GOOD, "balanced_accuracy": 0.4}, None, "below the floor 0.500"),
    ({**GOOD, "melanoma_sensitivity_at_operating_point": 0.3}, None, "melanoma sensitivity 0.300"),
    (GOOD, _champion(0.78, 0.82), "below the Approved v3's 0.820 on the same 500 test images"),
    (GOOD, _champion(0.83, 0.82, {"mel": (0.60, 0.80), "nv": (0.95, 0.90)}), "mel recall 0.600 is 20.0 points below"),
])
def test_each_gate_fails_on_its_own(metrics, champion, failed):
    failures = registration_gates(metrics, RegistrationConfig(auto_approve=False), champion)
    assert len(failures) == 1 and failed in failures[0], failures


def test_a_model_clearing_every_gate_has_no_failures():
    assert registration_gates(GOOD, RegistrationConfig(auto_approve=False), _champion(0.83, 0.82)) == []


def _materialize(tmp_path, evaluation: EvaluationHandle):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    model = TrainedModelHandle(model_uri="file:///m.tar.gz", model_hash="new", arch="dermanet", image_size=64,
                               classes=["mel", "nv"], data_version="d", code_version="c", history=[],
                               hyperparameters={}, job_name="j")
    for key, handle in (("trained_model", model), ("evaluation_report", evaluation)):
        store.put_json("models", f"handles/{key}.json", {"type": f"{type(handle).__module__}:{type(handle).__qualname__}",
                                                         "handle": handle.model_dump()})
    resources = {"store": store, "io_manager": _HandleIO(store),
                 "registry": SqliteModelRegistry(db_path=str(tmp_path / "registry.db")),
                 "notifier": LocalNotifier(alerts_path=str(tmp_path / "alerts.jsonl")),
                 "metrics": LocalMetricsStore(db_path=str(tmp_path / "metrics.db"))}
    result = dg.materialize([dg.AssetSpec("trained_model"), dg.AssetSpec("evaluation_report"),
                             registered_model_package], resources=resources, selection=["registered_model_package"],
                            run_config={"ops": {"registered_model_package": {"config": {"auto_approve": False}}}})
    assert result.success
    (mat,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}, resources


def test_a_skipped_registration_says_which_gate_failed_and_notifies(tmp_path):
    evaluation = EvaluationHandle(evaluation_uri="file:///e.json", report_uri="file:///r", model_uri="file:///m.tar.gz",
                                  model_hash="new", metrics=GOOD, champion=_champion(0.70, 0.82))
    md, resources = _materialize(tmp_path, evaluation)
    assert md["registered"] is False and "below the Approved v3's 0.820" in md["reason"]
    (alert,) = resources["notifier"].read_alerts()
    assert alert["severity"] == "warning" and "not registered" in alert["subject"]
    assert "same 500 test images" in alert["message"]
    assert resources["registry"].list_packages("dermaops-lesion-classifier") == []


def test_a_model_clearing_the_gates_is_registered_pending_approval(tmp_path):
    evaluation = EvaluationHandle(evaluation_uri="file:///e.json", report_uri="file:///r", model_uri="file:///m.tar.gz",
                                  model_hash="new", metrics=GOOD, champion=_champion(0.85, 0.82))
    md, resources = _materialize(tmp_path, evaluation)
    assert md["registered"] is True and md["status"] == "PendingManualApproval"
    assert not resources["notifier"].read_alerts()


def _write_index(store: LocalObjectStore, splits_uri: str, split: str, rows: pd.DataFrame) -> None:
    store.put_bytes("processed", splits_uri.split("/processed/", 1)[1] + f"/{split}_index.csv",
                    rows[["image_id", "lesion_id", "dx"]].to_csv(index=False).encode())


def test_after_new_data_the_champion_never_trained_on_the_challengers_test_images(tmp_path):
    """The gate's comparison is only fair if the champion did not train on the test images both
    are scored on. With keyed-hash splits a retrain on grown data keeps old train lesions out of
    test; a champion from another split (here: one lesion planted) is counted and reported."""
    store = LocalObjectStore(root=str(tmp_path / "store"))
    old = synthetic_metadata(3_000, seed=21)
    grown = pd.concat([old, synthetic_metadata(600, seed=22, prefix="NEW")], ignore_index=True)
    old["split"], grown["split"] = grouped_stratified_split(old), grouped_stratified_split(grown)
    champion_splits = splits_uri_for(store, "champ0123456789ab")
    _write_index(store, champion_splits, "train", old[old["split"] == "train"])
    challenger = ProcessedSplitsHandle(splits_uri=splits_uri_for(store, "chall0123456789a"), content_hash="c",
                                       image_size=8, classes=[], split_counts={}, raw_manifest_hash="r")
    _write_index(store, challenger.splits_uri, "test", grown[grown["split"] == "test"])
    champion = ModelPackage(group="g", version=3, status="Approved", created_at=0, updated_at=0, model_uri="m",
                            model_hash="old", lineage={"data_version": "champ0123456789ab"})
    assert champion_trained_on_test(store, champion, challenger) == 0
    assert (grown["split"] == "test").sum() > (old["split"] == "test").sum()  # same images + the new ones

    planted = grown[grown["split"] == "test"].iloc[[0]].assign(split="train")
    _write_index(store, champion_splits, "train", pd.concat([old[old["split"] == "train"], planted]))
    lesion_images = (grown["lesion_id"] == planted["lesion_id"].item()).sum()
    assert champion_trained_on_test(store, champion, challenger) == lesion_images
    unknown = champion.model_copy(update={"lineage": {"data_version": "nowhere00000000"}})
    assert champion_trained_on_test(store, unknown, challenger) is None
