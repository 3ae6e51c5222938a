"""`replay failed`: failure records in Lambda's S3 format, written by the local event source,
replayed with the handler's own code; injected failures; interrupted at every write, in every
way, a re-run stores every reading exactly once; metadata-only records read back from the
stream, expired ranges named."""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import re
from datetime import UTC, datetime

import boto3

from iotpipe.handler import index as handler_index
from iotpipe.local.simulator import (
    HandlerTotals,
    deliver,
    lambda_record,
    local_handler,
    make_readings,
    publish,
)
from iotpipe.ops.failure_records import failure_record, failure_record_key, list_failure_records
from iotpipe.ops.replay import replay_failed
from iotpipe.steps import kms, lambda_, storage, stream
from tests.support import FaultAt, fail_with

REGION = "us-east-1"
WHEN = datetime(2026, 12, 1, 3, 4, 5, tzinfo=UTC)
UUID = "0b7c5b4e-1111-4222-8333-944445555666"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:iot-processor-dev"
PROCESSING = (*kms.RESOURCES, *storage.RESOURCES, *stream.RESOURCES, *lambda_.RESOURCES)


@functools.cache
def _client(service):
    """One client per service for the whole module: moto intercepts them whenever it is active."""
    return boto3.client(service, region_name=REGION)


def bare_data_plane(make):
    """The env's table, versioned sensor bucket and one-shard stream, without `up` (fast)."""
    ctx = make(resources=()).ctx
    names = ctx.names
    _client("dynamodb").create_table(
        TableName=names.metrics_table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}, {"AttributeName": "timestamp", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"},
                              {"AttributeName": "timestamp", "AttributeType": "N"}])
    _client("s3").create_bucket(Bucket=names.sensor_bucket)
    _client("s3").put_bucket_versioning(Bucket=names.sensor_bucket, VersioningConfiguration={"Status": "Enabled"})
    _client("kinesis").create_stream(StreamName=names.stream, ShardCount=1)
    return ctx


