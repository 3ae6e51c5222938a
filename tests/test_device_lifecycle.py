"""Certificate lifecycle against in-process moto: expiry in `device list`, the count in
`status`, bulk rotation in `device add --rotate`'s order, and `device export` bundles."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from cryptography import x509

from iotpipe import certificates, device_export, device_import, devices
from iotpipe.cli import main
from iotpipe.errors import ConfigError, ExitCode
from iotpipe.ratelimit import RateLimiter
from iotpipe.steps import iot, kms
from tests.bulk_devices import Killed, Killer, serial_moto  # noqa: F401 - a fixture
from tests.support import CallLog

REGION = "us-east-1"
THING_TYPE = "manufacturing-sensor-dev"
POLICY = "iot-sensor-device-policy-dev"
RESOURCES = kms.RESOURCES + iot.RESOURCES
N = 20  # the rotation sweeps; the other tests need fewer devices
SMALL = 6


def client():
    return boto3.client("iot", region_name=REGION)


def fast() -> RateLimiter:
    return RateLimiter(scale=1e6)


def _fleet(make, size: int):
    make(resources=RESOURCES).up()
    rows = [device_import.DeviceRow(i + 2, f"s-{i:02d}", {"location": "hall-1"}) for i in range(size)]
    assert device_import.import_devices(make(resources=RESOURCES), rows, limiter=fast()).counts() == {"added": size}

    def fresh(log: CallLog | None = None):
        return make(resources=RESOURCES, log=log)

    return fresh


@pytest.fixture
def fleet(make):
    """An env with SMALL imported devices; returns a factory of fresh engines."""
    return _fleet(make, SMALL)


@pytest.fixture
def big_fleet(make):
    """An env with N imported devices, for the sweeps."""
    return _fleet(make, N)


def attached(thing: str) -> list[str]:
    return client().list_thing_principals(thingName=thing)["principals"]


# --- expiry ------------------------------------------------------------------------------------
def test_pem_not_after_reads_what_an_x509_library_reads(moto):
    pem = client().create_keys_and_certificate(setAsActive=False)["certificatePem"]
    expected = x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc
    assert certificates.pem_not_after(pem) == expected
    assert certificates.pem_not_after("-----BEGIN CERTIFICATE-----\nnonsense\n") is None


@pytest.mark.parametrize("text, expected", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                            ("2w", timedelta(weeks=2))])
def test_durations(text, expected):
    assert certificates.parse_within(text) == expected


@pytest.mark.parametrize("bad", ["", "30", "d", "-1d", "30 days", "1y"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ConfigError, match="invalid duration"):
        certificates.parse_within(bad)


def test_list_shows_each_certificates_expiry(fleet):
    listed = devices.list_devices(fleet())
    assert len(listed) == SMALL
    for device in listed:
        (cert,) = device.certificates
        described = client().describe_certificate(certificateId=cert.id)["certificateDescription"]
        assert cert.not_after == described["validity"]["notAfter"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_status_counts_local_certificates_expiring_soon(fleet, tmp_path):
    root = tmp_path / ".iotpipe"
    not_after = certificates.pem_not_after(
        (root / "devices" / "dev" / "s-00" / "certificate.pem.crt").read_text())
    now = datetime.now(UTC)
    assert certificates.local_expiring(root, "dev", now=now)["expiring"] == []
    soon = certificates.local_expiring(root, "dev", now=not_after - timedelta(days=29))
    assert (soon["local_certificates"], len(soon["expiring"])) == (SMALL, SMALL)
    assert certificates.local_expiring(root, "dev", now=not_after - timedelta(days=31))["expiring"] == []


def test_status_prints_the_expiry_count(fleet, tmp_path, capsys):
    main(["status", "--env", "dev", "--region", REGION, "--set", "storage.enforce_tls=false", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["device_certificates"]["local_certificates"] == SMALL
    assert out["device_certificates"]["within_days"] == 30


# --- rotation ----------------------------------------------------------------------------------
def test_rotation_sweep_replaces_every_expiring_certificate_once(big_fleet, tmp_path):
    fleet = big_fleet
    before = {f"s-{i:02d}": attached(f"s-{i:02d}") for i in range(N)}
    # moto's certificates are valid for a day: every one expires within 30 days
    result = certificates.rotate_devices(fleet(), expiring_within=timedelta(days=30), limiter=fast())
    assert result.counts() == {"rotated": N} and result.skipped == 0
    certs = client().list_certificates(pageSize=250)["certificates"]
    assert len(certs) == N and all(c["status"] == "ACTIVE" for c in certs)  # the old ones deleted
    for thing, old in before.items():
        (new,) = attached(thing)
        assert new not in old
        assert [p["policyName"] for p in client().list_attached_policies(target=new)["policies"]] == [POLICY]
        folder = tmp_path / ".iotpipe" / "devices" / "dev" / thing
        record = json.loads((folder / "certificate.json").read_text())
        assert record["certificate_arn"] == new and record["status"] == "active"
        assert stat.S_IMODE(os.stat(folder / "private.pem.key").st_mode) == 0o600

    again = certificates.rotate_devices(fleet(), expiring_within=timedelta(0), limiter=fast())
    assert again.devices == [] and again.skipped == N  # nothing expires right now


def test_rotation_attaches_the_new_certificate_before_retiring_the_old(fleet):
    log = CallLog()
    certificates.rotate_devices(fleet(log), ids=("s-03",), limiter=fast(), workers=1)
    ops = [op for service, op in log.calls if service == "iot"]
    assert ops.index("CreateKeysAndCertificate") < ops.index("AttachThingPrincipal") \
        < ops.index("DetachThingPrincipal") < ops.index("DeleteCertificate")


def test_rotate_by_id_reports_unknown_devices_and_rotates_the_rest(fleet):
    result = certificates.rotate_devices(fleet(), ids=("s-01", "nope"), limiter=fast())
    assert {d.device_id: d.outcome for d in result.devices} == {"nope": "failed", "s-01": "rotated"}
    assert "no device 'nope'" in result.failed[0].reason


def test_rotate_needs_exactly_one_selection(fleet):
    with pytest.raises(ConfigError):
        certificates.rotate_devices(fleet(), ids=("s-01",), all_devices=True)


def test_rotation_killed_halfway_is_finished_by_the_next_sweep(fleet, tmp_path):
    """8 mutating calls a device (4 to make and attach, 4 to retire): killed mid-sweep."""
    engine = fleet()
    Killer(20, "after").attach(engine.ctx.aws.events)
    with pytest.raises(Killed):
        certificates.rotate_devices(engine, all_devices=True, limiter=fast(), workers=4)
    # devices whose new certificate is recorded but not finished are finished; the rest rotate
    certificates.rotate_devices(fleet(), all_devices=True, limiter=fast())
    active = [c for c in client().list_certificates(pageSize=250)["certificates"] if c["status"] == "ACTIVE"]
    assert len(active) == SMALL
    for i in range(SMALL):
        assert len(attached(f"s-{i:02d}")) == 1
    log = CallLog()
    assert device_import.import_devices(
        fleet(log), [device_import.DeviceRow(2 + i, f"s-{i:02d}", {"location": "hall-1"}) for i in range(SMALL)],
        limiter=fast()).counts() == {"unchanged": SMALL}
    assert log.mutating == []


def test_cli_rotate_refuses_two_selections(capsys):
    assert main(["device", "rotate", "s-01", "--all", "--env", "dev"]) == ExitCode.USAGE


# --- export ------------------------------------------------------------------------------------
def test_export_to_a_directory_keeps_the_key_mode(fleet, tmp_path):
    out = tmp_path / "flash"
    result = device_export.export_devices(fleet(), ("s-01", "s-02"), out)
    assert result.kind == "dir"
    key = out / "s-01" / "private.pem.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    src = tmp_path / ".iotpipe" / "devices" / "dev" / "s-01"
    assert key.read_bytes() == (src / "private.pem.key").read_bytes()
    assert (out / "s-01" / "certificate.pem.crt").read_bytes() == (src / "certificate.pem.crt").read_bytes()
    info = json.loads((out / "s-01" / "device.json").read_text())
    assert info["client_id"] == "s-01" and info["topic"] == "manufacturing/sensors/s-01/data"
    assert info["endpoint"].endswith("-ats.iot.us-east-1.amazonaws.com") and info["port"] == 8883
    assert info["root_ca_url"] == devices.ROOT_CA_URL
    with pytest.raises(ConfigError, match="already holds s-01"):
        device_export.export_devices(fleet(), ("s-01",), out)


def test_export_to_a_zip_records_mode_0600_for_the_key(fleet, tmp_path, capsys):
    out = tmp_path / "bundle.zip"
    code = main(["device", "export", "s-01", "s-05", "--out", str(out), "--env", "dev", "--region", REGION])
    assert code == ExitCode.OK
    assert "PRIVATE KEY" not in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with zipfile.ZipFile(out) as archive:
        modes = {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in archive.infolist()}
        assert modes["s-05/private.pem.key"] == 0o600
        assert modes["s-05/certificate.pem.crt"] == 0o644
        assert sorted(modes) == sorted(f"{d}/{f}" for d in ("s-01", "s-05") for f in
                                       ("certificate.pem.crt", "private.pem.key", "device.json", "README.txt"))
        extracted = tmp_path / "unzipped"
        archive.extractall(extracted)
    assert main(["device", "export", "s-01", "--out", str(out), "--env", "dev", "--region", REGION]) == ExitCode.CONFIG


def test_export_refuses_a_device_whose_key_is_not_here_and_writes_nothing(fleet, tmp_path):
    (tmp_path / ".iotpipe" / "devices" / "dev" / "s-02" / "private.pem.key").unlink()
    out = tmp_path / "flash"
    with pytest.raises(devices.DeviceNeedsRotationError, match="s-02.*private key is not in"):
        device_export.export_devices(fleet(), ("s-01", "s-02"), out)
    assert not out.exists()
    client().update_certificate(certificateId=attached("s-03")[0].split("/")[-1], newStatus="REVOKED")
    with pytest.raises(devices.DeviceNeedsRotationError, match="s-03.*revoked"):
        device_export.export_devices(fleet(), ("s-03",), out)
    assert not Path(out).exists()


def test_cli_rotate_by_expiry_and_list_with_expiry(fleet, capsys):
    code = main(["device", "rotate", "--expiring-within", "30d", "--env", "dev", "--region", REGION, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == ExitCode.OK and out["counts"] == {"rotated": SMALL}
    assert main(["device", "list", "--env", "dev", "--region", REGION]) == ExitCode.OK
    text = capsys.readouterr().out
    assert text.count(" ACTIVE until ") == SMALL
    assert main(["device", "rotate", "--expiring-within", "soon", "--env", "dev"]) == ExitCode.CONFIG
