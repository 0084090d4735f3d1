"""Parsing data-capture JSONL written in the endpoint's real format."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
from PIL import Image

from ml_code.monitoring.capture import (
    model_view,
    parse_capture_bytes,
    parse_lines,
    validate_rows,
)
from ml_code.monitoring.features import batch_features
from ml_code.serving.serve import capture_record
from tests.support.monitoring_synth import lesion_images


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # lossless, so features can be compared exactly
    return buf.getvalue()


def _record(i: int, body: bytes, response: dict | str) -> str:
    text = response if isinstance(response, str) else json.dumps(response)
    return json.dumps(capture_record(body=body, content_type="image/png", response_text=text,
                                     event_id=f"ev-{i}", inference_id=f"inf-{i}", inference_time=1.7e9 + i,
                                     package_version=3))


def test_parses_rows_and_features_on_the_model_view() -> None:
    imgs = lesion_images(3, size=40, seed=0)
    wide = np.concatenate([imgs, imgs[:, :, :10]], axis=2)  # 50x40: not square
    lines = [_record(i, _jpeg(img), {"predicted_class": "mel", "probabilities": {"mel": 0.7, "nv": 0.3}})
             for i, img in enumerate(wide)]
    batch = parse_capture_bytes(("\n".join(lines) + "\n").encode(), image_size=16, keep_images=True)
    rows = batch.rows
    assert batch.n_skipped == 0 and len(rows) == 3
    assert rows["inference_id"].tolist() == ["inf-0", "inf-1", "inf-2"]
    assert rows["model_version"].tolist() == [3, 3, 3]
    assert (rows["predicted_class"] == "mel").all()
    assert json.loads(rows["probabilities"][0]) == {"mel": 0.7, "nv": 0.3}
    assert str(rows["inference_time"].dt.tz) == "UTC"
    assert rows["width"].tolist() == [50.0] * 3 and rows["height"].tolist() == [40.0] * 3
    expected = batch_features(np.stack(batch.images))
    np.testing.assert_allclose(rows["brightness"], expected["brightness"], rtol=1e-6)
    assert batch.images[0].shape == (16, 16, 3)


def test_json_requests_keep_only_the_coarse_case_mix() -> None:
    img = _jpeg(lesion_images(1, 20, seed=2)[0])
    answer = {"predicted_class": "nv", "probabilities": {"nv": 1.0}}

    def request(**context) -> bytes:
        return json.dumps({"image": base64.b64encode(img).decode(), **context}).encode()

    bodies = [request(age=94, sex="female", anatom_site="palms/soles"), request(age=40, sex=None),
              request(anatom_site="upper extremity/hand"), img]
    lines = [json.dumps(capture_record(body=b, content_type="application/json" if b is not img else "image/png",
                                       response_text=json.dumps(answer), event_id=f"ev-{i}",
                                       inference_id=f"inf-{i}", inference_time=1.7e9 + i, package_version=1))
             for i, b in enumerate(bodies)]
    rows = validate_rows(parse_lines(lines, image_size=8).rows)
    assert rows["age"].tolist()[:2] == [90.0, 40.0] and rows["age"].iloc[2:].isna().all()  # 94 -> 90 (HIPAA)
    assert rows["sex"].tolist() == ["female", "unknown", "unknown", "unknown"]
    assert rows["body_region"].tolist() == ["palms_soles", "unknown", "upper_extremity", "unknown"]
    assert not {"anatom_site", "site"} & set(rows.columns)  # the free text sent is not kept


def test_malformed_lines_are_skipped_with_reasons() -> None:
    good = _record(0, _jpeg(lesion_images(1, 20)[0]), {"predicted_class": "nv", "probabilities": {"nv": 1.0}})
    bad_image = json.loads(good)
    bad_image["captureData"]["endpointInput"]["data"] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
    bad_time = json.loads(good)
    bad_time["eventMetadata"]["inferenceTime"] = "yesterday-ish"
    lines = [good, "{not json", "[1, 2]", json.dumps({"eventMetadata": {}}), json.dumps(bad_image),
             json.dumps(bad_time), _record(9, b"x", {"error": "cannot decode"}), _record(8, b"x", "<html>"), ""]
    batch = parse_lines(lines, image_size=8)
    assert len(batch.rows) == 1
    assert dict(batch.skipped) == {
        "invalid_json": 1, "not_an_object": 1, "missing_captureData_or_eventMetadata": 1,
        "undecodable_image": 1, "bad_inferenceTime": 1, "error_response": 1, "malformed_endpointOutput": 1,
    }
    # without image_size the image is not decoded at all (cheap id/prediction parse)
    assert len(parse_lines(lines).rows) == 2


def test_model_view_matches_the_preprocessed_split() -> None:
    """Traffic features are comparable with baseline features only if the model view of a
    captured JPEG equals what the preprocess job stored for the same file."""
    import io

    from ml_code.data.preprocess import (
        decode_square as preprocess_view,  # what the split stores
    )

    img = Image.fromarray(np.concatenate([lesion_images(1, 30, seed=4)[0]] * 2, axis=1))  # 60x30
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    np.testing.assert_array_equal(model_view(buf.getvalue(), 12), preprocess_view(buf.getvalue(), 12))


def _sagemaker_line(data, encoding: str, content_type: str, inference_id: str | None, answer: str,
                    answer_encoding: str = "JSON", answer_type: str = "application/json") -> str:
    """One line exactly as SageMaker data capture writes it (no modelPackageVersion: AWS writes none)."""
    meta = {"eventId": f"ev-{inference_id or 'none'}", "inferenceTime": "2026-11-30T10:00:00Z"}
    if inference_id:
        meta["inferenceId"] = inference_id
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": content_type, "mode": "INPUT", "data": data, "encoding": encoding},
            "endpointOutput": {"observedContentType": answer_type, "mode": "OUTPUT", "data": answer,
                               "encoding": answer_encoding}},
        "eventMetadata": meta, "eventVersion": "0"})


def test_every_encoding_sagemaker_writes_gives_the_same_image_and_context() -> None:
    """C11's kind: a JSON request captured inline (encoding JSON, no inferenceId), the same request
    BASE64-encoded, a bare image whose answer was captured BASE64 as text/html, and a CSV body."""
    image = _jpeg(lesion_images(1, size=40, seed=3)[0])
    request = json.dumps({"image": base64.b64encode(image).decode(), "age": 55, "sex": "female",
                          "anatom_site": "back"})
    answer = json.dumps({"predicted_class": "nv", "probabilities": {"nv": 0.8, "mel": 0.2}})
    lines = [
        _sagemaker_line(request, "JSON", "application/json", None, answer),
        _sagemaker_line(base64.b64encode(request.encode()).decode(), "BASE64", "application/json", "b", answer),
        _sagemaker_line(base64.b64encode(image).decode(), "BASE64", "image/png", None,
                        base64.b64encode(answer.encode()).decode(), "BASE64", "text/html"),
        _sagemaker_line(base64.b64encode(image).decode(), "CSV", "text/csv", "d", answer),
    ]
    batch = parse_lines(lines, image_size=16, keep_images=True, model_version=7)
    assert batch.n_skipped == 0, batch.skipped
    assert len(batch.rows) == 4
    for view in batch.images[1:]:
        np.testing.assert_array_equal(view, batch.images[0])  # one image, whatever the encoding
    assert batch.rows["model_version"].tolist() == [7, 7, 7, 7]  # the version the caller knows
    assert batch.rows["predicted_class"].tolist() == ["nv"] * 4
    assert batch.rows.loc[0, "age"] == batch.rows.loc[1, "age"] == 55  # the context of the JSON request
    assert batch.rows.loc[0, "sex"] == batch.rows.loc[1, "sex"] == "female"


def test_the_real_format_case_lines_parse(tmp_path) -> None:
    """The real-format capture lines of ../shared/cases (C11) when present: every line parses."""
    import pytest

    from dermaops_resources.settings import REPO_ROOT

    case = REPO_ROOT.parent / "shared" / "cases" / "C11-capture-json-encoding" / "capture.jsonl"
    if not case.is_file():
        pytest.skip(f"{case} not present")
    batch = parse_capture_bytes(case.read_bytes(), image_size=32, keep_images=True)
    assert batch.n_skipped == 0, batch.skipped
    assert len(batch.rows) == len([l for l in case.read_text().splitlines() if l.strip()])
    for view in batch.images[1:]:
        np.testing.assert_array_equal(view, batch.images[0])


# -- which package answered a SageMaker line (no version on it) ----------------------------

def _served_line(i: int, when: float, client_id: bool) -> str:
    """A local capture line rewritten the way SageMaker writes it (no version, optional inferenceId)."""
    from tests.support.aws_capture import sagemaker_record

    body = _jpeg(lesion_images(1, 20, seed=i)[0])
    local = capture_record(body=body, content_type="image/png", event_id=f"local-{i}",
                           inference_id=f"client-{i}" if client_id else f"local-{i}", inference_time=when,
                           response_text=json.dumps({"predicted_class": "nv", "probabilities": {"nv": 1.0}}),
                           package_version=99)
    return json.dumps(sagemaker_record(local, event_id=f"sm-{i}"))


def test_one_hours_sagemaker_lines_are_attributed_to_the_package_serving_at_their_time() -> None:
    """v1 created at 10:00; blue/green update to v2 requested 10:20, in service 10:25 (both fleets
    answer in between); update to v3 at 10:40 rolled back at 10:45. All in one hour's file."""
    from ml_code.monitoring.capture import UNKNOWN_VERSION, VersionTimeline

    t0 = 1_767_261_600.0  # 2026-01-01T10:00:00Z
    minute = 60.0
    timeline = VersionTimeline.from_deployments([
        {"version": 2, "endpoint_config": "ep-v2-cfg", "kind": "update", "requested_at": t0 + 20 * minute,
         "finished_at": t0 + 25 * minute, "outcome": "in_service"},  # out of order on purpose
        {"version": 1, "endpoint_config": "ep-v1-cfg", "kind": "create", "requested_at": t0,
         "finished_at": t0 + 4 * minute, "outcome": "in_service"},
        {"version": 3, "endpoint_config": "ep-v3-cfg", "kind": "update", "requested_at": t0 + 40 * minute,
         "finished_at": t0 + 45 * minute, "outcome": "rolled_back"},
    ])
    minutes = [-1, 1, 19, 22, 26, 39, 42, 50]
    lines = [_served_line(i, t0 + m * minute + 0.4, client_id=i % 2 == 0) for i, m in enumerate(minutes)]
    rows = parse_lines(lines, timeline=timeline).rows
    assert rows["model_version"].tolist() == [UNKNOWN_VERSION, 1, 1, UNKNOWN_VERSION, 2, 2, UNKNOWN_VERSION, 2]
    # no inferenceId written: the row's id is SageMaker's eventId, which no client label can name
    assert rows["inference_id"].tolist() == [f"client-{i}" if i % 2 == 0 else f"sm-{i}" for i in range(8)]
    assert [timeline.config_at(pd.Timestamp(t0 + m * minute, unit="s", tz="UTC")) for m in (1, 22, 30, 50)] == \
        ["ep-v1-cfg", "", "ep-v2-cfg", "ep-v2-cfg"]
    # without a record, every unversioned line takes the caller's version; a local line keeps its own
    assert parse_lines(lines, model_version=7).rows["model_version"].tolist() == [7] * 8
    local = _record(0, _jpeg(lesion_images(1, 20, seed=0)[0]), {"predicted_class": "nv", "probabilities": {"nv": 1.0}})
    assert parse_lines([local], timeline=timeline).rows["model_version"].tolist() == [3]


