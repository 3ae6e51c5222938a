"""`iotpipe device import FILE`: a plant's sensors from one CSV or JSON-lines file.

Every row is checked (id, attributes, duplicates, size) before the first AWS call, and the
whole file is refused with the line number of every bad row, so a bad file creates nothing.
Then each device goes through `devices.register_device`, the same function as `device add`:
key written once with mode 0600, the certificate recorded before anything is attached, a
re-run finishing what a killed run left instead of duplicating it. Devices are registered by
a small pool of threads, each IoT API paced by its own token bucket at AWS's documented rate
(`iotpipe.ratelimit`), under the env's lock held once for the whole file.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from iotpipe.aws import translate
from iotpipe.devices import (
    DEVICE_ATTRIBUTES,
    ENDPOINT_TYPE,
    _key_matches,
    _locked,
    _read_record,
    _require_deployed,
    device_paths,
    register_device,
)
from iotpipe.engine import Engine
from iotpipe.errors import ConfigError, IotpipeError, StateError
from iotpipe.ratelimit import RateLimiter
from iotpipe.steps.base import StepContext, get_or_none
from iotpipe.steps.iot import DEVICE_MARKER_ATTRIBUTE, device_marker_ok, thing_certificates

MAX_FILE_BYTES = 16 * 1024 * 1024  # a plant's file is kilobytes; this is a wrong file
MAX_DEVICES = 10_000  # per file: at 10 certificates a second, ~17 minutes of AWS's rate
MAX_LINE_CHARS = 4096  # an id (128) and three attributes (800 each) fit many times over
MAX_PROBLEMS_SHOWN = 20
ID_COLUMNS = ("id", "device_id")
DEFAULT_WORKERS = 16  # hides AWS answer times (~0.1 s a call) behind the 10-a-second bottleneck


class ImportFileError(ConfigError):
    """The file cannot be imported as it is; ``problems`` are (line, text), every one found.

    Exit 65 like any bad input: nothing was sent to AWS, nothing written.
    """

    def __init__(self, path: str, problems: list[tuple[int, str]], hint: str = "") -> None:
        self.problems = problems
        shown = "; ".join(f"line {n}: {text}" if n else text for n, text in problems[:MAX_PROBLEMS_SHOWN])
        more = f"; and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{path}: {count}, nothing imported: {shown}{more}" + (f" ({hint})" if hint else ""))


@dataclass(frozen=True)
class DeviceRow:
    line: int
    device_id: str
    attributes: dict[str, str]


@dataclass
class DeviceOutcome:
    device_id: str
    line: int
    outcome: str  # added | updated | unchanged | failed (dry run: would-add, would-update, ...)
    reason: str = ""
    certificate_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_outcomes(devices: list[DeviceOutcome]) -> dict[str, int]:
    """How many devices ended each way (added, unchanged, failed, ...), for a summary."""
    out: dict[str, int] = {}
    for d in devices:
        out[d.outcome] = out.get(d.outcome, 0) + 1
    return out


@dataclass
class ImportResult:
    env: str
    file: str
    dry_run: bool
    devices: list[DeviceOutcome] = field(default_factory=list)
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)  # --skip-invalid
    seconds: float = 0.0
    throttle_wait_s: float = 0.0  # summed over the IoT APIs' buckets (threads wait in parallel)
    endpoint: str = ""

    def counts(self) -> dict[str, int]:
        return count_outcomes(self.devices)

    @property
    def failed(self) -> list[DeviceOutcome]:
        return [d for d in self.devices if d.outcome in ("failed", "would-fail")]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "file": self.file, "dry_run": self.dry_run, "counts": self.counts(),
                "skipped_lines": [{"line": n, "reason": why} for n, why in self.skipped_lines],
                "seconds": round(self.seconds, 3), "throttle_wait_s": round(self.throttle_wait_s, 3),
                "endpoint": self.endpoint, "devices": [d.as_dict() for d in self.devices]}


# --------------------------------------------------------------------------------------------
# Reading and checking the file (no AWS call)
# --------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[DeviceRow]:
    """Every row of ``path``, checked; raises ImportFileError naming every bad line."""
    return read_file(path)[0]


def read_file(path: Path, *, skip_invalid: bool = False) -> tuple[list[DeviceRow], list[tuple[int, str]]]:
    """The valid rows of ``path`` and the bad lines (line, why).

    Any bad line refuses the whole file (ImportFileError naming every one), unless
    ``skip_invalid``: then the bad lines are returned to be reported and the valid rows
    imported. A file that is wrong as a whole (empty, too large, a bad header, not CSV, too
    many devices) is refused either way. A duplicate id is a bad line after its first.
    """
    shown = str(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ConfigError(f"{shown}: cannot read it ({err.strerror or err})") from None
    if size > MAX_FILE_BYTES:
        raise ImportFileError(shown, [(0, f"the file is {size:,} bytes, more than {MAX_FILE_BYTES:,}: "
                                         f"split it (at most {MAX_DEVICES:,} devices per file)")])
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ImportFileError(shown, [(line, "not UTF-8 text")]) from None
    except OSError as err:
        raise ConfigError(f"{shown}: cannot read it ({err.strerror or err})") from None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise ImportFileError(shown, [(0, "the file is empty: expected a CSV header "
                                         f"({', '.join(('id', *DEVICE_ATTRIBUTES))}) or JSON lines")])
    problems: list[tuple[int, str]] = []
    fatal: list[tuple[int, str]] = []
    rows = list(_json_lines(text, problems) if first.startswith("{") else _csv_rows(text, problems, fatal))
    if not rows and not problems and not fatal:
        fatal.append((0, "no devices in the file (only a header or blank lines)"))
    seen: dict[str, int] = {}
    checked: list[DeviceRow] = []
    for line, raw in rows:
        row = _check_row(line, raw, problems)
        if row is None:
            continue
        if row.device_id in seen:
            problems.append((line, f"duplicate id {row.device_id!r} (first on line {seen[row.device_id]})"))
            continue
        seen[row.device_id] = line
        checked.append(row)
        if len(seen) > MAX_DEVICES:
            fatal.append((line, f"more than {MAX_DEVICES:,} devices in one file: split it"))
            break
    problems = sorted(problems, key=lambda p: p[0])
    if fatal or (problems and not skip_invalid):
        hint = "" if fatal or not checked else \
            f"fix them, or pass --skip-invalid to import the {len(checked)} valid rows"
        raise ImportFileError(shown, sorted(fatal + problems, key=lambda p: p[0]), hint)
    return checked, problems


def _csv_rows(text: str, problems: list[tuple[int, str]],
              fatal: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip().lower().replace("-", "_") for f in fields]
                unknown = [h for h in header if h not in (*ID_COLUMNS, *DEVICE_ATTRIBUTES)]
                ids = [h for h in header if h in ID_COLUMNS]
                if unknown or len(ids) != 1 or len(set(header)) != len(header):
                    fatal.append((line, f"the header must name the column id and any of "
                                           f"{', '.join(DEVICE_ATTRIBUTES)}, each once (got "
                                           f"{', '.join(fields)})"))
                    return
                continue
            if sum(len(f) for f in fields) > MAX_LINE_CHARS:
                problems.append((line, f"longer than {MAX_LINE_CHARS} characters"))
                continue
            if len(fields) != len(header):
                problems.append((line, f"{len(fields)} fields, the header has {len(header)}"))
                continue
            yield line, {("id" if h in ID_COLUMNS else h): v for h, v in zip(header, fields, strict=True)}
    except csv.Error as err:
        fatal.append((reader.line_num, f"not CSV: {err}"))


def _json_lines(text: str, problems: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, body in enumerate(text.splitlines(), start=1):
        if not body.strip():
            continue
        if len(body) > MAX_LINE_CHARS:
            problems.append((line, f"longer than {MAX_LINE_CHARS} characters"))
            continue
        try:
            value = json.loads(body)
        except ValueError as err:
            problems.append((line, f"not a JSON object ({err.msg})"))
            continue
        if not isinstance(value, dict):
            problems.append((line, "not a JSON object"))
            continue
        unknown = sorted(k for k in value if k not in (*ID_COLUMNS, *DEVICE_ATTRIBUTES))
        if unknown or sum(k in value for k in ID_COLUMNS) > 1:
            problems.append((line, f"unknown key(s) {', '.join(unknown) or 'id and device_id'}: "
                                   f"use id and any of {', '.join(DEVICE_ATTRIBUTES)}"))
            continue
        if "device_id" in value:
            value["id"] = value.pop("device_id")
        yield line, value


def _check_row(line: int, raw: dict[str, Any], problems: list[tuple[int, str]]) -> DeviceRow | None:
    """The row's id and attributes by the rules `device add` applies (devices.validate_*)."""
    from iotpipe.devices import validate_attributes, validate_device_id

    found: list[str] = []
    device_id = raw.get("id")
    if not isinstance(device_id, str):
        found.append("no id" if device_id in (None, "") else f"id must be a string, not {device_id!r}")
    else:
        device_id = device_id.strip()
        try:
            validate_device_id(device_id)
        except ConfigError as err:
            found.append(str(err))
    attributes: dict[str, str | None] = {}
    for name in DEVICE_ATTRIBUTES:
        value = raw.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            found.append(f"{name} must be a string, not {value!r}")
            continue
        try:
            attributes.update(validate_attributes({name: value.strip()}))
        except ConfigError as err:
            found.append(str(err))
    if found:
        problems.extend((line, text) for text in found)
        return None
    return DeviceRow(line, str(device_id), {k: v for k, v in attributes.items() if v is not None})


