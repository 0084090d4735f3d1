"""Parse SageMaker data-capture JSONL into rows the monitors can use.

Each captured request carries the base64 image the client sent and the JSON the model
answered. Monitoring needs, per request: when, which ids (to join late ground-truth
labels), which model version, what it predicted, and what the *input* looked like. The
image features are those of the same view the model sees (centre-crop to a square,
Lanczos resize to the model's input size, exactly as ``code/inference.py`` and the
preprocess job do), so they are comparable with the baseline's training-split features;
width/height/aspect ratio are taken from the image as sent. The endpoint computes them on the
view it has decoded anyway and returns them with its answer (``"image_features"``,
``ml_code.package.image_features``), so a line of today's endpoint is parsed without touching its
image; a line without valid ones (a package from before, another writer) has its image decoded
and the features computed here, by the same code. A JSON request's clinical
context (``age``, ``sex``, ``anatom_site``) is kept only as the coarse case mix of
``ml_code.monitoring.casemix`` (age capped at 90, sex, body region), never as the text sent.

Each row points at its capture line (``capture_object_uri``, ``capture_line``) instead of keeping a
copy of the image: whoever needs the model view of a logged request (the labelling queue, embedding
drift for answers without a ``"drift_embedding"``) decodes that line again
(:func:`capture_line_views`), and the patient's image is kept in one place, the capture, which
expires by the bucket's rule. Embedding drift reads today's answers' projected embeddings from the
same lines (:func:`capture_line_embeddings`), without decoding an image or loading the network.

Capture files are written by other processes and can hold anything, so parsing never
raises on bad content: a malformed line is skipped and counted under a named reason.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ml_code.package.drift_embedding import (
    ANSWER_FIELD as EMBEDDING_FIELD, DIMENSIONS as EMBEDDING_DIMENSIONS, valid_answer_embedding,
)

from .casemix import BODY_REGIONS, CASE_MIX_COLUMNS, UNKNOWN, case_mix_frame
from .features import (
    ANSWER_FIELD, GEOMETRY_FEATURES, PIXEL_FEATURES, batch_features, sent_size, valid_answer_features,
)

#: Columns of the parsed capture table (features follow these).
BASE_COLUMNS: tuple[str, ...] = (
    "inference_time", "inference_id", "event_id", "model_version", "status",
    "predicted_class", "probabilities",
)
POINTER_COLUMNS: tuple[str, ...] = ("capture_object_uri", "capture_line")
"""Where a row's request is: the capture object's URI and the 0-based line number in it (``bytes.splitlines``)."""


def model_view(raw: bytes, size: int) -> np.ndarray:
    """What the model is fed: the served handlers' own decode, centre crop and resize.

    Features of traffic are only comparable with baseline features of the preprocessed
    split if both went through the same geometry, so this calls the packaged
    ``ml_code.package.image_policy.decode_square`` rather than a copy of it.
    """
    from ml_code.package.image_policy import decode_square

    return decode_square(raw, size)


@dataclass(frozen=True)
class CapturedRequest:
    """A captured request body, decoded: the image and any clinical context it carried."""

    image: bytes
    size: tuple[int, int]  # (width, height) as sent
    age: Any = None
    sex: Any = None
    site: Any = None


CAPTURE_ENCODINGS: tuple[str, ...] = ("BASE64", "JSON", "CSV")
"""How SageMaker data capture writes a body: BASE64 for binary content types, JSON (inline text)
for the endpoint config's ``JsonContentTypes``, CSV (inline text) for its ``CsvContentTypes``."""


def _body_bytes(data: Any, encoding: str) -> bytes:
    """The request body as the client sent it, whatever encoding the capture line used."""
    enc = (encoding or "BASE64").upper()
    if enc not in CAPTURE_ENCODINGS:
        raise ValueError(f"capture encoding {encoding!r} is not one SageMaker writes ({', '.join(CAPTURE_ENCODINGS)})")
    if enc == "BASE64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise ValueError(f"body is not valid base64: {exc}") from exc
    if isinstance(data, (dict, list)):  # a JSON body some writers embed as an object, not a string
        return json.dumps(data).encode("utf-8")
    if not isinstance(data, str):
        raise ValueError(f"{enc} body is not text")
    return data.encode("utf-8")


