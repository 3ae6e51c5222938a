"""`iotpipe replay failed` and `iotpipe replay rejected`: get every reading the pipeline could
not store into it after all.

**Failed batches.** The event source mapping writes a batch it gave up on to the sensor bucket
under ``aws/lambda/`` (see iotpipe.ops.failure_records); envs deployed before that wrote only
the batch's shard and sequence range to an SQS queue. `replay failed` re-processes each batch
*in this process with the handler's own code* (iotpipe.handler), configured exactly as the
env's function (the lambda step's environment variables: table, bucket, thresholds, env), so
it confirms every write itself, works while the deployed function is what is broken, and works
against any endpoint, an emulator where Lambda never runs code included.

Each failure record is handed to the handler whole, as one batch, on every attempt and every
run: the handler's writes are idempotent (items keyed by device and time; the archive object
named after the batch's first record, so a later attempt overwrites it with the same or more
lines), hence an interrupted replay, run again, stores no reading twice and loses none (the
failure records of one mapping never overlap: Lambda discards from where the last attempt
failed, so two records starting at the same record hold the same batch). A
record is deleted (S3: a delete marker over it; the version stays for audit until the
lifecycle expires it; SQS: the message) only once the handler reports the whole batch
persisted. A record whose batch is only metadata is read back from the stream; a range the
stream no longer holds is reported as expired and the record kept, so the loss stays visible.

**Quarantined records.** `replay rejected` re-validates the lines of the ``rejected/`` objects
with the handler's current rules; the valid ones go back into the stream (partition key as
the topic rule sets it), where the pipeline stores them as any reading. An object is never
deleted; once its valid records are back in the stream it is tagged (``iotpipe-replayed``:
their reason codes) and later runs skip records of those codes in it; an object with nothing
valid is left unmarked and reported again, still invalid, by every run. Into the stream is
at-least-once, like every Kinesis producer: a run stopped between the put and the tag puts the
records again, which the handler stores under the same keys.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from iotpipe.ops.failure_records import FailureRecordRef, list_failure_records, parse_time
from iotpipe.steps.base import StepContext, paginate, tag_dict, tag_list

ATTEMPTS = 3  # handler invocations per failure record and run; the next run tries again
RETRY_PAUSE_S = 1.0
QUEUE_VISIBILITY_S = 300  # a message being replayed stays hidden this long, then reappears
REJECTED_PREFIX = "rejected/"
REPLAYED_TAG = "iotpipe-replayed"
PUT_RECORDS_LIMIT = 500  # records per PutRecords request (Kinesis API reference)
MAX_STREAM_PAGES = 10_000


@dataclass
class ReplayedItem:
    """One failure record (or quarantine object) and what the replay did with it."""

    source: str  # "s3" | "sqs" (failure records), "rejected" (quarantine objects)
    ref: str  # S3 key or SQS message id
    failed_at: str = ""
    shard_id: str = ""
    first_sequence: str = ""
    last_sequence: str = ""
    records: int = 0  # records the batch (or object) holds
    stored: int = 0  # valid readings persisted (failed); put back into the stream (rejected)
    rejected: int = 0  # quarantined by the handler (failed); still invalid (rejected)
    still_failing: int = 0  # not persisted this run: the record is kept for the next one
    expired: list[dict[str, Any]] = field(default_factory=list)  # ranges the stream no longer holds
    reasons: dict[str, int] = field(default_factory=dict)  # still-invalid records per reason code
    outcome: str = ""  # replayed | would-replay | failing | expired | nothing
    message: str = ""


@dataclass
class ReplayReport:
    kind: str  # "failed" | "rejected"
    env: str
    dry_run: bool
    items: list[ReplayedItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {
            "records": len(self.items),
            "readings": sum(i.records for i in self.items),
            "stored": sum(i.stored for i in self.items),
            "rejected": sum(i.rejected for i in self.items),
            "still_failing": sum(i.still_failing for i in self.items),
            "expired_ranges": sum(len(i.expired) for i in self.items),
        }

    @property
    def complete(self) -> bool:
        """Everything there was is persisted (or, dry run: could be); else exit 3."""
        return not any(i.outcome in ("failing", "expired") for i in self.items)

    def as_dict(self) -> dict[str, Any]:
        return {"command": f"replay {self.kind}", "env": self.env, "dry_run": self.dry_run,
                "complete": self.complete, "totals": self.totals, "warnings": self.warnings,
                "items": [asdict(i) for i in self.items]}


# ============================================================================================
# replay failed
# ============================================================================================
def replay_failed(ctx: StepContext, *, since: datetime | None = None, until: datetime | None = None,
                  dry_run: bool = False) -> ReplayReport:
    from iotpipe.local.simulator import HandlerTotals, local_handler

    report = ReplayReport("failed", ctx.env, dry_run)
    s3 = ctx.client("s3")
    bucket = _deployed_bucket(ctx)
    refs = list_failure_records(s3, bucket, since, until)
    report.warnings.extend(_function_differs(ctx))
    totals = HandlerTotals(echo_errors=False)
    with local_handler(ctx, totals, sleep=ctx.aws.sleep) as handler:
        persist = _persister(ctx, handler, totals)
        for number, ref in enumerate(refs, 1):
            item = _replay_s3_record(ctx, s3, bucket, ref, persist, dry_run)
            report.items.append(item)
            _said(ctx, f"failure record {number} of {len(refs)}", item)
        for item in _replay_queue(ctx, persist, since, until, dry_run):
            report.items.append(item)
            _said(ctx, "failure record from the retired queue", item)
    return report


def _deployed_bucket(ctx: StepContext) -> str:
    """The env's sensor bucket; NotDeployedError (exit 2) when there is none to replay from."""
    from iotpipe.aws import is_not_found
    from iotpipe.errors import NotDeployedError

    bucket = ctx.names.sensor_bucket
    try:
        ctx.client("s3").head_bucket(Bucket=bucket)
    except ClientError as err:
        if is_not_found(err):
            raise NotDeployedError(f"env {ctx.env!r} has no sensor bucket {bucket} in {ctx.region}: "
                                   f"nothing to replay (run `iotpipe up --env {ctx.env}` first)") from None
        raise
    return bucket


