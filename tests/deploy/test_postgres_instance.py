"""The production instance config (deploy/dagster.aws.yaml) against a REAL PostgreSQL server.

A throwaway server is started from the system's PostgreSQL binaries (`.ci/install-postgres`
installs them: Debian's `postgresql` package, /usr/lib/postgresql/<v>/bin) with initdb + pg_ctl in
a temporary directory, listening on 127.0.0.1 and a free port only, as the `postgres` user when the
tests run as root (postgres refuses to run as root). The instance is built from the storage section
of deploy/dagster.aws.yaml, with a password in place of the AWS IAM token (no AWS here), and the
DermaOps definitions (dermaops_assets, loaded as a code location) are used to prove that runs, a
sensor cursor and schedule state survive closing and reopening the DagsterInstance.

Skipped, with the reason, only when no PostgreSQL server binaries exist.
"""

from __future__ import annotations

import copy
import glob
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY_YAML = REPO / "deploy" / "dagster.aws.yaml"


# ---------------------------------------------------------------------------------------------
# A throwaway PostgreSQL server
# ---------------------------------------------------------------------------------------------
def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


BINDIR = postgres_bindir()
pytestmark = pytest.mark.skipif(
    BINDIR is None,
    reason="no PostgreSQL server binaries (initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH); "
           "run .ci/install-postgres")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="dermaops-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "dagster"
        self.password = secrets.token_hex(16)
        self.runner: str | None = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            runner = shutil.which("runuser") or shutil.which("su")
            try:
                import pwd
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run the server as")
            if runner is None:
                pytest.skip("running as root and neither runuser nor su exists")
            self.runner = runner
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._uid = pw.pw_uid
        self.log = self.root / "server.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        if self.runner is None:
            cmd = list(args)
        elif self.runner.endswith("runuser"):
            cmd = [self.runner, "-u", "postgres", "--", *args]
        else:  # su
            cmd = [self.runner, "postgres", "-s", "/bin/sh", "-c", shlex.join(args)]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, self._uid, -1)
        pwfile.chmod(0o600)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.data} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is a test dependency (pip install -e '.[test]')")
    server = PostgresServer(BINDIR)
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        log = server.log.read_text() if server.log.exists() else ""
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {exc.stderr}\n{log}")
    server.create_database("dagster")
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------
# The instance from deploy/dagster.aws.yaml
# ---------------------------------------------------------------------------------------------
def deploy_config() -> dict:
    return yaml.safe_load(DEPLOY_YAML.read_text())


def local_instance_config(cfg: dict) -> dict:
    """deploy/dagster.aws.yaml minus what needs AWS: the IAM token becomes a password from the
    environment, TLS is off (local server), runs launch in-process, compute logs stay local."""
    local = copy.deepcopy(cfg)
    pg = local["storage"]["postgres"]
    pg.pop("auth_provider")
    pg["postgres_db"]["password"] = {"env": "DAGSTER_PG_PASSWORD"}
    pg["postgres_db"]["params"] = {"sslmode": "disable"}
    local.pop("run_launcher")
    local.pop("compute_logs")
    return local


@pytest.fixture
def dagster_home(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(local_instance_config(deploy_config())))
    for key, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port),
                       "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_USERNAME": postgres.user,
                       "DAGSTER_PG_PASSWORD": postgres.password, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DERMAOPS_HOME", str(tmp_path / "dermaops-home"))
    monkeypatch.setenv("DERMAOPS_BACKEND", "local")
    return home


def test_deploy_yaml_is_a_valid_instance_config_with_env_credentials(monkeypatch):
    """The whole production file, AWS parts included, validates against Dagster's schemas."""
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_postgres import DagsterPostgresStorage

    cfg = deploy_config()
    result = validate_config(dagster_instance_config_schema(), cfg)
    assert result.success, result.errors
    for section, cls in (("run_launcher", EcsRunLauncher), ("compute_logs", S3ComputeLogManager)):
        assert f"{cfg[section]['module']}.{cfg[section]['class']}".endswith(cls.__name__)
        checked = validate_config(cls.config_type(), cfg[section]["config"])
        assert checked.success, (section, checked.errors)
    checked = validate_config(DagsterPostgresStorage.config_type(), cfg["storage"]["postgres"])
    assert checked.success, checked.errors
    db = cfg["storage"]["postgres"]["postgres_db"]
    # Credentials and endpoints only through the environment; nothing secret in the file.
    for key in ("hostname", "port", "db_name", "username"):
        assert set(db[key]) == {"env"} and db[key]["env"].startswith("DAGSTER_PG_"), key
    assert "password" not in db and "postgres_url" not in cfg["storage"]["postgres"]
    assert db["params"]["sslmode"] == "require"
    assert cfg["run_launcher"]["config"]["container_name"] == "dagster"  # infra/dagster_aws.tf container name


