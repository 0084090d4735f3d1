"""Sensors: the EventBridge rules and Lambda triggers of the architecture document.

- ``raw_landing_sensor``: a batch landed in the landing location (a folder per batch, in
  either public layout) is complete -> ``retrain_job`` (reason ``new-data``), whose
  ``raw_images`` ingests the dataset plus every landed batch. Completeness never trusts file
  modification times (``cp -p``, ``rsync -a`` and unzip preserve old ones, so a batch looked
  finished mid-copy): a batch is complete at once when its uploader wrote a marker
  (``_SUCCESS`` or ``manifest.json`` at the top of the batch folder), else when no object in
  it (key, size, ETag / local change fingerprint) changed across the sensor's own
  observations spanning ``DERMAOPS_LANDING_QUIET_SECONDS``. A batch is known by a salted hash
  of its folder name (folder names may name a patient; they never reach run keys, tags, the
  cursor or skip messages), so a batch that sorts before others is seen when it arrives, and
  a completed batch whose content changes (a corrected metadata file under the same key, a
  late file) is a new landing. State: see ``LANDING_STATE_PREFIX``.
- ``drift_sensor`` / ``model_quality_sensor``: the latest drift / quality report's metadata
  -> ``retrain_job`` tagged with the reason.
- ``approval_sensor``: the newest Approved model package changed (an approval, or a rollback
  after the served one was rejected) -> ``deploy_job``.

Every retraining request carries ``dermaops/retrain_reason`` and is skipped while a
retrain run is already queued or running; the report-driven ones also wait
``DERMAOPS_RETRAIN_COOLDOWN_HOURS`` (the ``settings`` resource) after the last retraining started.
"""


import hashlib
import json
import time

import dagster as dg

from dermaops_services.ingestion import pseudonym_salt
from dermaops_resources.object_store import LandedFile, ObjectStore, landing_files, landing_folders
from dermaops_services.raw_source import LANDING_STATE_PREFIX, batch_ref
from dermaops_resources.registry import ModelRegistry
from dermaops_resources.settings import Settings

from .jobs import NOTHING_NEW, RETRAIN_OUTCOME_TAG, RETRAIN_JOB, RETRAIN_REASON_TAG, deploy_job, retrain_job

IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]
DRIFT_SCORE_THRESHOLD = 0.5  # drift_verdict scores >= 0.5 exactly when drift is detected
ACCURACY_DROP_POINTS = 5.0


def retrain_in_progress(instance: dg.DagsterInstance) -> bool:
    """True when a retrain_job run is queued, starting or running."""
    return bool(instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB, statuses=IN_PROGRESS), limit=1))


def hours_since_last_retrain(instance: dg.DagsterInstance) -> float | None:
    """Hours since the newest retrain_job run (any trigger, any outcome) was created; None if none."""
    records = instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB), limit=1)
    if not records:
        return None
    return (time.time() - records[0].create_timestamp.timestamp()) / 3600.0


def retrain_blocked(instance: dg.DagsterInstance, what: str, cooldown_hours: float) -> str | None:
    """Why a report-driven retrain must not start now (one in flight, or within the cooldown), or None.

    The cooldown (``Settings.retrain_cooldown_hours``) exists because drift or a quality drop that
    persists (the new package may still await approval) is reported every hour, and each report
    would otherwise start another full retraining on the same data."""
    if retrain_in_progress(instance):
        return f"{what}, but a retrain_job run is already queued or running."
    last = instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB), limit=1)
    if last and last[0].dagster_run.tags.get(RETRAIN_OUTCOME_TAG) == NOTHING_NEW:
        return (f"{what}, but the last retraining found nothing new to learn, and retraining on the same data "
                "gives the same model; new data (a landed batch or labelled captures) starts a retrain itself.")
    since = hours_since_last_retrain(instance)
    if since is not None and since < cooldown_hours:
        return (f"{what}, but the last retraining started {since:.1f} h ago (cooldown {cooldown_hours:g} h, "
                "DERMAOPS_RETRAIN_COOLDOWN_HOURS); if it persists, a report after the cooldown retrains.")
    return None


