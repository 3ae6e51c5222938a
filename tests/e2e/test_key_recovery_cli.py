"""A key scheduled for deletion out of band, as an operator meets it through the CLI (issue 8,
item 3): `status` names it with its date, `up` recovers the same key (never a second one), or
stops with one line and exit 72 when the config says not to. The AWS key-state rules moto does
not enforce are covered in tests/steps/test_key_recovery.py."""

from __future__ import annotations

import json

from iotpipe.errors import ExitCode
from tests.pipeline_checks import live_keys

ALIAS = "alias/iot-manufacturing-dev"


def test_pending_deletion_is_shown_then_recovered(iotpipe, clients):
    assert iotpipe("up", "--env", "dev").returncode == 0
    key = clients.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"]
    when = clients.kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)["DeletionDate"]

    status = iotpipe("status", "--env", "dev", extra_env={"COLUMNS": "300"})  # no folded cells
    assert status.returncode == ExitCode.CHANGES_PENDING
    assert f"pending-deletion (until {when:%Y-%m-%d}" in status.stdout
    as_json = json.loads(iotpipe("status", "--env", "dev", "--json").stdout)
    row = next(r for r in as_json["resources"] if r["logical_id"] == "kms.key")
    assert row["status"] == "drifted" and row["message"].startswith(f"pending-deletion (until {when:%Y-%m-%d}")

    refused = iotpipe("up", "--env", "dev", "--set", "kms.recover_pending_deletion=false")
    assert refused.returncode == ExitCode.KEY_PENDING_DELETION, refused.stderr
    errors = [line for line in refused.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1  # one line for the refusal (the built-in-defaults warning is a warning)
    assert key in refused.stderr and f"{when:%Y-%m-%d}" in refused.stderr
    assert clients.kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"

    up = iotpipe("up", "--env", "dev", "--json")
    assert up.returncode == 0, up.stderr
    rows = {r["logical_id"]: r for r in json.loads(up.stdout)["resources"]}
    assert rows["kms.key"]["action"] == "update" and rows["kms.key"]["ids"]["id"] == key
    assert clients.kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    assert live_keys(clients, "dev") == [key]
    assert len(clients.kms.list_keys()["Keys"]) == 1  # never a second key
    assert iotpipe("status", "--env", "dev").returncode == 0
