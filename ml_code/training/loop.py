"""The training loop's parts, as in torchvision's reference: runtime and seeding, the network
with its optimizer / scaler / EMA, the LR schedule, mixup/cutmix and the soft-target loss,
:func:`train_one_epoch`, :func:`evaluate` on validation and the wall-clock budget's epoch plan."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_code import contract, metrics
from ml_code.data.split_reader import Split
from ml_code.package.views import dihedral_view, view_order
from ml_code.training.data import Normalizer, TrainData
from ml_code.training.models import build_model, freeze_early_stages
from ml_code.training.options import TrainOptions


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(env: contract.TrainingEnv) -> Runtime:
    """Pick the device and, for multi-process jobs, join the process group.

    Distributed when launched by torchrun (``WORLD_SIZE`` > 1) or on several SageMaker
    hosts (one process per host; rank = position in ``SM_HOSTS``, master = first host).
    """
    cuda = torch.cuda.is_available()
    placement = contract.process_placement(env)
    world, rank = placement.world, placement.rank
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    if cuda:
        local = placement.local_rank
        torch.cuda.set_device(local)
        return Runtime(torch.device("cuda", local), rank, world)
    return Runtime(torch.device("cpu"), rank, world)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        contract.request_deterministic_cublas()


class EMA:
    """Exponential moving average of every floating tensor in the state_dict (weights and
    BN statistics), with the usual warm-up so early averages are not dominated by init."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``shadow = d * shadow + (1 - d) * current`` for every floating tensor (a copy for the
        others), ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates. The floating tensors
        go through one fused multiply and one fused add over the whole list (``torch._foreach_*``,
        what ``torch.optim`` and ``torch.optim.swa_utils``' EMA use): the same arithmetic as two
        ops per tensor, without ~500 separate dispatches every training step."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadows, currents = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                shadows.append(self.shadow[k])
                currents.append(v.detach())
            else:
                self.shadow[k].copy_(v)
        if shadows:
            torch._foreach_mul_(shadows, d)
            torch._foreach_add_(shadows, currents, alpha=1 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier on the peak LR: linear warm-up, then cosine (to 1%) or one-cycle-like
    cosine from peak to 0.04% of peak."""
    if step < warmup_steps:
        return (step + 1) / max(warmup_steps, 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = 0.01 if schedule == "cosine" else 4e-4
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def mix_batch(x: torch.Tensor, y_soft: torch.Tensor, alpha: float, cutmix_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) with a partner permutation."""
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    if np.random.rand() < cutmix_prob:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = np.random.randint(h), np.random.randint(w)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * y_soft + (1 - lam) * y_soft[perm]


def soft_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    t = F.one_hot(y, num_classes).float()
    return t * (1 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=1)
    if weight is not None:
        per_item = -(target * logp * weight).sum(1)
        return per_item.sum() / (target * weight).sum()
    return -(target * logp).sum(1).mean()


def autocast(device: torch.device, enabled: bool):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16, enabled=enabled)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, norm: Normalizer, opts: TrainOptions, device: torch.device,
                   views: int = 1) -> np.ndarray:
    """fp32 logits, as the endpoint computes them: ``(N, C)`` for one view, else ``(V, N, C)``
    over the test-time views the endpoint averages (:func:`ml_code.package.views.view_order`)."""
    model.eval()
    order = view_order(views)
    out: list[list[torch.Tensor]] = [[] for _ in order]
    bs = max(opts.batch_size, 256)
    for start in range(0, len(split.labels), bs):
        batch = norm(torch.from_numpy(np.array(split.images[start : start + bs])).permute(0, 3, 1, 2))
        for slot, v in enumerate(order):
            out[slot].append(model(dihedral_view(batch, v)).float().cpu())
    logits = np.stack([torch.cat(chunks).numpy() for chunks in out])
    return logits[0] if views == 1 else logits


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    probs = metrics.softmax(logits)
    pred = probs.argmax(1)
    return {
        "val_loss": metrics.log_loss(labels, probs),
        "val_accuracy": metrics.accuracy(labels, pred),
        "val_balanced_accuracy": metrics.balanced_accuracy(labels, pred, num_classes),
        "val_macro_auc": metrics.roc_auc_ovr(labels, probs)[1],
    }


