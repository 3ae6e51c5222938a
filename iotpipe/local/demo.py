"""What `iotpipe demo` does between `up` and `destroy`: push readings through the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotpipe.local.metrics import LocalLogs, LocalMetrics
from iotpipe.local.simulator import HandlerTotals, deliver, local_handler, make_readings, publish
from iotpipe.steps.base import StepContext, paginate

INVALID_PAYLOADS: list[bytes | dict] = [
    b"not json at all",
    {"device_id": "", "timestamp": 1700000000, "temperature": 20},
    {"device_id": "press-009", "timestamp": "yesterday", "temperature": 20},
]

DEMO_ENV = "local"
LOCAL_LOG_STREAM = "local/[$LATEST]iotpipe-local-event-source"
DEMO_REGION = "us-east-1"
# moto applies a bucket policy's Deny without its Condition: a TLS-only policy denies every
# object call on the emulator (measured on moto 5.2).
DEMO_SETS = ("storage.enforce_tls=false",)

# (stage, done, total): stage is "publish" or "deliver", counted in records
Progress = Callable[[str, int, int], None]


def emulator_environment() -> dict[str, str]:
    """The AWS settings the demo runs with, whatever the caller's environment holds.

    moto accepts any key; fixed ones keep a real profile, session token or SSO login (and
    the network calls they may make) out of a run that must never reach AWS. The config and
    credentials files are pointed away too: a profile named there could still set an
    endpoint or a credential process.
    """
    import os

    return {
        "AWS_ACCESS_KEY_ID": "emulator",
        "AWS_SECRET_ACCESS_KEY": "emulator",
        "AWS_DEFAULT_REGION": DEMO_REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class DemoReport:
    readings_sent: int
    invalid_sent: int
    shards: int
    batch_size: int
    batches: int
    redeliveries: int
    undelivered: int
    handler_stored: int  # the handler's batch summaries (its CloudWatch log lines on AWS)
    handler_rejected: int
    items_stored: int  # DynamoDB's own count of the table's items
    anomalous_items: int
    archive_objects: int
    rejected_objects: int
    publish_s: float
    deliver_s: float

    @property
    def records_sent(self) -> int:
        return self.readings_sent + self.invalid_sent


def exercise(ctx: StepContext, count: int = 1000, progress: Progress | None = None) -> DemoReport:
    """Publish ``count`` readings plus a few invalid ones, run the handler, count what landed.

    The counts come from where the data landed (DynamoDB, S3), plus the handler's own batch
    summaries for what only it knows (anomalies, rejections). DescribeTable's ItemCount is
    exact on the emulator, which the demo always runs on; AWS refreshes it only every few
    hours, and a Scan of 100,000 items costs the emulator minutes.
    """
    report = progress or (lambda _stage, _done, _total: None)
    readings = make_readings(count)
    payloads = [*readings, *INVALID_PAYLOADS]
    started = time.monotonic()
    metrics = LocalMetrics(ctx)  # what Kinesis, Lambda and CloudWatch Logs would publish on AWS
    logs = LocalLogs(ctx)  # what Lambda would write to the function's log group
    publish(ctx, payloads, on_progress=lambda n: report("publish", n, len(payloads)), metrics=metrics)
    published = time.monotonic()
    totals = HandlerTotals()
    with local_handler(ctx, totals, metrics, logs) as handler:
        delivery = deliver(ctx, handler, on_progress=lambda n: report("deliver", n, len(payloads)),
                           metrics=metrics)
    metrics.flush(ctx.client("cloudwatch"))
    logs.flush(ctx.client("logs"), LOCAL_LOG_STREAM)
    delivered = time.monotonic()
    dynamodb, s3 = ctx.client("dynamodb"), ctx.client("s3")
    items = dynamodb.describe_table(TableName=ctx.names.metrics_table)["Table"].get("ItemCount", 0)
    bucket = ctx.names.sensor_bucket
    return DemoReport(
        readings_sent=len(readings),
        invalid_sent=len(INVALID_PAYLOADS),
        shards=delivery.shards,
        batch_size=ctx.config.lambda_.batch_size,
        batches=delivery.batches,
        redeliveries=delivery.redeliveries,
        undelivered=len(delivery.failures),
        handler_stored=totals.stored,
        handler_rejected=totals.rejected,
        items_stored=items,
        anomalous_items=totals.anomalies,
        archive_objects=len(paginate(s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix="raw/")),
        rejected_objects=len(paginate(s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix="rejected/")),
        publish_s=round(published - started, 1),
        deliver_s=round(delivered - published, 1),
    )


def demo_health(ctx: StepContext) -> Any:
    """`iotpipe health` over the last hour, which holds the whole demo run."""
    from datetime import UTC, datetime, timedelta

    from iotpipe.ops.health import check_health

    now = datetime.now(UTC)
    return check_health(ctx, start=now - timedelta(hours=1), end=now + timedelta(minutes=1))
