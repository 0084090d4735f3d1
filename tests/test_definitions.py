"""The one Definitions loads and every job, schedule and sensor resolves (seconds, no training)."""

import dagster as dg

from dermaops_assets import defs

EXPECTED_JOBS = {"ingest_job", "retrain_job", "deploy_job", "monitoring_job"}
STAGE_ASSETS = {"raw_images", "processed_splits", "trained_model", "evaluation_report",
                "registered_model_package", "live_endpoint", "inference_log", "drift_report",
                "model_quality_report", "model_baseline", "labelled_captures", "labelling_queue"}


def test_every_job_resolves_against_the_asset_graph():
    repo = defs.get_repository_def()  # resolves selections, resources and schedules/sensors' jobs
    jobs = {job.name for job in repo.get_all_jobs()}
    assert EXPECTED_JOBS <= jobs
    for name in EXPECTED_JOBS:
        job = defs.resolve_job_def(name)
        assert job.asset_layer.executable_asset_keys, f"{name} selects no asset"
    graph_keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert STAGE_ASSETS <= graph_keys


def test_schedules_and_sensors_target_existing_jobs():
    repo = defs.get_repository_def()
    jobs = {job.name for job in repo.get_all_jobs()}
    for schedule in repo.schedule_defs:
        assert schedule.job_name in jobs, schedule.name
    for sensor in repo.sensor_defs:
        for target in sensor.targets:
            assert target.job_name in jobs, sensor.name


def test_retrain_job_runs_the_chain_without_deploying():
    keys = {k.to_user_string() for k in defs.resolve_job_def("retrain_job").asset_layer.executable_asset_keys}
    assert {"raw_images", "processed_splits", "trained_model", "evaluation_report", "registered_model_package",
            "model_baseline", "labelled_captures"} <= keys
    assert "live_endpoint" not in keys and "labelling_queue" not in keys
    monitoring = {k.to_user_string() for k in defs.resolve_job_def("monitoring_job").asset_layer.executable_asset_keys}
    assert {"inference_log", "drift_report", "model_quality_report", "labelling_queue"} <= monitoring


def test_validates_with_the_dagster_cli_loader():
    """What `dagster definitions validate -m dermaops_assets` loads."""
    assert isinstance(defs, dg.Definitions)
    assert defs.resolve_all_asset_specs()


def test_loading_the_code_location_imports_no_training_or_statistics_library():
    """Every ``dagster`` command, run, step server, UI reload and forkserver loads the definitions:
    torch, torchvision, scikit-learn, scipy.stats and matplotlib are for the jobs and the steps
    that use them (together several seconds of imports on two cores), not for the load."""
    import subprocess
    import sys
    from pathlib import Path

    heavy = ("torch", "torchvision", "sklearn", "scipy.stats", "matplotlib")
    child = f"import sys, dermaops_assets; print('LOADED', [m for m in {heavy!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("LOADED", 1)[1].strip() == "[]"
