"""Sensor registration: an IoT thing of the env's type, a certificate, its private key on disk.

`iotpipe device add|list|remove` are thin adapters over the functions here; this module
never prints. AWS hands out a certificate's private key exactly once (in the
CreateKeysAndCertificate answer), so the order of steps is what keeps a device usable when a
run dies halfway:

1. create the certificate, inactive;
2. record it in ``certificate.json`` (atomic replace): id, ARN, sha256 of the key, and the
   certificates it replaces — before anything else, so that no later crash can leave a
   certificate iotpipe does not know about;
3. write the private key (``O_CREAT|O_EXCL``, mode 0600, to a temporary name, then renamed:
   never through a default-umask open, never a half-written key under the final name);
4. write the certificate PEM (0644);
5. activate the certificate, attach the device policy to it and it to the thing;
6. (rotation) retire the replaced certificates; mark the record "active".

A re-run reads the record first. Its certificate with a key that matches the recorded hash is
finished (steps 5–6), never duplicated; its certificate without the key (died between 2 and
3) is useless, so it is deleted and a new one made. The one window left is between AWS
answering step 1 and step 2 (or an answer lost on the way): CreateKeysAndCertificate takes no
idempotency token, so that can leave an unattached certificate without policy; it was made
inactive, so it can never connect and a device never has more than one active certificate.
It shows in `aws iot list-certificates` as INACTIVE.

The files live in ``<state-dir>/devices/<env>/<device>/``; the Amazon root CA is not
downloaded (get it from https://www.amazontrust.com/repository/AmazonRootCA1.pem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotpipe.engine import Engine
from iotpipe.errors import ConfigError, ExitCode, IotpipeError, OwnershipError, StateError
from iotpipe.ratelimit import RateLimiter
from iotpipe.steps.base import StepContext, get_or_none, paginate
from iotpipe.steps.iot import (
    DEVICE_MARKER_ATTRIBUTE,
    DevicePolicy,
    cert_id,
    delete_device,
    device_marker_ok,
    retire_certificate,
    thing_certificates,
    thing_type_is_ours,
)

DEVICE_ID = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{1,800}")  # AWS's pattern, minus empty
DEVICE_ATTRIBUTES = ("location", "facility", "equipment_type")  # the thing type's searchable ones
KEY_FILE = "private.pem.key"
ISSUING_FILE = ".issuing.json"  # a CreateKeysAndCertificate sent, its answer not yet recorded
CERT_FILE = "certificate.pem.crt"
RECORD_FILE = "certificate.json"
ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"
ENDPOINT_TYPE = "iot:Data-ATS"


class _NoPrivateKeys(logging.Filter):
    """botocore logs every response body at DEBUG (botocore.parsers), and the answer to
    CreateKeysAndCertificate carries the private key: whoever turns debug logging on must
    still never find a key in a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return "PRIVATE KEY" not in record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not ours to judge
            return True


_KEY_FILTER = _NoPrivateKeys()
for _name in ("botocore.parsers", "botocore.endpoint", "botocore.hooks"):
    if _KEY_FILTER not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_KEY_FILTER)


class EnvNotDeployedError(IotpipeError):
    """The env has no thing type or device policy: devices have nothing to register with.

    Exit 2, as `status` reports missing resources: `iotpipe up` is the fix.
    """

    exit_code = ExitCode.CHANGES_PENDING


class DeviceNeedsRotationError(IotpipeError):
    """The device's certificate cannot be used from here (its private key is not in this
    state directory, or the certificate was deactivated); only a new certificate helps.

    Exit 66: the local record does not match AWS, and nothing was written.
    """

    exit_code = ExitCode.STATE


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class DeviceResult:
    """What `device add` did. Holds paths to the key, never the key."""

    action: str  # create | rotate | update | unchanged
    env: str
    device_id: str
    thing_arn: str
    certificate_id: str
    certificate_arn: str
    endpoint: str
    topic: str
    key_path: str
    certificate_path: str
    root_ca: str = ROOT_CA_URL
    replaced_certificates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CertificateInfo:
    id: str
    arn: str
    status: str
    not_after: str = ""  # ISO 8601 UTC, from DescribeCertificate's validity; "" when unknown