# --------------------------------------------------------------------------------------------
# Registering
# --------------------------------------------------------------------------------------------
ProgressCallback = Callable[[int, int, DeviceOutcome], None]


def import_devices(
    engine: Engine,
    rows: list[DeviceRow],
    *,
    file: str = "",
    dry_run: bool = False,
    lock_timeout: float = 0.0,
    workers: int = DEFAULT_WORKERS,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
) -> ImportResult:
    """Register every row's device (or, ``dry_run``, say what would happen: reads only).

    A device that fails (a thing of that name that is not ours, a key not here) is reported
    with its reason and the others go on; a re-run imports what failed once it is fixed.
    """
    result = ImportResult(env=engine.ctx.env, file=file, dry_run=dry_run)
    clock = engine.ctx.aws.clock
    started = clock()
    limiter = limiter if limiter is not None else RateLimiter(clock=clock, sleep=engine.ctx.aws.sleep)
    if dry_run:  # reads only, so no lock; paced all the same (ListThingPrincipals: 10 a second)
        ctx = engine.ctx
        engine.store.check_account(ctx.account)
        type_name, _policy = _require_deployed(ctx)
        iot = ctx.client("iot")
        limiter.attach(iot.meta.events)
        try:
            for n, row in enumerate(rows, start=1):
                outcome = _preview(ctx, engine.store.root, row, type_name)
                result.devices.append(outcome)
                if on_progress:
                    on_progress(n, len(rows), outcome)
        finally:
            limiter.detach(iot.meta.events)
        result.seconds = clock() - started
        return result
    with _locked(engine, f"device import {file or '(rows)'}", lock_timeout) as ctx:
        type_name, policy_name = _require_deployed(ctx)
        iot = ctx.client("iot")  # made once, here: clients are thread-safe, their creation is not
        limiter.attach(iot.meta.events)  # a client copies the session's hooks when made
        try:
            result.endpoint = iot.describe_endpoint(endpointType=ENDPOINT_TYPE)["endpointAddress"]
            result.devices = _register_all(ctx, engine.store.root, rows, type_name, policy_name,
                                           result.endpoint, workers, on_progress)
        finally:
            limiter.detach(iot.meta.events)
    result.seconds = clock() - started
    result.throttle_wait_s = limiter.waited
    return result


