"""Device provisioning against in-process moto: `iotpipe.devices` called directly, checked with
an independent boto3 client and the files on disk."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe import devices
from iotpipe.cli import main
from iotpipe.errors import ConfigError, ExitCode, OwnershipError
from iotpipe.steps import iot, kms
from tests.pipeline_checks import Clients, assert_nothing_left
from tests.support import CallLog, fail_with

REGION = "us-east-1"
THING_TYPE = "manufacturing-sensor-dev"
POLICY = "iot-sensor-device-policy-dev"
RESOURCES = kms.RESOURCES + iot.RESOURCES  # all a device needs; the full pipeline where it matters


def client():
    """What a human with the AWS CLI would see."""
    return boto3.client("iot", region_name=REGION)


@pytest.fixture
def env(make):
    """An env with its IoT step up; returns a factory of fresh engines (one per "run")."""
    make(resources=RESOURCES).up()

    def fresh(log: CallLog | None = None, **kwargs):
        return make(resources=RESOURCES, log=log, **kwargs)

    return fresh


def certificates() -> list[str]:
    return [c["certificateId"] for c in client().list_certificates()["certificates"]]


def principals(thing: str) -> list[str]:
    return client().list_thing_principals(thingName=thing)["principals"]


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def key_body(path: str | Path) -> list[str]:
    """The base64 lines of a PEM key: what must never appear anywhere but in its file."""
    return [line for line in Path(path).read_text().splitlines() if line and not line.startswith("-----")]


def snapshot_files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(root.rglob("*")) if p.is_file()}


# --- add ---------------------------------------------------------------------------------------
def test_add_creates_thing_certificate_key_and_attachments(env, tmp_path):
    result = devices.add_device(env(), "press-07", attributes={
        "location": "hall-2", "facility": "plant-a", "equipment_type": "press"})
    assert result.action == "create"
    thing = client().describe_thing(thingName="press-07")
    assert thing["thingTypeName"] == THING_TYPE
    assert thing["attributes"] == {"location": "hall-2", "facility": "plant-a", "equipment_type": "press",
                                   "iotpipe:env": "dev"}
    assert principals("press-07") == [result.certificate_arn]
    assert certificates() == [result.certificate_id]
    policies = client().list_attached_policies(target=result.certificate_arn)["policies"]
    assert [p["policyName"] for p in policies] == [POLICY]
    cert = client().describe_certificate(certificateId=result.certificate_id)["certificateDescription"]
    assert cert["status"] == "ACTIVE"

    folder = tmp_path / ".iotpipe" / "devices" / "dev" / "press-07"
    assert Path(result.key_path) == folder / "private.pem.key"
    assert Path(result.certificate_path) == folder / "certificate.pem.crt"
    assert mode(result.key_path) == 0o600
    assert mode(result.certificate_path) == 0o644
    assert "PRIVATE KEY-----" in Path(result.key_path).read_text()
    assert Path(result.certificate_path).read_text() == cert["certificatePem"]
    record = json.loads((folder / "certificate.json").read_text())
    assert record["certificate_id"] == result.certificate_id and record["status"] == "active"
    assert sorted(p.name for p in folder.iterdir()) == ["certificate.json", "certificate.pem.crt",
                                                        "private.pem.key"]  # no temporary files left

    assert result.topic == "manufacturing/sensors/press-07/data"
    assert result.endpoint.endswith("-ats.iot.us-east-1.amazonaws.com")
    assert result.root_ca.startswith("https://www.amazontrust.com/")


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_file_modes_are_exact_whatever_the_umask(env, umask):
    old = os.umask(umask)
    try:
        result = devices.add_device(env(), "s1")
    finally:
        os.umask(old)
    assert mode(result.key_path) == 0o600
    assert mode(result.certificate_path) == 0o644


def test_key_is_written_with_o_excl_and_0600_never_a_default_open(env, monkeypatch):
    """The key's file is created by os.open with O_CREAT|O_EXCL and mode 0600 from the start."""
    opened = []
    real_open = os.open

    def spy(path, flags, mode_=0o777, *args, **kwargs):
        opened.append((Path(path).name, flags, mode_))
        return real_open(path, flags, mode_, *args, **kwargs)

    monkeypatch.setattr(devices.os, "open", spy)
    devices.add_device(env(), "s1")
    key_opens = [o for o in opened if "private.pem.key" in o[0]]
    assert key_opens, opened
    for _name, flags, mode_ in key_opens:
        assert flags & os.O_CREAT and flags & os.O_EXCL and flags & os.O_WRONLY
        assert mode_ == 0o600


