"""Bad records are quarantined in ``rejected/`` with a reason; the batch still succeeds."""

from __future__ import annotations

import base64

from iotpipe.handler import index

OK = {"device_id": "dev-ok", "timestamp": 1_700_000_000, "temperature": 20}
REJECTED_KEY = "rejected/dt=2023-11-14/hh=22/shardId-000000000000-{}.jsonl.gz"


def with_(**changes) -> dict:
    payload = {**OK, **changes}
    return {k: v for k, v in payload.items() if v is not ...}


# (payload as the record carries it, expected reason code)
BAD = [
    (b"\xff\xfe{}", "invalid_utf8"),
    (b"{not json", "invalid_json"),
    (b'{"device_id":"d","timestamp":1700000000,"temperature":NaN}', "invalid_json"),
    (b'{"device_id":"d","timestamp":1700000000,"temperature":-Infinity}', "invalid_json"),
    (b"\xef\xbb\xbf" + b'{"device_id":"d","timestamp":1,"temperature":1}', "invalid_json"),
    (b"[" * 100_000, "invalid_json"),  # nesting deeper than the recursion limit
    (b"", "invalid_json"),
    ([1, 2], "not_an_object"),
    ("dev-1,21.5", "not_an_object"),
    (None, "not_an_object"),
    (with_(device_id=...), "invalid_device_id"),
    (with_(device_id=""), "invalid_device_id"),
    (with_(device_id="   "), "invalid_device_id"),
    (with_(device_id=42), "invalid_device_id"),
    (with_(device_id="x" * 129), "invalid_device_id"),
    (b'{"device_id":"\\ud800","timestamp":1700000000,"temperature":1}', "invalid_device_id"),
    (with_(timestamp=...), "invalid_timestamp"),
    (with_(timestamp=True), "invalid_timestamp"),
    (with_(timestamp="1700000000"), "invalid_timestamp"),
    (with_(timestamp="2023-13-45T00:00:00"), "invalid_timestamp"),
    (with_(timestamp="yesterday"), "invalid_timestamp"),
    (with_(timestamp=-1), "invalid_timestamp"),
    (with_(timestamp=10**20), "invalid_timestamp"),  # ms, but after the year 9999
    (b'{"device_id":"d","timestamp":1e999,"temperature":1}', "invalid_timestamp"),
    (with_(temperature=True), "invalid_temperature"),
    (with_(temperature="21.5"), "invalid_temperature"),
    (with_(temperature=[21.5]), "invalid_temperature"),
    (b'{"device_id":"d","timestamp":1700000000,"temperature":1e999}', "invalid_temperature"),
    (with_(vibration=1e200), "invalid_vibration"),  # beyond DynamoDB's 1e126
    (with_(vibration=1e-200), "invalid_vibration"),
    (with_(pressure=int("9" * 39)), "invalid_pressure"),  # 39 significant digits
    (with_(temperature=...), "no_metrics"),
    (with_(temperature=None, vibration=None, pressure=None), "no_metrics"),
]

GOOD_EDGES = [
    with_(device_id="x" * 128),
    with_(device_id="capteur-é-温度"),
    with_(pressure=int("9" * 38), temperature=...),
    with_(vibration=10**125, temperature=...),
    with_(vibration=1e-130, temperature=...),
    with_(timestamp="2023-11-14T22:13:20.123456+00:00"),
    with_(humidity="ignored", firmware={"v": 2}),  # unknown fields are kept in the archive only
]


def test_every_kind_of_bad_record_is_quarantined_with_its_reason(aws, stream, invoke):
    records = [stream.record(OK)] + [stream.record(payload) for payload, _ in BAD]
    records.append(stream.record(data="!!! not base64 !!!"))
    expected = {stream.seq(r): reason for r, (_, reason) in zip(records[1:], BAD, strict=False)}
    expected[stream.seq(records[-1])] = "invalid_base64"

    assert invoke({"Records": records}) == {"batchItemFailures": []}

    assert list(aws.items()) == [("dev-ok", 1_700_000_000)]
    rejected = aws.lines("rejected/")
    assert {line["sequence_number"]: line["reason"].split(":")[0] for line in rejected} == expected
    by_seq = {line["sequence_number"]: line for line in rejected}
    for record in records[1:]:
        line = by_seq[stream.seq(record)]
        assert line["data"] == record["kinesis"]["data"]  # exactly what Kinesis delivered
        assert line["partition_key"] == record["kinesis"]["partitionKey"]
    assert list(aws.objects("rejected/")) == [REJECTED_KEY.format(stream.seq(records[0]))]
    assert [line["sequence_number"] for line in aws.lines("raw/")] == [stream.seq(records[0])]


def test_edge_values_that_are_valid_are_stored(aws, stream, invoke):
    event = stream.event(
        *({**p, "device_id": f"{p['device_id']}-{i}"[-128:]} for i, p in enumerate(GOOD_EDGES))
    )

    assert invoke(event) == {"batchItemFailures": []}

    assert aws.objects("rejected/") == {}
    items = aws.items()
    assert len(items) == len(GOOD_EDGES)
    by_device = {device: item for (device, _), item in items.items()}
    assert by_device["dev-ok-2"]["pressure"] == int("9" * 38)
    assert by_device["dev-ok-3"]["vibration"] == 10**125
    assert "humidity" not in by_device["dev-ok-6"]
    assert any('"firmware"' in line["payload"] for line in aws.lines("raw/"))


def test_a_batch_of_only_bad_records_succeeds_without_touching_dynamodb(aws, stream, invoke):
    event = stream.event(b"garbage", with_(temperature="hot"))

    assert invoke(event) == {"batchItemFailures": []}

    assert "BatchWriteItem" not in aws.calls
    assert aws.objects("raw/") == {}
    assert len(aws.lines("rejected/")) == 2


def test_malformed_envelopes_are_quarantined_not_raised(aws, stream, invoke):
    good = stream.record(OK)
    no_data = stream.record(OK)
    del no_data["kinesis"]["data"]
    no_seq = stream.record(OK)
    del no_seq["kinesis"]["sequenceNumber"]
    event = {"Records": [good, no_data, "not a record", {"kinesis": None}, no_seq]}

    assert invoke(event) == {"batchItemFailures": []}

    reasons = [line["reason"].split(":")[0] for line in aws.lines("rejected/")]
    assert reasons == ["malformed_envelope"] * 4
    assert len(aws.items()) == 1


def test_validation_is_pure_and_reports_the_first_problem():
    envelope = index.parse_envelope(
        0,
        {
            "kinesis": {
                "sequenceNumber": "1",
                "data": base64.b64encode(b'{"timestamp":"x","temperature":"y"}').decode(),
            }
        },
    )

    outcome = index.classify(envelope, {})

    assert isinstance(outcome, index.Rejection)
    assert outcome.reason.startswith("invalid_device_id")
