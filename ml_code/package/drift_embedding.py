"""The drift embedding: what the endpoint returns of each request's penultimate-layer embedding.

Why it is in the answer: the drift monitor compares the embeddings of recent traffic with the
training data's (``ml_code.monitoring.drift.mmd_test``). Computing them in the monitor meant
decoding each captured image again and loading the served network there, and importing torch
alone makes a process several hundred MB larger (``benchmarks/torch_import_memory.py``). The
endpoint has the embedding anyway (the head reads it, ``model.network_log_probs``), so it returns
a projection of it and the monitor reads it from the capture, as it reads ``image_features``.

Why a projection: the embedding is 512-1280 numbers (``networks.penultimate``), too much for every
answer and every capture line; a Gaussian random projection to :data:`DIMENSIONS` numbers keeps
pairwise distances within a small factor (Johnson-Lindenstrauss lemma; Dasgupta & Gupta 2003, "An
elementary proof of a theorem of Johnson and Lindenstrauss"; as scikit-learn's
``GaussianRandomProjection``, entries N(0, 1/k)), which is what the MMD's Gaussian kernel reads. It
needs no fitting, so every package, and the baseline's stored full embeddings, project the same
way: the matrix depends only on the embedding's width and :data:`SEED`, drawn from NumPy's legacy
``RandomState``, whose stream NumPy keeps stable across versions (NEP 19), so an endpoint and a
monitor on different NumPy versions agree.

Ships inside ``model.tar.gz`` (NumPy only, no relative imports needed); the monitor imports this
same module (``ml_code.package.drift_embedding``), and an answer names its :data:`PROJECTION`, so
an answer projected any other way is ignored rather than compared.
"""

from __future__ import annotations

import base64
import binascii
import math
from functools import lru_cache
from typing import Any

import numpy as np

ANSWER_FIELD = "drift_embedding"
"""Key of the projected embedding in the endpoint's JSON answer."""
DIMENSIONS = 32
"""Numbers in an answer's projection (k)."""
SEED = 20261203
PROJECTION = f"gaussian-rp-{DIMENSIONS}-{SEED}"
"""Names the projection (method, k, seed); an answer with another name is not compared."""
ENCODING = "float32-le-base64"
"""How an answer holds the numbers: little-endian float32, base64. Exact, and a string, which the
inference log's JSON parser passes over in a fraction of what 32 decimal numbers cost it (a list
made the log's parse measurably slower, the string did not, in a scratch A/B over capture lines)."""


@lru_cache(maxsize=8)
def projection_matrix(width: int) -> np.ndarray:
    """The ``(width, DIMENSIONS)`` float32 matrix, entries N(0, 1/DIMENSIONS) (read-only, cached)."""
    if width < 1:
        raise ValueError(f"projection_matrix: embedding width must be >= 1, got {width}")
    matrix = np.random.RandomState(SEED).standard_normal((width, DIMENSIONS)) / math.sqrt(DIMENSIONS)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def project(embeddings: np.ndarray) -> np.ndarray:
    """``(N, DIMENSIONS)`` float32 projections of penultimate embeddings ``(N, D)`` (any D >= 1)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"project: need (N, D) embeddings, got shape {x.shape}")
    return x @ projection_matrix(x.shape[1])


def answer_embedding(projected: np.ndarray) -> dict[str, Any]:
    """An answer's ``"drift_embedding"``: ``{"projection": PROJECTION, "encoding": ENCODING, "data":
    base64 of k little-endian float32}`` of one row of :func:`project` (``DIMENSIONS`` numbers)."""
    values = np.asarray(projected, dtype="<f4").ravel()
    if values.shape != (DIMENSIONS,):
        raise ValueError(f"answer_embedding: need {DIMENSIONS} projected numbers, got shape {values.shape}")
    return {"projection": PROJECTION, "encoding": ENCODING, "data": base64.b64encode(values.tobytes()).decode("ascii")}


def valid_answer_embedding(value: Any) -> np.ndarray | None:
    """The ``(DIMENSIONS,)`` float32 projection of an answer's ``"drift_embedding"`` when it is this
    module's projection and encoding with ``DIMENSIONS`` finite numbers, else None (absent: a
    package from before the field; another projection; damaged)."""
    if not isinstance(value, dict) or value.get("projection") != PROJECTION or value.get("encoding") != ENCODING:
        return None
    data = value.get("data")
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 4 * DIMENSIONS:
        return None
    out = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return out if np.isfinite(out).all() else None
