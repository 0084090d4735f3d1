"""Checkpoints (one per epoch, written atomically, so a spot interruption loses at most an
epoch), the RNG state they carry, and resuming from the newest readable one."""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ml_code.atomic import atomic_open

if TYPE_CHECKING:  # loop imports nothing from here; the names are for annotations only
    from ml_code.training.loop import Network
    from ml_code.training.options import TrainOptions

CHECKPOINT_RE = re.compile(r"checkpoint-epoch-(\d{4,})\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`ml_code.atomic.atomic_open`: a spot reclaim mid-write leaves
    the previous checkpoint whole."""
    with atomic_open(path) as fh:
        torch.save(obj, fh)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for p in Path(folder).glob("checkpoint-epoch-*.pt"):
        m = CHECKPOINT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_latest_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint; a truncated one (spot kill mid-sync) falls back to the previous."""
    for epoch, path in reversed(list_checkpoints(folder)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means "try an older one"
            print(f"WARNING: checkpoint {path.name} unreadable ({exc}); trying an older one", file=sys.stderr, flush=True)
    return None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where a training run stands; what a checkpoint carries besides the weights. ``elapsed``
    and ``elapsed_before`` are seconds of training (``elapsed_before``: before this process)."""

    mean: list[float]  # per-channel normalisation, 0-1 scale
    std: list[float]
    planned_epochs: int
    start_epoch: int = 1
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_balanced_accuracy": -1.0})
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0
    elapsed: float = 0.0
    budget_limited: bool = False
    stop_reason: str = "epochs"

    def record_epoch(self, record: dict[str, Any], eval_model: torch.nn.Module) -> None:
        """Append an epoch's record; keep its weights (CPU copy) if val balanced accuracy improved."""
        self.history.append(record)
        if record["val_balanced_accuracy"] > self.best["val_balanced_accuracy"]:
            self.best = {"epoch": record["epoch"], "val_balanced_accuracy": record["val_balanced_accuracy"],
                         "val_macro_auc": record["val_macro_auc"]}
            self.best_state = {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()}


def resume(folder: Path, net: "Network", opts: "TrainOptions", classes: list[str], image_size: int,
           mean: list[float], std: list[float], log: Callable[..., None]) -> Progress:
    """A fresh :class:`Progress`, or the newest checkpoint's in ``folder`` with the network,
    optimizer, scaler, EMA and RNG restored. Refuses a checkpoint of another model."""
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = load_latest_checkpoint(folder)
    if ckpt is None:
        return Progress(mean, std, opts.epochs)
    if ckpt["arch"] != opts.arch or ckpt["classes"] != classes or ckpt["image_size"] != image_size:
        raise ValueError(
            f"checkpoint in {folder} is for arch={ckpt['arch']} classes={ckpt['classes']} "
            f"size={ckpt['image_size']}, but this job trains arch={opts.arch} classes={classes} size={image_size}; "
            "use an empty checkpoint location for a different model."
        )
    net.model.load_state_dict(ckpt["model"])
    net.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:  # empty when saved without a GradScaler (CPU)
        net.scaler.load_state_dict(ckpt["scaler"])
    if net.ema is not None and ckpt.get("ema"):
        net.ema.load_state_dict(ckpt["ema"])
    set_rng_state(ckpt["rng"])
    if ckpt.get("mean_std"):  # keep the normalisation the weights were trained with
        mean, std = ckpt["mean_std"]["mean"], ckpt["mean_std"]["std"]
    # A budget-shortened plan stays shortened; otherwise honour this job's (maybe larger) epochs.
    planned = min(opts.epochs, int(ckpt["planned_epochs"])) if ckpt.get("budget_limited") else opts.epochs
    log(f"resuming from checkpoint epoch {ckpt['epoch']} (continuing at epoch {int(ckpt['epoch']) + 1})")
    return Progress(mean, std, planned, start_epoch=int(ckpt["epoch"]) + 1, best=ckpt["best"],
                    best_state=ckpt["best_state"], history=ckpt["history"],
                    elapsed_before=float(ckpt.get("elapsed_seconds", 0.0)),
                    budget_limited=bool(ckpt.get("budget_limited")))


def save_checkpoint(folder: Path, epoch: int, net: "Network", progress: Progress, options: dict[str, Any],
                    classes: list[str], image_size: int, steps_per_epoch: int, warmup_steps: int) -> Path:
    """Write ``checkpoint-epoch-NNNN.pt`` atomically (weights, optimizer, scaler, EMA, RNG,
    progress and the resolved ``options``), then keep only the newest ``keep_checkpoints``."""
    path = folder / f"checkpoint-epoch-{epoch:04d}.pt"
    atomic_torch_save(
        {
            "epoch": epoch, "arch": options["arch"], "classes": classes, "image_size": image_size,
            "options": options, "model": net.model.state_dict(), "optimizer": net.optimizer.state_dict(),
            "scheduler": {"planned_epochs": progress.planned_epochs, "steps_per_epoch": steps_per_epoch,
                          "warmup_steps": warmup_steps, "schedule": options["schedule"]},
            "planned_epochs": progress.planned_epochs, "budget_limited": progress.budget_limited,
            "scaler": net.scaler.state_dict(), "ema": net.ema.state_dict() if net.ema else None,
            "best": progress.best, "best_state": progress.best_state, "history": progress.history,
            "rng": rng_state(), "elapsed_seconds": progress.elapsed,
            "mean_std": {"mean": progress.mean, "std": progress.std},
        },
        path,
    )
    for _, old in list_checkpoints(folder)[: -max(1, int(options["keep_checkpoints"]))]:
        old.unlink(missing_ok=True)
    return path
