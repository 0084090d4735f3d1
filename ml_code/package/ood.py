"""Out-of-distribution score of a lesion image: is it like what the model was trained on?

Ships inside ``model.tar.gz`` (NumPy only: the SageMaker PyTorch container has nothing else we
may rely on). The statistics are fitted when the package is built
(``ml_code.training.ood.fit_ood_stats``, with scikit-learn's Ledoit-Wolf shrinkage) and stored
as ``ood.npz`` beside the weights; ``model_config.json`` records them under ``"ood"``.

Method: the Mahalanobis score of Lee et al. 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS), with their feature ensemble:
one score per depth of the network. At each layer ``l`` (``networks.layer_features``: the
per-channel spatial mean and standard deviation of the stem's and every stage's output, and the
penultimate embedding) class-conditional Gaussians with one shared covariance are fitted on the
training split, and the layer's distance is the smallest Mahalanobis distance to a class mean,

    d_l(x) = min_c sqrt((x_l - mu_lc)^T P_l (x_l - mu_lc)),   P_l = shared precision matrix,

computed as ``min_c ||(x_l - mu_lc) L_l||`` with ``P_l = L_l L_l^T`` (Cholesky). Why several
depths: the penultimate embedding of a flat or otherwise featureless image lands near the class
means (it passed 99% of solid-colour images on HAM10000), while the early layers' spatial spread
and colour statistics of such an image are far from any lesion's.

Combination (the rule): each layer's distance is put on the validation split's scale,
``z_l = (d_l - median_l) / (q95_l - median_l)`` (median and 95th percentile of the layer's
validation distances), and the image's score is the largest, ``ood_score = max_l z_l``; it is
flagged when ``ood_score`` exceeds ``threshold``, the 95th percentile of the validation split's
``ood_score``. So 95% of in-distribution validation images pass *overall*, by construction, and
an image is flagged exactly when some layer's distance exceeds that layer's own threshold
``median_l + threshold * (q95_l - median_l)``: a union of per-layer tests whose common level is
calibrated jointly on validation (like a Bonferroni correction, but exact rather than a bound, as
the layers' scores are correlated). Lee et al. instead weight the layers by a logistic
regression fitted on known OOD samples, which we do not have honestly; their input
pre-processing needs gradients at serving time and is not used either.

Packages from before the ensemble (``ood.npz`` holding one ``class_means``/``whitening``/
``threshold``) load as a single penultimate layer with ``median 0, scale 1``: their score stays
the raw distance and their rule the old one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

#: The answer's field names (the labelling queue and the drift report read exactly these).
SCORE_FIELD = "ood_score"
FLAG_FIELD = "in_distribution"
#: The penultimate layer's name (``networks.PENULTIMATE``; repeated so this module needs no torch).
PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class MahalanobisLayer:
    """One layer's fitted statistics: class means ``(C, D)``, whitening factor ``L`` ``(D, D)``
    with ``P = L L^T`` the shared precision matrix, and the validation distances' median
    (``centre``) and 95th-percentile-minus-median (``scale``) that put this layer on a common scale."""

    name: str
    class_means: np.ndarray
    whitening: np.ndarray
    centre: float = 0.0
    scale: float = 1.0

    @property
    def dim(self) -> int:
        return int(self.class_means.shape[1])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(N,)`` of features ``(N, D)`` to the nearest class mean
        (unitless; larger is less like the training data). Raises ValueError on a width mismatch."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"OOD statistics of layer {self.name!r} are for {self.dim}-d features; got shape {x.shape}")
        w = self.whitening.astype(np.float64)
        z, m = x @ w, self.class_means.astype(np.float64) @ w
        d2 = (z * z).sum(1)[:, None] - 2.0 * z @ m.T + (m * m).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def normalised(self, features: np.ndarray) -> np.ndarray:
        """``(distance - centre) / scale`` ``(N,)``: 0 at the validation median, 1 at its 95th percentile."""
        return (self.distances(features) - self.centre) / self.scale


@dataclass(frozen=True)
class MahalanobisOOD:
    """The feature ensemble: per-layer statistics and the overall pass threshold (see the module
    docstring for the rule). ``layers[i].name`` are keys of ``networks.layer_features``' output."""

    layers: tuple[MahalanobisLayer, ...]
    threshold: float

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def dim(self) -> int:
        """Total feature width over the layers."""
        return sum(layer.dim for layer in self.layers)

    def layer_scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Normalised per-layer distances ``(L, N)`` of ``features`` ``{layer name: (N, D_l)}``.
        Raises ValueError when a layer the statistics need is missing (a network that does not
        expose it: re-fit with ``python -m ml_code.training.ood``)."""
        missing = [name for name in self.layer_names if name not in features]
        if missing:
            raise ValueError(f"OOD statistics need layers {missing}, which the network did not return "
                             f"(it gave {sorted(features)}); re-fit them with python -m ml_code.training.ood")
        return np.stack([layer.normalised(features[layer.name]) for layer in self.layers])

    def scores(self, features: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """``ood_score`` ``(N,)``: the largest normalised layer distance (unitless; larger is less
        like the training data). A bare ``(N, D)`` array is taken as the penultimate embedding."""
        if not isinstance(features, dict):
            features = {PENULTIMATE: features}
        return self.layer_scores(features).max(axis=0)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """``scores <= threshold`` as bools ``(N,)``."""
        return np.asarray(scores) <= self.threshold

    def save(self, path: str | os.PathLike) -> None:
        """Write ``ood.npz`` (float32 arrays, layer names as a unicode array; no pickles)."""
        arrays: dict[str, np.ndarray] = {"names": np.array(self.layer_names), "threshold": np.float64(self.threshold)}
        for i, layer in enumerate(self.layers):
            arrays[f"means_{i}"] = layer.class_means.astype(np.float32)
            arrays[f"whitening_{i}"] = layer.whitening.astype(np.float32)
            arrays[f"centre_scale_{i}"] = np.array([layer.centre, layer.scale], np.float64)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MahalanobisOOD:
        """Read ``ood.npz``: the ensemble, or a pre-ensemble file as one penultimate layer."""
        with np.load(path, allow_pickle=False) as data:
            if "names" not in data:  # single-layer file of earlier packages
                layer = MahalanobisLayer(PENULTIMATE, np.asarray(data["class_means"]), np.asarray(data["whitening"]))
                return cls((layer,), float(data["threshold"]))
            layers = tuple(
                MahalanobisLayer(str(name), np.asarray(data[f"means_{i}"]), np.asarray(data[f"whitening_{i}"]),
                                 *map(float, data[f"centre_scale_{i}"]))
                for i, name in enumerate(data["names"]))
            return cls(layers, float(data["threshold"]))


def answer_fields(scores: np.ndarray | None, flags: np.ndarray | None, i: int) -> dict[str, float | bool | None]:
    """``{"ood_score", "in_distribution"}`` of the ``i``-th image; both None when the package has
    no OOD statistics (an older package, or one built without them): "not assessed"."""
    if scores is None or flags is None:
        return {SCORE_FIELD: None, FLAG_FIELD: None}
    return {SCORE_FIELD: float(scores[i]), FLAG_FIELD: bool(flags[i])}
