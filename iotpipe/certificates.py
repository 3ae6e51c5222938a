"""Device certificate lifecycle: when each expires, and bulk rotation.

`device list` shows every certificate's expiry (DescribeCertificate's ``validity``);
`status` counts the env's local device certificates that expire soon, read from the PEM files
in the state directory (no AWS call: describing every certificate would cost a device-count
of calls at 10 per second); `device rotate` issues new certificates for a selection of devices
in the order `device add --rotate` uses (the new certificate attached first, the old one
retired after), through the same `devices.register_device`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from iotpipe.device_import import (
    DEFAULT_WORKERS,
    DeviceOutcome,
    DeviceRow,
    _register_all,
    count_outcomes,
)
from iotpipe.devices import (
    CERT_FILE,
    DEVICE_ID,
    ENDPOINT_TYPE,
    _locked,
    _require_deployed,
    validate_device_id,
)
from iotpipe.engine import Engine
from iotpipe.errors import ConfigError
from iotpipe.ratelimit import RateLimiter
from iotpipe.steps.base import get_or_none, paginate
from iotpipe.steps.iot import cert_id, device_marker_ok, thing_certificates

EXPIRING_SOON = timedelta(days=30)  # what `status` calls soon
_DURATION = re.compile(r"(\d{1,5})([dhw])")


def parse_within(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w`` (what --expiring-within takes)."""
    match = _DURATION.fullmatch((text or "").strip().lower())
    if not match:
        raise ConfigError(f"invalid duration {text!r}: a number and a unit, e.g. 30d, 12h or 2w")
    n, unit = int(match.group(1)), match.group(2)
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "w": timedelta(weeks=n)}[unit]