def test_the_key_never_appears_in_output_logs_or_json(env, tmp_path, capsys, caplog):
    caplog.set_level("DEBUG")
    assert main(["device", "add", "s1", "--location", "hall-2", "--json"]) == ExitCode.OK
    out, err = capsys.readouterr()
    data = json.loads(out)
    body = key_body(data["key_path"])
    assert len(body) > 5
    assert main(["device", "add", "s1"]) == ExitCode.OK  # text mode
    out2, err2 = capsys.readouterr()
    assert main(["device", "list", "--json"]) == ExitCode.OK
    out3, err3 = capsys.readouterr()
    assert main(["device", "list"]) == ExitCode.OK
    out4, err4 = capsys.readouterr()
    everything = "\n".join([out, err, out2, err2, out3, err3, out4, err4, caplog.text])
    assert "PRIVATE KEY" not in everything
    assert not any(line in everything for line in body)
    assert "private.pem.key" in out2 and "manufacturing/sensors/s1/data" in out2
    assert json.loads(out3)["devices"][0]["local_key"] is True


def test_re_add_is_unchanged_with_no_writes_at_all(env, tmp_path):
    first = devices.add_device(env(), "s1", attributes={"location": "hall-2"})
    files = snapshot_files(tmp_path / ".iotpipe" / "devices")
    log = CallLog()
    again = devices.add_device(env(log), "s1", attributes={"location": "hall-2"})
    assert again.action == "unchanged"
    assert log.mutating == [], log.mutating
    assert log.calls  # it did read
    assert (again.certificate_id, again.key_path) == (first.certificate_id, first.key_path)
    assert snapshot_files(tmp_path / ".iotpipe" / "devices") == files
    assert certificates() == [first.certificate_id]


def test_changed_attribute_is_merged_into_the_thing(env):
    devices.add_device(env(), "s1", attributes={"location": "hall-2", "facility": "plant-a"})
    log = CallLog()
    result = devices.add_device(env(log), "s1", attributes={"location": "hall-3"})
    assert result.action == "update"
    assert log.counts(mutating_only=True) == {"iot.UpdateThing": 1}
    assert client().describe_thing(thingName="s1")["attributes"] == {
        "location": "hall-3", "facility": "plant-a", "iotpipe:env": "dev"}


# --- lost key, rotation ------------------------------------------------------------------------
def test_lost_key_is_refused_with_a_pointer_to_rotate(env):
    first = devices.add_device(env(), "s1")
    os.unlink(first.key_path)
    log = CallLog()
    with pytest.raises(devices.DeviceNeedsRotationError, match="--rotate") as refused:
        devices.add_device(env(log), "s1")
    assert refused.value.exit_code == ExitCode.STATE
    assert "private key" in str(refused.value)
    assert log.mutating == []
    assert principals("s1") == [first.certificate_arn]


def test_rotate_replaces_the_certificate_and_deletes_the_old_one(env):
    first = devices.add_device(env(), "s1")
    old_key = Path(first.key_path).read_text()
    rotated = devices.add_device(env(), "s1", rotate=True)
    assert rotated.action == "rotate"
    assert rotated.certificate_id != first.certificate_id
    assert rotated.replaced_certificates == [first.certificate_id]
    assert principals("s1") == [rotated.certificate_arn]
    assert certificates() == [rotated.certificate_id]  # the old one is deleted, not just detached
    with pytest.raises(ClientError):
        client().describe_certificate(certificateId=first.certificate_id)
    assert [p["policyName"] for p in client().list_attached_policies(target=rotated.certificate_arn)["policies"]] == [POLICY]
    assert Path(rotated.key_path).read_text() != old_key
    assert mode(rotated.key_path) == 0o600
    log = CallLog()
    assert devices.add_device(env(log), "s1").action == "unchanged"
    assert log.mutating == []


def test_rotate_after_the_key_was_lost(env):
    first = devices.add_device(env(), "s1")
    os.unlink(first.key_path)
    rotated = devices.add_device(env(), "s1", rotate=True)
    assert rotated.action == "rotate"
    assert certificates() == [rotated.certificate_id] and principals("s1") == [rotated.certificate_arn]
    assert devices.add_device(env(), "s1").action == "unchanged"


