"""`iotpipe device export ID... --out DIR|FILE.zip`: what an installer flashes onto a sensor.

Per device: its certificate, its private key (mode 0600 in a directory, and recorded as 0600
in the zip's entry so `unzip` restores it), and ``device.json`` with the endpoint, client id,
topic, port, region and where to get the Amazon root CA (not bundled: AWS publishes it, and
a copy here could go stale). Only a device whose key is in this state directory and whose
certificate is ACTIVE and attached can be exported: anything else would flash a sensor that
cannot connect. Nothing is overwritten: an existing target is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from iotpipe.devices import (
    ENDPOINT_TYPE,
    ROOT_CA_URL,
    DeviceNeedsRotationError,
    _key_matches,
    _read_record,
    _write_file,
    device_paths,
    topic,
    validate_device_id,
)
from iotpipe.engine import Engine
from iotpipe.errors import ConfigError
from iotpipe.steps.base import get_or_none
from iotpipe.steps.iot import thing_certificates

MQTT_PORT = 8883
INFO_FILE = "device.json"
README_FILE = "README.txt"


@dataclass
class ExportResult:
    env: str
    out: str
    kind: str  # dir | zip
    devices: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_devices(engine: Engine, ids: tuple[str, ...], out: Path) -> ExportResult:
    """Check every device first (reads only), then write the bundle; a device that cannot be
    exported stops the export before anything is written."""
    if not ids:
        raise ConfigError("name the devices to export (device ids)")
    for device_id in ids:
        validate_device_id(device_id)
    if len(set(ids)) != len(ids):
        raise ConfigError("a device id is named twice")
    as_zip = out.suffix.lower() == ".zip"
    if as_zip and out.exists():
        raise ConfigError(f"--out {out} exists: iotpipe does not overwrite it; choose a new name")
    if not as_zip and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a directory, or a name ending in .zip")
    if not as_zip:
        taken = [d for d in ids if (out / d).exists()]
        if taken:
            raise ConfigError(f"--out {out} already holds {', '.join(taken)}: iotpipe does not "
                              "overwrite them; choose another directory")
    ctx = engine.ctx
    engine.store.check_account(ctx.account)
    iot = ctx.client("iot")
    bundles = []
    for device_id in ids:
        paths = device_paths(engine.store.root, ctx.env, device_id)
        record = _read_record(paths)
        rotate = (f"run `iotpipe device rotate {device_id} --env {ctx.env}` to issue a new "
                  "certificate whose key is kept here")
        if record is None or not _key_matches(paths, record):
            raise DeviceNeedsRotationError(f"device {device_id!r}: its private key is not in "
                                           f"{paths.dir} (AWS hands it out only once): {rotate}")
        found = get_or_none(iot.describe_certificate, certificateId=record["certificate_id"])
        status = found["certificateDescription"].get("status") if found else "DELETED"
        if status != "ACTIVE" or record["certificate_arn"] not in (get_or_none(thing_certificates, ctx, device_id) or []):
            raise DeviceNeedsRotationError(f"device {device_id!r}: its certificate "
                                           f"{record['certificate_id'][:12]}… is {status.lower()} or not "
                                           f"attached to the thing: {rotate}")
        bundles.append((device_id, paths, record))
    endpoint = iot.describe_endpoint(endpointType=ENDPOINT_TYPE)["endpointAddress"]
    result = ExportResult(ctx.env, str(out), "zip" if as_zip else "dir", list(ids))
    entries: list[tuple[str, bytes, int]] = []
    for device_id, paths, record in bundles:
        info = {
            "client_id": device_id, "thing_name": device_id, "endpoint": endpoint, "port": MQTT_PORT,
            "topic": topic(device_id), "region": ctx.region, "env": ctx.env,
            "certificate_id": record["certificate_id"], "certificate_file": "certificate.pem.crt",
            "private_key_file": "private.pem.key", "root_ca_url": ROOT_CA_URL,
        }
        readme = (f"Device {device_id} (env {ctx.env}, region {ctx.region})\n"
                  f"MQTT over TLS to {endpoint}:{MQTT_PORT}, client id {device_id}, publish to "
                  f"{topic(device_id)}\nRoot CA (not included): {ROOT_CA_URL}\n"
                  "private.pem.key is secret: keep it mode 0600 and never copy it anywhere else.\n")
        entries += [
            (f"{device_id}/certificate.pem.crt", paths.certificate.read_bytes(), 0o644),
            (f"{device_id}/private.pem.key", paths.key.read_bytes(), 0o600),
            (f"{device_id}/{INFO_FILE}", (json.dumps(info, indent=2) + "\n").encode(), 0o644),
            (f"{device_id}/{README_FILE}", readme.encode(), 0o644),
        ]
    if as_zip:
        _write_zip(out, entries)
    else:
        for name, data, mode in entries:
            _write_file(out / name, data.decode(), mode)
    result.files = [name for name, _, _ in entries]
    return result


def _write_zip(out: Path, entries: list[tuple[str, bytes, int]]) -> None:
    """The zip holds keys: created 0600 under a temporary name with O_EXCL, renamed when whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16  # a regular file with this mode
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
        raw.flush()
        os.fsync(raw.fileno())
    os.link(tmp, out)  # fails if someone created ``out`` meanwhile: never overwrite
    tmp.unlink()
