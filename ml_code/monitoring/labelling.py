"""How much a captured request would teach the model if a dermatologist labelled it.

Three scores per request, each in [0, 1], for the labelling queue (``dermaops_services.labelling``):

- ``uncertainty``: Shannon entropy of the served class probabilities divided by ``log C``
  (1 = uniform, 0 = one class certain); ``confidence`` = the top probability, shown beside it.
  Entropy sampling, Settles 2009, "Active Learning Literature Survey", section 3.1.
- ``disagreement``: total variation distance ``0.5 * sum |p_net - p_desc|`` between the
  network's own probabilities and the descriptor model's (the two members of the served fusion,
  ``ml_code.package.model``), re-scored on the model view the inference log keeps: query by
  committee with a committee of two (Settles 2009, section 3.2). NaN when the package has no
  descriptor model. The log keeps only the coarse case mix (age capped at 90, sex, body region),
  so the descriptor model sees the region, not the exact site sent.
- ``ood``: 1 when the answer flagged the image ``in_distribution: false`` (the package's
  Mahalanobis check, ``ml_code.package.ood`` where present), else 0; ``ood_score`` (validation-scaled distance,
  unitless, larger = less like the training data) is passed through for display. NaN/0 when the
  answers carry no such fields.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from .casemix import BODY_REGIONS

SCORE_COLUMNS: tuple[str, ...] = ("confidence", "uncertainty", "disagreement", "network_class", "descriptor_class",
                                  "ood", "ood_score")

# A site name of each coarse region that ``descriptors.clinical_features`` maps onto it.
_REGION_SITE = {"head_neck": "head/neck", "torso": "torso", "upper_extremity": "upper extremity",
                "lower_extremity": "lower extremity", "palms_soles": "palms/soles", "oral_genital": "oral/genital"}
assert set(_REGION_SITE) == set(BODY_REGIONS)


def entropy_uncertainty(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence (N,), normalised entropy (N,)) of class probabilities ``(N, C)``, C >= 2."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return p.max(axis=1), h / np.log(p.shape[1])


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``0.5 * sum_c |p - q|`` per row of two ``(N, C)`` probability arrays, in [0, 1]."""
    return 0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum(axis=1)


def probabilities_matrix(rows: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """``(N, C)`` from the inference log's ``probabilities`` JSON column, in ``classes`` order
    (a class an answer lacks counts 0)."""
    parsed = [json.loads(text) if isinstance(text, str) else {} for text in rows["probabilities"]]
    return np.array([[float(d.get(c, 0.0)) for c in classes] for d in parsed], dtype=np.float64).reshape(-1, len(classes))


def committee_probabilities(api: Any, model: Any, views: np.ndarray, rows: pd.DataFrame
                            ) -> tuple[np.ndarray, np.ndarray] | None:
    """(network probabilities, descriptor-model probabilities), each ``(N, C)``, of model views
    ``(N, S, S, 3)`` uint8 through the served package's own code (``api``: the package's
    handler module; ``model``: its loaded model), or None when the package has no descriptor
    model. Clinical context: the rows' ``age``, ``sex``, ``body_region`` when the log has them."""
    if getattr(model, "descriptor_model", None) is None or not len(views):
        return None
    net = np.asarray(api.predict_fn({"images": views, "network_only": True}, model), dtype=np.float64)
    n = len(views)
    age = rows["age"].tolist() if "age" in rows else None
    sex = rows["sex"].tolist() if "sex" in rows else None
    site = [_REGION_SITE.get(str(r)) for r in rows["body_region"]] if "body_region" in rows else None
    clinical = api.descriptors.clinical_features(age, sex, site, n=n)
    desc = np.exp(model.descriptor_model.log_proba(api.descriptors.descriptor_matrix(views, clinical)))
    return net, desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)


def review_scores(rows: pd.DataFrame, classes: list[str],
                  committee: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """:data:`SCORE_COLUMNS` for inference-log ``rows`` (see the module docstring), row-aligned.

    ``classes``: the served model's class order; ``committee``: the output of
    :func:`committee_probabilities` for the same rows, or None."""
    n = len(rows)
    out = pd.DataFrame(index=range(n), columns=list(SCORE_COLUMNS))
    confidence, uncertainty = entropy_uncertainty(probabilities_matrix(rows, classes)) if n else (np.zeros(0),) * 2
    out["confidence"], out["uncertainty"] = confidence, uncertainty
    if committee is not None and len(committee[0]) == n:
        net, desc = committee
        out["disagreement"] = total_variation(net, desc)
        out["network_class"] = [classes[i] for i in net.argmax(axis=1)]
        out["descriptor_class"] = [classes[i] for i in desc.argmax(axis=1)]
    else:
        out["disagreement"] = np.nan
        out["network_class"] = out["descriptor_class"] = ""
    flag = rows["in_distribution"].to_numpy() if "in_distribution" in rows else np.full(n, np.nan, dtype=object)
    out["ood"] = [1.0 if f is False or f == 0 else 0.0 for f in flag]
    out["ood_score"] = pd.to_numeric(rows["ood_score"], errors="coerce").to_numpy() if "ood_score" in rows \
        else np.full(n, np.nan)
    return out.astype({"confidence": float, "uncertainty": float, "disagreement": float, "ood": float,
                       "ood_score": float})
