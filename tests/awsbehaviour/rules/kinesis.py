"""Kinesis: a stream is CREATING, then UPDATING after each change, then DELETING."""

from __future__ import annotations

from typing import Any

from tests.awsbehaviour.model import GhostRule, StateRule, set_path

STATUS_DOC = ("https://docs.aws.amazon.com/kinesis/latest/APIReference/"
              "API_StreamDescriptionSummary.html (StreamStatus: CREATING, DELETING, ACTIVE, UPDATING)")
SUMMARY = set_path("StreamDescriptionSummary", "StreamStatus")
DESCRIBE = set_path("StreamDescription", "StreamStatus")


def _stream(params: dict[str, Any]) -> str | None:
    """Kinesis takes StreamName or StreamARN (UpdateStreamMode only the ARN): key by the name."""
    name = params.get("StreamName")
    arn = params.get("StreamARN")
    return name if isinstance(name, str) else arn.rsplit("/", 1)[-1] if isinstance(arn, str) else None


def _trigger(params: dict[str, Any], _answer: dict[str, Any]) -> str | None:
    return _stream(params)


def _ghost(name: str) -> dict[str, Any]:
    """Both read shapes: DescribeStreamSummary (iotpipe's reads) and DescribeStream (the
    stream_not_exists waiter's); botocore keeps the members of the operation's output."""
    arn = f"arn:aws:kinesis:us-east-1:123456789012:stream/{name}"
    return {
        "StreamDescriptionSummary": {
            "StreamName": name, "StreamStatus": "DELETING", "RetentionPeriodHours": 24,
            "StreamARN": arn, "StreamCreationTimestamp": 0, "EnhancedMonitoring": [],
            "OpenShardCount": 0},
        "StreamDescription": {
            "StreamName": name, "StreamStatus": "DELETING", "RetentionPeriodHours": 24,
            "StreamARN": arn, "StreamCreationTimestamp": 0, "EnhancedMonitoring": [],
            "Shards": [], "HasMoreShards": False},
    }


def _both(parsed, key, value):
    SUMMARY(parsed, key, value)
    DESCRIBE(parsed, key, value)


def _updating(operation: str, seconds: float) -> StateRule:
    return StateRule(
        name=f"kinesis.stream-updating-after-{operation}",
        service="kinesis", reads=("DescribeStreamSummary", "DescribeStream"), value="UPDATING",
        patch=_both, after=("kinesis", operation), duration_s=seconds,
        trigger_key=_trigger, call_key=_stream,
        source=STATUS_DOC + f"; {operation}: 'the stream status is UPDATING' until it completes",
    )


RULES = (
    StateRule(
        name="kinesis.stream-creating",
        service="kinesis", reads=("DescribeStreamSummary", "DescribeStream"), value="CREATING",
        patch=_both, after=("kinesis", "CreateStream"), duration_s=30.0,
        trigger_key=_trigger, call_key=_stream,
        source=STATUS_DOC + "; CreateStream: 'Kinesis Data Streams immediately returns and sets "
               "StreamStatus to CREATING'",
    ),
    _updating("StartStreamEncryption", 30.0),
    _updating("IncreaseStreamRetentionPeriod", 10.0),
    _updating("DecreaseStreamRetentionPeriod", 10.0),
    _updating("UpdateStreamMode", 30.0),
    GhostRule(
        name="kinesis.stream-deleting",
        service="kinesis", reads=("DescribeStreamSummary", "DescribeStream"),
        body=_ghost,
        after=("kinesis", "DeleteStream"), duration_s=20.0,
        trigger_key=_trigger, call_key=_stream,
        source=STATUS_DOC + "; DeleteStream: 'Kinesis Data Streams might continue to accept "
               "data read and write operations ... while the stream is in the DELETING state'",
    ),
)