def bare_env(make, *, readings: int = 20, per_record: int = 7, payload: bool = True):
    """Table, versioned bucket and stream as the env has them (no `up`: fast), the readings
    (plus one invalid record) on the stream, and failure records of ``per_record`` each.
    ``make`` builds an engine (the conftest fixture, or ``_make`` with its own moto)."""
    ctx = bare_data_plane(make)
    names = ctx.names
    kinesis = _client("kinesis")
    publish(ctx, [*make_readings(readings, start=1_700_000_000), b"not json at all"])
    shard = kinesis.list_shards(StreamName=names.stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=names.stream, ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    stream_arn = ctx.aws.arn("kinesis", f"stream/{names.stream}")
    records = [lambda_record(r, shard, stream_arn, REGION)
               for r in kinesis.get_records(ShardIterator=iterator)["Records"]]
    for start in range(0, len(records), per_record):
        doc = failure_record(records=records[start:start + per_record], function_arn=FUNCTION_ARN,
                             stream_arn=stream_arn, shard_id=shard, invoke_count=6, when=WHEN,
                             with_payload=payload)
        _client("s3").put_object(Bucket=names.sensor_bucket, Key=failure_record_key(UUID, shard, WHEN),
                                 Body=json.dumps(doc).encode())
    return ctx, records


def stored_exactly_once(ctx, readings: int = 20, invalid: int = 1) -> None:
    """Every reading in DynamoDB once, in the current raw/ archive once; the invalid record
    quarantined once; no failure record left (their versions kept for audit)."""
    names = ctx.names
    items = _client("dynamodb").scan(TableName=names.metrics_table)["Items"]
    assert len(items) == readings
    s3 = _client("s3")
    lines = {"raw/": [], "rejected/": []}
    for prefix in lines:
        for obj in s3.list_objects_v2(Bucket=names.sensor_bucket, Prefix=prefix).get("Contents", []):
            body = gzip.decompress(s3.get_object(Bucket=names.sensor_bucket, Key=obj["Key"])["Body"].read())
            lines[prefix] += [json.loads(line)["sequence_number"] for line in body.decode().splitlines()]
    assert len(lines["raw/"]) == len(set(lines["raw/"])) == readings
    assert len(lines["rejected/"]) == invalid
    assert list_failure_records(s3, names.sensor_bucket) == []


def test_the_local_event_source_writes_failure_records_as_lambda_does(make):
    """DynamoDB refuses every write: each batch exhausts its retries and lands, whole, under
    aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid> in Lambda's format."""
    engine = make(resources=PROCESSING)
    engine.up()
    ctx = engine.ctx
    publish(ctx, make_readings(12, start=1_700_000_000))
    with local_handler(ctx, HandlerTotals(echo_errors=False), sleep=lambda _s: None) as handler:
        handler_index.client("dynamodb").meta.events.register(
            "before-call.dynamodb.BatchWriteItem", fail_with("ProvisionedThroughputExceededException"))
        delivery = deliver(ctx, handler, batch_size=5, max_redeliveries=2, now=lambda: WHEN)
    uuid = engine.store.get("lambda.event_source_mapping").ids["uuid"]
    refs = list_failure_records(_client("s3"), ctx.names.sensor_bucket)
    assert len(refs) == len(delivery.failure_records) == delivery.batches // 3 >= 3
    total = 0
    for ref in refs:
        assert re.fullmatch(rf"aws/lambda/{uuid}/shardId-\d+/2026/12/01/2026-12-01T03\.04\.05-[0-9a-f-]{{36}}", ref.key)
        assert ref.failed_at == WHEN and ref.mapping_uuid == uuid
        doc = json.loads(_client("s3").get_object(Bucket=ctx.names.sensor_bucket, Key=ref.key)["Body"].read())
        assert set(doc) == {"requestContext", "responseContext", "version", "timestamp", "KinesisBatchInfo", "payload"}
        assert doc["version"] == "1.0" and doc["timestamp"] == "2026-12-01T03:04:05.000Z"
        assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert doc["requestContext"]["functionArn"].endswith(":function:iot-processor-dev")
        assert doc["requestContext"]["approximateInvokeCount"] == 3
        info = doc["KinesisBatchInfo"]
        assert set(info) == {"shardId", "startSequenceNumber", "endSequenceNumber", "approximateArrivalOfFirstRecord",
                             "approximateArrivalOfLastRecord", "batchSize", "streamArn"}
        assert info["streamArn"].endswith(":stream/iot-sensor-stream-dev") and ref.shard_id == info["shardId"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", info["approximateArrivalOfFirstRecord"])
        records = json.loads(doc["payload"])["Records"]  # the whole invocation event, escaped
        assert info["batchSize"] == len(records)
        assert (records[0]["kinesis"]["sequenceNumber"], records[-1]["kinesis"]["sequenceNumber"]) == (
            info["startSequenceNumber"], info["endSequenceNumber"])
        total += len(records)
    assert total == 12
    report = replay_failed(ctx)  # and the replay stores them all
    assert report.complete and report.totals["stored"] == 12 and report.warnings == []
    assert _client("dynamodb").describe_table(TableName=ctx.names.metrics_table)["Table"]["ItemCount"] == 12
    variables = dict(lambda_.Function().environment(ctx), ANOMALY_THRESHOLDS='{"temperature":{"max":1}}')
    _client("lambda").update_function_configuration(FunctionName=ctx.names.function,
                                                    Environment={"Variables": variables})
    (warning,) = replay_failed(ctx, dry_run=True).warnings  # changed by hand: said, config's values used
    assert "ANOMALY_THRESHOLDS" in warning and "iotpipe status" in warning


def test_replay_stores_every_reading_once_and_removes_the_records(make):
    ctx, _ = bare_env(make)
    preview = replay_failed(ctx, dry_run=True)
    assert [i.outcome for i in preview.items] == ["would-replay"] * 3 and preview.totals["readings"] == 21
    assert len(list_failure_records(_client("s3"), ctx.names.sensor_bucket)) == 3  # dry run: untouched
    assert _client("dynamodb").scan(TableName=ctx.names.metrics_table)["Count"] == 0
    report = replay_failed(ctx)
    assert report.complete and report.totals == {"records": 3, "readings": 21, "stored": 20, "rejected": 1,
                                                 "still_failing": 0, "expired_ranges": 0}
    assert report.warnings == ["function iot-processor-dev does not exist: replayed with the handler "
                               "configured from the config, as `up` would deploy it"]
    stored_exactly_once(ctx)
    versions = _client("s3").list_object_versions(Bucket=ctx.names.sensor_bucket, Prefix="aws/lambda/")
    assert len(versions["Versions"]) == 3 and len(versions["DeleteMarkers"]) == 3  # kept for audit
    assert replay_failed(ctx).items == []


def test_records_are_kept_while_writes_fail_and_replayed_later(make):
    ctx, _ = bare_env(make)
    ctx.aws.events.register("before-call.dynamodb.BatchWriteItem", fail_with("InternalServerError"),
                            unique_id="ddb-down")
    failing = replay_failed(ctx)
    assert not failing.complete and {i.outcome for i in failing.items} == {"failing"}
    assert failing.totals["still_failing"] == 21
    assert "dynamodb_write_failed" in failing.items[0].message
    assert len(list_failure_records(_client("s3"), ctx.names.sensor_bucket)) == 3
    ctx.aws.events.unregister("before-call.dynamodb.BatchWriteItem", unique_id="ddb-down")
    ctx.aws._clients.clear()
    assert replay_failed(ctx).complete
    stored_exactly_once(ctx)


class WriteFault(FaultAt):
    """FaultAt over the data writes a replay makes (BatchWriteItem is not one of the control
    plane's mutating prefixes)."""

    WRITES = ("BatchWriteItem", "PutObject", "DeleteObject", "DeleteMessage", "PutRecords", "PutObjectTagging")

    def _before(self, model, **_):
        if model.name in self.WRITES:
            self.seen += 1
            if self.seen == self.n and self.mode in ("error", "abort"):
                self.fired = model.name
                if self.mode == "abort":
                    raise KeyboardInterrupt(self.fired)
                fail_with("InternalFailure")(model)

    def _after(self, model, **_):
        if model.name in self.WRITES and self.seen == self.n and self.mode == "lost" and self.fired is None:
            self.fired = model.name
            raise ConnectionResetError(f"injected: answer to {model.name} lost")


def _make(tmp_path):
    """An engine builder for a moto started by the test itself (one per interruption point)."""
    from iotpipe.aws import AwsContext
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine

    def build(resources=()):
        config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
        return make_engine(config, AwsContext(REGION, sleep=lambda _s: None), tmp_path / ".iotpipe",
                           resources=resources)

    return build


# As tests/test_interrupt.py: by default each write is interrupted once, the mode rotating
# (an AWS error, an abort before the request, the answer lost after AWS acted);
# IOTPIPE_FULL_MATRIX=1 interrupts every write in all three ways.
FULL_MATRIX = os.environ.get("IOTPIPE_FULL_MATRIX") == "1"
ROTATION = ("lost", "error", "lost", "abort")


def test_replay_interrupted_at_every_write_stores_everything_exactly_once(tmp_path, monkeypatch):
    from moto import mock_aws

    monkeypatch.chdir(tmp_path)  # the repo's config/dev.toml must not apply
    make = _make(tmp_path)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        ctx, _ = bare_env(make, readings=9, per_record=5)
        counter = WriteFault(0, "count")
        counter.attach(ctx.aws.events)
        replay_failed(ctx)
        writes = counter.seen
    assert writes == 7  # 2 × (BatchWriteItem, PutObject raw/, DeleteObject) + the rejected/ object
    failures = []
    points = [(n, mode) for n in range(1, writes + 1)
              for mode in (("error", "abort", "lost") if FULL_MATRIX else (ROTATION[n % len(ROTATION)],))]
    for n, mode in points:
        with mock_aws(config={"lambda": {"use_docker": False}}):
            ctx, _ = bare_env(make, readings=9, per_record=5)
            fault = WriteFault(n, mode)
            fault.attach(ctx.aws.events)
            with contextlib.suppress(KeyboardInterrupt, Exception):  # the interruption is the point
                replay_failed(ctx)
            if fault.fired is None:
                failures.append((n, "fault did not fire"))
                continue
            fresh = make().ctx
            try:
                assert replay_failed(fresh).complete
                stored_exactly_once(fresh, readings=9)
            except AssertionError as err:
                failures.append((n, fault.fired, str(err)[:300]))
    assert not failures, failures


def test_metadata_only_records_are_read_back_from_the_stream_and_expired_ranges_named(make):
    ctx, records = bare_env(make, payload=False)
    report = replay_failed(ctx)
    assert report.complete and report.totals["stored"] == 20
    stored_exactly_once(ctx)
    # A record whose range the stream no longer holds: named, kept, exit 3.
    stream_arn = ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")
    gone = [dict(r, kinesis=dict(r["kinesis"], sequenceNumber=str(int(r["kinesis"]["sequenceNumber"]) + 10**30)))
            for r in records[:2]]
    doc = failure_record(records=gone, function_arn=FUNCTION_ARN, stream_arn=stream_arn,
                         shard_id=records[0]["eventID"].split(":")[0], invoke_count=1, when=WHEN, with_payload=False)
    _client("s3").put_object(Bucket=ctx.names.sensor_bucket, Key=failure_record_key(UUID, "shardId-000000000000", WHEN),
                             Body=json.dumps(doc).encode())
    expired = replay_failed(ctx)
    (item,) = expired.items
    assert not expired.complete and item.outcome == "expired"
    assert item.expired == [{"from": gone[0]["kinesis"]["sequenceNumber"], "to": gone[1]["kinesis"]["sequenceNumber"]}]
    assert "past the stream's retention" in item.message
    assert len(list_failure_records(_client("s3"), ctx.names.sensor_bucket)) == 1


def test_since_and_until_select_by_the_time_in_the_key(make):
    ctx, _ = bare_env(make)
    assert replay_failed(ctx, since=datetime(2026, 12, 2, tzinfo=UTC), dry_run=True).items == []
    assert len(replay_failed(ctx, until=datetime(2026, 12, 2, tzinfo=UTC), dry_run=True).items) == 3
    assert replay_failed(ctx, until=WHEN, dry_run=True).items == []


def test_the_cli_reports_json_and_exit_codes(make, capsys, tmp_path):
    """`iotpipe replay failed`: JSON totals; 3 while something still fails; 64 for a bad time;
    2 for an env that is not deployed; `replay rejected` runs on the same env."""
    from iotpipe.cli import main
    from iotpipe.errors import ExitCode

    ctx, _ = bare_env(make)
    args = ["--env", "dev", "--state-dir", str(tmp_path / "state"), "--json"]
    assert main(["replay", "failed", "--since", "yesterday", *args]) == ExitCode.USAGE
    assert "'yesterday': expected a duration" in capsys.readouterr().err
    assert main(["replay", "failed", "--env", "nope", "--state-dir", str(tmp_path / "s2")]) == ExitCode.CHANGES_PENDING
    assert "nothing to replay" in capsys.readouterr().err
    assert main(["replay", "failed", "--dry-run", *args]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["totals"]["readings"] == 21
    assert main(["replay", "failed", *args]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] and doc["totals"]["stored"] == 20 and doc["env"] == "dev" and "endpoint" in doc
    stored_exactly_once(ctx)
    assert main(["replay", "rejected", *args]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["totals"]["rejected"] == 1  # "not json at all": still invalid
    bare = make(resources=()).ctx
    bare_doc = failure_record(records=[{"kinesis": {"sequenceNumber": "1", "approximateArrivalTimestamp": 0}}],
                              function_arn=FUNCTION_ARN, stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/gone",
                              shard_id="shardId-000000000000", invoke_count=1, when=WHEN, with_payload=False)
    _client("s3").put_object(Bucket=bare.names.sensor_bucket, Key=failure_record_key(UUID, "shardId-000000000000", WHEN),
                             Body=json.dumps(bare_doc).encode())
    assert main(["replay", "failed", *args]) == ExitCode.INCOMPLETE  # its stream is gone: expired, kept
    assert json.loads(capsys.readouterr().out)["totals"]["expired_ranges"] == 1


def test_messages_of_the_retired_queue_are_read_back_from_the_stream_and_deleted(make):
    """An env deployed before the move: its queue holds metadata-only records, as Lambda (here
    the local event source) sends them to SQS. Replay reads the batch back from the stream,
    stores it and deletes the message; the same readings in an S3 record are not stored twice."""
    from iotpipe.local.simulator import FailureDestination, send_failure_record

    ctx, records = bare_env(make)
    sqs = _client("sqs")
    url = sqs.create_queue(QueueName=ctx.names.dlq, tags=ctx.tags("lambda.dlq"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    shard = records[0]["eventID"].split(":")[0]
    # the batch of the first S3 record, as the old destination got it: stored once all the same
    send_failure_record(ctx, FailureDestination(UUID, FUNCTION_ARN, arn), records[:7], shard, 3, WHEN)
    (message,) = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"]
    body = json.loads(message["Body"])
    assert "payload" not in body and body["KinesisBatchInfo"]["batchSize"] == 7  # metadata only
    preview = replay_failed(ctx, dry_run=True)
    assert [i.source for i in preview.items].count("sqs") == 1
    report = replay_failed(ctx)
    (queued,) = [i for i in report.items if i.source == "sqs"]
    assert report.complete and queued.outcome == "replayed" and queued.stored == 7
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"] == "0"
    stored_exactly_once(ctx)