def _register_all(
    ctx: StepContext, root: Path, rows: list[DeviceRow], type_name: str, policy_name: str,
    endpoint: str, workers: int, on_progress: ProgressCallback | None, *, rotate: bool = False,
) -> list[DeviceOutcome]:
    """Each row through `register_device` on a pool of ``workers`` threads; outcomes in row order.

    Shared by `device import` and `device rotate` (``rotate``: a new certificate for each)."""
    outcomes: dict[str, DeviceOutcome] = {}
    done_lock = threading.Lock()

    def one(row: DeviceRow) -> DeviceOutcome:
        try:
            made = register_device(ctx, root, row.device_id, row.attributes, type_name=type_name,
                                   policy_name=policy_name, endpoint=endpoint, rotate=rotate)
        except IotpipeError as err:
            return DeviceOutcome(row.device_id, row.line, "failed", str(err))
        except Exception as err:  # noqa: BLE001 - one device's AWS error must not stop the file
            typed = _typed(err)
            if typed is None:
                raise
            return DeviceOutcome(row.device_id, row.line, "failed", str(typed))
        return DeviceOutcome(row.device_id, row.line, _OUTCOME[made.action], "; ".join(made.notes),
                             made.certificate_id)

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="iotpipe-import")
    try:
        futures = [pool.submit(one, row) for row in rows]
        for future in as_completed(futures):
            outcome = future.result()
            with done_lock:
                outcomes[outcome.device_id] = outcome
                done = len(outcomes)
            if on_progress:
                on_progress(done, len(rows), outcome)
    except BaseException:
        # Ctrl-C (or a bug): no new device starts; those under way finish their steps, so
        # each ends registered or resumable (its record says where it stopped).
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [outcomes[row.device_id] for row in rows]


