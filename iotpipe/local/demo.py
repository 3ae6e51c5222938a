"""What `iotpipe demo` does between `up` and `destroy`: push readings through the pipeline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from iotpipe.local.metrics import LocalLogs, LocalMetrics
from iotpipe.local.simulator import (
    Handler,
    HandlerTotals,
    deliver,
    local_handler,
    make_readings,
    publish,
)
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
    # the simulated DynamoDB outage (zero without one): BatchWriteItem calls refused, the
    # records of the batch given up, and the failure records written for it
    outage_refused: int = 0
    given_up_records: int = 0
    failure_records: list[str] = field(default_factory=list)
    # the handler's error lines the outage does not explain (printed as they came without one)
    handler_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def records_sent(self) -> int:
        return self.readings_sent + self.invalid_sent

    @property
    def readings_missing(self) -> int:
        """Readings sent that DynamoDB does not hold: the given-up batch's, until it is replayed."""
        return self.readings_sent - self.items_stored


class DynamoDBOutage:
    """DynamoDB unavailable for exactly one batch, as the handler would meet it on AWS.

    The first batch that writes to DynamoDB, and every redelivery of it, gets the error AWS
    answers when the table refuses writes (ProvisionedThroughputExceededException) from the
    handler's own client; every other batch, before or after, goes through. So the handler
    reacts with its own code (it reports the batch's first unwritten record), the local event
    source redelivers it until the mapping's retries are spent and writes the failure record
    to the on-failure destination, as Lambda would; `iotpipe replay failed` can then recover it.

    The answer is returned from a ``before-call`` hook, so botocore raises its modelled
    exception as for a real answer, without the retries with backoff it would spend on AWS
    first (which would only make the demo wait). Shards are delivered on threads of their own;
    the batch being handled on each is known per thread.
    """

    CODE = "ProvisionedThroughputExceededException"
    EVENT = "before-call.dynamodb.BatchWriteItem"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = threading.local()
        self.batch: frozenset[str] = frozenset()  # the eventIDs (shard:sequence) of the failing batch
        self.refused = 0  # BatchWriteItem calls answered with the error

    def wrap(self, handler: Handler) -> Handler:
        """The handler, with the batch it is given known to the hook while it runs."""

        def invoke(event: dict[str, Any], context: Any) -> dict[str, Any]:
            self._current.ids = frozenset(str(r.get("eventID", "")) for r in event.get("Records", []))
            try:
                return handler(event, context)
            finally:
                self._current.ids = frozenset()

        return invoke

    def attach(self, client: Any) -> None:
        """On the handler's DynamoDB client, which `local_handler` drops when it ends (and the
        outage with it: the replay that follows writes through a client of its own)."""
        client.meta.events.register(self.EVENT, self._answer, unique_id="iotpipe-demo-outage")

    def down_for(self, ids: frozenset[str]) -> bool:
        """Whether a write for the batch ``ids`` fails: the first batch to write claims the
        outage; a redelivery (the same batch, or its tail) still meets it."""
        with self._lock:
            if not self.batch and ids:
                self.batch = ids
            down = bool(ids) and ids <= self.batch
            self.refused += down
            return down

    def explains(self, error: dict[str, Any]) -> bool:
        """Whether one of the handler's error lines is the outage's refusal, as it logs it."""
        return error.get("event") == "dynamodb_write_failed" and error.get("error") == self.CODE

    def _answer(self, model: Any, **_: Any) -> tuple[Any, dict[str, Any]] | None:
        if not self.down_for(getattr(self._current, "ids", frozenset())):
            return None
        from botocore.awsrequest import AWSResponse

        message = "The level of configured provisioned throughput for the table was exceeded (simulated outage)"
        parsed = {"Error": {"Code": self.CODE, "Message": message},
                  "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {}}}
        return AWSResponse("https://dynamodb.invalid/", 400, {}, None), parsed


def exercise(ctx: StepContext, count: int = 1000, progress: Progress | None = None, *,
             outage: DynamoDBOutage | None = None) -> DemoReport:
    """Publish ``count`` readings plus a few invalid ones, run the handler, count what landed.

    With ``outage``, one batch meets a DynamoDB outage and ends in the failure destination
    (see DynamoDBOutage); the handler's error lines are kept, not printed: those the outage
    does not explain are in the report.

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
    totals = HandlerTotals(echo_errors=outage is None)
    # The handler backs off between retries of UnprocessedItems only; a refused request it
    # reports at once. A no-op sleep keeps any backoff from making the demo wait.
    with local_handler(ctx, totals, metrics, logs, sleep=lambda _s: None) as handler:
        if outage is not None:
            from iotpipe.handler import index as handler_index

            outage.attach(handler_index.client("dynamodb"))
            handler = outage.wrap(handler)
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
        outage_refused=outage.refused if outage is not None else 0,
        given_up_records=delivery.given_up,
        failure_records=list(delivery.failure_records),
        handler_errors=[e for e in totals.errors if outage is None or not outage.explains(e)],
    )


def demo_health(ctx: StepContext) -> Any:
    """`iotpipe health` over the last hour, which holds the whole demo run."""
    from datetime import UTC, datetime, timedelta

    from iotpipe.ops.health import check_health

    now = datetime.now(UTC)
    return check_health(ctx, start=now - timedelta(hours=1), end=now + timedelta(minutes=1))


@dataclass
class DemoReplay:
    """`iotpipe replay failed` after the outage, and what it changed: DynamoDB's item count
    and the failure records waiting, before and after."""

    replay: Any  # iotpipe.ops.replay.ReplayReport
    readings_sent: int
    items_before: int
    items_after: int
    failure_records_before: int
    failure_records_after: int

    @property
    def missing_before(self) -> int:
        return self.readings_sent - self.items_before

    @property
    def missing_after(self) -> int:
        return self.readings_sent - self.items_after

    def as_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "replay"}
        return {**fields, "missing_before": self.missing_before, "missing_after": self.missing_after,
                "replay": self.replay.as_dict()}


def demo_replay(ctx: StepContext, pipeline: DemoReport) -> DemoReplay:
    """`iotpipe replay failed` on the env, in this process, then DynamoDB counted again."""
    from iotpipe.ops.health import count_failure_records
    from iotpipe.ops.replay import replay_failed

    waiting = count_failure_records(ctx)
    result = replay_failed(ctx)
    items = ctx.client("dynamodb").describe_table(TableName=ctx.names.metrics_table)["Table"].get("ItemCount", 0)
    return DemoReplay(replay=result, readings_sent=pipeline.readings_sent, items_before=pipeline.items_stored,
                      items_after=items, failure_records_before=waiting,
                      failure_records_after=count_failure_records(ctx))