# LANDING_STATE_PREFIX (raw_source): the landing sensor's state lives in the store, one small
# immutable object per state change; the cursor holds only its sequence number (and the
# verification position). That keeps the state out of Dagster's tick history and small whatever
# the bucket holds, and a tick that fails after writing ``seq + 1`` leaves the committed cursor
# on ``seq``, so an observation is never half-applied. The last few states are kept.
LANDING_VERIFY_FILES = 2000
"""Files of already-requested batches re-listed per tick, in rotation, to notice late files and
objects rewritten under a known key: a change in an old batch is seen within (files landed /
this) ticks, and a tick's cost stays bounded on a big bucket (benchmarks/landing_sensor_tick.py)."""
LANDING_MARKERS = ("_SUCCESS", "manifest.json")
"""Completion markers an uploader may write last, at the top of the batch folder."""
_STATES_KEPT = 3


def _digest(files: list[LandedFile]) -> str:
    """A batch's content fingerprint: every key with its size and change fingerprint."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.key}\x00{f.size}\x00{f.version}\n".encode())
    return h.hexdigest()[:16]


def _load_landing_state(store: ObjectStore, seq: int, log) -> dict:
    empty = {"pending": {}, "done": {}}
    if not seq:
        return empty
    state = store.get_json_or(store.uri("logs", f"{LANDING_STATE_PREFIX}/{seq:012d}.json"), None)
    if state is None:
        log(f"landing sensor state {seq} is missing from the logs bucket; starting over: every batch present "
            "is observed again and requested once complete")
        return empty
    return state


def _save_landing_state(store: ObjectStore, seq: int, state: dict) -> None:
    store.put_bytes("logs", f"{LANDING_STATE_PREFIX}/{seq:012d}.json",
                    json.dumps(state, separators=(",", ":"), sort_keys=True).encode())
    if seq > _STATES_KEPT:
        store.delete(store.uri("logs", f"{LANDING_STATE_PREFIX}/{seq - _STATES_KEPT:012d}.json"))


def _legacy_lead(store: ObjectStore, landing_uri: str) -> str:
    """The key prefix an older ``last_key`` cursor carried before the landing-relative key."""
    if landing_uri.startswith("s3://"):
        return landing_uri[5:].partition("/")[2].rstrip("/") + "/"
    try:
        return store.split_uri(landing_uri)[1] + "/"
    except ValueError:
        return ""


def landing_tick(context: dg.SensorEvaluationContext, store: ObjectStore, landing_uri: str,
                 quiet_seconds: float | None = None, max_files: int | None = None,
                 verify_files: int | None = None, now: float | None = None,
                 salt: str | None = None) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of the landing sensor (separate from the decorator so it is testable).

    Per tick: one listing of the batch folders; a full listing of every pending batch; new
    batches up to ``max_files`` files; then completed batches, in rotation, up to
    ``verify_files`` more files, to notice late files and objects rewritten under a known key.
    The cost is therefore bounded by those budgets, not by the bucket's size."""
    settings = None
    if None in (quiet_seconds, max_files, salt):
        settings = Settings.from_env()
    quiet_seconds = settings.landing_quiet_seconds if quiet_seconds is None else quiet_seconds
    max_files = settings.landing_max_batch if max_files is None else max_files
    verify_files = LANDING_VERIFY_FILES if verify_files is None else verify_files
    if salt is None:  # the salt raw_images uses, so batch references agree in tags and in its metadata
        salt = pseudonym_salt(settings.home_path, settings.pseudonym_salt, settings.pseudonym_salt_secret_arn,
                              settings.region)
    now = time.time() if now is None else now

    cursor = json.loads(context.cursor) if context.cursor else {}
    seq = int(cursor.get("seq", 0))
    legacy_key = cursor.get("last_key")  # the older cursor: the newest key requested
    if legacy_key:
        lead = _legacy_lead(store, landing_uri)
        legacy_key = legacy_key[len(lead):] if lead and legacy_key.startswith(lead) else legacy_key
        # The one migration tick lists every batch (as the older sensor's first tick did): a
        # batch deferred now would later look new and be requested again, and the older cursor,
        # which names a file, must not be carried forward.
        max_files = 10**12
    log = context.log.info if getattr(context, "log", None) else (lambda msg: None)
    state = _load_landing_state(store, seq, log)
    if not seq:
        # No cursor (first start, or reset by hand): observe afresh, but number after any state
        # already written, so the newest state stays the highest key (ingestion reads it) and a
        # run key is never reused (Dagster drops a request whose run key it has seen).
        existing = list(store.list(store.uri("logs", LANDING_STATE_PREFIX)))
        seq = max((int(o.key.rsplit("/", 1)[-1].split(".")[0]) for o in existing
                   if o.key.rsplit("/", 1)[-1].split(".")[0].isdigit()), default=0)
    pending: dict[str, list] = state["pending"]
    done: dict[str, str] = state["done"]
    names = {batch_ref(name, salt): name for name in landing_folders(store, landing_uri)}
    changed = False
    for table in (pending, done):
        for ref in [r for r in table if r not in names]:  # the folder is gone
            del table[ref]
            changed = True

    listed = 0
    marked: dict[str, bool] = {}

    def observe(ref: str) -> tuple[str, int]:
        nonlocal listed
        name = names[ref]
        files = landing_files(store, landing_uri, name)
        listed += len(files)
        markers = {f"{name}/{m}" for m in LANDING_MARKERS}
        marked[ref] = any(f.key in markers for f in files)
        return _digest(files), len(files)

    def note(ref: str, digest: str, n: int) -> None:
        """Record an observation of a pending batch: its quiet time restarts when it changed."""
        nonlocal changed
        if ref not in pending or pending[ref][0] != digest:
            pending[ref] = [digest, now, n]
            changed = True

    for ref in sorted(pending, key=names.get):
        note(ref, *observe(ref))
    deferred = 0
    for ref in sorted((r for r in names if r not in pending and r not in done), key=names.get):
        if listed >= max_files:
            deferred += 1
            continue
        digest, n = observe(ref)
        if legacy_key and n and all(f.key <= legacy_key for f in landing_files(store, landing_uri, names[ref])):
            done[ref] = digest  # requested under the older cursor already
            changed = True
            continue
        note(ref, digest, n)
    rotation = sorted(r for r in done if r in names)
    position = cursor.get("rot", "")
    start = next((i for i, r in enumerate(rotation) if r > position), 0)
    budget = listed + verify_files
    verified = 0
    for ref in rotation[start:] + rotation[:start]:
        if verified and listed >= budget:
            break
        digest, n = observe(ref)
        verified += 1
        position = ref
        if digest != done[ref]:  # a late file, or an object rewritten under its key: a new landing
            del done[ref]
            note(ref, digest, n)

    ready = [ref for ref, (digest, since, n) in pending.items()
             if n and ref in marked and (marked[ref] or now - since >= quiet_seconds)]
    waiting = len(pending) - len(ready)
    requests, message = [], ""
    if ready and retrain_in_progress(context.instance):
        # Kept pending: requested once the run in flight (which may have listed the landing
        # location before they were complete) has finished.
        message = (f"{len(ready)} landed batch(es) complete, but a retrain_job run is already queued or running; "
                   "retraining on them once it ends.")
        ready = []
    elif not ready:
        message = (f"{waiting} landed batch(es) still arriving (complete at a {'/'.join(LANDING_MARKERS)} marker "
                   f"or after {quiet_seconds:.0f}s without any change)" if waiting else "No new or changed landed batches")
        message += f" in {landing_uri}" + (f"; {deferred} more batch(es) to list next tick." if deferred else ".")
    files = 0
    for ref in sorted(ready):
        digest, _, n = pending.pop(ref)
        done[ref] = digest
        files += n
        changed = True
    new_cursor = {"seq": seq + 1 if changed else seq, "rot": position}
    if changed:
        _save_landing_state(store, seq + 1, state)
    if ready:
        refs = sorted(ready)
        what = hashlib.sha256(json.dumps([[r, done[r]] for r in refs]).encode()).hexdigest()[:12]
        requests = [_retrain_request("new-data", f"raw-landing:{seq + 1}:{what}", {
            "dermaops/landing_batches": str(len(refs)), "dermaops/landing_files": str(files),
            "dermaops/landing_state": str(seq + 1),
            "dermaops/landing_batch_refs": ",".join(refs[:10]) + (",..." if len(refs) > 10 else "")})]
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_cursor))
    if json.dumps(new_cursor) == (context.cursor or ""):
        return dg.SkipReason(message)
    return dg.SensorResult(skip_reason=message, cursor=json.dumps(new_cursor))