_OUTCOME = {"create": "added", "update": "updated", "unchanged": "unchanged", "rotate": "rotated"}


def _typed(err: Exception) -> IotpipeError | None:
    """An AWS error as the one-line typed error the CLI would print; None for a bug."""
    if type(err).__module__.startswith(("botocore", "boto3")):
        typed = translate(err)
        return typed if isinstance(typed, IotpipeError) else None
    return None


def _preview(ctx: StepContext, root: Path, row: DeviceRow, type_name: str) -> DeviceOutcome:
    """What registering ``row`` would do, from reads only."""
    iot = ctx.client("iot")
    thing = get_or_none(iot.describe_thing, thingName=row.device_id)
    if thing is None:
        return DeviceOutcome(row.device_id, row.line, "would-add")
    if not device_marker_ok(ctx, thing):
        return DeviceOutcome(row.device_id, row.line, "would-fail",
                             f"thing {row.device_id!r} exists but is not an iotpipe device of env "
                             f"{ctx.env!r} (no {DEVICE_MARKER_ATTRIBUTE}={ctx.env} attribute)")
    have = thing.get("attributes") or {}
    fix = sorted(k for k, v in row.attributes.items() if have.get(k) != v)
    attached = thing_certificates(ctx, row.device_id)
    paths = device_paths(root, ctx.env, row.device_id)
    try:
        record = _read_record(paths)
    except StateError as err:
        return DeviceOutcome(row.device_id, row.line, "would-fail", str(err))
    usable = bool(record and _key_matches(paths, record) and record["certificate_arn"] in attached)
    if attached and not usable and not (record and _key_matches(paths, record)):
        return DeviceOutcome(row.device_id, row.line, "would-fail",
                             f"it has {len(attached)} certificate(s) attached but no private key in "
                             f"{paths.dir}: rotate it (`iotpipe device rotate {row.device_id}`)")
    if fix or not usable or (record or {}).get("status") != "active":
        why = [f"attributes {', '.join(fix)}"] if fix else []
        if not usable or (record or {}).get("status") != "active":
            why.append("certificate to finish or issue")
        return DeviceOutcome(row.device_id, row.line, "would-update", "; ".join(why))
    return DeviceOutcome(row.device_id, row.line, "unchanged")