def test_a_deactivated_certificate_is_not_silently_reactivated(env):
    first = devices.add_device(env(), "s1")
    client().update_certificate(certificateId=first.certificate_id, newStatus="REVOKED")
    with pytest.raises(devices.DeviceNeedsRotationError, match="REVOKED"):
        devices.add_device(env(), "s1")
    rotated = devices.add_device(env(), "s1", rotate=True)
    assert certificates() == [rotated.certificate_id]


# --- crash safety ------------------------------------------------------------------------------
def test_crash_after_the_key_is_written_is_finished_without_a_second_certificate(env, tmp_path):
    crashed = env()
    crashed.ctx.aws.events.register("before-call.iot.AttachPolicy", fail_with("InternalFailure", "crash"))
    with pytest.raises(ClientError):
        devices.add_device(crashed, "s1")
    folder = tmp_path / ".iotpipe" / "devices" / "dev" / "s1"
    record = json.loads((folder / "certificate.json").read_text())
    assert record["status"] == "pending"
    assert mode(folder / "private.pem.key") == 0o600
    assert certificates() == [record["certificate_id"]]
    assert principals("s1") == []  # nothing attached yet

    log = CallLog()
    result = devices.add_device(env(log), "s1")
    assert result.certificate_id == record["certificate_id"]
    assert certificates() == [record["certificate_id"]]  # finished, not duplicated
    assert ("iot", "CreateKeysAndCertificate") not in log.calls
    assert log.counts(mutating_only=True) == {"iot.AttachPolicy": 1, "iot.AttachThingPrincipal": 1}
    assert principals("s1") == [result.certificate_arn]
    assert json.loads((folder / "certificate.json").read_text())["status"] == "active"
    assert devices.add_device(env(), "s1").action == "unchanged"


def test_crash_between_attachments_is_finished(env):
    crashed = env()
    crashed.ctx.aws.events.register("before-call.iot.AttachThingPrincipal", fail_with("InternalFailure", "crash"))
    with pytest.raises(ClientError):
        devices.add_device(crashed, "s1")
    log = CallLog()
    result = devices.add_device(env(log), "s1")
    assert log.counts(mutating_only=True) == {"iot.AttachThingPrincipal": 1}
    assert certificates() == [result.certificate_id] and principals("s1") == [result.certificate_arn]


def test_crash_before_the_key_reached_disk_deletes_that_certificate(env, tmp_path, monkeypatch):
    """Recorded but no key: the certificate can never be used, so the re-run deletes it and
    issues another; exactly one certificate remains."""
    real_write = devices._write_file

    def die_on_key(path, text, mode_):
        if path.name == "private.pem.key":
            raise KeyboardInterrupt("killed while writing the key")
        real_write(path, text, mode_)

    monkeypatch.setattr(devices, "_write_file", die_on_key)
    with pytest.raises(KeyboardInterrupt):
        devices.add_device(env(), "s1")
    monkeypatch.setattr(devices, "_write_file", real_write)
    (orphan,) = certificates()
    result = devices.add_device(env(), "s1")
    assert result.action == "create"
    assert certificates() == [result.certificate_id] != [orphan]
    assert any("never written" in n for n in result.notes)
    assert mode(result.key_path) == 0o600


def test_a_half_written_temporary_key_is_replaced(env, tmp_path):
    folder = tmp_path / ".iotpipe" / "devices" / "dev" / "s1"
    folder.mkdir(parents=True)
    (folder / ".private.pem.key.tmp").write_text("half")
    result = devices.add_device(env(), "s1")
    assert not (folder / ".private.pem.key.tmp").exists()
    assert mode(result.key_path) == 0o600


# --- refusals ----------------------------------------------------------------------------------
def test_undeployed_env_is_refused_before_any_write(make, tmp_path):
    log = CallLog()
    with pytest.raises(devices.EnvNotDeployedError, match="iotpipe up") as refused:
        devices.add_device(make(resources=RESOURCES, log=log), "s1")
    assert refused.value.exit_code == ExitCode.CHANGES_PENDING
    assert log.mutating == []
    assert not (tmp_path / ".iotpipe" / "devices").exists()
    with pytest.raises(devices.EnvNotDeployedError):
        devices.list_devices(make(resources=RESOURCES))


def test_env_without_device_policy_is_refused(env):
    client().delete_policy(policyName=POLICY)
    with pytest.raises(devices.EnvNotDeployedError, match=POLICY):
        devices.add_device(env(), "s1")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "dev/../../etc", "ü", "a.b"])