@dg.sensor(job=retrain_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="A landed batch (a folder under DERMAOPS_LANDING_URI) is complete -> retrain_job (reason "
           "new-data). Complete at a _SUCCESS or manifest.json marker, else after DERMAOPS_LANDING_QUIET_SECONDS "
           "without any change the sensor itself observed; a batch whose content changes later lands again. "
           "Batches are named by a salted hash in keys and tags; the sensor's state is in the logs bucket.")
def raw_landing_sensor(context: dg.SensorEvaluationContext, store: ObjectStore):
    return landing_tick(context, store, Settings.from_env().landing_uri)


# -- report-driven retraining -----------------------------------------------------------

def _latest_report(context: dg.SensorEvaluationContext, asset: str) -> tuple[int, dict] | None:
    """(storage id, metadata values) of the asset's newest materialization, if newer than the cursor."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    storage_id = int(getattr(event, "storage_id", 0) or 0) or int(event.timestamp * 1000)
    if context.cursor and storage_id <= int(context.cursor):
        return None
    metadata = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    return storage_id, metadata


def _retrain_request(reason: str, run_key: str, extra: dict[str, str]) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, job_name=retrain_job.name,
                         tags={RETRAIN_REASON_TAG: reason, "dermaops/trigger": f"{reason}-sensor", **extra})


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Retrain when the newest drift_report says drift_detected (or drift_score >= 0.5).")
def drift_sensor(context: dg.SensorEvaluationContext, settings: Settings):
    latest = _latest_report(context, "drift_report")
    if latest is None:
        return dg.SkipReason("No new drift_report materialization.")
    storage_id, md = latest
    score = float(md.get("drift_score", 0.0) or 0.0)
    if not (bool(md.get("drift_detected")) or score >= DRIFT_SCORE_THRESHOLD):
        return dg.SensorResult(skip_reason=f"drift_report {storage_id}: no drift (score {score:.2f}).",
                               cursor=str(storage_id))
    blocked = retrain_blocked(context.instance, "Drift detected", settings.retrain_cooldown_hours)
    if blocked:  # the run in flight (or just done) answers this report; do not queue another for it later
        return dg.SensorResult(skip_reason=blocked, cursor=str(storage_id))
    return dg.SensorResult(run_requests=[_retrain_request("drift", f"drift:{storage_id}",
                                                          {"dermaops/drift_score": f"{score:.3f}"})],
                           cursor=str(storage_id))


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Retrain when the live balanced accuracy dropped more than 5 points. The page itself is the "
           "accuracy-drop alarm that model_quality_report raises (once per breach), not this sensor's.")
def model_quality_sensor(context: dg.SensorEvaluationContext, settings: Settings):
    latest = _latest_report(context, "model_quality_report")
    if latest is None:
        return dg.SkipReason("No new model_quality_report materialization.")
    storage_id, md = latest
    drop = float(md.get("accuracy_drop", 0.0) or 0.0)
    if not drop > ACCURACY_DROP_POINTS:
        return dg.SensorResult(skip_reason=f"model_quality_report {storage_id}: drop {drop:.1f} points.",
                               cursor=str(storage_id))
    blocked = retrain_blocked(context.instance, "Accuracy dropped", settings.retrain_cooldown_hours)
    if blocked:
        return dg.SensorResult(skip_reason=blocked, cursor=str(storage_id))
    return dg.SensorResult(run_requests=[_retrain_request("quality-drop", f"quality-drop:{storage_id}",
                                                          {"dermaops/accuracy_drop": f"{drop:.2f}"})],
                           cursor=str(storage_id))


# -- approval -> deployment -------------------------------------------------------------

@dg.sensor(job=deploy_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Deploy when the newest Approved model package changes: a new approval, or a rollback "
           "(the served version rejected, so an older Approved one becomes the newest). SQLite registry "
           "locally, SageMaker Model Registry on AWS.")
def approval_sensor(context: dg.SensorEvaluationContext, registry: ModelRegistry):
    group = Settings.from_env().model_package_group
    cursor = _approval_cursor(context.cursor)
    target = registry.latest(group, status="Approved")
    requested = cursor["version"]
    if target is None:
        return dg.SkipReason(f"No Approved package in {group}"
                             + (f"; v{requested} keeps serving until one is approved or the endpoint is stopped "
                                "(`dermaops endpoint stop`)." if requested else "."))
    if target.version == requested:
        return dg.SkipReason(f"The newest Approved package in {group} is v{target.version}, already deployed.")
    why = "rollback" if requested and target.version < requested else "approval"
    count = cursor["requests"] + 1
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"deploy:{group}:v{target.version}:{count}", job_name=deploy_job.name,
                                    tags={"dermaops/package_version": str(target.version),
                                          "dermaops/trigger": why})],
        cursor=json.dumps({"version": target.version, "requests": count}))


def _approval_cursor(text: str | None) -> dict[str, int]:
    """The version the sensor last asked to deploy and how many deploys it has asked for (the
    count keeps run keys unique when a version is deployed again after a rollback). Older
    cursors were the bare highest version seen; their run keys had no count, so counting
    starts again at 0."""
    if not text:
        return {"version": 0, "requests": 0}
    if text.isdigit():
        return {"version": int(text), "requests": 0}
    return json.loads(text)


# -- labelled captures ------------------------------------------------------------------------

@dg.sensor(job=retrain_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Retrain when at least DERMAOPS_RETRAIN_MIN_NEW_LABELS labels for captured requests wait to be "
           "promoted into training data (labelled_captures runs first in retrain_job); after the cooldown.")
def new_labels_sensor(context: dg.SensorEvaluationContext, store: ObjectStore, settings: Settings):
    from dermaops_services.labelling import unpromoted_labels

    # The cursor is the number of unpromoted labels left when it last asked: labels whose capture
    # is gone never get promoted, so only labels beyond those count as new.
    pending = len(unpromoted_labels(store, settings.labels_uri))
    stale = min(int(context.cursor or 0), pending)
    if pending - stale < settings.retrain_min_new_labels:
        return dg.SensorResult(skip_reason=f"{pending - stale} new label(s), fewer than "
                               f"{settings.retrain_min_new_labels} (DERMAOPS_RETRAIN_MIN_NEW_LABELS).", cursor=str(stale))
    since = hours_since_last_retrain(context.instance)
    if retrain_in_progress(context.instance) or (since is not None and since < settings.retrain_cooldown_hours):
        return dg.SensorResult(skip_reason=f"{pending - stale} new labels wait for the running retrain or the "
                               "cooldown (DERMAOPS_RETRAIN_COOLDOWN_HOURS).", cursor=str(stale))
    return dg.SensorResult(run_requests=[_retrain_request("new-labels", f"new-labels:{time.time():.0f}",
                                                          {"dermaops/new_labels": str(pending - stale)})],
                           cursor=str(pending))


all_sensors = [raw_landing_sensor, drift_sensor, model_quality_sensor, approval_sensor, new_labels_sensor]