def request_image(data: Any, encoding: str = "BASE64") -> tuple[bytes, dict[str, Any]]:
    """(image bytes, clinical context) of a captured request body in any encoding SageMaker
    writes, without looking at the image (see :func:`decode_request`). The context is
    ``{"age", "sex", "site"}`` for a JSON request, else empty. ValueError when the body holds no
    base64 image where one is expected."""
    raw = _body_bytes(data, encoding)
    context: dict[str, Any] = {}
    if raw.lstrip()[:1] == b"{":  # an application/json request: the image is its base64 "image" field
        try:
            request = json.loads(raw)
            raw = base64.b64decode(request["image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"JSON body has no decodable base64 'image': {exc}") from exc
        context = {"age": request.get("age"), "sex": request.get("sex"), "site": request.get("anatom_site")}
    elif (encoding or "").upper() == "CSV":
        try:
            raw = base64.b64decode(raw.strip().split(b",")[0], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"CSV body holds no base64 image: {exc}") from exc
    return raw, context


def decode_request(data: Any, encoding: str = "BASE64", load: bool = True) -> CapturedRequest:
    """Decode a captured request body (an image, or the JSON request with a base64 ``image`` and
    optional ``age``/``sex``/``anatom_site``) from any encoding SageMaker writes: BASE64, JSON or
    CSV (a CSV body is text; one that holds a base64 image is read as such). ValueError if there
    is no decodable image. ``load=False`` reads only the image header (format and size)."""
    raw, context = request_image(data, encoding)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if load:
                img.load()
            return CapturedRequest(raw, img.size, **context)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"body is not a decodable image: {exc}") from exc


def _viewed_request(inp: dict, image_size: int) -> tuple[np.ndarray, CapturedRequest]:
    """(model view, request) of one captured input: the body unwrapped, the image's header parsed and
    its pixels decoded once (``decode_square_with_facts``; opening it three times, for the size as sent,
    the policy's probe and the decode, was a third of the monitor's decode cost). ValueError (the
    policy's ``ImageRefused`` included) or OSError when there is no decodable image."""
    from ml_code.package.image_policy import decode_square_with_facts

    raw, context = request_image(inp.get("data", ""), str(inp.get("encoding", "BASE64")))
    view, facts = decode_square_with_facts(raw, image_size)
    return view, CapturedRequest(raw, sent_size(facts), **context)  # the endpoint's answer_features use the same


def _request_context(inp: dict) -> dict[str, Any]:
    """The clinical context ``{"age", "sex", "site"}`` of a captured input (empty for a bare image),
    without decoding its image: a BASE64 body whose first bytes are not ``{`` is a bare image, so only
    those bytes are decoded (a 100 kB JPEG's base64 costs more than the rest of its line). ValueError
    as :func:`request_image` when the body cannot be unwrapped."""
    data, encoding = inp.get("data", ""), str(inp.get("encoding", "BASE64"))
    if encoding.upper() == "BASE64" and isinstance(data, str) and len(data) > 64:
        try:
            head = base64.b64decode(data[:64], validate=True).lstrip()
        except (binascii.Error, ValueError):
            head = b""
        if head and head[:1] != b"{":
            return {}
    return request_image(data, encoding)[1]


UNKNOWN_VERSION = -1
"""``model_version`` of a row no deployment record can attribute to one package."""
UNSTATED_VERSION = -(2 ** 62)
"""Internal marker while parsing: the line names no version (SageMaker's never do)."""


@dataclass(frozen=True)
class VersionTimeline:
    """Which package version an endpoint variant served when, from its deployment record.

    SageMaker's capture lines name the endpoint and variant (the folder) and the time
    (``eventMetadata.inferenceTime``), never the model, and one hour's folder can hold lines
    of two packages when the endpoint was updated within that hour. Built from the deployment
    record the endpoint deployer keeps (``dermaops_resources.endpoint.record_deployment``):
    one entry per attempt, ``{"version", "endpoint_config", "kind": "create"|"update",
    "requested_at", "finished_at" (epoch seconds), "outcome": "in_service"|"rolled_back"|"failed"|"interrupted"}``.

    Rules (a blue/green update keeps the old fleet answering while the new one takes a canary
    share, so neither version can be claimed for a line inside an update window):

    - before the first deployment: ``UNKNOWN_VERSION``;
    - a *create* serves its version from ``requested_at`` (nothing else could answer);
    - an *update* window ``[requested_at, finished_at)`` is ``UNKNOWN_VERSION``; from
      ``finished_at`` on, the new version if it went in service, else the previous one again;
      an ``interrupted`` update (the deployer stopped watching it) stays unknown until the next entry.
    """

    starts: tuple[float, ...] = ()  # epoch seconds, ascending
    versions: tuple[int, ...] = ()
    configs: tuple[str, ...] = ()  # endpoint config in force from each start ("" inside an update)

    @classmethod
    def from_deployments(cls, deployments: Iterable[dict[str, Any]]) -> VersionTimeline:
        """ValueError naming the entry when one lacks a field or has times out of order."""
        starts: list[float] = []
        versions: list[int] = []
        configs: list[str] = []
        serving, serving_config = UNKNOWN_VERSION, ""
        ordered = sorted(deployments, key=lambda d: float(d.get("requested_at", 0.0)))
        for i, entry in enumerate(ordered):
            try:
                version, requested, finished = int(entry["version"]), float(entry["requested_at"]), \
                    float(entry["finished_at"])
                kind, outcome, config = str(entry["kind"]), str(entry["outcome"]), str(entry.get("endpoint_config", ""))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"deployment record entry {i} ({entry!r}) lacks or garbles {exc}; expected "
                                 "version, kind, requested_at, finished_at, outcome") from exc
            if finished < requested:
                raise ValueError(f"deployment record entry {i} (v{version}) finished before it was requested")
            went_live = outcome == "in_service"
            if kind == "create":
                if went_live:  # from the start of its second: SageMaker's inferenceTime has whole seconds,
                    # and before a create nothing answers under this endpoint name
                    starts.append(math.floor(requested)), versions.append(version), configs.append(config)
                    serving, serving_config = version, config
                continue
            starts.append(requested), versions.append(UNKNOWN_VERSION), configs.append("")
            if outcome == "interrupted":  # the deployer lost track mid-update: unknown until the next entry
                serving, serving_config = UNKNOWN_VERSION, ""
                continue
            if went_live:
                serving, serving_config = version, config
            starts.append(finished), versions.append(serving), configs.append(serving_config)
        return cls(tuple(starts), tuple(versions), tuple(configs))

    def _index(self, times: Any) -> np.ndarray:
        series = pd.Series(times)
        if pd.api.types.is_numeric_dtype(series):  # epoch seconds, as the record keeps them
            seconds = series.to_numpy(dtype=float)
        else:
            stamps = pd.to_datetime(series, utc=True)
            seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
        return np.searchsorted(np.asarray(self.starts, dtype=float), seconds, side="right") - 1

    def versions_at(self, times: Any) -> np.ndarray:
        """int64 version per time (epoch seconds, UTC timestamps or ISO strings); ``UNKNOWN_VERSION`` where
        unattributable."""
        idx = self._index(times)
        table = np.asarray((*self.versions, UNKNOWN_VERSION), dtype="int64")  # idx -1 -> the sentinel
        return table[np.where(idx >= 0, idx, len(self.versions))]

    def config_at(self, when: Any) -> str:
        """The endpoint config in force at ``when`` ("" before the first deployment or inside an update)."""
        (idx,) = self._index([when])
        return self.configs[idx] if idx >= 0 else ""