def test_a_deployment_record_entry_without_times_is_a_clear_error() -> None:
    import pytest

    from ml_code.monitoring.capture import VersionTimeline

    with pytest.raises(ValueError, match="entry 0 .*requested_at"):
        VersionTimeline.from_deployments([{"version": 1, "kind": "create", "outcome": "in_service"}])


def _answered(i: int, body: bytes, size: int, features: dict | None = "endpoint") -> str:
    """A capture line whose answer carries ``image_features``: the endpoint's own (package code) by default."""
    from tests.support.monitoring_world import endpoint_features

    answer = {"predicted_class": "mel", "probabilities": {"mel": 0.7, "nv": 0.3},
              "image_features": endpoint_features(body, size) if features == "endpoint" else features}
    return _record(i, body, answer)


def test_features_from_the_answer_equal_those_of_the_fallback_decode() -> None:
    """The same requests captured from today's endpoint (features in the answer: no decode here) and
    from an older package (no features: decoded here) give the very same rows; each row points at its
    line (blank lines count), and ``capture_line_views`` decodes exactly the views ``keep_images`` keeps."""
    from ml_code.monitoring.capture import capture_line_views

    imgs = lesion_images(5, size=40, seed=6)
    bodies = [_jpeg(np.concatenate([img, img[:, :7]], axis=1)) for img in imgs]  # 47x40: cropped and resized
    answer = {"predicted_class": "mel", "probabilities": {"mel": 0.7, "nv": 0.3}}
    new = [_answered(i, b, 16) for i, b in enumerate(bodies)]
    old = [_record(i, b, answer) for i, b in enumerate(bodies)]
    fast = parse_lines([new[0], "", *new[1:]], image_size=16, source="s3://logs/a.jsonl")
    slow = parse_lines([old[0], "", *old[1:]], image_size=16, source="s3://logs/a.jsonl", keep_images=True)
    assert (fast.decoded, slow.decoded, len(fast.rows)) == (0, 5, 5)
    pd.testing.assert_frame_equal(fast.rows, slow.rows, check_exact=True)
    assert fast.rows["capture_line"].tolist() == [0, 2, 3, 4, 5]
    assert (fast.rows["capture_object_uri"] == "s3://logs/a.jsonl").all()
    validate_rows(fast.rows)
    data = ("\n".join([new[0], "", *new[1:]]) + "\n").encode()
    views, ok = capture_line_views(data, [5, 0, 1, 99], 16)
    assert ok.tolist() == [True, True, False, False]  # line 1 is blank, line 99 does not exist
    np.testing.assert_array_equal(views, np.stack([slow.images[4], slow.images[0]]))