def _remote_repository(instance):
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    origin = LoadableTargetOrigin(module_name="dermaops_assets", working_directory=str(REPO))
    return in_process_test_workspace(instance, origin)


def test_runs_sensor_cursor_and_schedule_state_survive_an_instance_restart(dagster_home):
    import dagster as dg
    from dagster._core.scheduler.instigation import (InstigatorState, InstigatorStatus, InstigatorType,
                                                     ScheduleInstigatorData, SensorInstigatorData)
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from dermaops_assets.definitions import defs

    sensor_name, schedule_name = "raw_landing_sensor", "monthly_retrain_schedule"
    cursor = '{"after": "landing/2026/11/30/batch-0042/", "seen": 42}'

    # --- first life of the instance ----------------------------------------------------------
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

        # A run of a real DermaOps job, as the queued coordinator would receive it.
        retrain = defs.resolve_job_def("retrain_job")
        queued = instance.create_run_for_job(job_def=retrain, tags={"dermaops/retrain": "scheduled"})
        # And a run that actually executes, so its event log is written to PostgreSQL.
        @dg.op
        def ping() -> int:
            return 1

        @dg.job
        def storage_probe():
            ping()

        executed = storage_probe.execute_in_process(instance=instance)
        assert executed.success

        with _remote_repository(instance) as workspace:
            location = next(iter(workspace.get_code_location_entries().values())).code_location
            assert location is not None, "dermaops_assets did not load as a code location"
            repo = location.get_repository("__repository__")
            remote_sensor = repo.get_sensor(sensor_name)
            remote_schedule = repo.get_schedule(schedule_name)
            sensor_origin = remote_sensor.get_remote_origin()
            schedule_origin = remote_schedule.get_remote_origin()
            sensor_id = remote_sensor.get_remote_origin_id()
            schedule_id = remote_schedule.get_remote_origin_id()

            instance.add_instigator_state(InstigatorState(
                sensor_origin, InstigatorType.SENSOR, InstigatorStatus.RUNNING,
                SensorInstigatorData(cursor=cursor, last_tick_timestamp=time.time(),
                                     sensor_type=remote_sensor.sensor_type)))
            # An operator paused the monthly retrain: that must survive a restart of the deployment.
            instance.add_instigator_state(InstigatorState(
                schedule_origin, InstigatorType.SCHEDULE, InstigatorStatus.STOPPED,
                ScheduleInstigatorData(remote_schedule.cron_schedule, start_timestamp=None)))

    # --- second life: a fresh instance from the same dagster.yaml ------------------------------
    with dg.DagsterInstance.get() as reopened:
        assert isinstance(reopened.run_storage, PostgresRunStorage)
        run = reopened.get_run_by_id(queued.run_id)
        assert run is not None and run.job_name == "retrain_job"
        assert run.tags.get("dermaops/retrain") == "scheduled"
        done = reopened.get_run_by_id(executed.run_id)
        assert done is not None and done.status == dg.DagsterRunStatus.SUCCESS
        events = reopened.all_logs(executed.run_id)
        assert any(e.dagster_event and e.dagster_event.event_type_value == "STEP_SUCCESS" for e in events)
        assert reopened.has_job_snapshot(run.job_snapshot_id)

        sensor_state = reopened.get_instigator_state(sensor_id, remote_sensor.selector_id)
        assert sensor_state is not None and sensor_state.status == InstigatorStatus.RUNNING
        assert sensor_state.instigator_data.cursor == cursor
        schedule_state = reopened.get_instigator_state(schedule_id, remote_schedule.selector_id)
        assert schedule_state is not None and schedule_state.status == InstigatorStatus.STOPPED
        assert schedule_state.instigator_data.cron_schedule == "0 3 1 * *"

    # The rows are really in the server, not in a local file.
    import psycopg2
    conn = psycopg2.connect(host="127.0.0.1", port=int(os.environ["DAGSTER_PG_PORT"]), dbname="dagster",
                            user=os.environ["DAGSTER_PG_USERNAME"], password=os.environ["DAGSTER_PG_PASSWORD"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_id IN (%s, %s)", (queued.run_id, executed.run_id))
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT count(*) FROM instigators WHERE selector_id IN (%s, %s)",
                    (remote_sensor.selector_id, remote_schedule.selector_id))
        assert cur.fetchone()[0] == 2
    conn.close()
    assert not list(Path(dagster_home).glob("**/*.db")), "SQLite files appeared: storage is not PostgreSQL"