@dataclass
class DeviceInfo:
    device_id: str
    thing_arn: str
    thing_type: str
    attributes: dict[str, str]
    managed: bool
    certificates: list[CertificateInfo]
    local_key: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RemoveResult:
    action: str  # delete | absent
    env: str
    device_id: str
    deleted_certificates: list[str] = field(default_factory=list)
    local_files_removed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Validation (before any AWS call)
# --------------------------------------------------------------------------------------------
def validate_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id or ""):
        raise ConfigError(f"invalid device id {device_id!r}: 1-128 characters of a-z A-Z 0-9 : _ - "
                          "(it is the IoT thing name and the MQTT client id)")
    return device_id


def validate_attributes(attributes: dict[str, str | None]) -> dict[str, str]:
    """The attributes given (None = not given), checked against AWS's value pattern."""
    clean: dict[str, str] = {}
    for name, value in attributes.items():
        if name not in DEVICE_ATTRIBUTES:
            raise ConfigError(f"unknown device attribute {name!r}: one of {', '.join(DEVICE_ATTRIBUTES)}")
        if value is None:
            continue
        if not ATTRIBUTE_VALUE.fullmatch(value):
            raise ConfigError(f"invalid {name.replace('_', '-')} {value!r}: 1-800 characters of "
                              "a-z A-Z 0-9 _ . , @ / : # = [ ] - (no spaces)")
        clean[name] = value
    return clean


# --------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DevicePaths:
    dir: Path

    @property
    def key(self) -> Path:
        return self.dir / KEY_FILE

    @property
    def certificate(self) -> Path:
        return self.dir / CERT_FILE

    @property
    def record(self) -> Path:
        return self.dir / RECORD_FILE


def device_paths(state_root: Path, env: str, device_id: str) -> DevicePaths:
    return DevicePaths(Path(state_root) / "devices" / env / device_id)