def test_answer_features_that_are_incomplete_or_out_of_range_are_not_trusted() -> None:
    """An answer whose ``image_features`` lack a name, hold a non-number, NaN or a negative figure (a
    tampered line, another writer) is decoded here, as if it had none: the row is still right."""
    from tests.support.monitoring_world import endpoint_features

    body = _jpeg(lesion_images(1, size=20, seed=8)[0])
    good = endpoint_features(body, 12)
    bad = [{k: v for k, v in good.items() if k != "entropy"}, {**good, "brightness": float("nan")},
           {**good, "sharpness": -0.1}, {**good, "width": 0.0}, {**good, "contrast": "0.1"}, ["not", "a", "dict"]]
    batch = parse_lines([_answered(i, body, 12, features) for i, features in enumerate(bad)], image_size=12)
    reference = parse_lines([_answered(0, body, 12)], image_size=12).rows
    assert batch.decoded == len(bad) and len(batch.rows) == len(bad)
    for name in ("brightness", "sharpness", "entropy", "width", "contrast"):
        assert batch.rows[name].tolist() == [reference[name].iloc[0]] * len(bad)


def test_objects_parsed_together_give_the_rows_each_gives_alone() -> None:
    """A chunk of capture objects parsed into one frame (``parse_sources``, what the inference log
    reads a backlog with) gives each object's own rows, one after another, each with its object's URI
    and its line number there; ``chunked`` bounds a chunk by lines and by bytes, whole objects only."""
    from ml_code.monitoring.capture import parse_sources
    from ml_code.monitoring.capture_reader import chunked, parse_chunk

    imgs = lesion_images(7, size=24, seed=9)
    lines = [_answered(i, _jpeg(img), 12) for i, img in enumerate(imgs)]
    objects = [("s3://logs/a.jsonl", lines[:3]), ("s3://logs/b.jsonl", ["", *lines[3:5], "not json"]),
               ("s3://logs/c.jsonl", lines[5:])]
    together = parse_sources(objects, image_size=12)
    alone = [parse_lines(obj_lines, image_size=12, source=uri) for uri, obj_lines in objects]
    pd.testing.assert_frame_equal(together.rows, pd.concat([a.rows for a in alone], ignore_index=True),
                                  check_exact=True)
    assert together.rows["capture_line"].tolist() == [0, 1, 2, 1, 2, 0, 1]
    assert together.rows["capture_object_uri"].tolist() == ["s3://logs/a.jsonl"] * 3 + ["s3://logs/b.jsonl"] * 2 \
        + ["s3://logs/c.jsonl"] * 2
    assert together.skipped == {"invalid_json": 1}

    blobs = [(uri, ("\n".join(obj_lines) + "\n").encode()) for uri, obj_lines in objects]
    assert [[uri for uri, _ in chunk] for chunk in chunked(blobs, max_lines=4)] == [
        ["s3://logs/a.jsonl", "s3://logs/b.jsonl"], ["s3://logs/c.jsonl"]]  # 3 + 4 lines reach 4
    assert [len(chunk) for chunk in chunked(blobs, max_bytes=1)] == [1, 1, 1]
    parsed = parse_chunk(blobs, 12, -1)
    pd.testing.assert_frame_equal(parsed.rows, together.rows, check_exact=True)
    assert len(parsed.health) == 7  # every readable line's status and latency