def _function_differs(ctx: StepContext) -> list[str]:
    """The replay runs the handler as `up` configures the function; say so when the deployed
    function is configured otherwise (changed by hand), since readings would be judged by
    other thresholds there."""
    from iotpipe.local.simulator import function_environment
    from iotpipe.steps.base import get_or_none

    found = get_or_none(ctx.client("lambda").get_function_configuration, FunctionName=ctx.names.function)
    if found is None:
        return [f"function {ctx.names.function} does not exist: replayed with the handler configured "
                "from the config, as `up` would deploy it"]
    deployed = (found.get("Environment") or {}).get("Variables", {})
    wanted = function_environment(ctx)
    differ = sorted(k for k in wanted if deployed.get(k) != wanted[k])
    if not differ:
        return []
    return [f"the deployed function's {', '.join(differ)} differ(s) from the config: replayed with the "
            f"config's values, as `up` would set them (`iotpipe status --env {ctx.env}` shows the drift)"]


def _said(ctx: StepContext, where: str, item: ReplayedItem) -> None:
    ctx.aws.report("replay", f"{where}: {item.ref}: {item.outcome} ({item.records} records, "
                             f"{item.stored} stored, {item.still_failing} still failing)",
                   outcome=item.outcome, stored=item.stored)


Persist = Callable[[list[dict[str, Any]]], tuple[int, int, int, str]]


def _persister(ctx: StepContext, handler: Any, totals: Any) -> Persist:
    """Run the handler on a whole batch until it is persisted or the attempts are spent.

    Returns (stored, rejected, still failing, last error) of the last attempt.
    """

    def persist(records: list[dict[str, Any]]) -> tuple[int, int, int, str]:
        stored = rejected = failing = 0
        error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                ctx.aws.sleep(RETRY_PAUSE_S * attempt)
            before = (totals.stored, totals.rejected, totals.failed, len(totals.errors))
            failures = handler({"Records": records}, None).get("batchItemFailures", [])
            stored, rejected, failing = (totals.stored - before[0], totals.rejected - before[1],
                                         totals.failed - before[2])
            if not failures:
                return stored, rejected, 0, ""
            new_errors = totals.errors[before[3]:]
            if new_errors:
                line = new_errors[-1]
                error = f"{line.get('event')}: {line.get('error', '')}".rstrip(": ")
        return stored, rejected, failing or len(records), error

    return persist


def _batch_info(doc: dict[str, Any], item: ReplayedItem) -> dict[str, Any]:
    info = doc.get("KinesisBatchInfo") or {}
    item.shard_id = str(info.get("shardId", ""))
    item.first_sequence = str(info.get("startSequenceNumber", ""))
    item.last_sequence = str(info.get("endSequenceNumber", ""))
    return info


def _records_of(ctx: StepContext, doc: dict[str, Any], item: ReplayedItem) -> list[dict[str, Any]]:
    """The batch's records in Lambda's event shape: from the payload, else from the stream."""
    info = _batch_info(doc, item)
    payload = doc.get("payload")
    try:
        records = json.loads(payload).get("Records") if isinstance(payload, str) else None
    except (ValueError, AttributeError):
        records = None  # unreadable: the batch is still on the stream while it is retained
    if isinstance(records, list):
        item.records = len(records)
        return records
    records, expired = read_back(ctx, info)
    item.records = int(info.get("batchSize") or len(records))
    item.expired = expired
    return records