def configure_threads(opts: TrainOptions, rt: Runtime) -> None:
    """CPU threads per process (``num_threads``, else the CPUs this job may run on, shared by its
    processes: ``contract.available_cpus``, so a job in a cpuset of one core of a shared host runs
    one thread instead of spinning as many as the host has) and flush-to-zero on CPU: denormal
    AdamW/EMA state can slow CPU steps by 10x."""
    if rt.device.type == "cpu":
        torch.set_flush_denormal(True)
    if opts.num_threads or rt.device.type == "cpu":
        torch.set_num_threads(opts.num_threads or max(1, contract.available_cpus() // rt.world))


@dataclass
class Network:
    """The network being trained with what updates it: the (maybe DDP-wrapped) module the
    loop calls, AdamW, the AMP GradScaler (a no-op off CUDA) and the EMA (None when off)."""

    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    arch: str
    num_classes: int
    small_input: bool
    device: torch.device

    def fresh(self) -> nn.Module:
        """A new instance of the architecture (channels_last, on the device) to load weights into."""
        model = build_model(self.arch, self.num_classes, None, small_input=self.small_input)
        return model.to(self.device).to(memory_format=torch.channels_last)


def build_network(opts: TrainOptions, num_classes: int, small_input: bool, rt: Runtime) -> Network:
    """The network (from ``weights_path`` if given), DDP-wrapped for several processes, with
    AdamW (no weight decay on biases and norm parameters), GradScaler and EMA."""
    model = build_model(opts.arch, num_classes, opts.weights_path, small_input=small_input).to(rt.device)
    model = model.to(memory_format=torch.channels_last)
    freeze_early_stages(model, opts.freeze_stages)
    ddp_model: nn.Module = model
    if rt.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:  # frozen stages (freeze_stages)
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr
    )
    scaler = torch.amp.GradScaler("cuda", enabled=opts.amp and rt.device.type == "cuda")
    ema = EMA(model, opts.ema_decay) if opts.ema_decay > 0 else None
    return Network(model, ddp_model, optimizer, scaler, ema, opts.arch, num_classes, small_input, rt.device)


def train_one_epoch(net: Network, data: TrainData, norm: Normalizer, opts: TrainOptions, epoch: int,
                    planned_epochs: int, warmup_steps: int, timing: dict[str, float] | None = None) -> float:
    """One pass over the training loader (epochs count from 1); returns the mean training
    loss per image. The LR follows :func:`lr_factor` over ``planned_epochs`` per step.

    ``timing``, when given, receives ``seconds`` (the epoch's wall time), ``data_wait_seconds``
    (time spent waiting for the loader's next batch: when it is a large share of ``seconds``,
    the input pipeline, not the model, limits training) and ``images``."""
    data.sampler.set_epoch(epoch)
    net.ddp_model.train()
    total_loss, seen = 0.0, 0
    steps_per_epoch = len(data.loader)
    total_steps = planned_epochs * steps_per_epoch
    start = time.perf_counter()
    waited = 0.0
    batches = iter(data.loader)
    for i in range(steps_per_epoch):
        t0 = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        waited += time.perf_counter() - t0
        step = (epoch - 1) * steps_per_epoch + i
        for group in net.optimizer.param_groups:
            group["lr"] = opts.lr * lr_factor(step, total_steps, warmup_steps, opts.schedule)
        labels = labels.to(net.device, non_blocking=True)
        x = norm(images, data.batch_augment)
        target = soft_targets(labels, net.num_classes, opts.label_smoothing)
        if opts.mixup > 0:
            x, target = mix_batch(x, target, opts.mixup, opts.cutmix_prob)
        with autocast(net.device, opts.amp):
            logits = net.ddp_model(x)
        loss = soft_cross_entropy(logits, target, data.loss_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch} step {i}; lower lr (now {opts.lr})")
        net.optimizer.zero_grad(set_to_none=True)
        net.scaler.scale(loss).backward()
        net.scaler.unscale_(net.optimizer)
        nn.utils.clip_grad_norm_(net.model.parameters(), 5.0)
        net.scaler.step(net.optimizer)
        net.scaler.update()
        if net.ema is not None:
            net.ema.update(net.model)
        total_loss += float(loss.detach()) * labels.shape[0]
        seen += labels.shape[0]
    if timing is not None:
        timing.update(seconds=time.perf_counter() - start, data_wait_seconds=waited, images=float(seen))
    return total_loss / max(seen, 1)


def evaluate(net: Network, split: Split, norm: Normalizer, opts: TrainOptions) -> tuple[nn.Module, dict[str, float]]:
    """Validation metrics (``val_loss``, ``val_accuracy``, ``val_balanced_accuracy``,
    ``val_macro_auc``) of the weights model selection keeps: the EMA's when on, else the
    trained ones. Returns that model too, so the best epoch's weights can be kept."""
    eval_model = net.model
    if net.ema is not None:
        eval_model = net.fresh()
        eval_model.load_state_dict(net.ema.shadow)
    val_logits = predict_logits(eval_model, split, norm, opts, net.device)
    return eval_model, evaluate_logits(val_logits, split.labels, net.num_classes)


# Per image, the OOD statistics pass (nine layers' features) cost about 1.3x a plain validation
# forward pass: 97 s for 8,554 images against 115 s for 13,160 calibration forwards, HAM10000 at
# 96 px on two cores (the trained_model step's log of the README's real-data make demo); 1.5 here
# rounds that up, a second margin on top of AFTER_TRAINING_MARGIN.
OOD_PASS_COST = 1.5
AFTER_TRAINING_MARGIN = 1.15  # the estimate's error on a machine whose speed drifts
AFTER_TRAINING_FIXED_SECONDS = 15.0  # stacker fit, writing the package


def after_training_seconds(val_pass_seconds: float, n_val: int, tta_views: int, n_ood_images: int) -> float:
    """Seconds the job needs after its last epoch, estimated from this run's own validation pass
    (``val_pass_seconds`` for ``n_val`` images, one view): the calibration pass over val with the
    ``tta_views`` the package serves and the OOD statistics pass over ``n_ood_images`` (train,
    capped, plus val), with a margin. What :func:`plan_after_epoch` keeps out of the epochs."""
    per_image = val_pass_seconds / max(n_val, 1)
    passes = n_val * max(tta_views, 1) + OOD_PASS_COST * n_ood_images
    return AFTER_TRAINING_MARGIN * per_image * passes + AFTER_TRAINING_FIXED_SECONDS


def plan_after_epoch(progress: Any, opts: TrainOptions, epoch: int, epoch_times: list[float],
                     log: Callable[..., None], reserve_seconds: float = 0.0) -> bool:
    """The time budget and early stopping after ``epoch``: whether to stop now.

    Fits the schedule to the budget (so LR still anneals) rather than stopping mid-anneal:
    ``progress.planned_epochs`` becomes what the remaining budget affords at the median epoch
    time (ignores one-off stalls on a shared machine; may grow back up to ``epochs`` when a
    slow spell passes), after keeping ``reserve_seconds`` for the work that follows the last
    epoch (:func:`after_training_seconds`). Updates ``budget_limited`` and ``stop_reason`` of
    ``progress`` (a :class:`ml_code.training.checkpoints.Progress`); ``progress.elapsed`` is
    seconds since the job started, the descriptor model's fit included."""
    if opts.max_minutes:
        per_epoch = float(np.median(epoch_times))
        left = opts.max_minutes * 60 - reserve_seconds - progress.elapsed
        affordable = min(opts.epochs, epoch + int(left // per_epoch))
        new_plan = max(epoch, affordable)
        if new_plan != progress.planned_epochs:
            log(f"time budget {opts.max_minutes} min: planning {new_plan} epochs instead of {progress.planned_epochs}")
        progress.planned_epochs = new_plan
        progress.budget_limited = progress.planned_epochs < opts.epochs
    stop = epoch >= progress.planned_epochs
    if stop and progress.budget_limited:
        progress.stop_reason = "time budget"  # the budget cut the plan short of opts.epochs
    if opts.patience and epoch - progress.best["epoch"] >= opts.patience:
        stop, progress.stop_reason = True, f"no val balanced-accuracy gain for {opts.patience} epochs"
    if opts.max_minutes and progress.elapsed + reserve_seconds >= opts.max_minutes * 60:
        stop, progress.stop_reason = True, "time budget"
    return stop


def follow_rank0(progress: Any, stop: bool, rt: Runtime) -> bool:
    """Ranks time their own epochs: every rank takes rank 0's plan and stop decision, so
    none waits forever in a collective the others left."""
    if rt.world <= 1:
        return stop
    import torch.distributed as dist

    decision = torch.tensor([progress.planned_epochs, int(stop)], device=rt.device)
    dist.broadcast(decision, 0)
    progress.planned_epochs = int(decision[0])
    return bool(decision[1])


def shutdown(rt: Runtime) -> None:
    """Wait for every rank, then leave the process group (multi-process jobs only)."""
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
