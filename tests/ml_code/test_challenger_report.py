"""The champion/challenger report on synthetic labelled traffic, written by the endpoint's own
capture-record writer: a better challenger is promoted, a tie is kept, too few labels say so."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ml_code.monitoring.challenger import KEEP, NOT_ENOUGH, PROMOTE, compare_variants, variant_rows
from ml_code.serving.capture import add_shadow, capture_record

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _answer(rng: np.random.Generator, truth: str, accuracy: float) -> str:
    if rng.random() < accuracy:
        return truth
    return str(rng.choice([c for c in CLASSES if c != truth]))


def _text(cls: str) -> str:
    return json.dumps({"predicted_class": cls, "probabilities": {c: float(c == cls) for c in CLASSES}})


def _traffic(n: int, champion_acc: float, challenger_acc: float, *, weight: float = 0.5, shadow: bool = False,
             seed: int = 0) -> tuple[list[str], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    lines, labels = [], []
    for i in range(n):
        truth = str(rng.choice(CLASSES, p=[0.05, 0.1, 0.15, 0.05, 0.25, 0.35, 0.05]))
        challenger = not shadow and rng.random() < weight
        acc, variant, version = (challenger_acc, "Challenger", 2) if challenger else (champion_acc, "AllTraffic", 1)
        record = capture_record(body=b"x", content_type="image/jpeg", response_text=_text(_answer(rng, truth, acc)),
                                event_id=f"e{i}", inference_id=f"r{i}", inference_time=1.7e9 + i, package_version=version,
                                latency_ms=5.0 + rng.random(), variant=variant)
        if shadow:
            add_shadow(record, variant="Challenger", package_version=2,
                       response_text=_text(_answer(rng, truth, challenger_acc)), status=200, latency_ms=7.0)
        lines.append(json.dumps(record))
        labels.append({"inference_id": f"r{i}", "label": truth})
    return lines, pd.DataFrame(labels)


def test_weighted_better_challenger_is_promoted_and_a_tie_is_kept():
    lines, labels = _traffic(1200, 0.6, 0.85, weight=0.4)
    rows = variant_rows(lines)
    assert set(rows["variant"]) == {"AllTraffic", "Challenger"} and not rows["shadow"].any()
    report = compare_variants(rows, labels, n_resamples=300)
    assert report["mode"] == "weighted" and report["recommendation"] == PROMOTE, report["reason"]
    diff = report["quality"]["balanced_accuracy"]
    assert 0 < diff["low"] < diff["difference"] < diff["high"]
    assert report["variants"]["Challenger"]["versions"] == [2]
    assert 0.3 < report["variants"]["Challenger"]["n"] / len(rows) < 0.5

    tie_lines, tie_labels = _traffic(1200, 0.7, 0.7, weight=0.4, seed=1)
    tie = compare_variants(variant_rows(tie_lines), tie_labels, n_resamples=300)
    assert tie["recommendation"] == KEEP and tie["quality"]["balanced_accuracy"]["low"] < 0 < \
        tie["quality"]["balanced_accuracy"]["high"], tie["quality"]


def test_shadow_report_pairs_both_answers_and_needs_enough_labels():
    lines, labels = _traffic(600, 0.6, 0.85, shadow=True, seed=2)
    rows = variant_rows(lines)
    assert rows.groupby("variant")["shadow"].all().to_dict() == {"AllTraffic": False, "Challenger": True}
    report = compare_variants(rows, labels, n_resamples=300)
    assert report["mode"] == "shadow" and report["recommendation"] == PROMOTE, report["reason"]
    assert report["agreement"]["n"] == 600 and 0.4 < report["agreement"]["share"] < 0.7
    assert report["variants"]["Challenger"]["latency_p50_ms"] == 7.0
    few = compare_variants(rows, labels.head(20), n_resamples=100)
    assert few["recommendation"] == NOT_ENOUGH and "20 labelled" in few["reason"]
    unlabelled = compare_variants(rows, labels.head(0), n_resamples=100)
    assert unlabelled["recommendation"] == NOT_ENOUGH and unlabelled["quality"] is None