def _replay_s3_record(ctx: StepContext, s3: Any, bucket: str, ref: FailureRecordRef, persist: Persist,
                      dry_run: bool) -> ReplayedItem:
    item = ReplayedItem("s3", ref.key, failed_at=ref.failed_at.isoformat())
    try:
        doc = json.loads(s3.get_object(Bucket=bucket, Key=ref.key)["Body"].read())
    except ValueError:
        item.outcome, item.message = "failing", "not a JSON failure record: left in place"
        return item
    records = _records_of(ctx, doc, item)
    done = _process(records, item, persist, dry_run)
    if done and not dry_run:
        s3.delete_object(Bucket=bucket, Key=ref.key)  # versioned: the record stays as a noncurrent version
    return item


def _process(records: list[dict[str, Any]], item: ReplayedItem, persist: Persist, dry_run: bool) -> bool:
    """Persist the batch; True when the failure record may go (everything in it is stored)."""
    missing = item.records - len(records)
    if dry_run:
        item.outcome = "expired" if item.expired and not records else "would-replay"
        item.message = _expired_text(item, missing)
        return False
    if records:
        item.stored, item.rejected, item.still_failing, error = persist(records)
        if item.still_failing:
            item.outcome, item.message = "failing", (error or "the handler reported a failure") + \
                ": the record is kept for the next run"
            return False
    if item.expired:
        item.outcome, item.message = "expired", _expired_text(item, missing) + "; the record is kept"
        return False
    item.outcome = "replayed" if records else "nothing"
    return True


def _expired_text(item: ReplayedItem, missing: int) -> str:
    if not item.expired:
        return ""
    ranges = ", ".join(f"{r['from']}..{r.get('to') or 'before ' + r['before']}" for r in item.expired)
    return (f"{missing} record(s) of shard {item.shard_id} are past the stream's retention "
            f"and cannot be recovered: {ranges}")


def read_back(ctx: StepContext, info: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records of a metadata-only failure record, read back from the stream, and the
    ranges it no longer holds (``{"from", "to"}`` all gone, ``{"from", "before"}`` the start)."""
    from iotpipe.local.simulator import lambda_record

    shard = str(info.get("shardId", ""))
    start, end = str(info.get("startSequenceNumber", "")), str(info.get("endSequenceNumber", ""))
    if not (shard and start.isdigit() and end.isdigit()):
        return [], [{"from": start or "?", "to": end or "?"}]
    stream_arn = str(info.get("streamArn") or ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}"))
    kinesis = ctx.client("kinesis")
    try:
        iterator = kinesis.get_shard_iterator(StreamName=stream_arn.split("/", 1)[-1], ShardId=shard,
                                              ShardIteratorType="AT_SEQUENCE_NUMBER",
                                              StartingSequenceNumber=start)["ShardIterator"]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("ResourceNotFoundException", "InvalidArgumentException"):
            return [], [{"from": start, "to": end}]  # the shard or the records are gone
        raise
    found: list[dict[str, Any]] = []
    for _ in range(MAX_STREAM_PAGES):
        page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
        past_end = False
        for record in page.get("Records", []):
            seq = int(record["SequenceNumber"])
            if seq > int(end):
                past_end = True
                break
            if seq >= int(start):
                found.append(lambda_record(record, shard, stream_arn, ctx.region))
        iterator = page.get("NextShardIterator")
        if past_end or not iterator or not page.get("Records") and not page.get("MillisBehindLatest"):
            break
    if not found:
        return [], [{"from": start, "to": end}]
    first = found[0]["kinesis"]["sequenceNumber"]
    return found, ([{"from": start, "before": first}] if int(first) > int(start) else [])


def _replay_queue(ctx: StepContext, persist: Persist, since: datetime | None, until: datetime | None,
                  dry_run: bool) -> Iterator[ReplayedItem]:
    """The retired SQS dead-letter queue's messages (metadata only), when it is ours."""
    from iotpipe.aws import is_not_found

    sqs = ctx.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=ctx.names.dlq)["QueueUrl"]
        tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
    except ClientError as err:
        if is_not_found(err):
            return  # no retired queue: nothing waits there
        raise
    if not ctx.owns(tags):
        return
    seen: set[str] = set()
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                       VisibilityTimeout=0 if dry_run else QUEUE_VISIBILITY_S).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in seen]
        if not fresh:
            return
        for message in fresh:
            seen.add(message["MessageId"])
            try:
                doc = json.loads(message["Body"])
            except ValueError:
                doc = {}
            when = parse_time(str(doc.get("timestamp", "")))
            if (since and (when is None or when < since)) or (until and (when is None or when >= until)):
                if not dry_run:  # not this run's: visible again at once
                    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"],
                                                  VisibilityTimeout=0)
                continue
            item = ReplayedItem("sqs", message["MessageId"], failed_at=when.isoformat() if when else "")
            records = _records_of(ctx, doc, item)
            if _process(records, item, persist, dry_run) and not dry_run:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            yield item


