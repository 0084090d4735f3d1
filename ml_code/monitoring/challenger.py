"""Champion vs challenger on live traffic: which variant answered what, and is the challenger better?

Rows come from data-capture lines in either layout:

- local endpoint: one path (``<endpoint>/AllTraffic/...``); each record names its variant in
  ``eventMetadata.dermaopsVariant`` and, in shadow mode, holds the shadow's answer in
  ``eventMetadata.dermaopsShadow`` (``ml_code.serving.capture``);
- SageMaker: one path per variant (``{prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/``, shadow
  variants included), no variant in the record: the caller passes the path's variant, and
  whether that variant is a shadow. SageMaker writes no latency into capture (it is in
  CloudWatch's ``ModelLatency`` per ``VariantName``): latency is NaN there.

The comparison (:func:`compare_variants`): prediction agreement (shadow mode: both variants
answered the same requests, so request by request; weighted mode: each request was answered
once, so only the predicted-class mixes can be compared), per-variant latency, and, on the
requests whose ground truth has arrived, per-variant balanced accuracy and melanoma
sensitivity (scikit-learn) with percentile-bootstrap intervals of the difference challenger -
champion (``ml_code.metrics.bootstrap_ci``: requests resampled with replacement; paired in
shadow mode, the two groups resampled together in weighted mode). The recommendation:

- ``not enough data``: fewer than ``min_labelled`` labelled requests for either variant;
- ``promote``: the balanced-accuracy difference's interval lies above 0 and the melanoma
  sensitivity difference's interval does not lie below 0 (never trade missed melanomas);
- ``keep``: otherwise (a tie, or a worse challenger).

No Dagster here (``ml_code`` rule); reading captures from the store is
``dermaops_services.challenger``.
"""

from __future__ import annotations

import binascii
import json
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .capture import _parse_output, capture_envelopes

CHAMPION = "AllTraffic"
CHALLENGER = "Challenger"
MELANOMA = "mel"
ROW_COLUMNS = ("inference_id", "inference_time", "variant", "model_version", "predicted_class", "latency_ms",
               "shadow")
PROMOTE, KEEP, NOT_ENOUGH = "promote", "keep", "not enough data"


def _row(meta: dict[str, Any], out: dict[str, Any], when: Any, variant: str, shadow: bool,
         latency: Any, version: Any) -> dict[str, Any] | None:
    try:
        status, predicted, *_ = _parse_output(out)
    except (ValueError, TypeError, binascii.Error):
        return None
    if status != "ok":
        return None
    return {"inference_id": str(meta.get("inferenceId") or meta.get("eventId") or ""), "inference_time": when,
            "variant": variant, "model_version": int(version) if isinstance(version, int) else -1,
            "predicted_class": predicted, "latency_ms": float(latency) if isinstance(latency, (int, float)) else np.nan,
            "shadow": shadow}


def variant_rows(lines: Iterable[str | bytes], path_variant: str = CHAMPION, path_is_shadow: bool = False) -> pd.DataFrame:
    """One row per answer in capture ``lines`` (columns ``ROW_COLUMNS``): the answering variant
    (the record's ``dermaopsVariant``, else ``path_variant``), and a second row, ``shadow=True``,
    for a local shadow answer. ``latency_ms`` is the model's own scoring time where recorded
    (``dermaopsModelLatencyMs``, else the request latency), NaN for SageMaker. Lines that are
    not readable or not answers (errors, refused requests) are left out."""
    rows: list[dict[str, Any]] = []
    for _inp, out, meta, when in capture_envelopes(lines):
        row = _row(meta, out, when, str(meta.get("dermaopsVariant") or path_variant), path_is_shadow,
                   meta.get("dermaopsModelLatencyMs", meta.get("dermaopsLatencyMs")), meta.get("modelPackageVersion"))
        if row is not None:
            rows.append(row)
        shadow = meta.get("dermaopsShadow")
        if isinstance(shadow, dict) and isinstance(shadow.get("endpointOutput"), dict):
            row = _row(meta, shadow["endpointOutput"], when, str(shadow.get("variant") or CHALLENGER), True,
                       shadow.get("dermaopsLatencyMs"), shadow.get("modelPackageVersion"))
            if row is not None:
                rows.append(row)
    frame = pd.DataFrame.from_records(rows, columns=list(ROW_COLUMNS))
    frame["inference_time"] = pd.to_datetime(frame["inference_time"], utc=True)
    return frame


def _quiet(metric):
    def wrapped(*args: Any, **kwargs: Any) -> float:
        with warnings.catch_warnings():  # a resample without some class: sklearn warns, we want the number
            warnings.simplefilter("ignore")
            return float(metric(*args, **kwargs))
    return wrapped