def test_invalid_device_ids_are_refused(bad):
    with pytest.raises(ConfigError, match="invalid device id"):
        devices.validate_device_id(bad)


def test_invalid_device_id_exits_config_before_any_aws_call(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # an endpoint nobody listens on: any AWS call would end in exit 69 (ENDPOINT), not 65
    code = main(["device", "add", "bad id", "--endpoint-url", "http://127.0.0.1:9"])
    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "invalid device id" in err and len(err.strip().splitlines()) == 1
    assert main(["device", "add", "ok", "--location", "hall 2", "--endpoint-url",
                 "http://127.0.0.1:9"]) == ExitCode.CONFIG
    assert main(["device", "remove", "bad id", "--yes", "--endpoint-url", "http://127.0.0.1:9"]) == ExitCode.CONFIG


def test_a_foreign_thing_is_never_touched(env):
    client().create_thing(thingName="s1", attributePayload={"attributes": {"owner": "someone"}})
    with pytest.raises(OwnershipError):
        devices.add_device(env(), "s1")
    with pytest.raises(OwnershipError):
        devices.remove_device(env(), "s1")
    client().create_thing(thingName="s2", attributePayload={"attributes": {"iotpipe:env": "prod"}})
    with pytest.raises(OwnershipError):
        devices.remove_device(env(), "s2")
    assert {t["thingName"] for t in client().list_things()["things"]} == {"s1", "s2"}
    assert certificates() == []


# --- list ---------------------------------------------------------------------------------------
def test_list_shows_devices_certificates_and_local_keys(env):
    a = devices.add_device(env(), "a1", attributes={"facility": "plant-a"})
    b = devices.add_device(env(), "b1")
    os.unlink(b.key_path)
    log = CallLog()
    listed = devices.list_devices(env(log))
    assert log.mutating == []
    assert [d.device_id for d in listed] == ["a1", "b1"]
    assert listed[0].attributes == {"facility": "plant-a"}  # the marker is not an operator's attribute
    assert [(c.id, c.status) for c in listed[0].certificates] == [(a.certificate_id, "ACTIVE")]
    assert [d.local_key for d in listed] == [True, False]
    assert all(d.managed for d in listed)
    assert "PRIVATE" not in json.dumps([d.as_dict() for d in listed])


# --- remove -------------------------------------------------------------------------------------
def test_remove_deletes_certificates_thing_and_local_files(env):
    a = devices.add_device(env(), "s1")
    devices.add_device(env(), "s2")
    log = CallLog()
    result = devices.remove_device(env(log), "s1")
    assert result.action == "delete" and result.deleted_certificates == [a.certificate_id]
    assert result.local_files_removed and not Path(a.key_path).parent.exists()
    ops = [op for _s, op in log.mutating]
    assert ops == ["DetachThingPrincipal", "DetachPolicy", "UpdateCertificate", "DeleteCertificate", "DeleteThing"]
    assert [t["thingName"] for t in client().list_things()["things"]] == ["s2"]
    assert len(certificates()) == 1

    log.clear()
    again = devices.remove_device(env(log), "s1")
    assert again.action == "absent" and log.mutating == []


def test_remove_finishes_a_crashed_add(env):
    crashed = env()
    crashed.ctx.aws.events.register("before-call.iot.AttachPolicy", fail_with("InternalFailure", "crash"))
    with pytest.raises(ClientError):
        devices.add_device(crashed, "s1")
    result = devices.remove_device(env(), "s1")
    assert result.action == "delete" and len(result.deleted_certificates) == 1
    assert certificates() == [] and client().list_things()["things"] == []


def test_remove_retries_while_aws_still_sees_the_detached_certificate(env):
    """DetachThingPrincipal is asynchronous on AWS: DeleteCertificate refuses for a moment."""
    devices.add_device(env(), "s1")
    slept: list[float] = []
    e = env(sleep=slept.append)
    attempts = {"n": 0}

    def not_yet(model, **_):
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ClientError({"Error": {"Code": "DeleteConflictException",
                                         "Message": "Things must be detached before deletion"}}, model.name)

    e.ctx.aws.events.register("before-call.iot.DeleteCertificate", not_yet)
    devices.remove_device(e, "s1")
    assert attempts["n"] == 2 and slept == [1.0]
    assert certificates() == []


# --- the env's lifecycle with devices -----------------------------------------------------------
def test_up_creates_nothing_for_devices_and_a_second_up_stays_read_only(make):
    log = CallLog()
    result = make(resources=RESOURCES, log=log).up()
    devices_result = next(r for r in result.resources if r.logical_id == "iot.devices")
    assert devices_result.action == "unchanged" and devices_result.ids == {"count": "0"}
    assert not [c for c in log.mutating if "Thing" in c[1] and c[1] != "CreateThingType"]
    devices.add_device(make(resources=RESOURCES), "s1")
    log = CallLog()
    again = make(resources=RESOURCES, log=log)
    assert all(r.action == "unchanged" for r in again.up().resources)
    assert log.mutating == []
    status = make(resources=RESOURCES).status()
    assert status.in_sync
    assert next(r for r in status.resources if r.logical_id == "iot.devices").ids == {"count": "1"}


def test_status_of_a_destroyed_env_shows_devices_missing(make):
    status = make(resources=RESOURCES).status()
    assert next(r for r in status.resources if r.logical_id == "iot.devices").health == "missing"


def test_destroy_with_devices_leaves_nothing(make):
    make().up()
    for name in ("s1", "s2"):
        devices.add_device(make(), name, attributes={"location": "hall-2"})
    result = make().destroy()
    assert all(r.action == ("scheduled" if r.logical_id == "kms.key" else "delete")
               for r in result.resources), result.count()
    assert client().list_things()["things"] == []
    assert certificates() == []
    assert client().list_policies()["policies"] == []
    assert client().list_thing_types()["thingTypes"] == []
    assert_nothing_left(Clients(REGION), "dev")
    again = make().destroy()
    assert all(r.action == "absent" for r in again.resources)
    # the local key directories are left (resources do not see the state dir); remove cleans them
    assert (Path(".iotpipe") / "devices" / "dev" / "s1" / "private.pem.key").exists()


def test_destroy_after_a_crashed_add_leaves_only_an_unusable_certificate_remove_takes(make):
    """A `device add` that died before attaching its certificate to the thing: destroy cannot
    see that certificate (it is attached to nothing of the env); it is left without policy, and
    `device remove` finds it through the local record."""
    make().up()
    crashed = make()
    crashed.ctx.aws.events.register("before-call.iot.AttachThingPrincipal", fail_with("InternalFailure", "x"))
    with pytest.raises(ClientError):
        devices.add_device(crashed, "half")  # policy attached, thing not
    make().destroy()
    assert_nothing_left(Clients(REGION), "dev")
    (left,) = client().list_certificates()["certificates"]
    assert client().list_attached_policies(target=left["certificateArn"])["policies"] == []
    removed = devices.remove_device(make(), "half")
    assert removed.deleted_certificates == [left["certificateId"]]
    assert certificates() == []


def test_destroy_removes_every_certificate_of_completed_devices(make):
    make(resources=RESOURCES).up()
    for name in ("s1", "s2"):
        devices.add_device(make(resources=RESOURCES), name)
    devices.add_device(make(resources=RESOURCES), "s1", rotate=True)
    make(resources=RESOURCES).destroy()
    assert certificates() == []
    assert client().list_things()["things"] == []


def test_destroy_stops_on_a_foreign_thing_of_our_type(make):
    make(resources=RESOURCES).up()
    devices.add_device(make(resources=RESOURCES), "s1")
    client().create_thing(thingName="hand-made", thingTypeName=THING_TYPE)
    with pytest.raises(OwnershipError, match="hand-made"):
        make(resources=RESOURCES).destroy()
    # Stopped before its first delete, not halfway: our device is still whole, too.
    assert sorted(t["thingName"] for t in client().list_things()["things"]) == ["hand-made", "s1"]
    assert len(certificates()) == 1
    assert client().describe_thing_type(thingTypeName=THING_TYPE)  # not deleted under the foreign thing


def test_device_commands_take_the_env_lock(env):
    """A destroy running meanwhile would delete the policy and type a device is attached to."""
    from iotpipe.errors import LockHeldError

    holder = env()
    with holder.store.lock("destroy"):
        log = CallLog()
        with pytest.raises(LockHeldError):
            devices.add_device(env(log), "s1")
        with pytest.raises(LockHeldError):
            devices.remove_device(env(log), "s1")
        assert log.mutating == []
    assert devices.add_device(env(), "s1").action == "create"
