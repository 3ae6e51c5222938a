"""Sensor readings and a local Kinesis event source, for the demo and end-to-end checks.

moto never routes an IoT publish through a topic rule and never runs our handler, so this
does what AWS would: put readings on the stream with the rule's partition key (the device,
``${topic(3)}``), then poll the shards and call the handler with Lambda-shaped batches,
re-delivering from the lowest reported failure as Lambda does with ReportBatchItemFailures.
A batch that still fails after its retries is sent, as Lambda sends it, to the mapping's
on-failure destination: the whole batch to S3 (``aws/lambda/...``), its metadata to SQS.
"""

from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from iotpipe.handler import index as handler_index
from iotpipe.local.metrics import LocalLogs, LocalMetrics
from iotpipe.steps.base import StepContext, paginate

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
PUT_RECORDS_LIMIT = 500  # records per PutRecords request (Kinesis API reference)


def data_client(ctx: StepContext, service: str) -> Any:
    """A client for the demo's data plane: same session, endpoint and retries as iotpipe's,
    without botocore's client-side parameter validation, which was most of this process's
    time at 100,000 readings; the emulator validates every request anyway."""
    from botocore.config import Config

    config = Config(region_name=ctx.region, retries={"mode": "standard", "max_attempts": 10},
                    parameter_validation=False, max_pool_connections=16)
    kwargs = {"endpoint_url": ctx.aws.endpoint_url} if ctx.aws.endpoint_url else {}
    return ctx.aws.session.client(service, config=config, **kwargs)


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


def publish(ctx: StepContext, payloads: list[bytes | dict[str, Any]],
            on_progress: Callable[[int], None] | None = None, metrics: LocalMetrics | None = None) -> int:
    """Put payloads on the env's stream, partitioned by device like the topic rule does.

    ``on_progress`` gets the running count after each PutRecords call; without it, about every
    tenth of the way is reported on the run's progress channel. ``metrics`` counts the stream's
    IncomingRecords as Kinesis would.
    """
    kinesis = data_client(ctx, "kinesis")
    sent = 0
    for start in range(0, len(payloads), PUT_RECORDS_LIMIT):
        chunk = payloads[start:start + PUT_RECORDS_LIMIT]
        records = []
        for p in chunk:
            data = p if isinstance(p, bytes) else json.dumps(p).encode()
            key = p.get("device_id", "unknown") if isinstance(p, dict) else "unknown"
            records.append({"Data": data, "PartitionKey": str(key) or "unknown"})
        response = kinesis.put_records(StreamName=ctx.names.stream, Records=records)
        if response.get("FailedRecordCount"):
            raise RuntimeError(f"{response['FailedRecordCount']} records were not accepted by Kinesis")
        sent += len(records)
        if metrics is not None:
            metrics.published(len(records))
        if on_progress:  # the caller shows progress its own way: one count on screen, not two
            on_progress(sent)
        elif sent == len(payloads) or sent * 10 // len(payloads) > (sent - len(records)) * 10 // len(payloads):
            ctx.aws.report("publishing", f"published {sent} of {len(payloads)} records to {ctx.names.stream}",
                           sent=sent, total=len(payloads))  # about every tenth
    return sent


@dataclass
class DeliveryReport:
    batches: int = 0
    records: int = 0
    redeliveries: int = 0
    failures: list[str] = field(default_factory=list)  # first sequence number of each batch given up
    given_up: int = 0  # records of the batches given up (sent to the failure destination)
    shards: int = 0
    failure_records: list[str] = field(default_factory=list)  # S3 keys or SQS message ids written


@dataclass(frozen=True)
class FailureDestination:
    """The env's mapping as the local event source needs it to send a discarded batch."""

    mapping_uuid: str
    function_arn: str
    destination: str | None


