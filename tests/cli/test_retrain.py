"""`dermaops retrain` refuses to start a second retraining while one is queued or running."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import dagster as dg

from dermaops_cli import operations as cli
from dermaops_resources.settings import REPO_ROOT


def test_manual_retrain_refuses_while_one_is_in_flight(tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition(name="noop", node_defs=[]).to_job("retrain_job"))
        instance.handle_run_event(run.run_id, dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value,
                                                              job_name="retrain_job"))
    launched = []
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: launched.append(a) or 0)
    assert cli.cmd_retrain(argparse.Namespace(reason="manual")) == 3
    assert not launched and "already queued or running" in capsys.readouterr().err
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.handle_run_event(run.run_id, dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_SUCCESS.value, job_name="retrain_job"))
    assert cli.cmd_retrain(argparse.Namespace(reason="manual")) == 0
    (cmd,), = launched
    assert cmd[:3] == ["dagster", "job", "execute"] and "retrain_job" in cmd
