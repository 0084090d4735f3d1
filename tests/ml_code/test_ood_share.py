"""The answer's OOD fields survive capture parsing and give the drift report's flagged share."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from ml_code.monitoring.capture import parse_lines, validate_rows
from ml_code.monitoring.ood_share import flagged_share


def capture_line(i: int, answer: dict) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 120 + i, np.uint8)).save(buf, "PNG")
    return json.dumps({"captureData": {
        "endpointInput": {"observedContentType": "image/png", "mode": "INPUT", "encoding": "BASE64",
                          "data": base64.b64encode(buf.getvalue()).decode()},
        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT", "encoding": "JSON",
                           "data": json.dumps({"predicted_class": "nv", "probabilities": {"nv": 1.0}, **answer})}},
        "eventMetadata": {"eventId": f"e{i}", "inferenceId": f"i{i}", "inferenceTime": "2026-01-01T00:00:00Z"},
        "eventVersion": "0"})


def test_flagged_share_reads_the_captured_answers():
    answers = [{"ood_score": 3.0, "in_distribution": True}] * 3 + [{"ood_score": 40.0, "in_distribution": False}] \
        + [{"ood_score": None, "in_distribution": None}, {}]  # no statistics; a package from before
    rows = validate_rows(parse_lines([capture_line(i, a) for i, a in enumerate(answers)], image_size=16).rows)
    assert rows["ood_score"].tolist()[:4] == [3.0, 3.0, 3.0, 40.0] and rows["ood_score"].isna().sum() == 2
    assert flagged_share(rows) == {"assessed": 4, "flagged": 1, "share": 0.25}
    assert flagged_share(rows.drop(columns=["in_distribution"]))["share"] is None  # parts from before
