"""`iotpipe device ...` as an operator runs it: a subprocess talking HTTP to a moto server."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from iotpipe.errors import ExitCode
from tests.pipeline_checks import assert_nothing_left

UP = ("--env", "dev", "--set", "storage.enforce_tls=false")


def _json(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_device_lifecycle_and_destroy_with_a_device(iotpipe, clients, tmp_path):
    _one_line_error(iotpipe("device", "add", "press-07", "--env", "dev"), ExitCode.CHANGES_PENDING, "iotpipe up")
    _one_line_error(iotpipe("device", "add", "press 07", "--env", "dev"), ExitCode.CONFIG, "invalid device id")

    assert iotpipe("up", *UP).returncode == 0

    added = iotpipe("device", "add", "press-07", "--env", "dev", "--location", "hall-2",
                    "--equipment-type", "press", "--json")
    result = _json(added)
    assert result["action"] == "create"
    key = Path(result["key_path"])
    assert key == tmp_path / ".iotpipe" / "devices" / "dev" / "press-07" / "private.pem.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(result["certificate_path"]).st_mode) == 0o644
    assert "PRIVATE KEY" not in added.stdout + added.stderr
    assert not any(line in added.stdout for line in key.read_text().splitlines()[1:-1])
    assert result["topic"] == "manufacturing/sensors/press-07/data"
    assert "-ats.iot." in result["endpoint"]
    iot = clients.iot
    assert iot.list_thing_principals(thingName="press-07")["principals"] == [result["certificate_arn"]]
    assert [p["policyName"] for p in iot.list_attached_policies(target=result["certificate_arn"])["policies"]] \
        == ["iot-sensor-device-policy-dev"]

    again = iotpipe("device", "add", "press-07", "--env", "dev")
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout and "private.pem.key" in again.stdout

    listed = _json(iotpipe("device", "list", "--env", "dev", "--json"))
    (device,) = listed["devices"]
    assert device["device_id"] == "press-07" and device["local_key"] is True
    assert device["attributes"] == {"location": "hall-2", "equipment_type": "press"}
    assert [c["status"] for c in device["certificates"]] == ["ACTIVE"]

    # status and a second up: devices are not drift, and cost no writes
    assert iotpipe("status", *UP).returncode == 0
    up_again = _json(iotpipe("up", *UP, "--json"))
    assert {r["action"] for r in up_again["resources"]} == {"unchanged"}

    _one_line_error(iotpipe("device", "remove", "press-07", "--env", "dev"), ExitCode.ABORTED, "--yes")
    removed = iotpipe("device", "remove", "press-07", "--env", "dev", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert iot.list_things()["things"] == [] and iot.list_certificates()["certificates"] == []
    assert not key.parent.exists()
    gone = iotpipe("device", "remove", "press-07", "--env", "dev", "--yes")
    assert gone.returncode == 0 and gone.stdout.strip() == "no such device press-07 in env dev: nothing to remove"

    # destroy with a device present: not blocked, and nothing of it is left
    assert _json(iotpipe("device", "add", "mill-01", "--env", "dev", "--json"))["action"] == "create"
    destroyed = iotpipe("destroy", "--env", "dev", "--yes", "--json")
    summary = _json(destroyed)
    devices_row = next(r for r in summary["resources"] if r["logical_id"] == "iot.devices")
    assert devices_row["action"] == "delete" and devices_row["ids"] == {"count": "1"}
    assert iot.list_things()["things"] == [] and iot.list_certificates()["certificates"] == []
    assert_nothing_left(clients, "dev")


def test_lost_key_points_to_rotate_and_rotate_recovers(iotpipe, clients, tmp_path):
    assert iotpipe("up", *UP).returncode == 0
    first = _json(iotpipe("device", "add", "s1", "--env", "dev", "--json"))
    Path(first["key_path"]).unlink()
    _one_line_error(iotpipe("device", "add", "s1", "--env", "dev"), ExitCode.STATE, "--rotate")
    rotated = _json(iotpipe("device", "add", "s1", "--env", "dev", "--rotate", "--json"))
    assert rotated["action"] == "rotate" and rotated["replaced_certificates"] == [first["certificate_id"]]
    certs = [c["certificateId"] for c in clients.iot.list_certificates()["certificates"]]
    assert certs == [rotated["certificate_id"]]


def test_a_foreign_thing_is_refused(iotpipe, clients):
    assert iotpipe("up", *UP).returncode == 0
    clients.iot.create_thing(thingName="someone-elses")
    _one_line_error(iotpipe("device", "remove", "someone-elses", "--env", "dev", "--yes"),
                    ExitCode.OWNERSHIP, "left alone")
    _one_line_error(iotpipe("device", "add", "someone-elses", "--env", "dev"), ExitCode.OWNERSHIP)
    assert clients.iot.describe_thing(thingName="someone-elses")["thingName"] == "someone-elses"
