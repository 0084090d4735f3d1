"""Evaluate the architecture document's alarms (``ALARMS``) where no CloudWatch does it.

CloudWatch evaluates alarms itself on AWS; locally nobody would, so the monitoring assets
call :func:`evaluate_alarms` with the values they just published. Notifications go out on
a *change* to ALARM only (like CloudWatch alarm actions), so an hourly monitor does not
page the team every hour about the same drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dermaops_resources.metrics import ALARMS, AlarmSpec, MetricsPublisher, breached
from dermaops_resources.notifier import Notifier


@dataclass(frozen=True)
class AlarmTransition:
    alarm: str
    metric: str
    value: float
    previous: str
    state: str
    notified: bool


def evaluate_alarms(metrics: MetricsPublisher, notifier: Notifier, values: Mapping[str, float],
                    alarms: tuple[AlarmSpec, ...] = ALARMS) -> list[AlarmTransition]:
    """Set each alarm whose metric is in ``values`` to ALARM/OK; notify on entering ALARM.

    Backends that keep alarm state (``set_alarm_state`` returning the previous state, as
    ``LocalMetricsStore`` does) get change-only notifications; others are notified on every
    breach, which is the safe side. ``set_alarm_state`` is an atomic check-and-set, so only
    the caller that performed the OK -> ALARM transition sees a non-ALARM ``previous`` and
    pages: two monitors evaluating the same breach at once send one notification.
    """
    set_state = getattr(metrics, "set_alarm_state", None)
    if set_state is not None:
        metrics.ensure_alarms()
    out: list[AlarmTransition] = []
    for spec in alarms:
        if spec.metric not in values:
            continue
        value = float(values[spec.metric])
        state = "ALARM" if breached(spec, value) else "OK"
        previous = set_state(spec.name, state) if set_state is not None else "UNKNOWN"
        notify = state == "ALARM" and previous != "ALARM"
        if notify:
            notifier.notify(
                f"DermaOps alarm {spec.name}: {spec.description}",
                f"{spec.metric} = {value:g} (threshold {spec.comparison} {spec.threshold:g}); "
                f"state {previous} -> ALARM.",
                severity=spec.severity,  # type: ignore[arg-type]
                attributes={"alarm": spec.name, "metric": spec.metric, "value": f"{value:g}"},
            )
        out.append(AlarmTransition(spec.name, spec.metric, value, previous, state, notify))
    return out
