"""The behaviour layer itself: rules arm on their trigger, last their window on the injected
clock, refuse with AWS's modelled exception class, and every rule names its source."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.awsbehaviour import ALL_RULES, ErrorRule, FakeClock, install, rules_named
from tests.awsbehaviour.fixture import behaviour_for, fake_waiter_time
from tests.awsbehaviour.model import param, trigger_param

REGION = "us-east-1"


def _client(service: str, behaviour):
    session = boto3.session.Session(region_name=REGION)
    install(session._session.get_component("event_emitter"), behaviour)
    return session.client(service)


def _create_table(ddb, name: str = "t") -> None:
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])


def test_every_rule_names_a_source_and_a_unique_name():
    assert ALL_RULES
    for rule in ALL_RULES:
        assert rule.source.strip(), rule.name
        assert "http" in rule.source or "terraform-provider-aws" in rule.source, rule.name
    assert len({r.name for r in ALL_RULES}) == len(ALL_RULES)


def test_a_state_lasts_its_window_on_the_injected_clock_for_that_resource_only(moto):
    clock = FakeClock()
    behaviour = behaviour_for(rules_named("dynamodb.table-creating"), clock, REGION)
    ddb = _client("dynamodb", behaviour)
    _create_table(ddb, "a")
    _create_table(ddb, "b")
    clock.advance(10)
    _create_table(ddb, "c")
    assert ddb.describe_table(TableName="a")["Table"]["TableStatus"] == "CREATING"
    clock.advance(10)  # a and b: 20 s after creation, the rule's window is over
    assert ddb.describe_table(TableName="a")["Table"]["TableStatus"] == "ACTIVE"
    assert ddb.describe_table(TableName="c")["Table"]["TableStatus"] == "CREATING"


def test_a_waiter_waits_on_the_fake_clock(moto, monkeypatch):
    clock = FakeClock()
    fake_waiter_time(monkeypatch, clock)
    ddb = _client("dynamodb", behaviour_for(rules_named("dynamodb.table-creating"), clock, REGION))
    _create_table(ddb)
    ddb.get_waiter("table_exists").wait(TableName="t", WaiterConfig={"Delay": 5, "MaxAttempts": 10})
    assert clock.total_slept == 20.0


def test_a_refusal_is_the_modelled_exception_and_nothing_reaches_moto(moto):
    clock = FakeClock()
    rule = ErrorRule(
        name="test.refuse-delete", service="dynamodb", operation="DeleteTable",
        code="ResourceInUseException", message="Table is being created: {TableName}",
        source="https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_DeleteTable.html",
        after=("dynamodb", "CreateTable"), duration_s=5.0, trigger_key=trigger_param("TableName"),
        call_key=param("TableName"))
    behaviour = behaviour_for([rule], clock, REGION)
    ddb = _client("dynamodb", behaviour)
    _create_table(ddb)
    with pytest.raises(ddb.exceptions.ResourceInUseException) as err:
        ddb.delete_table(TableName="t")
    assert err.value.response["Error"]["Message"] == "Table is being created: t"
    assert behaviour.fired_rules() == {"test.refuse-delete"}
    assert boto3.client("dynamodb", region_name=REGION).describe_table(TableName="t")
    clock.advance(5)
    ddb.delete_table(TableName="t")
    with pytest.raises(ClientError):
        boto3.client("dynamodb", region_name=REGION).describe_table(TableName="t")


def test_a_deleted_table_is_still_seen_deleting_for_a_while(moto):
    clock = FakeClock()
    ddb = _client("dynamodb", behaviour_for(rules_named("dynamodb.table-deleting"), clock, REGION))
    _create_table(ddb)
    ddb.delete_table(TableName="t")
    assert ddb.describe_table(TableName="t")["Table"]["TableStatus"] == "DELETING"
    clock.advance(15)
    with pytest.raises(ddb.exceptions.ResourceNotFoundException):
        ddb.describe_table(TableName="t")


def test_sqs_refusal_in_process_is_the_modelled_class_with_the_query_code(moto):
    clock = FakeClock()
    sqs = _client("sqs", behaviour_for(rules_named("sqs.queue-deleted-recently"), clock, REGION))
    sqs.delete_queue(QueueUrl=sqs.create_queue(QueueName="q")["QueueUrl"])
    with pytest.raises(sqs.exceptions.QueueDeletedRecently) as err:
        sqs.create_queue(QueueName="q")
    assert err.value.response["Error"]["Code"] == "AWS.SimpleQueueService.QueueDeletedRecently"
    clock.advance(60)
    assert sqs.create_queue(QueueName="q")["QueueUrl"]


def test_a_deleted_mapping_is_still_read_and_listed_deleting_in_process(moto):
    import io
    import json
    import zipfile

    clock = FakeClock()
    behaviour = behaviour_for(rules_named("lambda.mapping-deleting"), clock, REGION)
    lam, kinesis, iam = (_client(s, behaviour) for s in ("lambda", "kinesis", "iam"))
    kinesis.create_stream(StreamName="s", ShardCount=1)
    stream = kinesis.describe_stream_summary(StreamName="s")["StreamDescriptionSummary"]["StreamARN"]
    role = iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", "def handler(e, c):\n    return e\n")
    lam.create_function(FunctionName="f", Runtime="python3.11", Role=role["Role"]["Arn"],
                        Handler="index.handler", Code={"ZipFile": buf.getvalue()})
    uuid = lam.create_event_source_mapping(EventSourceArn=stream, FunctionName="f",
                                           StartingPosition="LATEST")["UUID"]
    lam.delete_event_source_mapping(UUID=uuid)
    assert lam.get_event_source_mapping(UUID=uuid)["State"] == "Deleting"
    listed = lam.list_event_source_mappings(EventSourceArn=stream)["EventSourceMappings"]
    assert [(m["UUID"], m["State"]) for m in listed] == [(uuid, "Deleting")]
    clock.advance(20)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_event_source_mapping(UUID=uuid)
    assert lam.list_event_source_mappings(EventSourceArn=stream)["EventSourceMappings"] == []
