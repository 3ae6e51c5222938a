"""health, logs and readings after a demo-like run, checked against an independent count."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from iotpipe.cli import main
from iotpipe.local.demo import INVALID_PAYLOADS, exercise
from iotpipe.ops.health import check_health
from iotpipe.ops.logs import read_logs
from iotpipe.ops.readings import device_readings, to_csv
from iotpipe.ops.timespec import UsageError, parse_time, parse_window
from iotpipe.steps import all_resources

REGION = "us-east-1"
SETS = ("storage.enforce_tls=false", "trail.enabled=false")
# what the data path needs (bucket, table, stream, function settings, mapping) and the alarms
STEPS = ("kms", "storage", "stream", "lambda_", "monitor")
READINGS = 40


@pytest.fixture
def ran(make):
    engine = make(sets=SETS, resources=all_resources(STEPS))
    engine.up()
    report = exercise(engine.ctx, READINGS)
    return engine, report


def _window():
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(minutes=1)


def _independent_count(bucket: str, table: str) -> dict[str, int]:
    """What DynamoDB and S3 hold, counted without iotpipe's code."""
    s3 = boto3.client("s3", region_name=REGION)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    items = dynamodb.scan(TableName=table)["Items"]
    lines: dict[str, int] = {"raw/": 0, "rejected/": 0}
    for prefix in lines:
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            lines[prefix] += len(gzip.decompress(body).decode().splitlines())
    waiting = s3.list_objects_v2(Bucket=bucket, Prefix="aws/lambda/").get("KeyCount", 0)
    return {"stored": len(items), "anomalies": sum(1 for i in items if "anomalies" in i),
            "archived": lines["raw/"], "rejected": lines["rejected/"], "failure_records": waiting}


