"""The one ``Definitions`` of DermaOps: assets by stage, checks, jobs, schedules, sensors and the
resources of the configured backend (``DERMAOPS_BACKEND``)."""

from __future__ import annotations

import dagster as dg

from dermaops_resources.factory import build_resources
from dermaops_resources.settings import Settings

from . import batch, challenger, deployment, evaluation, ingestion, labelling, monitoring, preprocessing, registry, training
from .checks import all_checks
from .executor import step_executor
from .jobs import all_jobs
from .schedules import all_schedules
from .sensors import all_sensors

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
