"""Issue 8's operator scenarios as a subprocess against a moto server (real HTTP), checked with
an independent client."""

from __future__ import annotations

import json

from iotpipe.errors import ExitCode
from tests.pipeline_checks import verify_pipeline


def test_destroy_of_one_env_set_to_another_deletes_nothing(iotpipe, clients):
    """The issue's report: `destroy --env dev --set env=victim1` asked about dev, then deleted victim1."""
    assert iotpipe("up", "--env", "victim1").returncode == 0
    proc = iotpipe("destroy", "--env", "dev", "--set", "env=victim1", "--yes")
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert "env=victim1" in proc.stderr and "Traceback" not in proc.stderr
    verify_pipeline(clients, "victim1", enforce_tls=True)


def test_header_and_json_name_the_endpoint_actually_used(iotpipe, server):
    plan = iotpipe("plan", "--env", "dev")
    assert plan.returncode == ExitCode.CHANGES_PENDING
    assert plan.stdout.splitlines()[0] == (
        f"env dev · account 123456789012 · region us-east-1 · endpoint {server}")  # from AWS_ENDPOINT_URL
    doc = json.loads(iotpipe("plan", "--env", "dev", "--destroy", "--json").stdout)
    assert doc["endpoint"] == server and doc["config_file"] is None
    assert {r["action"] for r in doc["resources"]} == {"absent"}


def test_destroy_without_yes_lists_the_key_window_and_keeps_everything(iotpipe, clients):
    assert iotpipe("up", "--env", "dev", "--set", "kms.deletion_window_days=14").returncode == 0
    proc = iotpipe("destroy", "--env", "dev", "--set", "kms.deletion_window_days=14", input="")
    assert proc.returncode == ExitCode.ABORTED
    assert "scheduled for deletion (14 days)" in proc.stdout
    assert "versioned: emptied first" in proc.stdout
    verify_pipeline(clients, "dev", enforce_tls=True)
