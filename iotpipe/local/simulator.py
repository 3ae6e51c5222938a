"""Sensor readings and a local Kinesis event source, for the demo and end-to-end checks.

moto never routes an IoT publish through a topic rule and never runs our handler, so this
does what AWS would: put readings on the stream with the rule's partition key (the device,
``${topic(3)}``), then poll the shards and call the handler with Lambda-shaped batches,
re-delivering from the lowest reported failure as Lambda does with ReportBatchItemFailures.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from iotpipe.steps.base import StepContext, paginate

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def make_readings(count: int, *, devices: int = 5, seed: int = 7, start: int | None = None) -> list[dict[str, Any]]:
    """``count`` plausible readings from ``devices`` machines; roughly 1 in 50 is anomalous."""
    rng = random.Random(seed)
    start = start if start is not None else int(datetime.now(UTC).timestamp()) - count
    readings = []
    for i in range(count):
        hot = rng.random() < 0.02
        readings.append({
            "device_id": f"press-{i % devices:03d}",
            "timestamp": start + i,
            "temperature": round(rng.uniform(101, 130) if hot else rng.uniform(20, 85), 2),
            "vibration": round(rng.uniform(0, 45), 2),
            "pressure": round(rng.uniform(1, 10), 3),
        })
    return readings


def publish(ctx: StepContext, payloads: list[bytes | dict[str, Any]]) -> int:
    """Put payloads on the env's stream, partitioned by device like the topic rule does."""
    kinesis = ctx.client("kinesis")
    sent = 0
    for start in range(0, len(payloads), 500):  # PutRecords takes at most 500 records
        chunk = payloads[start:start + 500]
        records = []
        for p in chunk:
            data = p if isinstance(p, bytes) else json.dumps(p).encode()
            key = p.get("device_id", "unknown") if isinstance(p, dict) else "unknown"
            records.append({"Data": data, "PartitionKey": str(key) or "unknown"})
        response = kinesis.put_records(StreamName=ctx.names.stream, Records=records)
        if response.get("FailedRecordCount"):
            raise RuntimeError(f"{response['FailedRecordCount']} records were not accepted by Kinesis")
        sent += len(records)
        if sent == len(payloads) or sent * 10 // len(payloads) > (sent - len(records)) * 10 // len(payloads):
            ctx.aws.report("publishing", f"published {sent} of {len(payloads)} records to {ctx.names.stream}",
                           sent=sent, total=len(payloads))  # about every tenth
    return sent


@dataclass
class DeliveryReport:
    batches: int = 0
    records: int = 0
    redeliveries: int = 0
    failures: list[str] = field(default_factory=list)


def deliver(ctx: StepContext, handler: Handler, *, batch_size: int | None = None,
            max_redeliveries: int = 3) -> DeliveryReport:
    """Read every shard from the start and feed the handler as Lambda's event source would."""
    kinesis = ctx.client("kinesis")
    batch_size = batch_size or ctx.config.lambda_.batch_size
    stream_arn = ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")
    report = DeliveryReport()
    for shard in paginate(kinesis, "list_shards", "Shards", StreamName=ctx.names.stream):
        iterator = kinesis.get_shard_iterator(StreamName=ctx.names.stream, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        pending: list[dict[str, Any]] = []
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            pending.extend(page["Records"])
            iterator = page.get("NextShardIterator") if page["Records"] else None
        for start in range(0, len(pending), batch_size):
            batch = [_lambda_record(r, shard["ShardId"], stream_arn, ctx.region)
                     for r in pending[start:start + batch_size]]
            _invoke_with_redelivery(handler, batch, report, max_redeliveries)
    return report


def _invoke_with_redelivery(handler: Handler, batch: list[dict[str, Any]], report: DeliveryReport,
                            max_redeliveries: int) -> None:
    for attempt in range(max_redeliveries + 1):
        report.batches += 1
        report.records += len(batch)
        report.redeliveries += attempt > 0
        failures = handler({"Records": batch}, None).get("batchItemFailures", [])
        if not failures:
            return
        first = min(int(f["itemIdentifier"]) for f in failures)
        batch = [r for r in batch if int(r["kinesis"]["sequenceNumber"]) >= first]
    report.failures.append(batch[0]["kinesis"]["sequenceNumber"])


def _lambda_record(record: dict[str, Any], shard_id: str, stream_arn: str, region: str) -> dict[str, Any]:
    arrival = record.get("ApproximateArrivalTimestamp")
    arrival_ts = arrival.timestamp() if isinstance(arrival, datetime) else float(arrival or 0)
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record["PartitionKey"],
            "sequenceNumber": record["SequenceNumber"],
            "data": base64.b64encode(record["Data"]).decode(),
            "approximateArrivalTimestamp": arrival_ts,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{record['SequenceNumber']}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::000000000000:role/local",
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    }


def function_environment(ctx: StepContext) -> dict[str, str]:
    """Exactly the variables the lambda step gives the deployed function."""
    from iotpipe.steps.lambda_ import Function

    return Function().environment(ctx)


@contextmanager
def local_handler(ctx: StepContext) -> Iterator[Handler]:
    """The real handler module, run in this process against the same endpoint as iotpipe."""
    from iotpipe.handler import index

    # The handler's JSON log lines belong in CloudWatch; locally only errors are worth showing.
    variables = {**function_environment(ctx), "LOG_LEVEL": "ERROR"}
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    index.reset()
    index.configure(dynamodb=ctx.client("dynamodb"), s3=ctx.client("s3"))
    try:
        yield index.lambda_handler
    finally:
        index.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
