"""One configuration surface: every DERMAOPS_* variable is a Settings field, documented, read in one place."""

import re
import stat
import threading

import pytest

from dermaops_services.ingestion import MIN_SALT_CHARS, pseudonym_salt
from dermaops_resources.settings import ENV_VARS, REPO_ROOT, Settings, all_env_var_names

CODE_DIRS = ("dermaops_assets", "dermaops_resources", "dermaops_services", "dermaops_cli", "ml_code")
#: Names that are not user settings: the SageMaker launcher's own variable, set by the runner
#: inside the container (ml_code's container contract), never by a user.
CONTAINER_CONTRACT = {"DERMAOPS_ENTRY_POINT"}


def _code_files():
    for folder in CODE_DIRS:
        yield from (REPO_ROOT / folder).rglob("*.py")


def test_every_dermaops_variable_in_the_code_is_a_settings_field():
    known = all_env_var_names() | CONTAINER_CONTRACT
    unknown = {}
    for path in _code_files():
        for name in set(re.findall(r"\bDERMAOPS_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())):
            if name not in known and not name.endswith("_") and "{" not in name:
                unknown.setdefault(name, []).append(str(path.relative_to(REPO_ROOT)))
    # DERMAOPS_{RAW,PROCESSED,...}_BUCKET are written with a brace in prose; the real names are known.
    assert not unknown, f"read these through Settings (dermaops_resources/settings.py) instead: {unknown}"


def test_only_settings_and_the_container_contract_read_the_environment():
    readers = sorted(str(p.relative_to(REPO_ROOT)) for p in _code_files()
                     if "os.environ" in p.read_text() or "getenv(" in p.read_text())
    allowed = {"dermaops_resources/settings.py", "ml_code/contract.py",
               # the SageMaker launcher's source, a string that runs inside the container
               "dermaops_resources/aws/sagemaker_jobs.py"}
    assert set(readers) <= allowed, set(readers) - allowed


def test_the_readme_documents_every_setting():
    readme = (REPO_ROOT / "README.md").read_text()
    missing = sorted(name for name in all_env_var_names() if name not in readme
                     and not name.endswith("_BUCKET"))
    assert not missing, f"add these to the README's configuration table: {missing}"
    assert "DERMAOPS_{RAW,PROCESSED,MODELS,LOGS}_BUCKET" in readme


def test_from_env_reads_each_field_and_derives_paths(tmp_path):
    env = {"DERMAOPS_HOME": str(tmp_path), "DERMAOPS_AUTO_APPROVE": "yes", "DERMAOPS_LANDING_QUIET_SECONDS": "5",
           "DERMAOPS_ENDPOINT_MAX_INFLIGHT": "3", "DERMAOPS_BUCKET_PREFIX": "acme", "DERMAOPS_LOGS_BUCKET": "audit",
           "AWS_REGION": "eu-west-1"}
    s = Settings.from_env(env)
    assert s.home_path == tmp_path.resolve() and s.raw_uri == str(tmp_path.resolve() / "demo-data")
    assert s.auto_approve is True and s.landing_quiet_seconds == 5.0 and s.endpoint_max_inflight == 3
    assert s.buckets == {"raw": "acme-raw", "processed": "acme-processed", "models": "acme-models", "logs": "audit"}
    assert s.region == "eu-west-1"
    defaults = Settings.from_env({})
    assert defaults.retrain_cooldown_hours == 24.0 and defaults.auto_approve is False
    assert set(ENV_VARS) <= set(Settings.model_fields)


def test_a_malformed_number_names_the_variable():
    with pytest.raises(ValueError, match="DERMAOPS_RETRAIN_COOLDOWN_HOURS must be a number"):
        Settings.from_env({"DERMAOPS_RETRAIN_COOLDOWN_HOURS": "a day"})
    with pytest.raises(ValueError, match="DERMAOPS_BACKEND"):
        Settings.from_env({"DERMAOPS_BACKEND": "gcp"})
    with pytest.raises(ValueError, match="DERMAOPS_STEP_PROCESSES='threads'.*forkserver, spawn, in_process"):
        Settings.from_env({"DERMAOPS_STEP_PROCESSES": "threads"})


def test_settings_is_the_settings_resource():
    from dermaops_assets import defs

    assert isinstance(defs.resources["settings"], Settings)


# -- the pseudonym salt ---------------------------------------------------------------------

def test_salt_file_is_created_once_0600_and_reused(tmp_path):
    salt = pseudonym_salt(tmp_path)
    path = tmp_path / "secrets" / "pseudonym_salt"
    assert len(salt) >= MIN_SALT_CHARS and path.read_text() == salt
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pseudonym_salt(tmp_path) == salt
    assert not [p for p in path.parent.iterdir() if p.name != "pseudonym_salt"]  # no temp files left


def test_an_empty_or_short_salt_is_refused(tmp_path):
    path = tmp_path / "secrets" / "pseudonym_salt"
    path.parent.mkdir(parents=True)
    path.write_text("")  # what a crash mid-creation used to leave
    with pytest.raises(ValueError, match="fewer than 32"):
        pseudonym_salt(tmp_path)
    with pytest.raises(ValueError, match="DERMAOPS_PSEUDONYM_SALT"):
        pseudonym_salt(tmp_path, configured="short")


def test_two_first_runs_at_once_get_one_salt(tmp_path):
    results: list[str] = []
    barrier = threading.Barrier(8)

    def first_run() -> None:
        barrier.wait()
        results.append(pseudonym_salt(tmp_path))

    threads = [threading.Thread(target=first_run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 8
    assert (tmp_path / "secrets" / "pseudonym_salt").read_text() == results[0]