def test_health_numbers_equal_what_dynamodb_and_s3_hold(ran, capsys):
    engine, _report = ran
    ctx = engine.ctx
    start, end = _window()
    health = check_health(ctx, start=start, end=end)
    count = _independent_count(ctx.names.sensor_bucket, ctx.names.metrics_table)

    assert health.published == READINGS + len(INVALID_PAYLOADS)
    assert health.stored == count["stored"] == count["archived"] == READINGS
    assert health.rejected == count["rejected"] == len(INVALID_PAYLOADS)
    assert health.anomalies == count["anomalies"]
    assert health.failure_records_waiting == count["failure_records"] == 0
    assert health.processed == health.stored + health.rejected and health.in_stream == 0
    assert health.failed == 0 and health.errors == 0 and health.invocations >= 1
    assert health.iterator_age_ms is not None and health.dlq_messages_waiting in (None, 0)
    assert health.last_reading_stored_at is not None and health.alarms_in_alarm == []
    assert health.healthy and health.as_dict()["verdict"] == "healthy"

    # the CLI's --json document: every count under a key that says what it counts; exit 0
    assert main(["health", "--env", "dev", "--json", *sum((["--set", s] for s in SETS), [])]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {k: doc[k] for k in ("stored", "rejected", "failed", "published", "failure_records_waiting")} == {
        "stored": count["stored"], "rejected": count["rejected"], "failed": 0,
        "published": READINGS + len(INVALID_PAYLOADS), "failure_records_waiting": 0}
    assert doc["verdict"] == "healthy"


def test_failure_records_and_an_alarm_make_it_degraded(ran, capsys):
    engine, _ = ran
    ctx = engine.ctx
    s3 = boto3.client("s3", region_name=REGION)
    for n in range(2):
        s3.put_object(Bucket=ctx.names.sensor_bucket, Key=f"aws/lambda/{n}.json", Body=b"{}")
    boto3.client("cloudwatch", region_name=REGION).set_alarm_state(
        AlarmName="iot-dev-iterator-age", StateValue="ALARM", StateReason="Threshold Crossed")
    start, end = _window()
    health = check_health(ctx, start=start, end=end)
    assert health.failure_records_waiting == 2
    assert [a["name"] for a in health.alarms_in_alarm] == ["iot-dev-iterator-age"]
    assert not health.healthy and any("replay failed" in p for p in health.problems)
    assert main(["health", "--env", "dev", *sum((["--set", s] for s in SETS), [])]) == 2
    out = capsys.readouterr().out
    assert "verdict: degraded" in out and "iot-dev-iterator-age" in out


def test_logs_are_the_handlers_events_filtered(ran, capsys):
    engine, report = ran
    ctx = engine.ctx
    start = datetime.now(UTC) - timedelta(minutes=10)
    summaries = list(read_logs(ctx, start=start, kind="summary"))
    anomalies = list(read_logs(ctx, start=start, kind="anomaly"))
    assert len(summaries) == report.batches
    assert sum(e.fields["stored"] for e in summaries) == report.items_stored
    assert len(anomalies) == report.anomalous_items
    assert all(e.fields["event"] == "anomaly" and e.fields["anomalies"] for e in anomalies)
    assert list(read_logs(ctx, start=start, kind="error")) == []
    assert all("_aws" not in e.fields for e in summaries)  # the EMF directive is CloudWatch's

    assert main(["logs", "--env", "dev", "--filter", "anomaly", "--json", *sum((["--set", s] for s in SETS), [])]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == report.anomalous_items and all(line["event"] == "anomaly" for line in lines)


def test_follow_prints_each_new_event_once(ran):
    engine, _ = ran
    ctx = engine.ctx
    logs = boto3.client("logs", region_name=REGION)
    group = ctx.names.lambda_log_group
    logs.create_log_stream(logGroupName=group, logStreamName="later")

    def sleep(_seconds):  # between polls, the function logs an error
        now = int(datetime.now(UTC).timestamp() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName="later", logEvents=[
            {"timestamp": now, "message": json.dumps({"level": "ERROR", "event": "archive_write_failed"})}])

    start = datetime.now(UTC) - timedelta(minutes=10)
    events = list(read_logs(ctx, start=start, kind="error", follow=True, sleep=sleep, polls=3))
    assert [e.fields["event"] for e in events] == ["archive_write_failed", "archive_write_failed"]


def test_readings_of_a_device_newest_in_window_oldest_first(ran, capsys):
    engine, _ = ran
    ctx = engine.ctx
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    items = [i for i in dynamodb.scan(TableName=ctx.names.metrics_table)["Items"] if i["device_id"]["S"] == "press-001"]
    stamps = sorted(float(i["timestamp"]["N"]) for i in items)
    got = device_readings(ctx, "press-001", start=None, end=None, limit=3)
    assert [r.timestamp for r in got] == stamps[-3:]
    window = device_readings(ctx, "press-001", start=datetime.fromtimestamp(stamps[1], UTC),
                             end=datetime.fromtimestamp(stamps[2], UTC), limit=100)
    assert [r.timestamp for r in window] == stamps[1:3]
    everything = device_readings(ctx, "press-001", start=None, end=None, limit=100)
    assert sum(1 for r in everything if r.anomalies) == sum(1 for i in items if "anomalies" in i)
    header, *rows = to_csv(everything).splitlines()
    assert header.startswith("device_id,timestamp,time,temperature") and len(rows) == len(items)

    assert main(["readings", "press-001", "--env", "dev", "--limit", "2", "--json",
                 *sum((["--set", s] for s in SETS), [])]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["count"] == 2 and [r["timestamp"] for r in doc["readings"]] == stamps[-2:]
    assert main(["readings", "press-001", "--env", "dev", "--json", "--csv"]) == 64
    assert "choose one" in capsys.readouterr().err


def test_time_values():
    now = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    assert parse_time("90s", now) == now - timedelta(seconds=90)
    assert parse_time("2d", now) == now - timedelta(days=2)
    assert parse_time("2026-12-01T00:00:00Z", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("2026-12-01T00:00:00", now) == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match="--since 'yesterday'"):
        parse_time("yesterday", now)
    with pytest.raises(UsageError, match="is not after"):
        parse_window("1h", "2h", now, default_since="1h")


def test_an_env_that_is_not_deployed_is_said_so(make, capsys):
    make(sets=SETS)  # credentials and moto, no env
    assert main(["health", "--env", "dev", *sum((["--set", s] for s in SETS), [])]) == 2
    assert "is not deployed" in capsys.readouterr().err
    assert main(["readings", "press-001", "--env", "dev"]) == 2
