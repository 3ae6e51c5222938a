"""Fixtures for the Lambda handler tests: a moto account with the table and bucket, a Kinesis
event builder, and botocore hooks that count, fail or withhold AWS calls.

Helpers live behind fixtures (not in an importable module) so the tests need no ``__init__``
files and work with any pytest import mode.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
from contextlib import contextmanager
from dataclasses import dataclass, field

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from moto import mock_aws

from iotpipe.handler import index

REGION = "us-east-1"
TABLE = "sensor-metrics-test"
BUCKET = "iot-sensor-data-test-123456789012"
SHARD = "shardId-000000000000"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:123456789012:stream/iot-sensor-stream-test"
FIRST_SEQUENCE = 49590338271490256608559692538361571095921575989136588800
ARRIVAL = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "DYNAMODB_TABLE": TABLE,
    "S3_BUCKET": BUCKET,
    "ENVIRONMENT_SUFFIX": "test",
}


def set_aws_env(monkeypatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("ANOMALY_THRESHOLDS", "LOG_LEVEL", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws_env(monkeypatch):
    set_aws_env(monkeypatch)
    return monkeypatch


class Stream:
    """Builds Kinesis records the way Lambda delivers them, with increasing sequence numbers."""

    def __init__(self) -> None:
        self.next = 0

    def record(self, payload=None, *, data: str | None = None, arrival: float = ARRIVAL) -> dict:
        """``payload``: bytes as is, anything else JSON-encoded; ``data`` overrides base64."""
        if data is None:
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            data = base64.b64encode(raw).decode()
        seq = str(FIRST_SEQUENCE + self.next)
        self.next += 1
        return {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": f"pk-{self.next}",
                "sequenceNumber": seq,
                "data": data,
                "approximateArrivalTimestamp": arrival,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{SHARD}:{seq}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/iot-lambda-role-test",
            "awsRegion": REGION,
            "eventSourceARN": STREAM_ARN,
        }

    def event(self, *payloads) -> dict:
        return {"Records": [self.record(p) for p in payloads]}

    @staticmethod
    def reading(device="dev-1", ts=1_700_000_000, **metrics) -> dict:
        return {"device_id": device, "timestamp": ts, **(metrics or {"temperature": 21.5})}

    @staticmethod
    def seq(record: dict) -> str:
        return record["kinesis"]["sequenceNumber"]

    @staticmethod
    def redeliver(event: dict, result: dict) -> dict:
        """What Lambda re-sends after a partial failure: the records from the reported one on."""
        (failure,) = result["batchItemFailures"]
        start = int(failure["itemIdentifier"])
        records = [r for r in event["Records"] if int(r["kinesis"]["sequenceNumber"]) >= start]
        assert records, "reported sequence number is not in the batch"
        return {"Records": records}


@dataclass
class Aws:
    """The moto account the handler writes to, plus views and fault injection for asserts."""

    dynamodb: object
    s3: object
    table: str = TABLE
    bucket: str = BUCKET
    calls: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def items(self) -> dict[tuple[str, object], dict]:
        deserializer = TypeDeserializer()
        out = {}
        for page in self.dynamodb.get_paginator("scan").paginate(TableName=self.table):
            for raw in page["Items"]:
                item = {k: deserializer.deserialize(v) for k, v in raw.items()}
                key = (item["device_id"], item["timestamp"])
                assert key not in out, f"duplicate item {key}"
                out[key] = item
        return out

    def objects(self, prefix: str) -> dict[str, bytes]:
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])[
                    "Body"
                ].read()
        return out

    def lines(self, prefix: str) -> list[dict]:
        return [
            json.loads(line)
            for body in self.objects(prefix).values()
            for line in gzip.decompress(body).decode().splitlines()
        ]

    def write_calls(self) -> int:
        return sum(1 for c in self.calls if c in ("BatchWriteItem", "PutItem", "PutObject"))

    def fail_call(self, client, operation: str, nth: int = 1, code: str = "InternalError"):
        """Raise ``ClientError`` before the nth ``operation`` call is sent (nothing reaches
        moto). Returns a function that removes the hook."""
        seen = {"n": 0}

        def hook(**_):
            seen["n"] += 1
            if seen["n"] == nth:
                raise ClientError({"Error": {"Code": code, "Message": "injected"}}, operation)

        event = f"before-call.{client.meta.service_model.service_id.hyphenize()}.{operation}"
        client.meta.events.register(event, hook, unique_id=f"fail-{operation}")
        return lambda: client.meta.events.unregister(event, unique_id=f"fail-{operation}")

    def withhold_items(self, should_withhold, times: int | None = None):
        """Make DynamoDB answer like a throttled partition: items matching ``should_withhold``
        are removed from the request before it is sent (so they are *not* written) and come
        back in ``UnprocessedItems``, ``times`` times per item (``None``: forever)."""
        events = self.dynamodb.meta.events
        state: dict = {"withheld": [], "send": True}
        counts: dict[str, int] = {}
        hooks = [
            ("before-parameter-build.dynamodb.BatchWriteItem", "withhold-params"),
            ("before-call.dynamodb.BatchWriteItem", "withhold-send"),
            ("after-call.dynamodb.BatchWriteItem", "withhold-answer"),
        ]

        def split_request(params, **_):
            (table, requests), *_ = params["RequestItems"].items()
            kept, withheld = [], []
            for request in requests:
                item = request["PutRequest"]["Item"]
                key = item["device_id"]["S"] + "|" + item["timestamp"]["N"]
                if should_withhold(item) and (times is None or counts.get(key, 0) < times):
                    counts[key] = counts.get(key, 0) + 1
                    withheld.append(request)
                else:
                    kept.append(request)
            state.update(withheld=withheld, send=bool(kept))
            if kept:  # an empty list would not even pass parameter validation
                params["RequestItems"][table] = kept

        def skip_send_if_nothing_kept(**_):
            if not state["send"]:
                return AWSResponse("https://dynamodb", 200, {}, None), {}
            return None

        def answer_unprocessed(parsed, **_):
            if state["withheld"]:
                parsed["UnprocessedItems"] = {self.table: list(state["withheld"])}

        # unique ids are global to an emitter, not per event name
        for (event, unique_id), hook in zip(
            hooks, (split_request, skip_send_if_nothing_kept, answer_unprocessed), strict=True
        ):
            events.register(event, hook, unique_id)

        def remove():
            for event, unique_id in hooks:
                events.unregister(event, unique_id=unique_id)

        return remove


def _record_calls(aws: Aws) -> None:
    def count(model, **_):
        aws.calls.append(model.name)

    def check_batch(params, **_):
        """Enforce what moto lets through but AWS rejects."""
        (requests,) = params["RequestItems"].values()
        keys = [
            (r["PutRequest"]["Item"]["device_id"]["S"], r["PutRequest"]["Item"]["timestamp"]["N"])
            for r in requests
        ]
        assert 1 <= len(requests) <= 25, f"BatchWriteItem with {len(requests)} items"
        assert len(set(keys)) == len(keys), "BatchWriteItem with duplicate keys"
        aws.batch_sizes.append(len(requests))

    for client in (aws.dynamodb, aws.s3):
        client.meta.events.register("before-call.*.*", count)
    aws.dynamodb.meta.events.register("before-parameter-build.dynamodb.BatchWriteItem", check_batch)


def make_account(table: str = TABLE, bucket: str = BUCKET) -> Aws:
    """Inside an active ``mock_aws``: create the resources and point the handler at them
    (the caller sets ``DYNAMODB_TABLE``/``S3_BUCKET`` when it uses other names)."""
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "device_id", "KeyType": "HASH"},
            {"AttributeName": "timestamp", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "device_id", "AttributeType": "S"},
            {"AttributeName": "timestamp", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    s3.create_bucket(Bucket=bucket)
    aws = Aws(dynamodb, s3, table, bucket)
    _record_calls(aws)
    index.reset()
    index.configure(dynamodb=dynamodb, s3=s3, sleep=aws.sleeps.append)
    return aws


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        yield make_account()
    index.reset()


@pytest.fixture
def fresh_account(aws_env):
    """For hypothesis, whose examples share one test's fixtures: a new, empty table and bucket
    per example, in one ``mock_aws`` (starting moto per example would be ten times slower)."""
    counter = itertools.count()

    @contextmanager
    def open_account():
        n = next(counter)
        table, bucket = f"{TABLE}-{n}", f"{BUCKET}-{n}"
        aws_env.setenv("DYNAMODB_TABLE", table)
        aws_env.setenv("S3_BUCKET", bucket)
        try:
            yield make_account(table, bucket)
        finally:
            index.reset()

    with mock_aws():
        yield open_account


@pytest.fixture
def stream() -> Stream:
    return Stream()


@pytest.fixture
def invoke(aws):
    """Call the handler as Lambda would and return its response."""

    class Context:
        aws_request_id = "req-test"

    def call(event: dict) -> dict:
        return index.lambda_handler(event, Context())

    return call
