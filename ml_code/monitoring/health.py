"""Endpoint health from data capture: the per-request status and latency behind two alarms.

On AWS, SageMaker publishes ``Invocation5XXErrors`` and ``ModelLatency`` itself and CloudWatch
evaluates the alarms. The local endpoint has no CloudWatch, so it writes each request's HTTP
status and latency into its capture line (``eventMetadata.dermaopsStatus`` and
``dermaopsLatencyMs``), and the monitoring job computes the same two figures from them:

- ``EndpointErrors``: server errors (5xx) in the last hour, the architecture document's
  "endpoint errors > 10/hour" (critical);
- ``EndpointLatencyMs``: the worst 5-minute p95 latency in the last hour, its
  "latency P95 > 1000 ms" (warning), evaluated over the periods an hourly monitor has seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .capture import inference_time

STATUS_KEY = "dermaopsStatus"
LATENCY_KEY = "dermaopsLatencyMs"
ERROR_WINDOW_SECONDS = 3600.0
LATENCY_PERIOD_SECONDS = 300.0
HEALTH_COLUMNS = ("time", "status", "latency_ms")


def health_events(lines: Iterable[str | bytes]) -> pd.DataFrame:
    """``time`` (epoch seconds), ``status`` (HTTP), ``latency_ms`` of every capture line that
    carries them, rejected requests included (they are not rows of the inference log)."""
    metas: list[dict] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        try:
            meta = json.loads(line).get("eventMetadata")
        except (ValueError, AttributeError):
            continue
        if isinstance(meta, dict):
            metas.append(meta)
    return health_from_metadata(metas)


def health_from_metadata(metas: Iterable[dict]) -> pd.DataFrame:
    """:func:`health_events` of lines already parsed: their ``eventMetadata`` objects (the inference
    log's parser hands them over, so a line is not parsed twice)."""
    out: list[tuple[float, int, float]] = []
    for meta in metas:
        try:
            status, latency = int(meta[STATUS_KEY]), float(meta[LATENCY_KEY])
            when = inference_time(meta["inferenceTime"]).timestamp()  # NaT: ValueError
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        out.append((when, status, latency))
    return pd.DataFrame(out, columns=list(HEALTH_COLUMNS))


def window_figures(events: pd.DataFrame, now: float) -> dict[str, float]:
    """The two alarm figures over the hour before ``now`` (epoch seconds); the latency figure is
    absent when no request was served in that hour (no data is not a breach)."""
    recent = events[(events["time"] > now - ERROR_WINDOW_SECONDS) & (events["time"] <= now)]
    figures = {"EndpointErrors": float((recent["status"] >= 500).sum())}
    if len(recent):
        period = np.floor((recent["time"].to_numpy() - (now - ERROR_WINDOW_SECONDS)) / LATENCY_PERIOD_SECONDS)
        p95 = pd.Series(recent["latency_ms"].to_numpy()).groupby(period).quantile(0.95)
        figures["EndpointLatencyMs"] = float(p95.max())
    return figures


def keep_recent(events: Sequence[Sequence[float]] | pd.DataFrame, now: float,
                max_events: int = 50_000) -> list[list[float]]:
    """The events of the last hour as plain lists (what the monitoring cursor keeps between runs)."""
    frame = events if isinstance(events, pd.DataFrame) else pd.DataFrame(list(events), columns=list(HEALTH_COLUMNS))
    frame = frame[frame["time"] > now - ERROR_WINDOW_SECONDS].sort_values("time").tail(max_events)
    return [[float(t), int(s), float(ms)] for t, s, ms in frame.itertuples(index=False)]
