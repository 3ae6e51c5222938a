"""Happy paths: what a good batch leaves in DynamoDB, S3 and the logs."""

from __future__ import annotations

import gzip
import json
import os
from decimal import Decimal

import pytest

from iotpipe.handler import index

RAW_PREFIX = "raw/dt=2023-11-14/hh=22/shardId-000000000000-"


def log_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_valid_batch_is_stored_in_dynamodb_and_archived_once(aws, stream, invoke):
    event = stream.event(
        stream.reading("dev-1", 1_700_000_000, temperature=21.5, vibration=3, pressure=101.3),
        stream.reading("dev-2", 1_700_000_000, temperature=120.5),
        stream.reading("dev-1", 1_700_000_001, vibration=60),
    )
    seqs = [stream.seq(r) for r in event["Records"]]

    assert invoke(event) == {"batchItemFailures": []}

    items = aws.items()
    assert items[("dev-1", 1_700_000_000)] == {
        "device_id": "dev-1",
        "timestamp": Decimal(1_700_000_000),
        "temperature": Decimal("21.5"),
        "vibration": Decimal(3),
        "pressure": Decimal("101.3"),
        "sequence_number": seqs[0],
        "received_at": Decimal("1700000000.25"),
        "environment": "test",
    }
    assert items[("dev-2", 1_700_000_000)]["anomalies"] == ["temperature_high"]
    assert items[("dev-1", 1_700_000_001)]["anomalies"] == ["vibration_high"]
    assert len(items) == 3

    objects = aws.objects("raw/")
    assert list(objects) == [f"{RAW_PREFIX}{seqs[0]}.jsonl.gz"]
    lines = aws.lines("raw/")
    assert [line["sequence_number"] for line in lines] == seqs
    assert json.loads(lines[1]["payload"]) == stream.reading("dev-2", temperature=120.5)
    assert lines[1]["anomalies"] == ["temperature_high"]
    assert aws.objects("rejected/") == {}
    assert aws.calls.count("BatchWriteItem") == 1
    assert aws.calls.count("PutObject") == 1


def test_archive_is_deterministic_gzip_and_a_retry_rewrites_it_identically(aws, stream, invoke):
    event = stream.event(*(stream.reading(f"dev-{i}") for i in range(5)))

    invoke(event)
    first = aws.objects("raw/")
    first_items = aws.items()
    invoke(event)

    assert aws.objects("raw/") == first  # same single key, same bytes
    assert aws.items() == first_items  # nothing in an item comes from the wall clock
    (body,) = first.values()
    assert body[4:8] == b"\0\0\0\0"  # gzip mtime=0
    head = aws.s3.head_object(Bucket="iot-sensor-data-test-123456789012", Key=next(iter(first)))
    assert head["Metadata"]["last-sequence-number"] == stream.seq(event["Records"][-1])


@pytest.mark.parametrize(
    ("metrics", "stored"),
    [
        ({"temperature": 0}, {"temperature": Decimal(0)}),
        ({"vibration": 0.0, "pressure": -0.0}, {"vibration": Decimal(0), "pressure": Decimal(0)}),
        ({"temperature": -12.75, "pressure": None}, {"temperature": Decimal("-12.75")}),
    ],
)
def test_zero_and_negative_readings_are_values(aws, stream, invoke, metrics, stored):
    invoke(stream.event(stream.reading("dev-0", **metrics)))

    (item,) = aws.items().values()
    assert {m: item[m] for m in index.METRICS if m in item} == stored
    assert "anomalies" not in item


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1_700_000_000, Decimal("1700000000")),
        (1_700_000_000.5, Decimal("1700000000.5")),
        (1_700_000_000_123, Decimal("1700000000.123")),
        (1_700_000_000_123.4567, Decimal("1700000000.123457")),  # rounded to the microsecond
        ("2023-11-14T22:13:20.123Z", Decimal("1700000000.123")),
        ("2023-11-14T22:13:20", Decimal("1700000000")),  # naive is UTC
        ("2023-11-15T00:13:20+02:00", Decimal("1700000000")),
        ("2023-11-14", Decimal("1699920000")),
        (0, Decimal(0)),
        (100_000_000_000, Decimal("100000000000")),  # 1e11 itself is still seconds
    ],
)
def test_timestamps_are_normalised_to_utc_epoch_seconds(aws, stream, invoke, timestamp, expected):
    invoke(stream.event(stream.reading("dev-ts", timestamp)))

    (item,) = aws.items().values()
    assert item["timestamp"] == expected


