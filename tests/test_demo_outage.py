"""The demo's simulated DynamoDB outage: exactly one batch, and every redelivery of it, is
refused the way AWS refuses it; the local event source gives it up as Lambda would; `replay
failed` stores it."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import boto3
import pytest

from iotpipe.handler import index as handler_index
from iotpipe.local.demo import DynamoDBOutage
from iotpipe.local.simulator import HandlerTotals, deliver, local_handler, make_readings, publish
from iotpipe.ops.failure_records import list_failure_records
from iotpipe.ops.replay import replay_failed
from iotpipe.steps import kms, lambda_, storage, stream

REGION = "us-east-1"
WHEN = datetime(2026, 12, 1, 3, 4, 5, tzinfo=UTC)
PROCESSING = (*kms.RESOURCES, *storage.RESOURCES, *stream.RESOURCES, *lambda_.RESOURCES)


def test_the_first_batch_to_write_claims_the_outage_and_its_tails_still_meet_it():
    outage = DynamoDBOutage()
    first = frozenset({"shardId-000000000001:1", "shardId-000000000001:2", "shardId-000000000001:3"})
    assert not outage.down_for(frozenset())  # a batch that writes nothing claims nothing
    assert outage.down_for(first) and outage.batch == first
    assert outage.down_for(first - {"shardId-000000000001:1"})  # redelivered from its 2nd record
    assert not outage.down_for(frozenset({"shardId-000000000000:1"}))  # another shard's batch
    assert not outage.down_for(first | {"shardId-000000000001:4"})  # a later batch overlapping it
    assert outage.refused == 2


def test_the_refusal_is_the_modelled_aws_error_only_on_the_thread_handling_the_batch(moto):
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])
    outage = DynamoDBOutage()
    outage.attach(dynamodb)
    answers: dict[str, str] = {}

    def write(name: str) -> dict:
        try:
            dynamodb.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": {"k": {"S": name}}}}]})
            answers[name] = "written"
        except dynamodb.exceptions.ProvisionedThroughputExceededException as err:
            answers[name] = err.response["Error"]["Code"]
        return {"batchItemFailures": []}

    handler = outage.wrap(lambda event, _context: write(event["Records"][0]["eventID"]))
    handler({"Records": [{"eventID": "s1:1"}]}, None)  # claims the outage
    thread = threading.Thread(target=handler, args=({"Records": [{"eventID": "s2:1"}]}, None))
    thread.start()
    thread.join()
    handler({"Records": [{"eventID": "s1:1"}]}, None)  # its redelivery
    write("outside-any-batch")  # not handling a batch: the outage is not this call's
    assert answers == {"s1:1": "ProvisionedThroughputExceededException", "s2:1": "written",
                       "outside-any-batch": "written"}
    assert outage.refused == 2
    assert dynamodb.scan(TableName="t")["Count"] == 2


@pytest.mark.parametrize("retries", [0, 2])
def test_one_batch_goes_to_the_failure_destination_and_the_replay_stores_it(make, retries):
    engine = make(resources=PROCESSING)
    engine.up()
    ctx = engine.ctx
    publish(ctx, make_readings(30, start=1_700_000_000))
    outage = DynamoDBOutage()
    totals = HandlerTotals(echo_errors=False)
    with local_handler(ctx, totals, sleep=lambda _s: None) as handler:
        outage.attach(handler_index.client("dynamodb"))
        delivery = deliver(ctx, outage.wrap(handler), batch_size=4, max_redeliveries=retries, now=lambda: WHEN)
    # refused on the first delivery and each redelivery, then given up, whole, as Lambda does
    assert outage.refused == retries + 1 and delivery.redeliveries == retries
    assert len(outage.batch) == delivery.given_up >= 1 and len(delivery.failures) == 1
    assert [e["event"] for e in totals.errors] == ["dynamodb_write_failed"] * (retries + 1)
    assert totals.errors[0]["error"] == "ProvisionedThroughputExceededException"
    assert all(outage.explains(e) for e in totals.errors)
    assert not outage.explains({"event": "dynamodb_write_failed", "error": "AccessDeniedException"})
    s3, bucket = boto3.client("s3", region_name=REGION), ctx.names.sensor_bucket
    (ref,) = list_failure_records(s3, bucket)
    assert [ref.key] == delivery.failure_records
    doc = json.loads(s3.get_object(Bucket=bucket, Key=ref.key)["Body"].read())
    assert {r["eventID"] for r in json.loads(doc["payload"])["Records"]} == outage.batch
    table = boto3.client("dynamodb", region_name=REGION)

    def items() -> int:
        return table.describe_table(TableName=ctx.names.metrics_table)["Table"]["ItemCount"]

    assert totals.stored == items() == 30 - len(outage.batch)
    report = replay_failed(ctx)  # the outage is over: the replay writes through a client of its own
    assert report.complete and report.totals["stored"] == len(outage.batch) and items() == 30
    assert list_failure_records(s3, bucket) == []