# --------------------------------------------------------------------------------------------
# Expiry from a PEM certificate, without a crypto library
# --------------------------------------------------------------------------------------------
def _der_item(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``at``."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[at:at + size], "big")
        at += size
    return tag, at, at + length


def pem_not_after(pem: str) -> datetime | None:
    """The notAfter of an X.509 certificate in PEM, or None when it cannot be read.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... } (RFC 5280 4.1).
    """
    try:
        body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
        der = base64.b64decode(body)
        _, cert_start, _ = _der_item(der, 0)
        _, tbs, _ = _der_item(der, cert_start)
        at = tbs
        tag, _, end = _der_item(der, at)
        if tag == 0xA0:  # explicit version
            at = end
        for _skip in range(3):  # serialNumber, signature, issuer
            at = _der_item(der, at)[2]
        _, validity, _ = _der_item(der, at)
        not_before_end = _der_item(der, validity)[2]
        tag, start, end = _der_item(der, not_before_end)
        text = der[start:end].decode("ascii")
        if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ (RFC 5280 4.1.2.5.1: 50-99 are 19xx)
            year = int(text[:2])
            text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
        return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def local_expiring(state_root: Path, env: str, within: timedelta = EXPIRING_SOON,
                   now: datetime | None = None) -> dict[str, Any]:
    """The env's device certificates in this state directory that expire within ``within``
    (expired ones included): for `status`. Reads files only."""
    now = now or datetime.now(UTC)
    root = Path(state_root) / "devices" / env
    total, expiring, unreadable = 0, [], 0
    for cert in sorted(root.glob(f"*/{CERT_FILE}")):
        total += 1
        try:
            not_after = pem_not_after(cert.read_text(encoding="utf-8"))
        except OSError:
            not_after = None
        if not_after is None:
            unreadable += 1
        elif not_after - now <= within:
            expiring.append({"device_id": cert.parent.name, "not_after": iso(not_after)})
    return {"within_days": within.days, "local_certificates": total, "expiring": expiring,
            "unreadable": unreadable}


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def certificate_not_after(description: dict[str, Any]) -> datetime | None:
    """From DescribeCertificate's answer: ``validity.notAfter``, else the PEM's own."""
    value = (description.get("validity") or {}).get("notAfter")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    pem = description.get("certificatePem")
    return pem_not_after(pem) if pem else None


# --------------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------------
@dataclass
class RotateResult:
    env: str
    selection: str
    devices: list[DeviceOutcome] = field(default_factory=list)
    skipped: int = 0  # devices of the env not selected (not expiring)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return count_outcomes(self.devices)

    @property
    def failed(self) -> list[DeviceOutcome]:
        return [d for d in self.devices if d.outcome == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "selection": self.selection, "counts": self.counts(),
                "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "devices": [asdict(d) for d in self.devices]}


def rotate_devices(
    engine: Engine,
    *,
    ids: tuple[str, ...] = (),
    all_devices: bool = False,
    expiring_within: timedelta | None = None,
    lock_timeout: float = 0.0,
    workers: int = DEFAULT_WORKERS,
    limiter: RateLimiter | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_progress: Callable[[int, int, DeviceOutcome], None] | None = None,
) -> RotateResult:
    """Rotate the selected devices' certificates: exactly one of ``ids``, ``all_devices``,
    ``expiring_within`` (devices with an attached certificate expiring by then)."""
    if sum((bool(ids), all_devices, expiring_within is not None)) != 1:
        raise ConfigError("choose the devices: device ids, --all or --expiring-within (one of them)")
    for device_id in ids:
        validate_device_id(device_id)
    if expiring_within is not None:
        selection = f"expiring within {expiring_within.days}d" if expiring_within.days else \
            f"expiring within {expiring_within}"
    else:
        selection = "all" if all_devices else ", ".join(ids)
    result = RotateResult(engine.ctx.env, selection)
    clock = engine.ctx.aws.clock
    started = clock()
    limiter = limiter if limiter is not None else RateLimiter(clock=clock, sleep=engine.ctx.aws.sleep)
    with _locked(engine, "device rotate", lock_timeout) as ctx:
        type_name, policy_name = _require_deployed(ctx)
        iot = ctx.client("iot")
        limiter.attach(iot.meta.events)  # a client copies the session's hooks when made
        try:
            things = {t["thingName"]: t for t in paginate(iot, "list_things", "things", thingTypeName=type_name)}
            chosen: list[DeviceRow] = []
            unknown: list[DeviceOutcome] = []
            if ids:
                for n, device_id in enumerate(ids, start=1):
                    thing = things.get(device_id)
                    if thing is None or not device_marker_ok(ctx, thing):
                        unknown.append(DeviceOutcome(device_id, n, "failed", f"no device {device_id!r} "
                                                     f"of env {ctx.env!r}"))
                    else:
                        chosen.append(DeviceRow(n, device_id, {}))
            else:
                ours = [name for name, t in sorted(things.items())
                        if device_marker_ok(ctx, t) and DEVICE_ID.fullmatch(name)]
                deadline = now() + (expiring_within or timedelta(0))
                for n, name in enumerate(ours, start=1):
                    if all_devices or _expires_by(ctx, name, deadline):
                        chosen.append(DeviceRow(n, name, {}))
                result.skipped = len(ours) - len(chosen)
            endpoint = iot.describe_endpoint(endpointType=ENDPOINT_TYPE)["endpointAddress"] if chosen else ""
            done = _register_all(ctx, engine.store.root, chosen, type_name, policy_name, endpoint,
                                 workers, on_progress, rotate=True) if chosen else []
        finally:
            limiter.detach(iot.meta.events)
    result.devices = unknown + done
    result.seconds = clock() - started
    return result


def _expires_by(ctx: Any, thing_name: str, deadline: datetime) -> bool:
    """Whether any certificate attached to the thing expires by ``deadline`` (or cannot be read)."""
    iot = ctx.client("iot")
    for arn in thing_certificates(ctx, thing_name):
        found = get_or_none(iot.describe_certificate, certificateId=cert_id(arn))
        if found is None:
            continue
        not_after = certificate_not_after(found["certificateDescription"])
        if not_after is None or not_after <= deadline:
            return True
    return False