def test_one_instant_in_every_format_is_one_item_and_the_last_record_wins(aws, stream, invoke):
    forms = [1_700_000_000, 1_700_000_000_000, "2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00"]
    event = stream.event(
        *(stream.reading("dev-dup", ts, temperature=i) for i, ts in enumerate(forms))
    )

    assert invoke(event) == {"batchItemFailures": []}

    assert aws.batch_sizes == [1]
    (item,) = aws.items().values()
    assert item["temperature"] == len(forms) - 1
    assert item["sequence_number"] == stream.seq(event["Records"][-1])
    # the archive keeps every record: they are distinct Kinesis records
    assert len(aws.lines("raw/")) == len(forms)


def test_anomalies_follow_the_configured_thresholds_and_are_logged(
    aws, stream, invoke, capsys, monkeypatch
):
    thresholds = {"temperature": {"max": 50}, "pressure": {"min": 90, "max": 110}}
    monkeypatch.setenv("ANOMALY_THRESHOLDS", json.dumps(thresholds))
    event = stream.event(
        stream.reading("a", temperature=50, pressure=90),  # on the bounds: fine
        stream.reading("b", temperature=50.01, vibration=500),  # vibration has no threshold now
        stream.reading("c", pressure=89.9),
        stream.reading("d", temperature=51, pressure=111),
    )

    invoke(event)

    anomalies = {d: item.get("anomalies") for (d, _), item in aws.items().items()}
    assert anomalies == {
        "a": None,
        "b": ["temperature_high"],
        "c": ["pressure_low"],
        "d": ["temperature_high", "pressure_high"],
    }
    lines = log_lines(capsys)
    logged = [line for line in lines if line["event"] == "anomaly"]
    assert [(x["level"], x["device_id"], x["anomalies"]) for x in logged] == [
        ("WARNING", "b", ["temperature_high"]),
        ("WARNING", "c", ["pressure_low"]),
        ("WARNING", "d", ["temperature_high", "pressure_high"]),
    ]
    assert logged[2]["metrics"] == {"temperature": 51, "pressure": 111}


def test_default_thresholds_are_the_seeds(aws, stream, invoke):
    invoke(
        stream.event(
            stream.reading("hot", temperature=100.5),
            stream.reading("edge", temperature=100, vibration=50),
            stream.reading("shaky", vibration=50.5, pressure=10_000),
        )
    )

    anomalies = {d: item.get("anomalies") for (d, _), item in aws.items().items()}
    assert anomalies == {"hot": ["temperature_high"], "edge": None, "shaky": ["vibration_high"]}


def test_one_summary_line_per_batch(aws, stream, invoke, capsys):
    event = stream.event(stream.reading("a"), stream.reading("b", temperature=101), "not a reading")

    invoke(event)

    lines = log_lines(capsys)
    (summary,) = [line for line in lines if line["event"] == "batch_summary"]
    assert summary["level"] == "INFO"
    assert {k: summary[k] for k in ("received", "stored", "rejected", "failed", "anomalies")} == {
        "received": 3,
        "stored": 2,
        "rejected": 1,
        "failed": 0,
        "anomalies": 1,
    }
    assert summary["rejected_reasons"] == {"not_an_object": 1}
    assert summary["request_id"] == "req-test"
    assert isinstance(summary["duration_ms"], float)
    assert all(line["level"] in ("INFO", "WARNING") for line in lines)


