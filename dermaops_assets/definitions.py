"""The one ``Definitions`` of DermaOps: assets by stage, checks, jobs, schedules, sensors and the
resources of the configured backend (``DERMAOPS_BACKEND``)."""

from __future__ import annotations

import dagster as dg

from dermaops_resources.factory import build_resources
from dermaops_resources.settings import Settings

from . import batch, challenger, deployment, evaluation, ingestion, labelling, monitoring, preprocessing, registry, training
from .checks import all_checks
from .jobs import all_jobs
from .schedules import all_schedules
from .sensors import all_sensors



def step_executor(settings: Settings) -> dg.ExecutorDefinition:
    """How a run starts its steps (``DERMAOPS_STEP_PROCESSES``).

    Why not Dagster's default: it spawns a fresh interpreter per step, and each one imports
    dagster, this package, scikit-learn and pandas again (3-5 s on two cores) before doing
    a step's work, which in the demo is often a second. ``forkserver`` keeps a process per
    step (the step's own logs, retries, isolation from a crashing step, concurrency) but
    forks it from a server that imported ``dermaops_assets`` once per run
    (benchmarks/pipeline_overhead.py measures both). ``in_process`` runs every step in the run's
    process, for a debugger."""
    if settings.step_processes == "in_process":
        return dg.in_process_executor
    start = {"forkserver": {"preload_modules": ["dermaops_assets"]}} if settings.step_processes == "forkserver" \
        else {"spawn": {}}

    def run_choice(run_config: dict) -> dict:
        """A run may still ask for ``execution: {config: {in_process: {}}}`` (or its own multiprocess
        settings), as with Dagster's default executor; only the default start method is ours."""
        if "in_process" in run_config:
            return {"in_process": run_config["in_process"] or {}}
        multiprocess = dict(run_config.get("multiprocess") or {})
        multiprocess.setdefault("start_method", start)
        return {"multiprocess": multiprocess}

    return dg.multi_or_in_process_executor.configured(
        run_choice, name=f"multi_or_in_process_{settings.step_processes}",
        config_schema={"in_process": dg.Field(dg.Permissive(), is_required=False),
                       "multiprocess": dg.Field(dg.Permissive(), is_required=False)})


_settings = Settings.from_env()
stage_assets = dg.load_assets_from_modules(
    [labelling, ingestion, preprocessing, training, evaluation, registry, deployment, monitoring, challenger, batch])

defs = dg.Definitions(
    assets=stage_assets,
    asset_checks=all_checks,
    jobs=all_jobs,
    schedules=all_schedules,
    sensors=all_sensors,
    resources=build_resources(_settings),
    executor=step_executor(_settings),
)