# ============================================================================================
# replay rejected
# ============================================================================================
def replay_rejected(ctx: StepContext, *, reason: str | None = None, since: datetime | None = None,
                    dry_run: bool = False) -> ReplayReport:
    from iotpipe.handler import index as handler_index
    from iotpipe.handler import validate
    from iotpipe.local.simulator import function_environment

    report = ReplayReport("rejected", ctx.env, dry_run)
    thresholds = handler_index.Settings.from_env(function_environment(ctx)).thresholds
    s3, bucket = ctx.client("s3"), _deployed_bucket(ctx)
    objects = [o for o in paginate(s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix=REJECTED_PREFIX)
               if since is None or o["LastModified"] >= since]
    for number, obj in enumerate(sorted(objects, key=lambda o: (o["LastModified"], o["Key"])), 1):
        key = obj["Key"]
        tags = tag_dict(s3.get_object_tagging(Bucket=bucket, Key=key).get("TagSet"))
        done = set(filter(None, tags.get(REPLAYED_TAG, "").split("+")))
        lines = _jsonl(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        item = ReplayedItem("rejected", key, failed_at=obj["LastModified"].astimezone(UTC).isoformat())
        valid: list[tuple[bytes, str]] = []
        codes: set[str] = set()
        for index, line in enumerate(lines):
            code = str(line.get("reason", "")).split(":", 1)[0]
            if code in done or (reason and code != reason):
                continue
            item.records += 1
            record = {"kinesis": {"data": line.get("data"), "sequenceNumber": line.get("sequence_number"),
                                  "partitionKey": line.get("partition_key"),
                                  "approximateArrivalTimestamp": line.get("received_at")}}
            outcome = validate.classify(validate.parse_envelope(index, record), thresholds)
            if isinstance(outcome, validate.Rejection):
                item.rejected += 1
                now_code = outcome.reason.split(":", 1)[0]
                item.reasons[now_code] = item.reasons.get(now_code, 0) + 1
                item.message = outcome.reason
            else:
                valid.append((base64.b64decode(line["data"]), str(line.get("partition_key") or "unknown")))
                codes.add(code)
        if not item.records:
            continue
        item.stored = len(valid)
        if dry_run:
            item.outcome = "would-replay" if valid else "nothing"
        elif valid:  # an object with nothing valid is not marked: it is reported again next time
            _put_back(ctx, valid)
            s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tag_list(
                {**tags, REPLAYED_TAG: "+".join(sorted(done | codes))})})
            item.outcome = "replayed"
        else:
            item.outcome = "nothing"
        if item.rejected:
            item.message = f"{item.rejected} still invalid, e.g. {item.message}"
        report.items.append(item)
        ctx.aws.report("replay", f"quarantine object {number} of {len(objects)}: {key}: {item.stored} valid, "
                                 f"{item.rejected} still invalid", valid=item.stored)
    return report


def _jsonl(body: bytes) -> list[dict[str, Any]]:
    text = gzip.decompress(body).decode("utf-8") if body[:2] == b"\x1f\x8b" else body.decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _put_back(ctx: StepContext, records: list[tuple[bytes, str]]) -> None:
    """Into the env's stream, partitioned by device as the topic rule does; every record
    accepted, or this raises (Kinesis may refuse some records of a PutRecords)."""
    from iotpipe.errors import AwsCallError

    kinesis = ctx.client("kinesis")
    for start in range(0, len(records), PUT_RECORDS_LIMIT):
        pending = [{"Data": data, "PartitionKey": key} for data, key in records[start:start + PUT_RECORDS_LIMIT]]
        for attempt in range(ATTEMPTS):
            if attempt:
                ctx.aws.sleep(RETRY_PAUSE_S * attempt)
            answer = kinesis.put_records(StreamName=ctx.names.stream, Records=pending)
            pending = [r for r, result in zip(pending, answer["Records"], strict=True) if "ErrorCode" in result]
            if not pending:
                break
        if pending:
            raise AwsCallError(f"Kinesis refused {len(pending)} record(s) after {ATTEMPTS} attempts: "
                               "nothing was marked; run `replay rejected` again")
