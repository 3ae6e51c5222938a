"""IoT ownership from the tags AWS returns (issue 8, item 4, the step half).

moto does not implement IoT ListTagsForResource (in-process NotImplementedError, server mode
HTTP 500, measured on moto 5.2). ``AwsContext.supports`` finds that out once per run and
the steps fall back to description markers there. To test the AWS path, ``AwsIotTags`` plays
AWS's part: it keeps the tags that CreatePolicy / CreateThingType / CreateTopicRule were given
and answers ListTagsForResource with them, and with an empty list for a resource created
without tags, as AWS does (https://docs.aws.amazon.com/iot/latest/apireference/API_ListTagsForResource.html:
"Lists the tags (metadata) you have assigned to the resource").
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe import devices
from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.errors import OwnershipError
from iotpipe.steps import iot, kms
from tests.support import CallLog, by_id

REGION = "us-east-1"
ACCOUNT = "123456789012"
POLICY = "iot-sensor-device-policy-dev"
THING_TYPE = "manufacturing-sensor-dev"
RULE = "sensor_data_rule_dev"
RESOURCES = kms.RESOURCES + iot.RESOURCES
FOREIGN_DOC = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]})


def client(service: str):
    return boto3.client(service, region_name=REGION)


def arn(kind: str, name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:{kind}/{name}"


class AwsIotTags:
    """IoT's tag store as AWS keeps it, for the session it is attached to."""

    CREATES = {"CreatePolicy": ("policy", "policyName"), "CreateThingType": ("thingtype", "thingTypeName"),
               "CreateTopicRule": ("rule", "ruleName")}
    DELETES = {"DeletePolicy": ("policy", "policyName"), "DeleteThingType": ("thingtype", "thingTypeName"),
               "DeleteTopicRule": ("rule", "ruleName")}

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}
        self.asked: str = ""

    def attach(self, aws: AwsContext) -> None:
        aws.capabilities["iot.list_tags_for_resource"] = True  # as on AWS
        self.watch(aws.events)
        aws.events.register("provide-client-params.iot.ListTagsForResource", self._remember)
        aws.events.register("before-call.iot.ListTagsForResource", self._answer)

    def watch(self, events: Any) -> None:
        """Keep track of what these clients create and delete (an operator's own client too)."""
        for op in (*self.CREATES, *self.DELETES):
            events.register(f"provide-client-params.iot.{op}", self._track(op))

    def client(self) -> Any:
        """An operator's IoT client, outside iotpipe, whose creates and deletes AWS would see."""
        iotc = client("iot")
        self.watch(iotc.meta.events)
        return iotc

    def _track(self, op: str):
        def handler(params: dict[str, Any], **_: Any) -> None:
            if op in self.CREATES:
                kind, key = self.CREATES[op]
                raw = params.get("tags") or []
                tags = dict(parse_qsl(raw)) if isinstance(raw, str) else {t["Key"]: t["Value"] for t in raw}
                self.tags[arn(kind, params[key])] = tags
            else:
                kind, key = self.DELETES[op]
                self.tags.pop(arn(kind, params[key]), None)
        return handler

    def _remember(self, params: dict[str, Any], **_: Any) -> None:
        self.asked = params["resourceArn"]

    def _answer(self, **_: Any):
        tags = self.tags.get(self.asked, {})
        return (SimpleNamespace(status_code=200, headers={}),
                {"tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]})


@pytest.fixture
def aws_engine(moto, tmp_path, monkeypatch):
    """make(...) with IoT tags readable as on AWS; one tag store for all engines of a test."""
    monkeypatch.chdir(tmp_path)
    store = AwsIotTags()

    def build(log: CallLog | None = None, resources=RESOURCES):
        config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
        aws = AwsContext(REGION, sleep=lambda _s: None)
        store.attach(aws)
        if log is not None:
            log.attach(aws.events)
        return make_engine(config, aws, tmp_path / ".iotpipe", resources=resources)

    build.store = store
    return build


# -- the probe -------------------------------------------------------------------------------
def test_probe_finds_the_emulator_lacks_iot_tags_once(moto):
    aws = AwsContext(REGION)
    log = CallLog().attach(aws.events)
    assert aws.supports("iot.list_tags_for_resource") is False
    assert aws.supports("iot.list_tags_for_resource") is False
    assert log.counts()["iot.ListTagsForResource"] == 1  # probed once per run


def test_probe_takes_an_aws_error_answer_as_supported(moto):
    """On AWS the probe's rule does not exist: ResourceNotFoundException means "implemented"."""
    aws = AwsContext(REGION)

    def not_found(model, **_):
        raise ClientError({"Error": {"Code": "ResourceNotFoundException",
                                     "Message": "The specified resource does not exist"},
                           "ResponseMetadata": {"HTTPStatusCode": 404}}, model.name)

    aws.events.register("before-call.iot.ListTagsForResource", not_found)
    assert aws.supports("iot.list_tags_for_resource") is True


# -- the AWS path: tags decide ----------------------------------------------------------------
def test_own_iot_resources_are_recognised_by_their_tags(aws_engine):
    aws_engine().up()
    log = CallLog()
    engine = aws_engine(log=log)
    status = engine.status()
    assert status.in_sync, [(r.logical_id, r.health) for r in status.resources]
    engine.up()
    assert log.mutating == []
    assert ("iot", "ListTagsForResource") in log.calls  # the real mechanism, not the marker


def test_a_same_named_device_policy_iotpipe_did_not_create_is_foreign(aws_engine):
    iotc = aws_engine.store.client()
    iotc.create_policy(policyName=POLICY, policyDocument=FOREIGN_DOC)  # someone else's, no tags
    cert = iotc.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    iotc.attach_policy(policyName=POLICY, target=cert)
    log = CallLog()
    engine = aws_engine(log=log)

    assert by_id(engine.status(), "iot.device_policy").health == "foreign"
    with pytest.raises(OwnershipError, match=POLICY):
        engine.up()
    assert not [c for c in log.mutating if c[0] == "iot" and "Polic" in c[1]]
    result = engine.destroy()

    assert by_id(result, "iot.device_policy").action == "skipped"
    assert iotc.list_targets_for_policy(policyName=POLICY)["targets"] == [cert]
    assert json.loads(iotc.get_policy(policyName=POLICY)["policyDocument"]) == json.loads(FOREIGN_DOC)


@pytest.mark.parametrize("lid", ["iot.thing_type", "iot.topic_rule"])
def test_the_marker_alone_does_not_make_a_resource_ours_where_tags_are_readable(aws_engine, lid):
    """A look-alike carrying a copy of our description marker but none of our tags is foreign."""
    engine = aws_engine()
    res = next(r for r in RESOURCES if r.logical_id == lid)
    engine.up()  # ours, then replaced by a look-alike with the same description
    desired = res.desired(engine.ctx)
    iotc = aws_engine.store.client()
    if lid == "iot.thing_type":
        devices_res = next(r for r in RESOURCES if r.logical_id == "iot.devices")
        devices_res.delete(engine.ctx, devices_res.read(engine.ctx))
        iotc.delete_thing_type(thingTypeName=THING_TYPE)
        iotc.create_thing_type(thingTypeName=THING_TYPE, thingTypeProperties={
            "thingTypeDescription": desired["description"],
            "searchableAttributes": desired["searchable_attributes"]})
    else:
        rule = iotc.get_topic_rule(ruleName=RULE)["rule"]
        iotc.delete_topic_rule(ruleName=RULE)
        iotc.create_topic_rule(ruleName=RULE, topicRulePayload={
            "sql": rule["sql"], "description": rule["description"], "actions": rule["actions"],
            "awsIotSqlVersion": rule["awsIotSqlVersion"]})
    assert engine.ctx.marker(lid) in desired["description"]
    assert res.read(aws_engine().ctx).managed is False
    assert by_id(aws_engine().status(), lid).health == "foreign"


def test_device_add_refuses_a_foreign_device_policy_and_makes_nothing(aws_engine):
    engine = aws_engine(resources=kms.RESOURCES + tuple(
        r for r in iot.RESOURCES if r.logical_id == "iot.thing_type"))
    engine.up()
    aws_engine.store.client().create_policy(policyName=POLICY, policyDocument=FOREIGN_DOC)
    with pytest.raises(OwnershipError, match=POLICY):
        devices.add_device(aws_engine(), "press-07")
    assert client("iot").list_things()["things"] == []
    assert client("iot").list_certificates()["certificates"] == []


# -- the emulator fallback ----------------------------------------------------------------------
def test_on_the_emulator_a_policy_without_this_envs_thing_type_is_foreign(make):
    client("iot").create_policy(policyName=POLICY, policyDocument=FOREIGN_DOC)
    engine = make(resources=kms.RESOURCES + tuple(
        r for r in iot.RESOURCES if r.logical_id == "iot.device_policy"))
    assert engine.ctx.aws.supports("iot.list_tags_for_resource") is False
    assert by_id(engine.status(), "iot.device_policy").health == "foreign"
    assert by_id(engine.destroy(), "iot.device_policy").action == "skipped"
    assert client("iot").get_policy(policyName=POLICY)
