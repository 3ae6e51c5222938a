"""`replay rejected`: quarantined records re-validated with the handler's current rules; the
valid ones back into the stream (and from there stored), the objects kept and tagged, the
still-invalid ones reported with their reason; --reason, --dry-run, a second run skips."""

from __future__ import annotations

import base64
import gzip
import json

import boto3

from iotpipe.local.simulator import HandlerTotals, deliver, local_handler, publish
from iotpipe.ops.replay import REPLAYED_TAG, replay_rejected
from tests.test_replay_failed import bare_data_plane

REGION = "us-east-1"
GOOD = {"device_id": "press-001", "timestamp": 1_700_000_000_000, "temperature": 21.5}  # ms: accepted today


def _client(service):
    return boto3.client(service, region_name=REGION)


def _env(make):
    return bare_data_plane(make)


def _run_pipeline(ctx) -> None:
    with local_handler(ctx, HandlerTotals(echo_errors=False), sleep=lambda _s: None) as handler:
        deliver(ctx, handler)


def _stream_count(ctx) -> int:
    kinesis = _client("kinesis")
    shard = kinesis.list_shards(StreamName=ctx.names.stream)["Shards"][0]["ShardId"]
    it = kinesis.get_shard_iterator(StreamName=ctx.names.stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    return len(kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"])


def _line(reason: str, payload: dict | bytes, seq: str) -> dict:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {"sequence_number": seq, "partition_key": "press-001", "received_at": 1_700_000_000,
            "reason": reason, "data": base64.b64encode(data).decode()}


def test_valid_records_go_back_into_the_stream_and_are_stored(make):
    ctx = _env(make)
    bucket = ctx.names.sensor_bucket
    # quarantined by today's handler: still invalid today
    publish(ctx, [{"device_id": "press-002", "timestamp": 1_700_000_100, "temperature": "hot"}, b"not json at all"])
    _run_pipeline(ctx)
    # quarantined by an older handler that refused millisecond timestamps: valid today
    old_key = "rejected/dt=2023-11-14/hh=22/shardId-000000000000-77.jsonl.gz"
    lines = [_line("invalid_timestamp: milliseconds are not accepted", GOOD, "77"),
             _line("invalid_timestamp: milliseconds are not accepted", {"device_id": "x", "timestamp": "soon"}, "78")]
    _client("s3").put_object(Bucket=bucket, Key=old_key, Body=gzip.compress(
        "".join(json.dumps(line) + "\n" for line in lines).encode(), mtime=0))
    on_stream = _stream_count(ctx)

    preview = replay_rejected(ctx, dry_run=True)
    assert preview.totals["readings"] == 4 and preview.totals["stored"] == 1 and preview.totals["rejected"] == 3
    assert _stream_count(ctx) == on_stream
    assert all(REPLAYED_TAG not in json.dumps(_client("s3").get_object_tagging(Bucket=bucket, Key=i.ref))
               for i in preview.items)

    only = replay_rejected(ctx, reason="invalid_json", dry_run=True)
    assert only.totals["readings"] == 1 and only.items[0].reasons == {"invalid_json": 1}

    report = replay_rejected(ctx)
    by_key = {i.ref: i for i in report.items}
    assert by_key[old_key].stored == 1 and by_key[old_key].rejected == 1
    assert by_key[old_key].reasons == {"invalid_timestamp": 1}
    assert "invalid_timestamp" in by_key[old_key].message
    assert _stream_count(ctx) == on_stream + 1  # the valid one, back into the stream
    tags = {t["Key"]: t["Value"] for t in _client("s3").get_object_tagging(Bucket=bucket, Key=old_key)["TagSet"]}
    assert tags == {REPLAYED_TAG: "invalid_timestamp"}
    assert len(_client("s3").list_objects_v2(Bucket=bucket, Prefix="rejected/")["Contents"]) == 2  # never deleted

    again = replay_rejected(ctx)  # marked: a second run skips what was replayed
    assert [(i.ref == old_key, i.stored, i.rejected) for i in again.items] == [(False, 0, 2)]

    _run_pipeline(ctx)  # what the mapping does with it on AWS
    item = _client("dynamodb").get_item(TableName=ctx.names.metrics_table,
                                        Key={"device_id": {"S": "press-001"}, "timestamp": {"N": "1700000000"}})
    assert item["Item"]["temperature"] == {"N": "21.5"}
