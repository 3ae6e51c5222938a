"""The Lambda event source mapping's failure records in S3: their keys, their body, listing them.

Lambda writes one object per discarded batch to an S3 on-failure destination, named
``aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<Random UUID>``, holding a JSON
document with ``requestContext``, ``responseContext``, ``version``, ``timestamp``,
``KinesisBatchInfo`` (shard, first and last sequence number, arrival times, batch size, stream
ARN) and, for S3 only, ``payload``: the whole invocation event as an escaped JSON string
(https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html). The local
event source writes the same (iotpipe.local.simulator), and `replay failed` reads them.

"Failure records waiting" are the *current* objects under the prefix: a replay deletes an
object once every reading in it is persisted, and the bucket's versioning keeps the deleted
version for audit until the lifecycle expires it.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from iotpipe.steps.storage import FAILURE_RECORDS_PREFIX

_KEY = re.compile(r"^aws/lambda/(?P<uuid>[^/]+)/(?P<shard>[^/]+)/\d{4}/\d{2}/\d{2}/"
                  r"(?P<at>\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2})-(?P<id>[^/]+)$")


@dataclass(frozen=True)
class FailureRecordRef:
    """One failure record object, known from its listing alone (no GetObject)."""

    key: str
    failed_at: datetime  # the time in its key (Lambda's naming), else its LastModified
    size: int
    mapping_uuid: str
    shard_id: str


def failure_record_key(mapping_uuid: str, shard_id: str, when: datetime, random_id: str | None = None) -> str:
    """The key Lambda gives a failure record written at ``when``."""
    when = when.astimezone(UTC)
    return (f"{FAILURE_RECORDS_PREFIX}{mapping_uuid}/{shard_id}/{when:%Y/%m/%d}/"
            f"{when:%Y-%m-%dT%H.%M.%S}-{random_id or uuidlib.uuid4()}")


def iso_ms(when: datetime) -> str:
    """Lambda's timestamps in these records: UTC, milliseconds, ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def failure_record(*, records: list[dict[str, Any]], function_arn: str, stream_arn: str, shard_id: str,
                   invoke_count: int, when: datetime, with_payload: bool = True,
                   request_id: str | None = None) -> dict[str, Any]:
    """The document Lambda sends for a discarded Kinesis batch (``records`` in Lambda's event
    shape); ``with_payload=False`` gives what an SQS or SNS destination receives."""

    def arrival(record: dict[str, Any]) -> str:
        return iso_ms(datetime.fromtimestamp(float(record["kinesis"]["approximateArrivalTimestamp"]), UTC))

    doc: dict[str, Any] = {
        "requestContext": {
            "requestId": request_id or str(uuidlib.uuid4()),
            "functionArn": function_arn,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": invoke_count,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": iso_ms(when),
        "KinesisBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": records[0]["kinesis"]["sequenceNumber"],
            "endSequenceNumber": records[-1]["kinesis"]["sequenceNumber"],
            "approximateArrivalOfFirstRecord": arrival(records[0]),
            "approximateArrivalOfLastRecord": arrival(records[-1]),
            "batchSize": len(records),
            "streamArn": stream_arn,
        },
    }
    if with_payload:
        doc["payload"] = json.dumps({"Records": records}, separators=(",", ":"))
    return doc


def parse_time(text: str) -> datetime | None:
    """An ISO-8601 time as Lambda writes it (``...Z``), or None."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (AttributeError, ValueError):
        return None


def _ref(obj: dict[str, Any]) -> FailureRecordRef:
    key = obj["Key"]
    modified = obj.get("LastModified")
    failed_at = modified.astimezone(UTC) if isinstance(modified, datetime) else datetime.fromtimestamp(0, UTC)
    mapping, shard = "", ""
    if match := _KEY.match(key):
        mapping, shard = match["uuid"], match["shard"]
        failed_at = datetime.strptime(match["at"], "%Y-%m-%dT%H.%M.%S").replace(tzinfo=UTC)
    return FailureRecordRef(key, failed_at, int(obj.get("Size", 0)), mapping, shard)


def list_failure_records(s3: Any, bucket: str, since: datetime | None = None,
                         until: datetime | None = None) -> list[FailureRecordRef]:
    """The failure records waiting in ``bucket`` (current objects under ``aws/lambda/``), oldest
    first, those that failed in [since, until) only when given. ``s3`` is an S3 client."""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=FAILURE_RECORDS_PREFIX):
        for obj in page.get("Contents", []):
            ref = _ref(obj)
            if (since is None or ref.failed_at >= since) and (until is None or ref.failed_at < until):
                found.append(ref)
    return sorted(found, key=lambda r: (r.failed_at, r.key))
