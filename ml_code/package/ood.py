"""Out-of-distribution score of a lesion image: is it like what the model was trained on?

Ships inside ``model.tar.gz`` (NumPy only: the SageMaker PyTorch container has nothing else we
may rely on). The statistics are fitted when the package is built
(``ml_code.training.ood.fit_ood_stats``, with scikit-learn's Ledoit-Wolf shrinkage) and stored
as ``ood.npz`` beside the weights; ``model_config.json`` records them under ``"ood"``.

Method: the Mahalanobis confidence score of Lee et al. 2018, "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS), on the network's
penultimate-layer embedding (the classification head's input): class-conditional Gaussians
with one shared covariance, fitted on the training split; the score of an image is the
smallest Mahalanobis distance to a class mean,

    score(x) = min_c sqrt((x - mu_c)^T P (x - mu_c)),   P = shared precision matrix,

computed as ``min_c ||(x - mu_c) L||`` with ``P = L L^T`` (Cholesky), so scoring costs one
``(N, D) x (D, D)`` product. Lee et al.'s input pre-processing and multi-layer ensemble are not
used (they need gradients at serving time). The threshold is the 95th percentile of the
validation split's scores: 95% of in-distribution validation images pass by construction, and an
image scoring above it is answered but flagged ``"in_distribution": false``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

#: The answer's field names (the labelling queue and the drift report read exactly these).
SCORE_FIELD = "ood_score"
FLAG_FIELD = "in_distribution"


@dataclass(frozen=True)
class MahalanobisOOD:
    """Fitted statistics: class means ``(C, D)``, whitening factor ``L`` ``(D, D)`` with
    ``P = L L^T`` the shared precision matrix, and the pass threshold (a distance)."""

    class_means: np.ndarray
    whitening: np.ndarray
    threshold: float

    @property
    def dim(self) -> int:
        return int(self.class_means.shape[1])

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(N,)`` of embeddings ``(N, D)`` to the nearest class mean
        (unitless; larger is less like the training data). Raises ValueError on a width mismatch."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"OOD statistics are for {self.dim}-d embeddings; got shape {x.shape}")
        w = self.whitening.astype(np.float64)
        z, m = x @ w, self.class_means.astype(np.float64) @ w
        d2 = (z * z).sum(1)[:, None] - 2.0 * z @ m.T + (m * m).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """``scores <= threshold`` as bools ``(N,)``."""
        return np.asarray(scores) <= self.threshold

    def save(self, path: str | os.PathLike) -> None:
        """Write ``ood.npz`` (float32 arrays; plain NumPy, no pickles)."""
        with open(path, "wb") as fh:
            np.savez(fh, class_means=self.class_means.astype(np.float32),
                     whitening=self.whitening.astype(np.float32), threshold=np.float64(self.threshold))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MahalanobisOOD":
        with np.load(path, allow_pickle=False) as data:
            return cls(np.asarray(data["class_means"]), np.asarray(data["whitening"]), float(data["threshold"]))


def answer_fields(scores: np.ndarray | None, flags: np.ndarray | None, i: int) -> dict[str, float | bool | None]:
    """``{"ood_score", "in_distribution"}`` of the ``i``-th image; both None when the package has
    no OOD statistics (an older package, or one built without them): "not assessed"."""
    if scores is None or flags is None:
        return {SCORE_FIELD: None, FLAG_FIELD: None}
    return {SCORE_FIELD: float(scores[i]), FLAG_FIELD: bool(flags[i])}
