"""The SageMaker container contract, read in one place.

Training jobs: channels at ``SM_CHANNEL_<NAME>`` (default ``/opt/ml/input/data/<name>``),
model dir ``SM_MODEL_DIR`` (``/opt/ml/model``), output data ``SM_OUTPUT_DATA_DIR``,
hyperparameters from ``SM_HPS`` (JSON) overlaid by ``--key value`` arguments,
checkpoints in ``/opt/ml/checkpoints`` (synced to S3 by managed spot training).

Processing jobs: ``/opt/ml/processing/input/<name>`` and ``/opt/ml/processing/output/<name>``.
The local backend sets ``SM_PROCESSING_INPUT_<NAME>`` / ``SM_PROCESSING_OUTPUT_<NAME>`` to
point at its own folders; inside a real container those are unset and the standard
paths apply, so the scripts are the same in both places.

Metrics are printed as ``[dermaops-metric] {json}`` lines: the local runner streams
them into the Dagster log, and SageMaker ``MetricDefinitions`` regexes read the same lines.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

METRIC_PREFIX = "[dermaops-metric] "
OPT_ML = Path("/opt/ml")


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else default


def _coerce(value: str) -> Any:
    """SageMaker passes every hyperparameter as a string; recover JSON types when possible."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(value)
    except (json.JSONDecodeError, ValueError):
        return value


def parse_hyperparameters(argv: list[str] | None = None) -> dict[str, Any]:
    hps: dict[str, Any] = {}
    raw = os.environ.get("SM_HPS")
    if raw:
        hps.update({k: _coerce(v) if isinstance(v, str) else v for k, v in json.loads(raw).items()})
    args = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key = arg[2:].replace("-", "_")
            if "=" in key:
                key, val = key.split("=", 1)
                hps[key] = _coerce(val)
                i += 1
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                hps[key] = _coerce(args[i + 1])
                i += 2
            else:
                hps[key] = True
                i += 1
        else:
            i += 1
    return hps


@dataclass
class TrainingEnv:
    channels: dict[str, Path]
    model_dir: Path
    output_data_dir: Path
    output_dir: Path
    checkpoint_dir: Path
    hyperparameters: dict[str, Any]
    num_gpus: int
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])
    current_host: str = "algo-1"

    def channel(self, name: str) -> Path:
        if name not in self.channels:
            raise KeyError(
                f"Training channel {name!r} is missing; the job was given {sorted(self.channels)}. "
                f"Pass it as an input named {name!r} (SM_CHANNEL_{name.upper()})."
            )
        return self.channels[name]


def training_env(argv: list[str] | None = None) -> TrainingEnv:
    channels: dict[str, Path] = {}
    names = json.loads(os.environ.get("SM_CHANNELS", "[]"))
    for key, value in os.environ.items():
        if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS":
            channels[key[len("SM_CHANNEL_"):].lower()] = Path(value)
    for name in names:
        channels.setdefault(name, OPT_ML / "input" / "data" / name)
    data_root = OPT_ML / "input" / "data"
    if not channels and data_root.is_dir():
        channels = {p.name: p for p in data_root.iterdir() if p.is_dir()}
    return TrainingEnv(
        channels=channels,
        model_dir=_env_path("SM_MODEL_DIR", OPT_ML / "model"),
        output_data_dir=_env_path("SM_OUTPUT_DATA_DIR", OPT_ML / "output" / "data"),
        output_dir=_env_path("SM_OUTPUT_DIR", OPT_ML / "output"),
        checkpoint_dir=_env_path("SM_CHECKPOINT_DIR", OPT_ML / "checkpoints"),
        hyperparameters=parse_hyperparameters(argv),
        num_gpus=int(os.environ.get("SM_NUM_GPUS", "0") or 0),
        hosts=json.loads(os.environ.get("SM_HOSTS", '["algo-1"]')),
        current_host=os.environ.get("SM_CURRENT_HOST", "algo-1"),
    )


def processing_input(name: str) -> Path:
    return _env_path(f"SM_PROCESSING_INPUT_{name.upper()}", OPT_ML / "processing" / "input" / name)


def processing_output(name: str) -> Path:
    path = _env_path(f"SM_PROCESSING_OUTPUT_{name.upper()}", OPT_ML / "processing" / "output" / name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, which a container's cpuset or ``taskset``
    narrows, not the host's count (``os.cpu_count()`` only where the mask is unknown). Every
    job's default parallelism (training threads, decoding and capture-reading processes, server
    workers) is this, so jobs that share a host do not each claim all of it."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def forked_process_pool(workers: int) -> "ProcessPoolExecutor":
    """A process pool of ``workers`` started by ``fork`` where the platform has it (its default
    start method elsewhere): the workers start in milliseconds with this process's imports
    (NumPy, pandas, Pillow, SciPy) instead of importing them again. Start it before this process
    starts threads of its own: a fork copies only the forking thread, and a lock another thread
    held would stay held in the worker."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))


def emit_metric(**values: Any) -> None:
    """Print one metric record where both the local runner and SageMaker can read it."""
    print(METRIC_PREFIX + json.dumps(values, default=float, sort_keys=True), flush=True)


def parse_metric_line(line: str) -> dict[str, Any] | None:
    if not line.startswith(METRIC_PREFIX):
        return None
    try:
        return json.loads(line[len(METRIC_PREFIX):])
    except json.JSONDecodeError:
        return None


def write_failure(reason: str) -> None:
    """Record why the job failed: SageMaker surfaces this file as FailureReason."""
    out = _env_path("SM_OUTPUT_DIR", OPT_ML / "output")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "failure").write_text(reason[:1024])
    except OSError:
        pass
    print(f"FAILURE: {reason}", file=sys.stderr, flush=True)


def run_entry_point(main) -> None:
    """Run ``main()``; on error write the failure file and exit non-zero (SageMaker's convention)."""
    try:
        main()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the container must always report why
        write_failure(f"{type(exc).__name__}: {exc}")
        raise


@dataclass(frozen=True)
class Placement:
    """Where this training process sits in a (possibly distributed) job."""

    world: int
    rank: int
    local_rank: int


def process_placement(env: TrainingEnv) -> Placement:
    """World size and ranks from torchrun (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) or, with one
    process per host, from ``SM_HOSTS`` (rank = position, rendezvous at the first host, port
    29500, set as ``MASTER_ADDR``/``MASTER_PORT`` for ``torch.distributed``)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world <= 1 and len(env.hosts) > 1:
        world, rank = len(env.hosts), env.hosts.index(env.current_host)
        os.environ.setdefault("MASTER_ADDR", env.hosts[0])
        os.environ.setdefault("MASTER_PORT", "29500")
    return Placement(world, rank, int(os.environ.get("LOCAL_RANK", "0")))


def request_deterministic_cublas() -> None:
    """cuBLAS needs this workspace setting before deterministic algorithms can be enforced."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