@dataclass
class CaptureBatch:
    """Parsed rows plus what was skipped and why (reason -> count)."""

    rows: pd.DataFrame
    skipped: Counter = field(default_factory=Counter)
    # model views, aligned with rows (when kept): one (N, size, size, 3) uint8 array, indexable per row
    images: list[np.ndarray] | np.ndarray = field(default_factory=list)
    decoded: int = 0  # rows whose image was decoded here (no valid features in the answer)

    @property
    def n_skipped(self) -> int:
        return int(sum(self.skipped.values()))


def _parse_output(out: dict[str, Any]) -> tuple[str, str | None, dict[str, float] | None, float, float,
                                                 dict[str, float] | None]:
    """(status, predicted class, probabilities, ood_score, in_distribution, image features) from
    endpointOutput; the OOD fields are NaN when the answer has none (a package without OOD
    statistics, or older), ``in_distribution`` 1.0/0.0 otherwise; the image features are the
    answer's ``"image_features"`` when they are complete and valid
    (``ml_code.package.image_features.valid_answer_features``), else None."""
    payload = _answer(out)
    if "predicted_class" not in payload:
        return "error", None, None, np.nan, np.nan, None
    probs = payload.get("probabilities") or {}
    score, flag = payload.get("ood_score"), payload.get("in_distribution")
    return ("ok", str(payload["predicted_class"]), {str(k): float(v) for k, v in probs.items()},
            np.nan if score is None else float(score), np.nan if flag is None else float(bool(flag)),
            valid_answer_features(payload.get(ANSWER_FIELD)))