def failure_destination(ctx: StepContext) -> FailureDestination | None:
    """The env's mapping (its UUID names the failure records) and its on-failure destination."""
    lam = ctx.client("lambda")
    stream_arn = ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")
    function_arn = ctx.aws.arn("lambda", f"function:{ctx.names.function}")
    for mapping in paginate(lam, "list_event_source_mappings", "EventSourceMappings", EventSourceArn=stream_arn):
        if mapping.get("FunctionArn") == function_arn:
            on_failure = ((mapping.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
            return FailureDestination(mapping["UUID"], function_arn, on_failure or None)
    return None


def send_failure_record(ctx: StepContext, target: FailureDestination, batch: list[dict[str, Any]],
                        shard_id: str, invoke_count: int, when: datetime) -> str | None:
    """What Lambda does with a batch it discards: the whole invocation record to an S3
    destination, its metadata only to an SQS one. Returns the S3 key or SQS message id."""
    from iotpipe.ops.failure_records import failure_record, failure_record_key

    destination = target.destination or ""
    stream_arn = ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")
    doc = failure_record(records=batch, function_arn=target.function_arn, stream_arn=stream_arn,
                         shard_id=shard_id, invoke_count=invoke_count, when=when,
                         with_payload=":s3:::" in destination)
    if ":s3:::" in destination:
        key = failure_record_key(target.mapping_uuid, shard_id, when)
        data_client(ctx, "s3").put_object(Bucket=destination.split(":::", 1)[1], Key=key,
                                          Body=json.dumps(doc).encode(), ContentType="application/json")
        return key
    if ":sqs:" in destination:
        sqs = data_client(ctx, "sqs")
        url = sqs.get_queue_url(QueueName=destination.rsplit(":", 1)[1])["QueueUrl"]
        return sqs.send_message(QueueUrl=url, MessageBody=json.dumps(doc))["MessageId"]
    return None


def deliver(ctx: StepContext, handler: Handler, *, batch_size: int | None = None,
            max_redeliveries: int | None = None, on_progress: Callable[[int], None] | None = None,
            now: Callable[[], datetime] | None = None, metrics: LocalMetrics | None = None,
            clock: Callable[[], float] = time.time) -> DeliveryReport:
    """Read every shard from the start and feed the handler as Lambda's event source would.

    A batch is retried as the env's mapping retries it (``lambda.max_retry_attempts``, unless
    ``max_redeliveries`` says otherwise), then sent to the mapping's on-failure destination.

    Shards are delivered concurrently, one worker each, as Lambda runs one invocation per
    shard at a time (ParallelizationFactor 1): order holds within a shard, which is all
    Kinesis promises. ``on_progress`` gets the number of records handled so far (first
    deliveries only, so it ends at the number of records on the stream). ``metrics`` counts
    what Lambda would: invocations, errors, iterator age (by ``clock``), records given up;
    ``now`` stamps the failure records.
    """
    from concurrent.futures import ThreadPoolExecutor

    kinesis = data_client(ctx, "kinesis")
    batch_size = batch_size or ctx.config.lambda_.batch_size
    retries = ctx.config.lambda_.max_retry_attempts if max_redeliveries is None else max_redeliveries
    stream_arn = ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")
    report = DeliveryReport()
    lock = threading.Lock()
    handled = [0]
    target = failure_destination(ctx)
    stamp = now or (lambda: datetime.now(UTC))

    def one_shard(shard_id: str) -> None:
        iterator = kinesis.get_shard_iterator(StreamName=ctx.names.stream, ShardId=shard_id,
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        pending: list[dict[str, Any]] = []
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            pending.extend(page["Records"])
            iterator = page.get("NextShardIterator") if page["Records"] else None
        for start in range(0, len(pending), batch_size):
            batch = [lambda_record(r, shard_id, stream_arn, ctx.region)
                     for r in pending[start:start + batch_size]]
            own = DeliveryReport()
            discarded = _invoke_with_redelivery(handler, batch, own, retries, metrics, clock)
            if discarded and target is not None:
                written = send_failure_record(ctx, target, discarded, shard_id, retries + 1, stamp())
                if written:
                    own.failure_records.append(written)
            with lock:
                report.failure_records.extend(own.failure_records)
                report.batches += own.batches
                report.records += own.records
                report.redeliveries += own.redeliveries
                report.failures.extend(own.failures)
                report.given_up += own.given_up
                handled[0] += len(batch)
                if on_progress:
                    on_progress(handled[0])

    shards = [s["ShardId"] for s in paginate(kinesis, "list_shards", "Shards", StreamName=ctx.names.stream)]
    report.shards = len(shards)
    with ThreadPoolExecutor(max_workers=max(1, len(shards))) as pool:
        for done in [pool.submit(one_shard, shard_id) for shard_id in shards]:
            done.result()  # a failing shard fails the delivery
    return report


def _invoke_with_redelivery(handler: Handler, batch: list[dict[str, Any]], report: DeliveryReport,
                            max_redeliveries: int, metrics: LocalMetrics | None = None,
                            clock: Callable[[], float] = time.time) -> list[dict[str, Any]]:
    """Invoke until the batch is persisted or its retries are spent; return what is discarded
    (from the lowest failure reported by the last attempt on), empty on success."""
    for attempt in range(max_redeliveries + 1):
        report.batches += 1
        report.records += len(batch)
        report.redeliveries += attempt > 0
        # Lambda's IteratorAge: the age of the batch's last record when the invocation starts
        age_ms = (clock() - float(batch[-1]["kinesis"]["approximateArrivalTimestamp"])) * 1000
        try:
            failures = handler({"Records": batch}, None).get("batchItemFailures", [])
        except Exception:
            if metrics is not None:
                metrics.invocation(error=True, iterator_age_ms=age_ms)
            raise
        if metrics is not None:
            metrics.invocation(error=False, iterator_age_ms=age_ms)
        if not failures:
            return []
        first = min(int(f["itemIdentifier"]) for f in failures)
        batch = [r for r in batch if int(r["kinesis"]["sequenceNumber"]) >= first]
    report.failures.append(batch[0]["kinesis"]["sequenceNumber"])
    report.given_up += len(batch)
    if metrics is not None:
        metrics.given_up(len(batch))
    return batch


def lambda_record(record: dict[str, Any], shard_id: str, stream_arn: str, region: str) -> dict[str, Any]:
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


@dataclass
class HandlerTotals:
    """The sums of the handler's own ``batch_summary`` log lines (what CloudWatch Logs would
    hold on AWS): stored, rejected and failed records, and readings flagged as anomalies."""

    invocations: int = 0
    received: int = 0
    stored: int = 0
    rejected: int = 0
    failed: int = 0
    anomalies: int = 0
    # The handler's error lines ({"event": ..., fields}): kept here; also written to stderr
    # (what the demo wants) unless ``echo_errors`` is off (a command that reports them itself).
    errors: list[dict[str, Any]] = field(default_factory=list)
    echo_errors: bool = True


@contextmanager
def local_handler(ctx: StepContext, totals: HandlerTotals | None = None, metrics: LocalMetrics | None = None,
                  logs: LocalLogs | None = None, *,
                  sleep: Callable[[float], None] | None = None) -> Iterator[Handler]:
    """The real handler module, run in this process against the same endpoint as iotpipe,
    configured as the env's function is (the lambda step's own environment variables).

    Its JSON log lines (what CloudWatch Logs would hold) are not printed: with ``totals`` the
    batch summaries are added up there, with ``metrics`` their Embedded Metric Format fields
    become the metrics CloudWatch would extract, with ``logs`` every line is kept for the
    function's log group. Its errors still reach stderr unless ``totals.echo_errors`` is off.
    ``sleep`` is the handler's backoff between retries of unprocessed items (tests pass one
    that returns).
    """
    import logging

    index = handler_index
    # The handler's JSON log lines belong in CloudWatch; locally only errors are worth showing.
    quiet = totals is None and metrics is None and logs is None
    variables = {**function_environment(ctx), "LOG_LEVEL": "ERROR" if quiet else "INFO"}
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    index.reset()
    index.configure(dynamodb=data_client(ctx, "dynamodb"), s3=data_client(ctx, "s3"), sleep=sleep)
    collector = _SummaryCollector(totals, metrics, logs)
    printers = [h for h in index.log.handlers if isinstance(h, handler_index._JsonLines)]  # noqa: SLF001
    for printer in printers:  # left by an earlier run: would print every line
        index.log.removeHandler(printer)
    index.log.addHandler(collector)  # counts as the handler's own JSON-lines handler
    try:
        yield index.lambda_handler
    finally:
        index.log.removeHandler(collector)
        index.log.setLevel(logging.NOTSET)
        for printer in printers:
            index.log.addHandler(printer)
        index.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _SummaryCollector(handler_index._JsonLines):  # noqa: SLF001
    """Adds up ``batch_summary`` lines; passes errors on as the handler would print them.

    A subclass of the handler's own JSON-lines handler, so that the handler's logging setup
    sees one in place and does not add another that prints every line.
    """

    def __init__(self, totals: HandlerTotals | None, metrics: LocalMetrics | None = None,
                 logs: LocalLogs | None = None) -> None:
        super().__init__()
        self.totals = totals
        self.metrics = metrics
        self.logs = logs

    def emit(self, record: Any) -> None:
        import logging
        import sys

        message = record.getMessage()
        fields = getattr(record, "fields", {})
        if self.metrics is not None and message in ("batch_summary", "metrics"):
            self.metrics.embedded(fields)
        if self.logs is not None:
            line = {"level": record.levelname, "event": message, **fields}
            self.logs.add(record.created, json.dumps(line, default=str, separators=(",", ":")))
        if message == "batch_summary":
            if self.totals is not None:
                # no lock of our own: logging's handle() holds the handler's lock around emit
                self.totals.invocations += 1
                for name in ("received", "stored", "rejected", "failed", "anomalies"):
                    setattr(self.totals, name, getattr(self.totals, name) + int(fields.get(name, 0)))
        elif record.levelno >= logging.ERROR:
            line = {"level": record.levelname, "event": message, **fields}
            if self.totals is not None:
                self.totals.errors.append(line)
            if self.totals is None or self.totals.echo_errors:
                sys.stderr.write(json.dumps(line, default=str) + "\n")
