"""Training data on the way to the network: per-item and batched augmentation, the epoch
samplers that handle class imbalance and shard across processes, class weights, channel
statistics and the uint8 -> normalised-float step; :func:`build_train_data` wires them into
the training DataLoader."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ml_code.data.split_reader import Split
from ml_code.training.options import TrainOptions


class LesionDataset(Dataset):
    """uint8 CHW tensors with cheap on-the-fly augmentation done on uint8 (no float copy
    of the dataset): random resized crop, flips, 90-degree rotations (lesions have no
    canonical orientation) and light brightness/contrast/saturation jitter."""

    def __init__(self, split: Split, train: bool, rrc_scale: float = 0.6, color_jitter: float = 0.15) -> None:
        self.images, self.labels = split.images, split.labels
        self.train, self.rrc_scale, self.color_jitter = train, rrc_scale, color_jitter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # uint8 CHW (copy off the mmap)
        if self.train:
            img = self._augment(img)
        return img.contiguous(), int(self.labels[i])

    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        size = img.shape[-1]
        if self.rrc_scale < 1.0:
            area = float(torch.empty(1).uniform_(self.rrc_scale, 1.0)) * size * size
            ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3))))
            w = min(size, int(round(math.sqrt(area * ratio))))
            h = min(size, int(round(math.sqrt(area / ratio))))
            top = int(torch.randint(0, size - h + 1, (1,)))
            left = int(torch.randint(0, size - w + 1, (1,)))
            img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        if torch.rand(1) < 0.5:
            img = img.flip(-1)
        k = int(torch.randint(0, 4, (1,)))
        if k:
            img = torch.rot90(img, k, dims=(-2, -1))
        cj = self.color_jitter
        if cj > 0:
            factors = torch.empty(3).uniform_(1 - cj, 1 + cj).tolist()
            img = TF.adjust_brightness(img, factors[0])
            img = TF.adjust_contrast(img, factors[1])
            img = TF.adjust_saturation(img, factors[2])
        return img


class BatchAugment:
    """The same augmentations as :class:`LesionDataset` but for a whole collated batch at once.

    One affine warp per image (random resized crop, any-angle rotation, flip) through a
    single ``grid_sample`` call plus per-image brightness/contrast/saturation factors. On
    2 CPU cores this costs ~1% of a training step, versus ~40% for per-item uint8 ops, and
    it runs on the GPU unchanged. Reflection padding fills rotated corners with skin.
    """

    def __init__(self, rrc_scale: float, color_jitter: float) -> None:
        self.rrc_scale, self.color_jitter = rrc_scale, color_jitter

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float ``(B, 3, H, W)`` on the 0-255 scale."""
        b, dev = x.shape[0], x.device
        u = lambda lo, hi: torch.empty(b).uniform_(lo, hi).to(dev)  # noqa: E731 - CPU RNG keeps runs reproducible
        area = u(self.rrc_scale, 1.0)
        log_ratio = u(math.log(3 / 4), math.log(4 / 3))
        sx = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
        sy = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        angle = u(0.0, 2 * math.pi)
        flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0).to(dev)
        tx, ty = u(-1, 1) * (1 - sx), u(-1, 1) * (1 - sy)
        cos, sin = torch.cos(angle), torch.sin(angle)
        h, w = x.shape[-2:]
        # Sampling grid built by broadcasting (F.affine_grid's batched matmul is ~20x slower on CPU).
        ys = ((torch.arange(h, device=dev, dtype=x.dtype) + 0.5) * 2 / h - 1).view(1, h, 1)
        xs = ((torch.arange(w, device=dev, dtype=x.dtype) + 0.5) * 2 / w - 1).view(1, 1, w)
        col = lambda v: v.view(b, 1, 1)  # noqa: E731
        gx = col(sx * cos * flip) * xs - col(sy * sin) * ys + col(tx)
        gy = col(sx * sin * flip) * xs + col(sy * cos) * ys + col(ty)
        grid = torch.stack([gx, gy], -1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        cj = self.color_jitter
        if cj > 0:
            bright, contrast, sat = (u(1 - cj, 1 + cj).view(b, 1, 1, 1) for _ in range(3))
            x = x * bright
            gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = (x - gray.mean((2, 3), keepdim=True)) * contrast + gray.mean((2, 3), keepdim=True)
            gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = gray + (x - gray) * sat
        return x.clamp_(0, 255)


class WeightedEpochSampler(Sampler[int]):
    """Draws ``num_samples`` indices with replacement by weight, reproducibly per epoch
    (seed + epoch), and shards them across distributed ranks."""

    def __init__(self, weights: np.ndarray, seed: int, rank: int = 0, world: int = 1) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0
        self.num_samples = int(math.ceil(len(weights) / world))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples * self.world, replacement=True, generator=g)
        return iter(idx[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShuffleSampler(WeightedEpochSampler):
    """A plain per-epoch permutation (no rebalancing), sharded the same way."""

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        n = len(self.weights)
        idx = torch.randperm(n, generator=g)
        idx = torch.cat([idx, idx[: self.num_samples * self.world - n]])
        return iter(idx[self.rank :: self.world].tolist())


def class_weights(labels: np.ndarray, num_classes: int, power: float) -> np.ndarray:
    """``(count / mean count) ** -power`` per class (classes absent from train get weight 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.zeros(num_classes)
    present = counts > 0
    w[present] = (counts[present] / counts[present].mean()) ** (-power)
    return w


def channel_stats(images: np.ndarray, max_items: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean/std on the 0-1 scale from (a strided sample of) the training images."""
    step = max(1, len(images) // max_items)
    sample = np.asarray(images[::step], dtype=np.float64) / 255.0
    mean = sample.mean(axis=(0, 1, 2))
    std = sample.std(axis=(0, 1, 2))
    return [float(v) for v in mean], [float(max(v, 1e-3)) for v in std]


class Normalizer:
    """uint8 NCHW batch -> normalised float on the device, channels_last."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.device = device

    def __call__(self, batch: torch.Tensor, augment: "BatchAugment | None" = None) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).float()
        if augment is not None:
            x = augment(x)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


@dataclass
class TrainData:
    """What one training epoch iterates: the loader (uint8 NCHW batches) and its sampler,
    the on-device batch augmentation (None with ``augment=item``) and the loss class weights
    (None unless ``balance`` is loss|both)."""

    loader: DataLoader
    sampler: WeightedEpochSampler
    batch_augment: BatchAugment | None
    loss_weight: torch.Tensor | None


def build_train_data(opts: TrainOptions, split: Split, num_classes: int, device: torch.device,
                     rank: int = 0, world: int = 1) -> TrainData:
    """The training loader for ``split``: balanced (or plain shuffled) epoch sampling per
    ``balance``/``balance_power``, augmentation per ``augment``, seeded by ``seed``."""
    cw = class_weights(split.labels, num_classes, opts.balance_power)
    sample_w = cw[split.labels] if opts.balance in ("sampler", "both") else np.ones(len(split.labels))
    sampler_cls = WeightedEpochSampler if opts.balance in ("sampler", "both") else ShuffleSampler
    sampler = sampler_cls(sample_w, opts.seed, rank, world)
    loss_weight = torch.tensor(cw, dtype=torch.float32, device=device) if opts.balance in ("loss", "both") else None
    dataset = LesionDataset(split, opts.augment == "item", opts.rrc_scale, opts.color_jitter)
    batch_augment = BatchAugment(opts.rrc_scale, opts.color_jitter) if opts.augment == "batch" else None
    loader = DataLoader(
        dataset, batch_size=opts.batch_size, sampler=sampler, num_workers=opts.num_workers,
        pin_memory=device.type == "cuda", drop_last=len(sampler) > opts.batch_size,
        persistent_workers=opts.num_workers > 0,
        generator=torch.Generator().manual_seed(opts.seed),
    )
    return TrainData(loader, sampler, batch_augment, loss_weight)
