"""Turning one Kinesis record into a reading or a reason to quarantine it.

Pure functions, no AWS: the rules are documented in ``index``'s module docstring and live
here so that they can be read (and tested) on their own.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal

METRICS = ("temperature", "vibration", "pressure")
DEVICE_ID_MAX_CHARS = 128
MS_CUTOFF = Decimal(10) ** 11  # 1e11 s is the year 5138; 1e11 ms is 1973
MAX_EPOCH_SECONDS = Decimal(253402300800)  # 10000-01-01: beyond datetime's range
MICROSECOND = Decimal("0.000001")
_DECIMAL = Context(prec=60)  # wide enough that no arithmetic here ever rounds silently
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


class Invalid(Exception):
    """A record that can never succeed; it is quarantined instead of retried."""


@dataclass(frozen=True)
class Envelope:
    index: int
    sequence_number: str | None
    partition_key: str | None
    arrival: Decimal | None
    data: object


@dataclass(frozen=True)
class Reading:
    envelope: Envelope
    device_id: str
    timestamp: Decimal
    metrics: dict[str, Decimal]
    anomalies: tuple[str, ...]
    payload: str


@dataclass(frozen=True)
class Rejection:
    envelope: Envelope
    reason: str


def parse_envelope(index: int, record) -> Envelope:
    record = record if isinstance(record, dict) else {}
    kinesis = record.get("kinesis") if isinstance(record.get("kinesis"), dict) else {}
    seq, key = kinesis.get("sequenceNumber"), kinesis.get("partitionKey")
    arrival = kinesis.get("approximateArrivalTimestamp")
    ok_arrival = is_finite_number(arrival) and 0 <= arrival < MAX_EPOCH_SECONDS
    return Envelope(
        index=index,
        sequence_number=seq if isinstance(seq, str) and seq else None,
        partition_key=key if isinstance(key, str) else None,
        arrival=to_decimal(arrival) if ok_arrival else None,
        data=kinesis.get("data"),
    )


def classify(envelope: Envelope, thresholds) -> Reading | Rejection:
    try:
        return _decode(envelope, thresholds)
    except Invalid as exc:
        return Rejection(envelope, str(exc))


def _decode(envelope: Envelope, thresholds) -> Reading:
    if envelope.sequence_number is None or not isinstance(envelope.data, str):
        raise Invalid("malformed_envelope: kinesis.sequenceNumber or kinesis.data missing")
    try:
        text = base64.b64decode(envelope.data, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        code = "invalid_utf8" if isinstance(exc, UnicodeDecodeError) else "invalid_base64"
        raise Invalid(code) from None
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Invalid(f"invalid_json: {exc}"[:200]) from None
    if not isinstance(payload, dict):
        raise Invalid(f"not_an_object: payload is a JSON {type(payload).__name__}")
    device_id = _device_id(payload.get("device_id"))
    timestamp = _timestamp(payload.get("timestamp"))
    metrics = {m: _metric(m, payload[m]) for m in METRICS if payload.get(m) is not None}
    if not metrics:
        raise Invalid("no_metrics: none of temperature, vibration, pressure is present")
    return Reading(envelope, device_id, timestamp, metrics, anomalies(metrics, thresholds), text)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _device_id(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("invalid_device_id: must be a non-empty string")
    if len(value) > DEVICE_ID_MAX_CHARS:
        raise Invalid(f"invalid_device_id: longer than {DEVICE_ID_MAX_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("invalid_device_id: not encodable as UTF-8") from None
    return value


def _timestamp(value) -> Decimal:
    if isinstance(value, str):
        seconds = _iso_seconds(value)
    elif is_finite_number(value):
        number = to_decimal(value)
        seconds = _DECIMAL.divide(number, 1000) if number > MS_CUTOFF else number
    else:
        raise Invalid("invalid_timestamp: must be epoch s, epoch ms or an ISO-8601 string")
    if not 0 <= seconds < MAX_EPOCH_SECONDS:
        raise Invalid("invalid_timestamp: outside 1970-01-01..9999-12-31")
    return _canonical(seconds.quantize(MICROSECOND, rounding=ROUND_HALF_EVEN, context=_DECIMAL))


def _iso_seconds(value: str) -> Decimal:
    if not _ISO_PREFIX.match(value):
        raise Invalid("invalid_timestamp: string is not ISO-8601 (YYYY-MM-DD...)")
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - _EPOCH
    except (ValueError, OverflowError):
        raise Invalid("invalid_timestamp: string is not ISO-8601 (YYYY-MM-DD...)") from None
    whole = Decimal(delta.days * 86400 + delta.seconds)
    return whole + _DECIMAL.divide(Decimal(delta.microseconds), 10**6)


def _metric(name: str, value) -> Decimal:
    if not _is_number(value):
        raise Invalid(f"invalid_{name}: must be a number, got {type(value).__name__}")
    if not is_finite_number(value):
        raise Invalid(f"invalid_{name}: must be finite")
    number = _canonical(to_decimal(value))
    if number is None:
        raise Invalid(f"invalid_{name}: outside DynamoDB's number range or precision")
    return number


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """Without converting ints to float: ``math.isfinite(10**400)`` raises OverflowError."""
    return _is_number(value) and (isinstance(value, int) or math.isfinite(value))


def to_decimal(value: int | float) -> Decimal:
    """``repr`` gives the shortest decimal that round-trips: what the device wrote, not 0.1's
    binary expansion."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _canonical(number: Decimal) -> Decimal | None:
    """Strip trailing zeros; ``None`` if DynamoDB would refuse the number."""
    if number.is_zero():
        return Decimal(0)
    sign, digits, exponent = number.as_tuple()
    digits = list(digits)
    while digits[-1] == 0:
        digits.pop()
        exponent += 1
    adjusted = exponent + len(digits) - 1
    if len(digits) > 38 or not -130 <= adjusted <= 125:
        return None
    return Decimal((sign, tuple(digits), exponent))


def anomalies(metrics: dict[str, Decimal], thresholds) -> tuple[str, ...]:
    found = []
    for metric in METRICS:
        lo, hi = thresholds.get(metric, (None, None))
        value = metrics.get(metric)
        if value is not None and hi is not None and value > hi:
            found.append(f"{metric}_high")
        if value is not None and lo is not None and value < lo:
            found.append(f"{metric}_low")
    return tuple(found)