def test_the_summary_is_an_embedded_metric_format_document(aws, stream, invoke, capsys, monkeypatch):
    """CloudWatch Logs extracts a metric for every name listed under _aws.CloudWatchMetrics
    from the root member of that name, with the listed dimensions' root values
    (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)."""
    monkeypatch.setattr("time.time", lambda: 1_800_000_000.5)
    invoke(stream.event(stream.reading("a"), stream.reading("b", temperature=101), "not a reading"))

    (summary,) = [line for line in log_lines(capsys) if line["event"] == "batch_summary"]
    emf = summary["_aws"]
    assert emf["Timestamp"] == 1_800_000_000_500
    (directive,) = emf["CloudWatchMetrics"]
    assert directive["Namespace"] == "iotpipe" and directive["Dimensions"] == [["Environment"]]
    names = [m["Name"] for m in directive["Metrics"]]
    assert names == ["received", "stored", "rejected", "failed", "anomalies"]
    assert all(m["Unit"] == "Count" for m in directive["Metrics"])
    assert {n: summary[n] for n in names} == {"received": 3, "stored": 2, "rejected": 1, "failed": 0, "anomalies": 1}
    assert summary["Environment"] == os.environ["ENVIRONMENT_SUFFIX"]


def test_log_level_filters_the_summary(aws, stream, invoke, capsys, monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "warning")

    invoke(stream.event(stream.reading("a", temperature=101)))

    lines = log_lines(capsys)
    assert [line["event"] for line in lines] == ["anomaly", "metrics"]
    # the metrics do not depend on LOG_LEVEL: the EMF document stays, the summary's details go
    assert lines[1]["stored"] == 1 and lines[1]["anomalies"] == 1 and "archive_keys" not in lines[1]


def test_an_empty_batch_succeeds_without_writing(aws, invoke):
    assert invoke({"Records": []}) == {"batchItemFailures": []}
    assert aws.calls == []


@pytest.mark.parametrize("event", [{}, {"Records": None}, {"Records": "x"}, [], None])
def test_an_event_without_records_is_an_error(aws, invoke, event):
    with pytest.raises(ValueError, match="Records"):
        invoke(event)
    assert aws.calls == []


def test_missing_configuration_fails_the_invocation(aws, stream, invoke, monkeypatch):
    monkeypatch.delenv("S3_BUCKET")

    with pytest.raises(index.ConfigError, match="S3_BUCKET"):
        invoke(stream.event(stream.reading()))


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[]",
        '{"temprature": {"max": 1}}',
        '{"temperature": {"max": "1"}}',
        '{"temperature": {"max": true}}',
        '{"temperature": {"min": 5, "max": 1}}',
        '{"temperature": {"above": 1}}',
    ],
)
def test_bad_thresholds_are_a_configuration_error(raw):
    with pytest.raises(index.ConfigError, match="ANOMALY_THRESHOLDS"):
        index.parse_thresholds(raw)


def test_thresholds_replace_the_defaults_as_a_whole():
    parsed = index.parse_thresholds('{"pressure": {"min": 1.5}}')

    assert parsed == {"pressure": (Decimal("1.5"), None)}


def test_5000_readings_in_one_batch_cost_at_most_50_writes_per_1000(aws, stream, invoke):
    payloads = [
        stream.reading(f"dev-{i % 37}", 1_700_000_000_000 + i, temperature=i % 120, vibration=0)
        for i in range(5000)
    ]
    event = stream.event(*payloads)

    assert invoke(event) == {"batchItemFailures": []}

    assert len(aws.items()) == 5000
    writes = aws.write_calls()
    assert writes / 5 <= 50, f"{writes} write requests for 5,000 readings"
    assert aws.calls.count("BatchWriteItem") == 200  # 25 per request, nothing wasted
    assert aws.calls.count("PutObject") == 1
    assert len(aws.lines("raw/")) == 5000
    (body,) = aws.objects("raw/").values()
    assert len(gzip.decompress(body).splitlines()) == 5000


def test_without_injection_the_handler_creates_its_own_clients(aws, stream, invoke):
    index.reset()  # drop the fixture's clients: the handler must build its own from the env

    assert invoke(stream.event(stream.reading("lazy"))) == {"batchItemFailures": []}

    assert list(aws.items()) == [("lazy", 1_700_000_000)]
    assert index.client("dynamodb") is index.client("dynamodb")  # once per container