def _answer(out: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's JSON answer (its first object when it is a list) in endpointOutput, decoded
    from JSON or BASE64; ValueError (a JSONDecodeError, binascii.Error) when it is not one."""
    text = out.get("data")
    enc = str(out.get("encoding", "JSON")).upper()
    if enc == "BASE64" and isinstance(text, str):
        text = base64.b64decode(text).decode("utf-8", "replace")
    payload = json.loads(text) if isinstance(text, str) else text
    if isinstance(payload, list):
        payload = payload[0] if payload else {}
    if not isinstance(payload, dict):
        raise ValueError("output is not a JSON object")
    return payload


def inference_time(value: Any) -> datetime | pd.Timestamp:
    """``eventMetadata.inferenceTime`` as a UTC time (aware ``datetime``, or ``pd.Timestamp``), NaT when
    it is not a time.

    The writers' own shape (``2024-05-01T12:00:00[.ffffff]Z``, ISO 8601 in UTC) is read by
    ``datetime.fromisoformat`` (microseconds, like the text) and left a ``datetime``: the column is
    converted once, by ``pd.to_datetime``, which is cheaper than a ``pd.Timestamp`` per line. Anything
    else goes through ``pd.to_datetime`` as before, whose per-call format guessing costs about 0.5 ms
    a line."""
    if isinstance(value, str) and len(value) in (20, 24, 27) and value[10:11] == "T" and value.endswith("Z"):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return pd.to_datetime(value, utc=True, errors="coerce")


def _envelope(line: str, metas: list[dict] | None = None
              ) -> tuple[dict, dict, dict, datetime | pd.Timestamp] | str:
    """(endpointInput, endpointOutput, eventMetadata, inference time) of one capture line, or
    the reason it cannot be read (the skip counter's key). ``metas`` receives the line's
    eventMetadata whenever it is an object, readable envelope or not (for ``health_from_metadata``)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return "invalid_json"
    if not isinstance(rec, dict):
        return "not_an_object"
    cap, meta = rec.get("captureData"), rec.get("eventMetadata")
    if metas is not None and isinstance(meta, dict):
        metas.append(meta)
    if not isinstance(cap, dict) or not isinstance(meta, dict):
        return "missing_captureData_or_eventMetadata"
    inp, out = cap.get("endpointInput"), cap.get("endpointOutput")
    if not isinstance(inp, dict) or not isinstance(out, dict):
        return "missing_endpointInput_or_endpointOutput"
    when = inference_time(meta.get("inferenceTime"))
    if pd.isna(when):
        return "bad_inferenceTime"
    return inp, out, meta, when


def _numbered_envelopes(lines: Iterable[str | bytes], skipped: Counter | None, metas: list[dict] | None = None
                        ) -> Iterator[tuple[int, tuple[dict, dict, dict, datetime | pd.Timestamp]]]:
    """(0-based line number, envelope) of each readable line; see :func:`capture_envelopes` (and
    :func:`_envelope` for ``metas``)."""
    for number, raw in enumerate(lines):
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        envelope = _envelope(line, metas)
        if isinstance(envelope, str):
            if skipped is not None:
                skipped[envelope] += 1
            continue
        yield number, envelope


def capture_envelopes(lines: Iterable[str | bytes], skipped: Counter | None = None
                      ) -> Iterator[tuple[dict, dict, dict, datetime | pd.Timestamp]]:
    """(endpointInput, endpointOutput, eventMetadata, inference time) of each readable capture
    line; blank lines are passed over, unreadable ones counted in ``skipped`` by reason."""
    for _number, envelope in _numbered_envelopes(lines, skipped):
        yield envelope


def parse_lines(lines: Iterable[str | bytes], image_size: int | None = None,
                keep_images: bool = False, model_version: int = -1,
                timeline: VersionTimeline | None = None, source: str = "",
                metadata: list[dict] | None = None) -> CaptureBatch:
    """Parse capture lines into rows; malformed lines are skipped and counted by reason.
    The lines of one capture object; :func:`parse_sources` reads several into one batch.

    ``image_size``: the model's input size. When given, each row gets the image features of the
    request's model view (see :func:`model_view`): from the answer's ``"image_features"`` when they
    are there and valid (today's endpoint computes them on the view it fed the network), else by
    decoding the request's image here (older packages, other writers; ``CaptureBatch.decoded``
    counts those). ``keep_images`` decodes every request and keeps its view (``CaptureBatch.images``,
    aligned with the rows). When None, only the ids and predictions are parsed (cheap, for joins
    with labels). Which package answered a
    line: the local endpoint writes ``eventMetadata.modelPackageVersion``; SageMaker writes
    no version, so a line without one takes the version ``timeline`` (the endpoint variant's
    deployment record, :class:`VersionTimeline`) says served at its ``inferenceTime``, or
    ``model_version`` when no timeline is given. ``-1``: unknown (outside every deployment, or
    inside a blue/green update when both fleets answered).
    ``source``: the URI of the capture object the lines come from, kept with each row's line number
    (:data:`POINTER_COLUMNS`) so its image can be decoded again later (:func:`capture_line_views`).
    ``metadata``, when given, receives every line's eventMetadata object (``health_from_metadata``).
    """
    return parse_sources([(source, lines)], image_size=image_size, keep_images=keep_images,
                         model_version=model_version, timeline=timeline, metadata=metadata)


def parse_sources(sources: Iterable[tuple[str, Iterable[str | bytes]]], image_size: int | None = None,
                  keep_images: bool = False, model_version: int = -1,
                  timeline: VersionTimeline | None = None, metadata: list[dict] | None = None) -> CaptureBatch:
    """:func:`parse_lines` of several capture objects, ``(source URI, lines)`` each, in the order given,
    into one batch: the rows are those of each object's own ``parse_lines``, one after another (each
    row keeps its object's URI and its line number in that object).

    Why: building the frame and its columns costs much the same however few rows it holds, and the
    local endpoint writes a capture object per 100 requests; one frame for a few thousand lines is
    most of why the inference log's first read of a 100,000-request backlog went from 26.5 s to
    14.5 s on a slow 2-core machine (benchmarks/monitoring_volume.py)."""
    skipped: Counter = Counter()
    base = ("inference_time", "inference_id", "event_id", "model_version", "predicted_class", "probabilities",
            "ood_score", "in_distribution", "capture_object_uri", "capture_line")
    cols: dict[str, list[Any]] = {name: [] for name in base}  # one list per column: one frame built at the end
    answered: list[dict[str, float]] = []  # per row: the answer's features, or the geometry alone where decoded here
    views: list[np.ndarray] = []  # of the rows decoded here, in row order
    contexts: list[dict[str, Any]] = []
    columns = [cols[name] for name in base]
    for source, lines in sources:
        for number, (inp, out, meta, when) in _numbered_envelopes(lines, skipped, metadata):
            try:
                status, predicted, probs, ood_score, in_distribution, feats = _parse_output(out)
            except (ValueError, TypeError, binascii.Error):
                skipped["malformed_endpointOutput"] += 1
                continue
            if status != "ok":
                skipped["error_response"] += 1
                continue
            if image_size is not None:
                try:
                    if feats is not None and not keep_images:
                        contexts.append(_request_context(inp))
                    else:
                        view, request = _viewed_request(inp, image_size)
                        views.append(view)
                        feats = {"width": float(request.size[0]), "height": float(request.size[1])}
                        contexts.append({"age": request.age, "sex": request.sex, "site": request.site})
                except (ValueError, OSError, Image.DecompressionBombError):
                    skipped["undecodable_image"] += 1
                    continue
                answered.append(feats)
            version = meta.get("modelPackageVersion")
            event_id = meta.get("eventId")
            row = (when, str(meta.get("inferenceId") or event_id or ""), str(event_id or ""),
                   int(version) if isinstance(version, (int, float, str)) and str(version).lstrip("-").isdigit()
                   else UNSTATED_VERSION,
                   predicted, json.dumps(probs, sort_keys=True), ood_score, in_distribution, source, number)
            for column, value in zip(columns, row):  # the order of ``base``
                column.append(value)
    n = len(cols["inference_id"])
    times = pd.to_datetime(pd.Series(cols["inference_time"], dtype=object), utc=True)
    versions = np.asarray(cols["model_version"], dtype="int64")
    unstated = versions == UNSTATED_VERSION
    if unstated.any():  # SageMaker's lines: the deployment record says who answered at that time
        versions[unstated] = timeline.versions_at(times[unstated]) if timeline is not None else model_version
    data: dict[str, Any] = {
        "inference_time": times.to_numpy() if n else times, "inference_id": cols["inference_id"],
        "event_id": cols["event_id"], "model_version": versions, "status": ["ok"] * n,
        "predicted_class": cols["predicted_class"], "probabilities": cols["probabilities"],
        "ood_score": np.asarray(cols["ood_score"], dtype=float),
        "in_distribution": np.asarray(cols["in_distribution"], dtype=float),
        "capture_object_uri": cols["capture_object_uri"],
        "capture_line": np.asarray(cols["capture_line"], dtype="int64"),
    }
    if image_size is None:
        return CaptureBatch(rows=_frame(data, n), skipped=skipped)
    stacked, decoded = _add_feature_columns(data, answered, views, contexts, image_size)
    return CaptureBatch(rows=_frame(data, n), skipped=skipped, images=stacked if keep_images else [],
                        decoded=decoded)


def _add_feature_columns(data: dict[str, Any], answered: list[dict[str, float]], views: list[np.ndarray],
                         contexts: list[dict[str, Any]], image_size: int) -> tuple[np.ndarray, int]:
    """Put the image features, geometry and case mix of the rows into ``data``: pixel features from the
    answers, or (rows whose ``answered`` holds the geometry alone) computed from ``views``, the model
    views decoded here in row order. Returns (those views stacked, how many rows they are)."""
    # the views decoded here are all (image_size, image_size, 3): one stack, features of the batch at once
    stacked = np.stack(views) if views else np.zeros((0, image_size, image_size, 3), np.uint8)
    decoded = np.array([len(f) == 2 for f in answered], dtype=bool)
    computed = batch_features(stacked) if views else None
    for name in PIXEL_FEATURES:
        column = np.array([f.get(name, np.nan) for f in answered], dtype=float)
        if computed is not None:
            column[decoded] = computed[name].to_numpy(dtype=float)
        data[name] = column
    width = np.array([f["width"] for f in answered], dtype=float)
    height = np.array([f["height"] for f in answered], dtype=float)
    data["width"], data["height"] = width, height
    data["aspect_ratio"] = width / np.where(height > 0, height, np.nan)
    assert set(GEOMETRY_FEATURES) <= set(data)
    mix = case_mix_frame([c.get("age") for c in contexts], [c.get("sex") for c in contexts],
                         [c.get("site") for c in contexts])
    for name in CASE_MIX_COLUMNS:
        data[name] = mix[name].to_numpy()
    return stacked, int(decoded.sum())


def _frame(data: dict[str, Any], n: int) -> pd.DataFrame:
    """The parsed rows as one frame, built at once (column by column insertion was a fifth of parsing)."""
    rows = pd.DataFrame(data, index=pd.RangeIndex(n))
    if not n:  # no rows: keep the column types the schema expects
        rows["inference_time"] = pd.to_datetime(rows["inference_time"], utc=True)
    return rows


def parse_capture_bytes(data: bytes, image_size: int | None = None, keep_images: bool = False,
                        model_version: int = -1, timeline: VersionTimeline | None = None) -> CaptureBatch:
    """Parse one capture file's bytes (JSONL); see :func:`parse_lines`."""
    return parse_lines(data.splitlines(), image_size=image_size, keep_images=keep_images, model_version=model_version,
                       timeline=timeline)


@lru_cache(maxsize=1)
def capture_schema():
    """Pandera schema of the inference log (parsed capture rows with image features).

    Built lazily so importing this module stays cheap for the endpoint and the simulator, and once
    (half of validating a 2,048-row part was building it).
    """
    import pandera.pandas as pa

    def utc(series: pd.Series) -> bool:
        return isinstance(series.dtype, pd.DatetimeTZDtype) and str(series.dtype.tz) == "UTC"

    non_negative = pa.Check.ge(0.0)
    columns: dict[str, pa.Column] = {
        "inference_time": pa.Column(checks=pa.Check(utc, error="inference_time must be tz-aware UTC")),
        "inference_id": pa.Column(str, checks=pa.Check.str_length(min_value=1)),
        "event_id": pa.Column(str),
        "model_version": pa.Column("int64"),
        "status": pa.Column(str, checks=pa.Check.isin(["ok"])),
        "predicted_class": pa.Column(str),
        "probabilities": pa.Column(str),
    }
    for name in PIXEL_FEATURES:
        columns[name] = pa.Column(float, checks=non_negative)
    for name in GEOMETRY_FEATURES:
        columns[name] = pa.Column(float, checks=pa.Check.gt(0.0), nullable=True)
    # The answer's OOD fields (NaN: not assessed); optional, since older parts lack them.
    columns["ood_score"] = pa.Column(float, nullable=True, required=False)
    columns["in_distribution"] = pa.Column(float, checks=pa.Check.isin([0.0, 1.0]), nullable=True, required=False)
    # The case mix (ml_code.monitoring.casemix); optional, since parts written before it lack the columns.
    columns["age"] = pa.Column(float, checks=pa.Check.in_range(0.0, 90.0), nullable=True, required=False)
    columns["sex"] = pa.Column(str, checks=pa.Check.isin(["male", "female", UNKNOWN]), required=False)
    columns["body_region"] = pa.Column(str, checks=pa.Check.isin([*BODY_REGIONS, UNKNOWN]), required=False)
    # Where each row's request is (POINTER_COLUMNS); optional, since parts written before them lack the columns.
    columns["capture_object_uri"] = pa.Column(str, required=False)
    columns["capture_line"] = pa.Column("int64", checks=pa.Check.ge(0), required=False)
    return pa.DataFrameSchema(columns, strict=False, coerce=True,
                              unique=["inference_id"], report_duplicates="exclude_first")


def validate_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Validate parsed rows against :func:`capture_schema` (raises pandera SchemaErrors, lazily)."""
    return capture_schema().validate(rows, lazy=True)


# -- inference-log parts ------------------------------------------------------------------

def rows_to_parquet_bytes(rows: pd.DataFrame) -> bytes:
    """Validated capture rows as the bytes of one inference-log part (``parts/<seq>.parquet``).

    Parquet keeps the dtypes ``validate_rows`` established (tz-aware UTC times, int64
    versions, float features), so the monitors read back exactly what was validated, and
    lets them read only the columns they need."""
    buf = io.BytesIO()
    rows.to_parquet(buf, index=False)
    return buf.getvalue()


def _numbered_capture_lines(data: bytes, numbers: Sequence[int]
                            ) -> Iterator[tuple[int, tuple[dict, dict, dict, datetime | pd.Timestamp]]]:
    """(position in ``numbers``, envelope) of each of the lines ``numbers`` (0-based,
    ``bytes.splitlines``, as ``parse_lines`` numbered them) of one capture file's bytes that is
    there and readable (the file is someone else's: anything else is passed over, never an error)."""
    lines = data.splitlines()
    for i, number in enumerate(numbers):
        if not 0 <= int(number) < len(lines):
            continue
        envelope = _envelope(lines[int(number)].decode("utf-8", "replace"))
        if not isinstance(envelope, str):
            yield i, envelope


def capture_line_views(data: bytes, numbers: Sequence[int], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(views ``(K, S, S, 3)`` uint8, ok ``(len(numbers),)`` bool): the model views of the requests on
    lines ``numbers`` (0-based, ``bytes.splitlines``, as ``parse_lines`` numbered them) of one
    capture file's bytes, decoded by the same path as the log's fallback (:func:`_viewed_request`,
    i.e. ``decode_square``), at ``image_size`` px. ``views`` holds the decodable ones in the order
    given; ``ok`` says which those are (a line that is gone, unreadable or holds no decodable image
    is False, never an error: the file is someone else's)."""
    views: list[np.ndarray] = []
    ok = np.zeros(len(numbers), dtype=bool)
    for i, envelope in _numbered_capture_lines(data, numbers):
        try:
            view, _request = _viewed_request(envelope[0], image_size)
        except (ValueError, OSError, Image.DecompressionBombError):
            continue
        views.append(view)
        ok[i] = True
    return (np.stack(views) if views else np.zeros((0, image_size, image_size, 3), np.uint8)), ok


def capture_line_embeddings(data: bytes, numbers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings ``(K, DIMENSIONS)`` float32, ok ``(len(numbers),)`` bool): the projected
    penultimate embeddings the endpoint returned (``"drift_embedding"``,
    ``ml_code.package.drift_embedding``) for the requests on lines ``numbers`` of one capture file's
    bytes, as :func:`capture_line_views` numbers them; ``ok`` says which answers held a valid one
    (an answer from a package before the field, another projection, or a damaged line is False).
    No image is decoded."""
    found: list[np.ndarray] = []
    ok = np.zeros(len(numbers), dtype=bool)
    for i, envelope in _numbered_capture_lines(data, numbers):
        try:
            embedding = valid_answer_embedding(_answer(envelope[1]).get(EMBEDDING_FIELD))
        except (ValueError, TypeError, binascii.Error):
            continue
        if embedding is not None:
            found.append(embedding)
            ok[i] = True
    return (np.stack(found) if found else np.zeros((0, EMBEDDING_DIMENSIONS), np.float32)), ok