@_quiet
def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (scikit-learn's definition); NaN when empty."""
    from sklearn.metrics import balanced_accuracy_score  # here: the Dagster code location imports this module

    return balanced_accuracy_score(y_true, y_pred) if len(y_true) else np.nan


@_quiet
def melanoma_sensitivity(y_true: np.ndarray, y_pred: np.ndarray, mel: int) -> float:
    """Recall of melanoma (class code ``mel``); NaN without a melanoma among ``y_true``."""
    from sklearn.metrics import recall_score

    positives = np.asarray(y_true) == mel
    return recall_score(positives, np.asarray(y_pred) == mel, zero_division=np.nan) if positives.any() else np.nan


def _codes(*series: pd.Series) -> tuple[list[np.ndarray], int]:
    classes = sorted(set().union(*(set(s.astype(str)) for s in series)))
    index = {c: i for i, c in enumerate(classes)}
    return [s.astype(str).map(index).to_numpy(dtype=np.int64) for s in series], index.get(MELANOMA, -1)


def _interval(values: Any) -> dict[str, float]:
    return {"difference": values.estimate, "low": values.low, "high": values.high}


def _paired(labelled: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, Any]:
    """Shadow mode: each labelled request has both answers (columns ``champion``, ``challenger``)."""
    from ml_code.metrics import bootstrap_ci  # scikit-learn: not at import, the code location imports this module

    (truth, champ, chall), mel = _codes(labelled["label"], labelled["champion"], labelled["challenger"])
    preds = np.stack([champ, chall], axis=1)

    def diff(metric):
        return lambda t, p: metric(t, p[:, 1]) - metric(t, p[:, 0])

    sens = lambda t, p: melanoma_sensitivity(t, p, mel)  # noqa: E731
    return {"per_variant": {CHAMPION: {"n_labelled": len(truth), "balanced_accuracy": balanced_accuracy(truth, champ),
                                       "melanoma_sensitivity": sens(truth, champ)},
                            CHALLENGER: {"n_labelled": len(truth), "balanced_accuracy": balanced_accuracy(truth, chall),
                                         "melanoma_sensitivity": sens(truth, chall)}},
            "balanced_accuracy": _interval(bootstrap_ci(truth, preds, diff(balanced_accuracy), n_resamples, seed=seed)),
            "melanoma_sensitivity": _interval(bootstrap_ci(truth, preds, diff(sens), n_resamples, seed=seed))}


def _split(labelled: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, Any]:
    """Weighted mode: each labelled request was answered by one variant (column ``variant``)."""
    from ml_code.metrics import bootstrap_ci

    (truth, pred), mel = _codes(labelled["label"], labelled["predicted_class"])
    group = (labelled["variant"].to_numpy() == CHALLENGER).astype(np.int64)
    data = np.stack([group, pred], axis=1)

    def diff(metric):
        def value(t: np.ndarray, p: np.ndarray) -> float:
            a, b = p[:, 0] == 0, p[:, 0] == 1
            return metric(t[b], p[b, 1]) - metric(t[a], p[a, 1]) if a.any() and b.any() else np.nan
        return value

    sens = lambda t, p: melanoma_sensitivity(t, p, mel)  # noqa: E731
    per = {name: {"n_labelled": int((group == g).sum()),
                  "balanced_accuracy": balanced_accuracy(truth[group == g], pred[group == g]),
                  "melanoma_sensitivity": sens(truth[group == g], pred[group == g])}
           for name, g in ((CHAMPION, 0), (CHALLENGER, 1))}
    return {"per_variant": per,
            "balanced_accuracy": _interval(bootstrap_ci(truth, data, diff(balanced_accuracy), n_resamples, seed=seed)),
            "melanoma_sensitivity": _interval(bootstrap_ci(truth, data, diff(sens), n_resamples, seed=seed))}


def _latency(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out = {}
    for name, group in rows.groupby("variant"):
        ms = group["latency_ms"].dropna()
        out[str(name)] = {"n": len(group), "shadow": bool(group["shadow"].all()),
                          "versions": sorted(int(v) for v in group["model_version"].unique()),
                          "latency_p50_ms": float(ms.quantile(0.5)) if len(ms) else None,
                          "latency_p95_ms": float(ms.quantile(0.95)) if len(ms) else None}
    return out


def recommend(quality: dict[str, Any] | None, min_labelled: int) -> tuple[str, str]:
    """(recommendation, why) from the quality comparison (see the module docstring)."""
    if quality is None or min(v["n_labelled"] for v in quality["per_variant"].values()) < min_labelled:
        n = 0 if quality is None else min(v["n_labelled"] for v in quality["per_variant"].values())
        return NOT_ENOUGH, f"{n} labelled requests for the less-labelled variant; {min_labelled} needed"
    bacc, sens = quality["balanced_accuracy"], quality["melanoma_sensitivity"]
    if np.isnan(bacc["low"]):
        return NOT_ENOUGH, "the balanced-accuracy difference has no bootstrap interval yet"
    if bacc["low"] > 0 and not (sens["high"] < 0):
        return PROMOTE, (f"balanced accuracy {bacc['difference']:+.3f} (95% CI {bacc['low']:+.3f}..{bacc['high']:+.3f}) "
                         f"and melanoma sensitivity not worse ({sens['low']:+.3f}..{sens['high']:+.3f})")
    if bacc["low"] > 0:
        return KEEP, f"better balanced accuracy but melanoma sensitivity worse ({sens['low']:+.3f}..{sens['high']:+.3f})"
    return KEEP, (f"balanced accuracy difference {bacc['difference']:+.3f} (95% CI {bacc['low']:+.3f}.."
                  f"{bacc['high']:+.3f}) does not show the challenger better")


def compare_variants(rows: pd.DataFrame, labels: pd.DataFrame, *, min_labelled: int = 30,
                     n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The champion/challenger report (JSON-able) of ``rows`` (:func:`variant_rows`) and ``labels``
    (``inference_id``, ``label``: class codes, as ``dermaops_services.monitoring.read_labels``
    returns). Differences are challenger - champion; intervals are 95 % percentile bootstrap."""
    shadow_mode = bool(rows["shadow"].any())
    answers = rows.drop_duplicates(["inference_id", "variant"], keep="last")
    report: dict[str, Any] = {"mode": "shadow" if shadow_mode else "weighted", "variants": _latency(answers),
                              "agreement": None, "class_mix": None, "quality": None, "min_labelled": min_labelled}
    labels = labels[["inference_id", "label"]].drop_duplicates("inference_id", keep="last")
    if shadow_mode:
        wide = answers.pivot(index="inference_id", columns="variant", values="predicted_class")
        wide = wide.rename(columns={CHAMPION: "champion", CHALLENGER: "challenger"})
        if {"champion", "challenger"} <= set(wide.columns):
            both = wide.dropna(subset=["champion", "challenger"])
            report["agreement"] = {"n": len(both),
                                   "share": float((both["champion"] == both["challenger"]).mean()) if len(both) else None}
            labelled = both.reset_index().merge(labels, on="inference_id")
            if len(labelled):
                report["quality"] = _paired(labelled, n_resamples, seed)
    else:
        mix = answers.groupby("variant")["predicted_class"].value_counts(normalize=True).unstack(fill_value=0.0)
        report["class_mix"] = {str(v): {str(c): float(x) for c, x in mix.loc[v].items()} for v in mix.index}
        if {CHAMPION, CHALLENGER} <= set(mix.index):  # total variation distance of the predicted-class mixes
            report["class_mix_distance"] = float(0.5 * (mix.loc[CHAMPION] - mix.loc[CHALLENGER]).abs().sum())
        labelled = answers[answers["variant"].isin([CHAMPION, CHALLENGER])].merge(labels, on="inference_id")
        if len(labelled) and labelled["variant"].nunique() == 2:
            report["quality"] = _split(labelled, n_resamples, seed)
    report["recommendation"], report["reason"] = recommend(report["quality"], min_labelled)
    return json.loads(json.dumps(report, default=float).replace("NaN", "null"))


def report_markdown(report: dict[str, Any]) -> str:
    """A short Markdown summary for the Dagster UI."""
    lines = [f"**{report['recommendation']}** ({report['mode']} mode): {report['reason']}", "",
             "| variant | requests | versions | p50 ms | p95 ms | labelled | balanced acc. | melanoma sens. |",
             "|---|---|---|---|---|---|---|---|"]
    per = (report.get("quality") or {}).get("per_variant", {})
    for name, v in report["variants"].items():
        q = per.get(name, {})
        cells = [name + (" (shadow)" if v["shadow"] else ""), v["n"], ",".join(map(str, v["versions"])),
                 v["latency_p50_ms"], v["latency_p95_ms"], q.get("n_labelled"), q.get("balanced_accuracy"),
                 q.get("melanoma_sensitivity")]
        lines.append("| " + " | ".join("-" if c is None else f"{c:.3f}" if isinstance(c, float) else str(c)
                                       for c in cells) + " |")
    if report.get("agreement"):
        lines.append(f"\nAgreement on {report['agreement']['n']} requests both answered: {report['agreement']['share']:.3f}")
    return "\n".join(lines)
