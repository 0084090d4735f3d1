"""Test-time views: the eight flips and quarter turns of the dihedral group D4.

Lesions have no canonical orientation, so the endpoint may average the network over these
views; training fits the temperature and fusion on the same views it then serves.
"""

from __future__ import annotations

import torch


def check_views(views: int, name: str = "views") -> int:
    """``views`` if it is a valid number of test-time views (1..8), else a clear error naming
    the setting (``name``) that gave it."""
    if not 1 <= views <= 8:
        raise ValueError(f"{name} must be 1..8 (test-time views of the D4 group), got {views}")
    return views


def view_order(views: int) -> list[int]:
    """Which :func:`dihedral_view` indices ``views`` test-time views use: 2 is identity +
    hflip, otherwise the first ``views`` (8 = every flip x quarter turn). Training fits the
    temperature and fusion on the same views the endpoint then serves."""
    return [0, 4] if check_views(views) == 2 else list(range(views))


def dihedral_view(x: torch.Tensor, v: int) -> torch.Tensor:
    """The ``v``-th element of the dihedral group D4 (v < 8): ``v % 4`` quarter turns, hflip if ``v >= 4``.
    Lesions have no canonical orientation, so these are the test-time-augmentation views."""
    y = torch.rot90(x, v % 4, dims=(-2, -1)) if v % 4 else x
    return y.flip(-1) if v >= 4 else y

