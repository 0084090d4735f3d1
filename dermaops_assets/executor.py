"""How a run starts and schedules its steps: the executor of the one ``Definitions``.

Two things differ from Dagster's default multiprocess executor, both for the same reason: on a
two-core machine most of a run's steps are a second of work behind a second or more of start-up.

- **Start method** (``DERMAOPS_STEP_PROCESSES``): ``forkserver`` forks each step's process from
  a server that imported ``dermaops_assets`` and the instance's storages once per run
  (:mod:`dermaops_assets.forkserver_preload`) instead of spawning an interpreter that imports
  dagster, this package, pandas, sqlalchemy and alembic again (``benchmarks/pipeline_overhead.py``
  measures both); ``spawn`` is Dagster's default; ``in_process`` runs every step in the run's
  process, for a debugger.
- **Concurrency**: steps that occupy the machine (they start a training, processing or
  transform job, decode images or start endpoint workers; tagged :data:`USES_ALL_CORES`) run at
  most one per core, as every step did; the light ones (checks, registry writes, monitoring
  reports over a few files) may run up to :data:`LIGHT_STEPS_PER_CORE` per core beside them,
  so the five reports that wait on ``inference_log`` start together instead of in three waves
  of two.

Every step still gets its own process, logs, retries and isolation; a run may still set its own
``execution: {config: {multiprocess: {...}}}`` or ask for ``in_process``.
"""

from __future__ import annotations

import atexit

import dagster as dg

from dermaops_resources.settings import Settings
from ml_code.contract import available_cpus

CORES_TAG_KEY = "dermaops/cores"
USES_ALL_CORES: dict[str, str] = {CORES_TAG_KEY: "all"}
"""``op_tags`` of a step whose work occupies every core (a job, an image pool, endpoint workers)."""

FORKSERVER_PRELOAD = "dermaops_assets.forkserver_preload"
"""Imported by the forkserver before it forks steps: the definitions and the instance's storages."""

LIGHT_STEPS_PER_CORE = 3
"""Concurrent steps per core in all (light steps fill what the heavy ones leave)."""


def multiprocess_defaults(settings: Settings) -> dict:
    """The ``multiprocess`` executor config a run gets unless it sets its own: the start method,
    ``max_concurrent`` = ``LIGHT_STEPS_PER_CORE`` x cores and at most one :data:`USES_ALL_CORES`
    step per core (cores: those the run's process may use, :func:`ml_code.contract.available_cpus`)."""
    cores = available_cpus()
    start = {"forkserver": {"preload_modules": [FORKSERVER_PRELOAD]}} if settings.step_processes == "forkserver" \
        else {"spawn": {}}
    return {"start_method": start, "max_concurrent": LIGHT_STEPS_PER_CORE * cores,
            "tag_concurrency_limits": [{"key": CORES_TAG_KEY, "value": "all", "limit": cores}]}


def step_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor of the one ``Definitions`` (module docstring): ``in_process`` when
    ``DERMAOPS_STEP_PROCESSES`` says so, else Dagster's multi-or-in-process executor with
    :func:`multiprocess_defaults` under whatever the run config sets."""
    if settings.step_processes == "in_process":
        return dg.in_process_executor

    def run_choice(run_config: dict) -> dict:
        """A run may still ask for ``execution: {config: {in_process: {}}}`` (or its own multiprocess
        settings), as with Dagster's default executor; what it leaves out is ours."""
        if "in_process" in run_config:
            return {"in_process": run_config["in_process"] or {}}
        if settings.step_processes == "forkserver":
            wait_for_step_server_at_exit()
        return {"multiprocess": {**multiprocess_defaults(settings), **(run_config.get("multiprocess") or {})}}

    return dg.multi_or_in_process_executor.configured(
        run_choice, name=f"multi_or_in_process_{settings.step_processes}",
        config_schema={"in_process": dg.Field(dg.Permissive(), is_required=False),
                       "multiprocess": dg.Field(dg.Permissive(), is_required=False)})


_waits_for_step_server = False


def wait_for_step_server_at_exit() -> None:
    """Stop this process's forkserver, and wait for it, when the process exits (once registered).

    Why: the steps are the forkserver's children, not the run's, and Python leaves the server to
    exit on its own, unwaited; a parent's view of its children's resources (``getrusage``'s
    ``RUSAGE_CHILDREN``, what ``/usr/bin/time -v dagster asset materialize ...`` reports as
    "Maximum resident set size") then never includes a step's. Waited for, the server passes on
    the steps it reaped, so a user measuring a run from outside sees its steps' peak memory."""
    global _waits_for_step_server
    if not _waits_for_step_server:
        _waits_for_step_server = True
        atexit.register(_stop_step_server)


def _stop_step_server() -> None:
    from multiprocessing import forkserver

    try:
        forkserver._forkserver._stop()  # closes its "alive" pipe (it then exits) and waits for it
    except (OSError, AttributeError):  # never started here, or already gone
        pass
