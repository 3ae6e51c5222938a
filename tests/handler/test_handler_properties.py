"""Property: for any record data the handler never raises, stores exactly the valid readings
(last record per key wins) and archives every record once.

The expectation comes from a small oracle written here from the contract, not from the
handler's validator; ISO timestamps are generated from a known instant, so the oracle knows
their value without parsing them.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotpipe.handler import index

METRICS = ("temperature", "vibration", "pressure")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
YEAR_10000 = 253_402_300_800


# ----------------------------------------------------------------------------- oracle


def expected_number(value):
    """A JSON number DynamoDB can hold, as Decimal; None if the record must be rejected."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not (value == 0 or 1e-130 <= abs(value) < 1e126):
            return None
        return Decimal(repr(value))
    significant = str(abs(value)).rstrip("0")
    if len(significant) > 38 or abs(value) >= 10**126:
        return None
    return Decimal(value)


def expected_timestamp(value, iso: dict[str, Decimal]):
    if isinstance(value, str):
        return iso.get(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    seconds = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if seconds > 10**11:
        seconds = seconds / 1000
    if not 0 <= seconds < YEAR_10000:
        return None
    return seconds.quantize(Decimal("0.000001"))


def expected_reading(data: bytes, iso: dict[str, Decimal]):
    """``(device_id, timestamp, metrics)`` for a valid record, else None."""
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=lambda c: 1 / 0)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    device = obj.get("device_id")
    if not isinstance(device, str) or not device.strip() or len(device) > 128:
        return None
    try:
        device.encode("utf-8")
    except UnicodeEncodeError:
        return None
    timestamp = expected_timestamp(obj.get("timestamp"), iso)
    metrics = {}
    for metric in METRICS:
        if obj.get(metric) is None:
            continue
        metrics[metric] = expected_number(obj[metric])
        if metrics[metric] is None:
            return None
    if timestamp is None or not metrics:
        return None
    return device, timestamp, metrics


# ----------------------------------------------------------------------------- generators

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from([0, 0.0, -0.0, 1e-300, 1e200, 10**40, 10**125, 1e-130, 1e999, "21.5"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
# Each strategy mixes likely-valid branches (so that stored readings and key collisions are
# common) with edge and arbitrary values (so that every rejection path is exercised).
device_ids = st.one_of(
    st.sampled_from(["dev-a", "dev-b", "dev-c"]),
    st.sampled_from(["", " ", "x" * 128, "x" * 129, "\ud800", "é"]),
    st.text(max_size=6),
    json_scalars,
)
plain_timestamps = st.one_of(
    st.sampled_from([1_700_000_000, 1_700_000_001, 1_700_000_000_000, 1_700_000_000.5]),
    st.sampled_from([1e11, 1e11 + 1, 0, -1, 253_402_300_799, 253_402_300_800_000]),
    st.integers(min_value=1_600_000_000, max_value=1_800_000_000),
    st.integers(min_value=1_600_000_000_000, max_value=1_800_000_000_000),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.text(alphabet="abc:T-", max_size=6),  # never a valid ISO string
)
metric_values = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(min_value=-1000, max_value=1000),
    st.just(0),
    json_scalars,
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)


@st.composite
def iso_timestamps(draw, iso: dict[str, Decimal]):
    """An ISO-8601 string for a known instant; its value is recorded in ``iso``."""
    micros = draw(
        st.one_of(
            st.integers(min_value=1_700_000_000 * 10**6, max_value=1_700_000_002 * 10**6),
            st.integers(min_value=86_400 * 10**6, max_value=(YEAR_10000 - 86_400) * 10**6),
        )
    )
    moment = EPOCH + timedelta(microseconds=micros)
    style = draw(st.sampled_from(["naive", "Z", "offset"]))
    if style == "naive":
        text = moment.replace(tzinfo=None).isoformat()
    elif style == "Z":
        text = moment.replace(tzinfo=None).isoformat() + "Z"
    else:
        text = moment.astimezone(draw(offsets)).isoformat()
    iso[text] = Decimal(micros).scaleb(-6)
    return text


good_metrics = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.integers(min_value=-1000, max_value=1000),
)


@st.composite
def record_data(draw, iso: dict[str, Decimal]) -> bytes:
    kind = draw(st.sampled_from(["good"] * 4 + ["fuzzed"] * 4 + ["bytes", "json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "good":  # valid by construction; few devices and instants, so keys collide
        present = draw(st.sets(st.sampled_from(METRICS), min_size=1))
        payload = {
            "device_id": draw(st.sampled_from(["dev-a", "dev-b"])),
            "timestamp": draw(
                st.one_of(st.sampled_from([1_700_000_000, 1_700_000_001_000]), iso_timestamps(iso))
            ),
            **{m: draw(good_metrics) for m in sorted(present)},
        }
        return json.dumps(payload).encode()
    payload = {"device_id": draw(device_ids)}
    payload["timestamp"] = draw(st.one_of(plain_timestamps, iso_timestamps(iso)))
    for metric in METRICS:
        if draw(st.booleans()):
            payload[metric] = draw(metric_values)
    if draw(st.integers(0, 9)) == 0:
        del payload[draw(st.sampled_from(sorted(payload)))]
    return json.dumps(payload).encode()


# ----------------------------------------------------------------------------- property


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_batch_is_stored_exactly_as_the_oracle_says(fresh_account, stream, data):
    iso: dict[str, Decimal] = {}
    payloads = data.draw(st.lists(record_data(iso), max_size=30), label="payloads")
    event = {"Records": [stream.record(p) for p in payloads]}

    with fresh_account() as aws:
        result = index.lambda_handler(event, None)

        expected: dict[tuple, dict] = {}
        valid_seqs, invalid_seqs = set(), set()
        for record, payload in zip(event["Records"], payloads, strict=True):
            reading = expected_reading(payload, iso)
            if reading is None:
                invalid_seqs.add(stream.seq(record))
                continue
            valid_seqs.add(stream.seq(record))
            device, timestamp, metrics = reading
            expected.pop((device, timestamp), None)  # last wins
            expected[(device, timestamp)] = metrics

        assert result == {"batchItemFailures": []}
        items = aws.items()
        assert set(items) == set(expected)
        for key, metrics in expected.items():
            assert {m: items[key][m] for m in METRICS if m in items[key]} == metrics
        raw = [line["sequence_number"] for line in aws.lines("raw/")]
        rejected = [line["sequence_number"] for line in aws.lines("rejected/")]
        assert sorted(raw) == sorted(valid_seqs)
        assert sorted(rejected) == sorted(invalid_seqs)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=st.lists(json_values, max_size=6))
def test_arbitrary_envelopes_never_raise(fresh_account, stream, records):
    event = {"Records": [stream.record(stream.reading("ok"))] + records}

    with fresh_account() as aws:
        assert index.lambda_handler(event, None) == {"batchItemFailures": []}
        assert len(aws.items()) == 1
        assert len(aws.lines("")) == len(event["Records"])