def _write_file(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` with exactly ``mode``, atomically.

    The file is created with O_CREAT|O_EXCL and its final mode (never wider, whatever the
    umask), under a temporary name, fsynced, then renamed over ``path``: a crash leaves the
    old file or the new one, never a half-written key under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a run that died while writing: ours, and incomplete
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; make it exact
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_record(paths: DevicePaths) -> dict[str, Any] | None:
    try:
        raw = json.loads(paths.record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise StateError(f"device record {paths.record} is unreadable: move the directory aside "
                         "and use --rotate to issue a new certificate") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("certificate_arn"), str):
        raise StateError(f"device record {paths.record} is not iotpipe's: move the directory aside "
                         "and use --rotate to issue a new certificate")
    return raw


def _write_record(paths: DevicePaths, record: dict[str, Any]) -> None:
    _write_file(paths.record, json.dumps(record, indent=2, sort_keys=True) + "\n", 0o644)


def _key_matches(paths: DevicePaths, record: dict[str, Any]) -> bool:
    try:
        data = paths.key.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == record.get("key_sha256")


def _clear_local(paths: DevicePaths) -> None:
    for path in (paths.key, paths.certificate, paths.record):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(engine: Engine, operation: str, timeout: float) -> Iterator[StepContext]:
    """The env's lock, as `up` and `destroy` take it: a destroy running meanwhile would delete
    the policy and type a device is being attached to."""
    engine.store.check_account(engine.ctx.account)
    with engine.store.lock(operation, timeout=timeout):
        yield engine.ctx


def _require_deployed(ctx: StepContext) -> tuple[str, str]:
    iot = ctx.client("iot")
    type_name, policy_name = ctx.names.thing_type, ctx.names.device_policy
    found = get_or_none(iot.describe_thing_type, thingTypeName=type_name)
    if found is None:
        raise EnvNotDeployedError(f"env {ctx.env!r} is not deployed (no thing type {type_name}): "
                                  f"run `iotpipe up --env {ctx.env}` first")
    if not thing_type_is_ours(ctx, found):
        raise OwnershipError(f"thing type {type_name} exists but is not iotpipe's for env {ctx.env!r}: "
                             "no device is registered with it")
    if found.get("thingTypeMetadata", {}).get("deprecated"):
        raise EnvNotDeployedError(f"thing type {type_name} is deprecated (env {ctx.env!r} is being "
                                  f"destroyed): run `iotpipe up --env {ctx.env}` to restore it first")
    policy = DevicePolicy().read(ctx)
    if policy is None:
        raise EnvNotDeployedError(f"env {ctx.env!r} is not fully deployed (no device policy "
                                  f"{policy_name}): run `iotpipe up --env {ctx.env}` first")
    if not policy.managed:
        raise OwnershipError(f"IoT policy {policy_name} exists but is not iotpipe's for env {ctx.env!r}: "
                             "no certificate is attached to it")
    return type_name, policy_name


def topic(device_id: str) -> str:
    return f"manufacturing/sensors/{device_id}/data"


def add_device(
    engine: Engine,
    device_id: str,
    *,
    attributes: dict[str, str | None] | None = None,
    rotate: bool = False,
    lock_timeout: float = 0.0,
) -> DeviceResult:
    """Register ``device_id`` (thing + certificate + key file + attachments), idempotently.

    ``attributes`` given are set (merged into the thing's); those not given are left as they
    are. ``rotate`` issues a new certificate and retires the old ones once it is attached.
    """
    validate_device_id(device_id)
    wanted = validate_attributes(attributes or {})
    with _locked(engine, f"device add {device_id}", lock_timeout) as ctx:
        type_name, policy_name = _require_deployed(ctx)
        return register_device(ctx, engine.store.root, device_id, wanted, type_name=type_name,
                               policy_name=policy_name, rotate=rotate)


def register_device(
    ctx: StepContext,
    state_root: Path,
    device_id: str,
    wanted: dict[str, str],
    *,
    type_name: str,
    policy_name: str,
    rotate: bool = False,
    endpoint: str | None = None,
) -> DeviceResult:
    """One device's registration with every guarantee of `device add` (steps 1-6 of the module
    docstring, each only when not done yet), for callers that hold the env's lock and have
    checked the env is deployed: `device add` for one device, `device import` and `device
    rotate` for many at once (from several threads: it shares nothing but the client).

    ``endpoint`` given saves a DescribeEndpoint per device (it is the same for the account).
    """
    iot = ctx.client("iot")
    paths = device_paths(state_root, ctx.env, device_id)
    early = None
    with contextlib.suppress(StateError):  # an unreadable record is reported further on
        early = _read_record(paths)
    if early is not None:
        _refuse_other_region(ctx, paths, early)  # before anything is written
    notes: list[str] = []
    action = "unchanged"
    lost = _lost_answer(paths)
    if lost:
        notes.append(f"a certificate requested at {lost} by a run that died may exist without its "
                     "answer: if so it is INACTIVE and attached to nothing (it cannot connect); "
                     "`aws iot list-certificates` shows it")

    thing = get_or_none(iot.describe_thing, thingName=device_id)
    if thing is None:
        made = iot.create_thing(thingName=device_id, thingTypeName=type_name, attributePayload={
            "attributes": {**wanted, DEVICE_MARKER_ATTRIBUTE: ctx.env}})
        thing_arn = made["thingArn"]
        action = "create"
    else:
        if not device_marker_ok(ctx, thing):
            raise OwnershipError(f"thing {device_id!r} exists but is not an iotpipe device of env "
                                 f"{ctx.env!r} (no {DEVICE_MARKER_ATTRIBUTE}={ctx.env} attribute): "
                                 "choose another device id")
        thing_arn = thing["thingArn"]
        have = thing.get("attributes") or {}
        fix = {k: v for k, v in wanted.items() if have.get(k) != v}
        if fix or thing.get("thingTypeName") != type_name:
            kwargs: dict[str, Any] = {"thingName": device_id, "thingTypeName": type_name}
            if fix:
                kwargs["attributePayload"] = {"attributes": fix, "merge": True}
            iot.update_thing(**kwargs)
            action = "update"
            notes.append("thing updated: " + ", ".join(sorted(fix) or ["thing type"]))

    attached = thing_certificates(ctx, device_id) if thing is not None else []
    record, cert = _usable_record(ctx, paths, device_id, attached, rotate, notes)
    fresh = False
    if record is None or (rotate and record.get("status") == "active"):
        replaces = sorted(set(attached) | ({record["certificate_arn"]} if record else set()))
        record, cert = _issue(ctx, paths, device_id, replaces)
        fresh = True
        action = "rotate" if replaces else "create"
    if _finish(ctx, paths, device_id, policy_name, record, cert, attached, notes, fresh=fresh) \
            and action == "unchanged":
        action = "update"

    if endpoint is None:
        endpoint = iot.describe_endpoint(endpointType=ENDPOINT_TYPE)["endpointAddress"]
    return DeviceResult(
        action=action, env=ctx.env, device_id=device_id, thing_arn=thing_arn,
        certificate_id=record["certificate_id"], certificate_arn=record["certificate_arn"],
        endpoint=endpoint, topic=topic(device_id), key_path=os.path.abspath(paths.key),
        certificate_path=os.path.abspath(paths.certificate),
        replaced_certificates=[cert_id(a) for a in record.get("replaces", [])] if action == "rotate" else [],
        notes=notes)


def _usable_record(
    ctx: StepContext, paths: DevicePaths, device_id: str, attached: list[str], rotate: bool,
    notes: list[str],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The local record and its certificate when they can be finished or kept; else None
    (after cleaning up what cannot be used). Raises when only --rotate can help."""
    iot = ctx.client("iot")
    record = _read_record(paths)
    if record is not None:
        _refuse_other_region(ctx, paths, record)
        found = get_or_none(iot.describe_certificate, certificateId=record["certificate_id"])
        cert = found["certificateDescription"] if found else None
        if cert is None:
            # Deleted outside this directory's knowledge (by destroy, or by hand): stale files.
            _clear_local(paths)
            notes.append(f"removed local files of certificate {record['certificate_id'][:12]}…, "
                         "which no longer exists")
            record = None
        elif not _key_matches(paths, record):
            if record["certificate_arn"] in attached:
                if rotate:
                    return None, None
                raise _needs_rotation(ctx, device_id, paths, "its private key is not in "
                                      f"{paths.dir}")
            # Made by a run that died before the key was safely on disk: it can never be used.
            retire_certificate(ctx, record["certificate_arn"], device_id)
            _clear_local(paths)
            notes.append(f"deleted certificate {record['certificate_id'][:12]}… whose key was never "
                         "written (an interrupted run)")
            record = None
        elif cert.get("status") == "INACTIVE" and record.get("status") == "pending":
            return record, cert  # made inactive by a run that died before activating it: finish it
        elif cert.get("status") != "ACTIVE":
            # Deactivated by someone (a revocation): not iotpipe's to undo.
            if not rotate:
                raise _needs_rotation(ctx, device_id, paths, f"its certificate "
                                      f"{record['certificate_id'][:12]}… is {cert.get('status')}")
            retire_certificate(ctx, record["certificate_arn"], device_id)
            _clear_local(paths)
            return None, None
        else:
            return record, cert
    if attached and not rotate:
        raise _needs_rotation(ctx, device_id, paths, f"it has {len(attached)} certificate(s) attached but "
                              f"no private key in {paths.dir}")
    return None, None


def _refuse_other_region(ctx: StepContext, paths: DevicePaths, record: dict[str, Any]) -> None:
    """Stop, touching nothing, when the local certificate was issued in another region or account.

    Its certificate is missing here because it lives there: deleting the key as "stale" would
    cut off a device that is live in that region (AWS hands out a private key only once).
    """
    parts = str(record.get("certificate_arn", "")).split(":")
    if len(parts) < 6:
        return
    region, account = parts[3], parts[4]
    if (region, account) != (ctx.region, ctx.account):
        raise StateError(
            f"device files in {paths.dir} belong to a certificate of region {region} (account "
            f"{account}), not {ctx.region} ({ctx.account}): left untouched; use a separate "
            "--state-dir (and env name) per region")


def _needs_rotation(ctx: StepContext, device_id: str, paths: DevicePaths, why: str) -> DeviceNeedsRotationError:
    return DeviceNeedsRotationError(
        f"device {device_id!r} cannot be used from here: {why} (AWS hands out a private key only "
        f"once): run `iotpipe device add {device_id} --env {ctx.env} --rotate` to issue a new "
        "certificate and retire the old one")


def _issue(
    ctx: StepContext, paths: DevicePaths, device_id: str, replaces: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps 1-4 of the module docstring: a new certificate, recorded, its key on disk.

    Returns the record and what CreateKeysAndCertificate said of the certificate: a new
    certificate is INACTIVE (step 1) and has no policy yet, so describing it again would only
    spend DescribeCertificate's small rate (10 per second) in a bulk import."""
    issuing = paths.dir / ISSUING_FILE
    _write_file(issuing, json.dumps({"requested_at": _now()}) + "\n", 0o644)
    made = ctx.client("iot").create_keys_and_certificate(setAsActive=False)
    key = made["keyPair"]["PrivateKey"]
    record = {
        "device_id": device_id, "env": ctx.env, "status": "pending",
        "certificate_id": made["certificateId"], "certificate_arn": made["certificateArn"],
        "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "replaces": replaces,
        "created_at": _now(),
    }
    _write_record(paths, record)
    issuing.unlink()  # the answer is recorded: nothing of this request can be lost any more
    _write_file(paths.key, key, 0o600)
    del key, made["keyPair"]
    _write_file(paths.certificate, made["certificatePem"], 0o644)
    return record, {"certificatePem": made["certificatePem"], "status": "INACTIVE"}


def _lost_answer(paths: DevicePaths) -> str:
    """When a run died between sending CreateKeysAndCertificate and recording its answer: the
    time it was sent (and the marker is cleared, this run takes over); else ""."""
    marker = paths.dir / ISSUING_FILE
    try:
        sent = str(json.loads(marker.read_text(encoding="utf-8")).get("requested_at", "?"))
    except FileNotFoundError:
        return ""
    except (OSError, ValueError, AttributeError):
        sent = "?"
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    return sent


def _finish(
    ctx: StepContext, paths: DevicePaths, device_id: str, policy_name: str, record: dict[str, Any],
    cert: dict[str, Any], attached: list[str], notes: list[str], *, fresh: bool = False,
) -> bool:
    """Steps 4-6, each only if not done yet; returns whether anything was written.

    ``fresh``: the certificate was made by this run a moment ago, so it has no policy yet."""
    iot = ctx.client("iot")
    arn = record["certificate_arn"]
    changed = False
    pem = cert.get("certificatePem")
    if pem and (not paths.certificate.exists() or paths.certificate.read_text(encoding="utf-8") != pem):
        _write_file(paths.certificate, pem, 0o644)
        changed = True
    if cert.get("status") != "ACTIVE":  # made inactive (step 1), recorded, key on disk: now usable
        iot.update_certificate(certificateId=record["certificate_id"], newStatus="ACTIVE")
        changed = True
    policies = [] if fresh else [
        p["policyName"] for p in paginate(iot, "list_attached_policies", "policies", target=arn)]
    if policy_name not in policies:
        iot.attach_policy(policyName=policy_name, target=arn)
        changed = True
    if arn not in attached:
        iot.attach_thing_principal(thingName=device_id, principal=arn)
        changed = True
    if record.get("status") == "active":
        return changed
    for old in record.get("replaces", []):
        if old != arn and retire_certificate(ctx, old, device_id):
            notes.append(f"retired certificate {cert_id(old)[:12]}…")
            changed = True
    # "active": attached, and whatever it replaces is retired; a re-run has nothing to finish
    _write_record(paths, {**record, "status": "active", "activated_at": _now()})
    return True


def list_devices(engine: Engine) -> list[DeviceInfo]:
    """The things of the env's type, their certificates, and whether this state directory
    holds a usable key for one of them. Reads only."""
    ctx = engine.ctx
    engine.store.check_account(ctx.account)
    iot = ctx.client("iot")
    type_name = ctx.names.thing_type
    if get_or_none(iot.describe_thing_type, thingTypeName=type_name) is None:
        raise EnvNotDeployedError(f"env {ctx.env!r} is not deployed (no thing type {type_name}): "
                                  f"run `iotpipe up --env {ctx.env}` first")
    # A thousand devices cost two thousand reads at 10 a second (ListThingPrincipals,
    # DescribeCertificate): paced like `device import`, never throttled.
    limiter = RateLimiter(clock=ctx.aws.clock, sleep=ctx.aws.sleep).attach(iot.meta.events)
    try:
        devices = _list(engine, ctx, iot, type_name)
    finally:
        limiter.detach(iot.meta.events)
    return sorted(devices, key=lambda d: d.device_id)


def _list(engine: Engine, ctx: StepContext, iot: Any, type_name: str) -> list[DeviceInfo]:
    devices: list[DeviceInfo] = []
    for thing in paginate(iot, "list_things", "things", thingTypeName=type_name):
        name = thing["thingName"]
        certs = []
        for arn in get_or_none(thing_certificates, ctx, name) or []:
            found = get_or_none(iot.describe_certificate, certificateId=cert_id(arn))
            status = found["certificateDescription"].get("status", "") if found else "DELETED"
            certs.append(CertificateInfo(cert_id(arn), arn, status, _not_after(found)))
        local = False
        if DEVICE_ID.fullmatch(name):
            paths = device_paths(engine.store.root, ctx.env, name)
            with contextlib.suppress(StateError):
                record = _read_record(paths)
                local = bool(record and _key_matches(paths, record)
                             and record["certificate_arn"] in {c.arn for c in certs})
        attrs = dict(thing.get("attributes") or {})
        devices.append(DeviceInfo(
            device_id=name, thing_arn=thing.get("thingArn", ""), thing_type=type_name,
            attributes={k: v for k, v in attrs.items() if k != DEVICE_MARKER_ATTRIBUTE},
            managed=device_marker_ok(ctx, thing), certificates=certs, local_key=local))
    return devices


def _not_after(found: dict[str, Any] | None) -> str:
    value = ((found or {}).get("certificateDescription", {}).get("validity") or {}).get("notAfter")
    if not isinstance(value, datetime):
        return ""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def remove_device(engine: Engine, device_id: str, *, lock_timeout: float = 0.0) -> RemoveResult:
    """Certificates (policy and thing detached, deactivated, deleted), thing, local files.

    Already gone is a quiet success; a thing without the env's marker is refused untouched.
    """
    validate_device_id(device_id)
    with _locked(engine, f"device remove {device_id}", lock_timeout) as ctx:
        iot = ctx.client("iot")
        paths = device_paths(engine.store.root, ctx.env, device_id)
        try:
            record = _read_record(paths)
        except StateError:
            record = None  # the directory goes anyway
        if record is not None:
            _refuse_other_region(ctx, paths, record)
        extra = (record["certificate_arn"],) if record else ()
        thing = get_or_none(iot.describe_thing, thingName=device_id)
        result = RemoveResult("absent", ctx.env, device_id)
        if thing is not None:
            if not device_marker_ok(ctx, thing):
                raise OwnershipError(f"thing {device_id!r} is not an iotpipe device of env {ctx.env!r} "
                                     f"(no {DEVICE_MARKER_ATTRIBUTE}={ctx.env} attribute): left alone")
            result.deleted_certificates = delete_device(ctx, device_id, extra)
            result.action = "delete"
        elif extra and retire_certificate(ctx, extra[0], device_id):
            # A crashed `device add` whose thing is gone: its recorded certificate still is not.
            result.deleted_certificates = [cert_id(extra[0])]
            result.action = "delete"
        if paths.dir.exists():
            shutil.rmtree(paths.dir)
            result.local_files_removed = True
        return result


def local_key_files(state_root: Path, env: str) -> list[str]:
    """The env's private key files in this state directory: `destroy` names them, never deletes.

    A key is the one copy there is (AWS hands it out once), and a device may still use it
    (another region, a certificate re-registered by hand): only the operator may remove it.
    """
    root = Path(state_root) / "devices" / env
    return sorted(str(p) for p in root.glob(f"*/{KEY_FILE}") if p.is_file())
