"""Lesion descriptors: hand-made colour/texture statistics plus the clinical context
(age, sex, anatomic site), and a gradient-boosted-tree classifier over them.

Why a second model next to the CNN: a network trained from scratch on ~7,000 small
images learns shape and texture but is weak on global colour statistics, and it never
sees the patient's age or the body site, which dermatologists weigh heavily (melanocytic
naevi are mostly in the young; actinic keratoses and basal cell carcinomas on the
sun-exposed head and neck of older patients). A boosted-tree model over a few hundred
descriptors is cheap (on HAM10000's 6,909 training images and 2 CPU cores: 72 s to compute the
descriptors of train and val, 43 s to fit, ``benchmarks/descriptor_fit.py``) and its errors differ from the
CNN's, so the two fuse well (``ml_code.training.train`` fits the fusion on validation). On HAM10000
it is about as good as the network on its own (test macro AUC 0.94 against 0.92).

This file ships inside ``model.tar.gz`` next to ``code/inference.py`` and must stay
NumPy-only at prediction time: :class:`BoostedTrees` evaluates the exported trees itself,
so the endpoint needs no scikit-learn and never unpickles anything. scikit-learn is
imported only by :meth:`BoostedTrees.fit` (training).

Clinical values: ``age`` in years (NaN unknown), ``sex`` male/female (anything else is
unknown), ``site`` the HAM10000 ``localization`` or the ISIC ``anatom_site_general``
vocabulary, mapped onto one coarse set of body regions (:data:`SITE_REGIONS`) so that
models trained on one archive read the other. Unknown values become NaN, which the trees
route along the branch learned for missing values; training masks the clinical columns
of a share of rows, so an image sent without any clinical context is still scored well.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

DESCRIPTOR_VERSION = 2

#: Coarse body regions shared by both archives. HAM10000 ``localization`` and ISIC
#: ``anatom_site_general`` values map onto these; a value not listed is unknown.
SITE_REGIONS: dict[str, tuple[str, ...]] = {
    "head_neck": ("face", "scalp", "ear", "neck", "head/neck", "head", "oral/genital_head"),
    "torso": ("trunk", "back", "chest", "abdomen", "anterior torso", "posterior torso",
              "lateral torso", "torso"),
    "posterior_torso": ("back", "posterior torso"),
    "anterior_torso": ("chest", "abdomen", "anterior torso"),
    "upper_extremity": ("upper extremity", "hand", "upper extremity/hand"),
    "lower_extremity": ("lower extremity", "foot"),
    "palms_soles": ("acral", "palms/soles"),
    "oral_genital": ("genital", "oral/genital"),
}
#: Every site value either archive uses that maps onto a region (anything else is unknown).
KNOWN_SITES: frozenset[str] = frozenset(name for members in SITE_REGIONS.values() for name in members)
CLINICAL_FEATURES: tuple[str, ...] = ("age", "sex_male") + tuple(f"site_{r}" for r in SITE_REGIONS)

# Image-region rings as fractions of the half-width: the lesion is usually centred in a
# dermoscopy crop, so centre-vs-surround contrasts describe the lesion against its skin.
_RINGS = ((0.0, 0.5), (0.5, 0.9), (0.9, 2.0))
_HIST_BINS = 8
_PERCENTILES = (10, 50, 90)


# ---------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------


def clinical_features(
    age: Sequence[Any] | np.ndarray | None, sex: Sequence[Any] | None, site: Sequence[Any] | None, n: int | None = None
) -> np.ndarray:
    """``(N, len(CLINICAL_FEATURES))`` float32, NaN where a value is unknown.

    ``age``/``sex``/``site`` are per-image sequences (any may be None: all unknown);
    ``n`` gives the row count when all three are None.
    """
    lengths = {len(v) for v in (age, sex, site) if v is not None}
    if len(lengths) > 1:
        raise ValueError(f"age, sex and site must have one value per image; got lengths {sorted(lengths)}")
    rows = lengths.pop() if lengths else int(n or 0)
    out = np.full((rows, len(CLINICAL_FEATURES)), np.nan, dtype=np.float32)
    if age is not None:
        a = np.array([_to_float(v) for v in age], dtype=np.float32)
        out[:, 0] = np.where((a >= 0) & (a <= 120), a, np.nan)
    if sex is not None:
        s = [str(v).strip().lower() if v is not None else "" for v in sex]
        out[:, 1] = [1.0 if v == "male" else 0.0 if v == "female" else np.nan for v in s]
    if site is not None:
        names = [str(v).strip().lower() if v is not None else "" for v in site]
        known = [v in KNOWN_SITES for v in names]
        for j, members in enumerate(SITE_REGIONS.values()):
            out[:, 2 + j] = [float(v in members) if k else np.nan for v, k in zip(names, known)]
    return out


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """0-1 RGB ``(..., 3)`` -> HSV in 0-1 (hue wraps at 1)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cmax, cmin = rgb.max(-1), rgb.min(-1)
    delta = cmax - cmin
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(cmax == r, ((g - b) / safe) % 6.0, np.where(cmax == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(delta > 0, hue / 6.0, 0.0)
    sat = np.where(cmax > 0, delta / np.where(cmax > 0, cmax, 1.0), 0.0)
    return np.stack([hue, sat, cmax], axis=-1)


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """0-1 sRGB ``(..., 3)`` -> CIE L*a*b* (D65), scaled to roughly 0-1 per channel."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=np.float32)
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lab = np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)
    return (lab + np.array([0.0, 128.0, 128.0], dtype=np.float32)) / np.array([100.0, 256.0, 256.0], dtype=np.float32)


def image_descriptors(images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``(N, F)`` float32 colour/texture/shape descriptors of uint8 ``(N, S, S, 3)`` lesion crops.

    Ring statistics: per colour channel (RGB, HSV, Lab) and per ring (centre, middle,
    border): mean, std and 10/50/90th percentiles; an 8-bin histogram of each channel in the
    centre; gradient-energy statistics (texture, border sharpness) and the dark-area share.
    Lesion statistics (:func:`_lesion_features`): the same questions a dermatologist's ABCD
    checklist asks, on a lesion mask: asymmetry, border, colours, plus local texture.
    All statistics are invariant to flips and quarter turns. ``images`` may be any array-like
    with ``shape``, ``dtype`` and slicing (a split's segmented pixels): it is read a chunk at a time.
    """
    arr = images if hasattr(images, "shape") and hasattr(images, "dtype") else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image_descriptors expects uint8 (N, S, S, 3) images, got {arr.dtype} {arr.shape}")
    starts = range(0, len(arr), chunk)

    def describe(start: int) -> np.ndarray:
        return _descriptor_chunk(np.asarray(arr[start : start + chunk]))

    workers = min(len(starts), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers > 1:  # numpy releases the GIL in these array operations: chunks run on every core
        with ThreadPoolExecutor(workers, thread_name_prefix="descriptors") as pool:
            parts = list(pool.map(describe, starts))
    else:
        parts = [describe(start) for start in starts]
    return np.concatenate(parts) if parts else np.zeros((0, descriptor_count()), np.float32)


def descriptor_count() -> int:
    per_channel = len(_RINGS) * (2 + len(_PERCENTILES)) + _HIST_BINS
    return 9 * per_channel + 5 + _LESION_FEATURES


def _descriptor_chunk(x: np.ndarray) -> np.ndarray:
    n, h, w, _ = x.shape
    rgb = x.astype(np.float32) / 255.0
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    rings = [(radius >= lo) & (radius < hi) for lo, hi in _RINGS]
    centre = rings[0]
    hsv, lab = _rgb_to_hsv(rgb), _rgb_to_lab(rgb)
    feats: list[np.ndarray] = []
    for space in (rgb, hsv, lab):
        for c in range(3):
            chan = space[..., c]
            for ring in rings:
                v = chan[:, ring]
                feats += [v.mean(1), v.std(1), *np.percentile(v, _PERCENTILES, axis=1)]
            bins = np.clip((chan[:, centre] * _HIST_BINS).astype(np.int64), 0, _HIST_BINS - 1)
            feats += list((_row_histograms(bins, _HIST_BINS) / max(int(centre.sum()), 1)).T)
    gray = rgb.mean(-1)
    # central differences on the interior: symmetric, so flips and quarter turns keep the statistics
    gx, gy = gray[:, 1:-1, 2:] - gray[:, 1:-1, :-2], gray[:, 2:, 1:-1] - gray[:, :-2, 1:-1]
    grad = np.hypot(gx, gy)
    inner = rings[0][1:-1, 1:-1]
    dark = gray < 0.85 * gray.reshape(n, -1).mean(1)[:, None, None]
    feats += [grad.mean((1, 2)), grad.std((1, 2)), grad[:, inner].mean(1), dark.mean((1, 2)), dark[:, centre].mean(1)]
    feats += _lesion_features(x, rgb, hsv, lab)
    return np.stack(feats, axis=1).astype(np.float32)


# Dermoscopic colours of the "C" in ABCD (sRGB 0-1): white, red, light brown, dark brown,
# blue-grey, black. Melanomas tend to show more of them than naevi.
_DERMOSCOPIC_COLOURS = np.array([[0.95, 0.95, 0.95], [0.80, 0.20, 0.20], [0.71, 0.51, 0.33], [0.40, 0.22, 0.12],
                                 [0.40, 0.50, 0.60], [0.08, 0.06, 0.06]], np.float32)
_LBP_CODES = 10  # rotation-invariant uniform LBP over 8 neighbours: 0..8 set bits, 9 = non-uniform
_LBP_RADII = (1, 2)
_OTSU_BINS = 64
#: Names of the :func:`_lesion_features` columns, in order (they follow the ring statistics).
LESION_FEATURE_NAMES: tuple[str, ...] = (
    ("area", "at_crop_edge", "centroid_offset", "minor_major_axis", "spread", "compactness",
     "asymmetry_flip_min", "asymmetry_flip_max", "asymmetry_half_turn", "interior_share", "no_lesion", "all_lesion")
    + tuple(f"{c}_{stat}" for c in ("L", "a", "b", "saturation") for stat in ("inside", "skin", "contrast", "spread"))
    + tuple(f"share_{c}" for c in ("white", "red", "light_brown", "dark_brown", "blue_grey", "black"))
    + ("colour_count", "border_gradient", "interior_gradient", "border_sharpness", "border_gradient_sd")
    + tuple(f"lbp_r{r}_{c}_{where}" for r in _LBP_RADII for c in range(_LBP_CODES) for where in ("lesion", "crop"))
)
_LESION_FEATURES = len(LESION_FEATURE_NAMES)


def _box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Exact (integer) ``(2k+1)^2`` box sums with reflected edges, so the result is
    bit-identical under flips and quarter turns."""
    p = np.pad(a.astype(np.int64), ((0, 0), (k, k), (k, k)), mode="reflect")
    c = np.pad(p.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    n, (h, w) = 2 * k + 1, a.shape[1:]
    return c[:, n:n + h, n:n + w] - c[:, :h, n:n + w] - c[:, n:n + h, :w] + c[:, :h, :w]


def _row_histograms(binned: np.ndarray, bins: int) -> np.ndarray:
    """``(N, bins)`` counts of each row of integer bin indices ``(N, P)`` in ``[0, bins)``,
    in one ``bincount`` (each row offset into its own block) instead of N calls."""
    n = len(binned)
    offsets = (np.arange(n, dtype=np.int64) * bins)[:, None]
    return np.bincount((binned + offsets).ravel(), minlength=n * bins).reshape(n, bins)


def _otsu_bins(binned: np.ndarray, bins: int) -> np.ndarray:
    """Per-row Otsu threshold (a bin index) of integer bin values ``(N, P)`` in ``[0, bins)``."""
    hist = _row_histograms(binned, bins).astype(np.float64)
    hist /= hist.sum(1, keepdims=True)
    w0 = hist.cumsum(1)
    m0 = (hist * np.arange(bins)).cumsum(1)
    between = (m0[:, -1:] * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return between[:, :-1].argmax(1) + 1


def _lbp_riu2(lum: np.ndarray, r: int) -> np.ndarray:
    """Rotation-invariant uniform local binary patterns of ``(N, H, W)`` luminance at radius
    ``r`` (8 neighbours on the square ring, which flips and quarter turns map onto itself)."""
    h, w = lum.shape[1:]
    ring = ((-r, -r), (-r, 0), (-r, r), (0, r), (r, r), (r, 0), (r, -r), (0, -r))
    centre = lum[:, r:h - r, r:w - r]
    bits = np.stack([lum[:, r + dy:h - r + dy, r + dx:w - r + dx] >= centre + 0.01 for dy, dx in ring], -1)
    ones = bits.sum(-1)
    transitions = (bits != np.roll(bits, 1, axis=-1)).sum(-1)
    return np.where(transitions <= 2, ones, _LBP_CODES - 1)


def _lesion_features(x: np.ndarray, rgb: np.ndarray, hsv: np.ndarray, lab: np.ndarray) -> list[np.ndarray]:
    """ABCD-style statistics on a lesion mask (Otsu threshold of the blurred brightness):
    size and whether the lesion runs off the crop, eccentricity, compactness of the outline
    (irregular borders), asymmetry under flips, lesion-vs-skin colour contrast, the share of
    each dermoscopic colour inside the lesion and how many are present, border sharpness,
    and LBP texture histograms inside the lesion and over the whole crop.

    Why: the ring statistics assume a centred, crop-filling lesion; these follow the lesion
    wherever it is, and on HAM10000 the descriptor model's test macro AUC went from 0.927
    to 0.938 with them (``benchmarks/fusion_tradeoff.py``; README, "Model quality").
    """
    n, h, w, _ = x.shape
    k = max(1, h // 32)
    blurred = _box_sum(x.astype(np.int64).sum(-1), k)  # 0 .. (2k+1)^2 * 765, exact integers
    binned = (blurred * _OTSU_BINS) // ((2 * k + 1) ** 2 * 765 + 1)
    mask = binned < _otsu_bins(binned.reshape(n, -1), _OTSU_BINS)[:, None, None]  # the darker side: the lesion
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    yy, xx = (yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)
    edge_band = (np.abs(yy) > 0.9) | (np.abs(xx) > 0.9)
    area = mask.sum((1, 2)).astype(np.float64)
    a = np.maximum(area, 1)
    cy, cx = (mask * yy).sum((1, 2)) / a, (mask * xx).sum((1, 2)) / a
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    myy, mxx, mxy = ((mask * v).sum((1, 2)) / a for v in (dy * dy, dx * dx, dx * dy))
    spread = myy + mxx
    disc = np.sqrt(np.maximum(spread ** 2 / 4 - (myy * mxx - mxy ** 2), 0))
    minor_major = np.sqrt(np.maximum(spread / 2 - disc, 0) / np.maximum(spread / 2 + disc, 1e-12))
    interior = mask[:, 1:-1, 1:-1] & mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
    outline = mask[:, 1:-1, 1:-1] & ~interior
    perimeter = outline.sum((1, 2)).astype(np.float64)
    flip_v = (mask ^ mask[:, ::-1, :]).sum((1, 2)) / a
    flip_h = (mask ^ mask[:, :, ::-1]).sum((1, 2)) / a
    turn = (mask ^ mask[:, ::-1, ::-1]).sum((1, 2)) / a
    feats = [area / (h * w), mask[:, edge_band].mean(1), np.hypot(cy, cx), minor_major, spread,
             perimeter ** 2 / (4 * np.pi * a), np.minimum(flip_v, flip_h), np.maximum(flip_v, flip_h), turn,
             interior.sum((1, 2)) / a, (area == 0).astype(np.float64), (area == h * w).astype(np.float64)]
    skin = ~mask
    s = np.maximum(skin.sum((1, 2)), 1)
    for chan in (lab[..., 0], lab[..., 1], lab[..., 2], hsv[..., 1]):
        inside, outside = (chan * mask).sum((1, 2)) / a, (chan * skin).sum((1, 2)) / s
        spread_in = np.sqrt(np.maximum((chan ** 2 * mask).sum((1, 2)) / a - inside ** 2, 0))
        feats += [inside, outside, inside - outside, spread_in]
    nearest = ((rgb[..., None, :] - _DERMOSCOPIC_COLOURS) ** 2).sum(-1).argmin(-1)
    shares = np.stack([((nearest == c) & mask).sum((1, 2)) / a for c in range(len(_DERMOSCOPIC_COLOURS))], 1)
    feats += list(shares.T) + [(shares > 0.05).sum(1).astype(np.float64)]
    lum = lab[..., 0]
    grad = np.hypot(lum[:, 1:-1, 2:] - lum[:, 1:-1, :-2], lum[:, 2:, 1:-1] - lum[:, :-2, 1:-1])
    n_out, n_in = np.maximum(outline.sum((1, 2)), 1), np.maximum(interior.sum((1, 2)), 1)
    g_out, g_in = (grad * outline).sum((1, 2)) / n_out, (grad * interior).sum((1, 2)) / n_in
    g_out_sd = np.sqrt(np.maximum((grad ** 2 * outline).sum((1, 2)) / n_out - g_out ** 2, 0))
    feats += [g_out, g_in, g_out / (g_in + 1e-3), g_out_sd]
    for r in _LBP_RADII:
        codes = _lbp_riu2(lum, r)
        inside = mask[:, r:h - r, r:w - r]
        n_inside = np.maximum(inside.sum((1, 2)), 1)
        for c in range(_LBP_CODES):
            hit = codes == c
            feats += [(hit & inside).sum((1, 2)) / n_inside, hit.mean((1, 2))]
    return feats


# ---------------------------------------------------------------------------------------
# Gradient-boosted trees, exported to plain arrays
# ---------------------------------------------------------------------------------------


class BoostedTrees:
    """A multiclass gradient-boosted tree ensemble evaluated with NumPy only.

    Trained with scikit-learn's ``HistGradientBoostingClassifier`` and exported to padded
    per-tree node arrays (feature, threshold, missing-goes-left, children, leaf value), so
    prediction traverses every tree at once in ``depth`` vectorised steps and the model
    file is a plain ``.npz`` (loaded with ``allow_pickle=False``).
    """

    FIELDS = ("feature", "threshold", "missing_left", "left", "right", "is_leaf", "value", "tree_class", "baseline",
              "n_features")

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [f for f in self.FIELDS if f not in arrays]
        if missing:
            raise ValueError(f"boosted-tree arrays lack {missing}; the descriptor model file is damaged or foreign")
        self.arrays = {f: np.asarray(arrays[f]) for f in self.FIELDS}
        self.n_classes = int(self.arrays["baseline"].shape[0])
        self.n_features = int(arrays["n_features"])
        self.depth = int(arrays["max_depth"]) if "max_depth" in arrays else int(self.arrays["is_leaf"].shape[1])

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None,
            max_iter: int = 300, learning_rate: float = 0.05, max_leaf_nodes: int = 15,
            l2_regularization: float = 1.0, seed: int = 0, threads: int | None = None) -> "BoostedTrees":
        """Fit on ``x`` (NaN = missing) and export. Every class in ``range(n_classes)`` gets trees.

        ``threads``: OpenMP threads of the fit (None: scikit-learn's default, every CPU). The
        training job passes its ``num_threads``: scikit-learn does not follow ``torch.set_num_threads``,
        and OpenMP threads that outnumber the free cores spin instead of sleeping."""
        from sklearn.ensemble import HistGradientBoostingClassifier  # training-time only
        from threadpoolctl import threadpool_limits

        present = np.unique(y)
        if len(present) != n_classes or present.min() != 0 or present.max() != n_classes - 1:
            raise ValueError(f"the descriptor model needs every one of {n_classes} classes in its training "
                             f"labels; found {present.tolist()}")
        x = np.array(x, dtype=np.float64)
        x[:, np.isnan(x).all(axis=0)] = 0.0  # e.g. no clinical data at all: a constant column never splits
        edges = quantile_bin_edges(x)
        gb = HistGradientBoostingClassifier(
            max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
            l2_regularization=l2_regularization, early_stopping=False, random_state=seed,
        )
        with threadpool_limits(limits=threads, user_api="openmp"):
            gb.fit(to_bins(x, edges), y, sample_weight=sample_weight)
        arrays = cls._export(gb, x.shape[1])
        _thresholds_on_raw_values(arrays, edges)
        return cls(arrays)

    @staticmethod
    def _export(gb: Any, n_features: int) -> dict[str, np.ndarray]:
        trees = [(k, p.nodes) for per_iter in gb._predictors for k, p in enumerate(per_iter)]
        if any(nodes["is_categorical"].any() for _, nodes in trees):
            raise ValueError("categorical splits are not supported by the exported descriptor model")
        width = max(len(nodes) for _, nodes in trees)
        t = len(trees)
        out = {
            "feature": np.zeros((t, width), np.int32), "threshold": np.zeros((t, width), np.float64),
            "missing_left": np.zeros((t, width), bool), "left": np.zeros((t, width), np.int32),
            "right": np.zeros((t, width), np.int32), "is_leaf": np.ones((t, width), bool),
            "value": np.zeros((t, width), np.float64), "tree_class": np.array([k for k, _ in trees], np.int32),
        }
        for i, (_, nodes) in enumerate(trees):
            m = len(nodes)
            out["feature"][i, :m] = nodes["feature_idx"]
            out["threshold"][i, :m] = nodes["num_threshold"]
            out["missing_left"][i, :m] = nodes["missing_go_to_left"].astype(bool)
            out["left"][i, :m] = nodes["left"]
            out["right"][i, :m] = nodes["right"]
            out["is_leaf"][i, :m] = nodes["is_leaf"].astype(bool)
            out["value"][i, :m] = nodes["value"]
        out["baseline"] = np.asarray(gb._baseline_prediction, np.float64).reshape(-1)
        out["n_features"] = np.array(n_features)
        out["max_depth"] = np.array(max(int(nodes["depth"].max()) for _, nodes in trees) + 1)
        return out

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """``(N, K)`` additive scores (log-odds before the softmax)."""
        a = self.arrays
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"descriptor model expects (N, {self.n_features}) features, got {x.shape}")
        t = np.arange(a["feature"].shape[0])[None, :]
        rows = np.arange(len(x))[:, None]
        node = np.zeros((len(x), a["feature"].shape[0]), dtype=np.int64)
        for _ in range(self.depth):
            leaf = a["is_leaf"][t, node]
            if leaf.all():
                break
            value = x[rows, a["feature"][t, node]]
            go_left = np.where(np.isnan(value), a["missing_left"][t, node], value <= a["threshold"][t, node])
            child = np.where(go_left, a["left"][t, node], a["right"][t, node])
            node = np.where(leaf, node, child)
        leaf_values = a["value"][t, node]  # (N, T)
        scores = np.zeros((len(x), self.n_classes))
        for k in range(self.n_classes):
            scores[:, k] = leaf_values[:, a["tree_class"] == k].sum(1)
        return scores + a["baseline"][None, :]

    def log_proba(self, x: np.ndarray) -> np.ndarray:
        s = self.raw_scores(x)
        s = s - s.max(1, keepdims=True)
        return s - np.log(np.exp(s).sum(1, keepdims=True))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, **self.arrays, max_depth=np.array(self.depth))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "BoostedTrees":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return cls(arrays)


MAX_BINS = 255
"""Bins per feature, scikit-learn's ``HistGradientBoostingClassifier`` default (``max_bins``)."""


def quantile_bin_edges(x: np.ndarray, max_bins: int = MAX_BINS) -> list[np.ndarray | None]:
    """Per column of ``x`` ``(N, F)``, the increasing edges of its quantile bins, or None for a column
    with at most ``max_bins`` distinct values (the trees split those between distinct values).

    The edges are the ones scikit-learn's histogram boosting computes without sample weights
    (``_find_binning_thresholds``: ``averaged_inverted_cdf`` percentiles of the non-missing
    values, deduplicated, capped below +inf). Why we bin ourselves: given sample weights,
    scikit-learn 1.9 computes weighted percentiles one call per bin edge, most of the fit's
    time (the weights' work, the class balance, is in the gradients either way); handed columns
    of at most ``max_bins`` values it bins them in milliseconds. The whole fit on HAM10000's
    training descriptors: 43.1 s against 96.8 s, ``benchmarks/descriptor_fit.py``."""
    edges: list[np.ndarray | None] = []
    percentiles = np.linspace(0, 100, num=max_bins + 1)[1:-1]
    for column in np.asarray(x, dtype=np.float64).T:
        values = column[~np.isnan(column)]
        if len(np.unique(values)) <= max_bins:
            edges.append(None)
            continue
        cut = np.unique(np.percentile(values, percentiles, method="averaged_inverted_cdf"))
        edges.append(np.clip(cut, None, 1e300))
    return edges


def to_bins(x: np.ndarray, edges: list[np.ndarray | None]) -> np.ndarray:
    """``x`` with each binned column replaced by its bin number (a value lands in bin ``i`` when
    ``edges[i - 1] < value <= edges[i]``, as in scikit-learn); NaN stays NaN, other columns as they are."""
    out = np.array(x, dtype=np.float64)
    for j, cut in enumerate(edges):
        if cut is not None:
            known = ~np.isnan(out[:, j])
            out[known, j] = np.searchsorted(cut, out[known, j], side="left")
    return out


def _thresholds_on_raw_values(arrays: dict[str, np.ndarray], edges: list[np.ndarray | None]) -> None:
    """Rewrite split thresholds learned on bin numbers (:func:`to_bins`) as raw feature values.

    A split ``bin <= t`` (``t`` a midpoint between bin numbers) keeps the bins up to
    ``floor(t)``, i.e. the raw values ``<= edges[floor(t)]``: the exported trees then read raw
    descriptors, exactly as the fitted ones read their bins."""
    internal = ~arrays["is_leaf"] & np.isfinite(arrays["threshold"])  # +inf: a split of missing from known values
    for j, cut in enumerate(edges):
        if cut is not None:
            at = internal & (arrays["feature"] == j)
            arrays["threshold"][at] = cut[np.floor(arrays["threshold"][at]).astype(np.int64)]


def descriptor_matrix(images: np.ndarray, clinical: np.ndarray | None) -> np.ndarray:
    """Image descriptors followed by the clinical columns (all NaN when ``clinical`` is None)."""
    desc = image_descriptors(images)
    if clinical is None:
        clinical = np.full((len(desc), len(CLINICAL_FEATURES)), np.nan, np.float32)
    clinical = np.asarray(clinical, dtype=np.float32)
    if clinical.shape != (len(desc), len(CLINICAL_FEATURES)):
        raise ValueError(f"clinical features must be (N={len(desc)}, {len(CLINICAL_FEATURES)}), got {clinical.shape}")
    return np.concatenate([desc, clinical], axis=1)
