"""`iotpipe health`: the screen an operator reads at 3 a.m.

Readings per stage come from CloudWatch, where AWS's services count them: published (the
stream's IncomingRecords), stored / rejected / failed / anomalies (the handler's Embedded
Metric Format metrics), given up (records the event source mapping sent to its failure
destination); the function's errors and iterator age too. What waits for an operator comes
from where it waits: failure records in the sensor bucket under ``aws/lambda/``, messages in
the old SQS dead-letter queue if the env still has one, alarms in ALARM. The last reading is
the newest object of the ``raw/`` archive (its keys are by date and hour, so three listings
find it whatever the archive's size).

Reads only, and a fixed number of them: one GetMetricData for every metric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from iotpipe.aws import error_code, is_not_found
from iotpipe.errors import NotDeployedError
from iotpipe.steps.base import StepContext
from iotpipe.steps.monitor import ENV_DIMENSION, NAMESPACE

# (json key, namespace, metric, dimensions as (name, Names attribute or "env"/"uuid"), statistic)
METRICS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...], str], ...] = (
    ("published", "AWS/Kinesis", "IncomingRecords", (("StreamName", "stream"),), "Sum"),
    ("stored", NAMESPACE, "stored", ((ENV_DIMENSION, "env"),), "Sum"),
    ("rejected", NAMESPACE, "rejected", ((ENV_DIMENSION, "env"),), "Sum"),
    ("failed", NAMESPACE, "failed", ((ENV_DIMENSION, "env"),), "Sum"),
    ("anomalies", NAMESPACE, "anomalies", ((ENV_DIMENSION, "env"),), "Sum"),
    ("invocations", "AWS/Lambda", "Invocations", (("FunctionName", "function"),), "Sum"),
    ("errors", "AWS/Lambda", "Errors", (("FunctionName", "function"),), "Sum"),
    ("throttles", "AWS/Lambda", "Throttles", (("FunctionName", "function"),), "Sum"),
    ("iterator_age_ms", "AWS/Lambda", "IteratorAge", (("FunctionName", "function"),), "Maximum"),
    ("given_up", "AWS/Lambda", "OnFailureDestinationDeliveredEventCount",
     (("EventSourceMappingUUID", "uuid"),), "Sum"),
)


@dataclass
class Health:
    """Every count sits under a key that says what it counts (the --json document)."""

    env: str
    since: str
    until: str
    published: int = 0  # readings the stream received (Kinesis IncomingRecords)
    in_stream: int = 0  # published in the window, not yet stored, rejected or given up
    processed: int = 0  # stored + rejected: readings the handler persisted
    stored: int = 0  # readings written to DynamoDB and the raw/ archive
    rejected: int = 0  # readings quarantined under rejected/
    failed: int = 0  # readings of batches the handler could not persist (retried by Lambda)
    anomalies: int = 0  # stored readings flagged as anomalous
    given_up: int = 0  # readings the mapping sent to its failure destination
    invocations: int = 0
    errors: int = 0  # failed invocations of the function
    throttles: int = 0
    iterator_age_ms: float | None = None  # the largest in the window; None: no data
    failure_records_waiting: int = 0  # objects under aws/lambda/ in the sensor bucket
    dlq_messages_waiting: int | None = None  # None: the env has no SQS dead-letter queue
    alarms_in_alarm: list[dict[str, str]] = field(default_factory=list)
    last_reading_stored_at: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": "healthy" if self.healthy else "degraded"}


def check_health(ctx: StepContext, *, start: datetime, end: datetime) -> Health:
    """Read every number of the health screen for [start, end); judge it.

    An env without its stream is not deployed: that is said (exit 2), not judged healthy on
    the strength of zero counts.
    """
    try:
        ctx.client("kinesis").describe_stream_summary(StreamName=ctx.names.stream)
    except Exception as err:
        if is_not_found(err):
            raise NotDeployedError(f"env {ctx.env!r} is not deployed in {ctx.region} (no stream "
                                   f"{ctx.names.stream}): run `iotpipe up --env {ctx.env}`") from None
        raise
    report = Health(env=ctx.env, since=_iso(start), until=_iso(end))
    for key, value in _metric_values(ctx, start, end).items():
        setattr(report, key, value if key == "iterator_age_ms" else int(value or 0))
    report.processed = report.stored + report.rejected
    report.in_stream = max(0, report.published - report.processed - report.given_up)
    report.failure_records_waiting = count_failure_records(ctx)
    report.dlq_messages_waiting = _dlq_messages(ctx)
    report.alarms_in_alarm = _alarms_in_alarm(ctx)
    report.last_reading_stored_at = _last_archive_write(ctx)
    report.problems = _judge(ctx, report)
    return report


def count_failure_records(ctx: StepContext) -> int:
    """Failure records waiting for `iotpipe replay failed` (which deletes each once replayed)."""
    from iotpipe.ops.failure_records import list_failure_records

    try:
        return len(list_failure_records(ctx.client("s3"), ctx.names.sensor_bucket))
    except Exception as err:
        if is_not_found(err):
            return 0
        raise


def _metric_values(ctx: StepContext, start: datetime, end: datetime) -> dict[str, float | None]:
    """One GetMetricData for all: a single period spanning the window, so each answer is one
    value; the values returned are still added up (or maxed), as an emulator may not bucket."""
    # Whole minutes, the metrics' own resolution: an end inside the current minute would leave
    # out what was published in it (CloudWatch, and the emulator, compare timestamps < EndTime).
    start = start.replace(second=0, microsecond=0)
    end = end.replace(second=0, microsecond=0) + timedelta(minutes=1)
    seconds = int((end - start).total_seconds())
    # a multiple of 60 s; of 3600 s beyond a day (CloudWatch keeps older data at hourly periods)
    step = 3600 if seconds > 86400 else 60
    period = max(60, -(-seconds // step) * step)
    uuid = ctx.refs.get("lambda.event_source_mapping", {}).get("uuid") or _mapping_uuid(ctx)
    queries, stats = [], {}
    for key, namespace, metric, dims, stat in METRICS:
        values = []
        for name, source in dims:
            value = ctx.env if source == "env" else uuid if source == "uuid" else getattr(ctx.names, source)
            values.append({"Name": name, "Value": value})
        if any(not v["Value"] for v in values):
            continue
        stats[key] = stat
        queries.append({"Id": key, "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": values},
            "Period": period, "Stat": stat}})
    results: dict[str, float | None] = {key: None for key in stats}
    cw = ctx.client("cloudwatch")
    kwargs: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end}
    while True:
        page = cw.get_metric_data(**kwargs)
        for result in page.get("MetricDataResults", []):
            key, found = result["Id"], [float(v) for v in result.get("Values", [])]
            if not found:
                continue
            previous = results.get(key)
            if stats[key] == "Maximum":
                results[key] = max([*found, *([previous] if previous is not None else [])])
            else:
                results[key] = (previous or 0.0) + sum(found)
        if not page.get("NextToken"):
            return results
        kwargs["NextToken"] = page["NextToken"]


def _mapping_uuid(ctx: StepContext) -> str | None:
    lam = ctx.client("lambda")
    stream_arn = ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")
    try:
        mappings = lam.list_event_source_mappings(EventSourceArn=stream_arn).get("EventSourceMappings", [])
    except Exception as err:
        if is_not_found(err):
            return None
        raise
    ours = [m for m in mappings if str(m.get("FunctionArn", "")).endswith(f":function:{ctx.names.function}")]
    return ours[0]["UUID"] if ours else None


def _dlq_messages(ctx: StepContext) -> int | None:
    sqs = ctx.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=ctx.names.dlq)["QueueUrl"]
    except Exception as err:
        if is_not_found(err) or error_code(err) in {"AWS.SimpleQueueService.NonExistentQueue",
                                                      "QueueDoesNotExist"}:
            return None
        raise
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))


def _alarms_in_alarm(ctx: StepContext) -> list[dict[str, str]]:
    cw = ctx.client("cloudwatch")
    found = []
    for page in cw.get_paginator("describe_alarms").paginate(AlarmNamePrefix=f"iot-{ctx.env}-",
                                                            StateValue="ALARM"):
        for alarm in page.get("MetricAlarms", []):
            # checked again: the emulator (moto 5.2) ignores StateValue when a name prefix is given
            if alarm.get("StateValue") != "ALARM":
                continue
            since = alarm.get("StateUpdatedTimestamp")
            found.append({"name": alarm["AlarmName"], "reason": alarm.get("StateReason", ""),
                          "since": _iso(since) if isinstance(since, datetime) else ""})
    return sorted(found, key=lambda a: a["name"])


def _last_archive_write(ctx: StepContext) -> str | None:
    """The newest raw/ object's time: the newest dt= prefix, its newest hh=, its newest object."""
    s3 = ctx.client("s3")
    bucket = ctx.names.sensor_bucket
    prefix = "raw/"
    try:
        for _level in ("dt=", "hh="):
            page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
            prefixes = sorted(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if not prefixes:
                return None
            prefix = prefixes[-1]
        newest = None
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if newest is None or obj["LastModified"] > newest:
                    newest = obj["LastModified"]
    except Exception as err:
        if is_not_found(err):
            return None
        raise
    return _iso(newest) if newest else None


def _judge(ctx: StepContext, h: Health) -> list[str]:
    problems = [f"alarm {a['name']} is in ALARM" for a in h.alarms_in_alarm]
    if h.failure_records_waiting:
        problems.append(f"{h.failure_records_waiting} failure record(s) waiting: run `iotpipe replay failed`")
    if h.dlq_messages_waiting:
        problems.append(f"{h.dlq_messages_waiting} message(s) in the dead-letter queue {ctx.names.dlq}")
    if h.errors:
        problems.append(f"the function failed {h.errors} invocation(s)")
    if h.failed:
        problems.append(f"{h.failed} reading(s) could not be persisted (Lambda retries them)")
    limit_ms = ctx.config.alerts.iterator_age_s * 1000
    if h.iterator_age_ms is not None and h.iterator_age_ms > limit_ms:
        problems.append(f"the stream is behind by {h.iterator_age_ms / 1000:.0f} s "
                        f"(more than alerts.iterator_age_s = {ctx.config.alerts.iterator_age_s})")
    return problems


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


