"""The IoT step against in-process moto: what `up` makes, drift and its repair, ownership,
destroy (including the thing type's 5-minute deletion delay) and the IAM propagation retry."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe.errors import IotpipeError, OwnershipError
from iotpipe.steps import iot, kms
from iotpipe.steps.base import same
from iotpipe.timing import PROPAGATION_POLL_S
from tests.support import CallLog, FaultAt, assert_repaired, by_id, fail_with

REGION = "us-east-1"
ACCOUNT = "123456789012"
RULE = "sensor_data_rule_dev"
ROLE = "iot-rule-role-dev"
THING_TYPE = "manufacturing-sensor-dev"
POLICY = "iot-sensor-device-policy-dev"
LOG_GROUP = "/aws/iot/iot-rules-dev"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/iot-sensor-stream-dev"
RULE_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:rule/{RULE}"
LOG_GROUP_ARN = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{LOG_GROUP}"
RESOURCES = kms.RESOURCES + iot.RESOURCES


def client(service: str):
    """An independent client: what a human with the AWS CLI would see."""
    return boto3.client(service, region_name=REGION)


def key_arn() -> str:
    return client("kms").describe_key(KeyId="alias/iot-manufacturing-dev")["KeyMetadata"]["Arn"]




@pytest.fixture
def engine(make, log):
    e = make(resources=RESOURCES, log=log)
    e.up()
    log.clear()
    return e



def statements_by_sid(document) -> dict:
    document = json.loads(document) if isinstance(document, str) else document
    return {s["Sid"]: s for s in document["Statement"]}


# --- create ------------------------------------------------------------------------------------
def test_up_creates_the_topic_rule_with_kinesis_action_and_error_action(engine):
    found = client("iot").get_topic_rule(ruleName=RULE)
    rule = found["rule"]
    role_arn = client("iam").get_role(RoleName=ROLE)["Role"]["Arn"]
    assert found["ruleArn"] == RULE_ARN
    assert rule["sql"] == "SELECT * FROM 'manufacturing/sensors/+/data'"
    assert rule["awsIotSqlVersion"] == "2016-03-23"
    assert rule["ruleDisabled"] is False
    assert rule["description"].startswith("Route sensor data to Kinesis stream ")
    assert "[managed-by=iotpipe env=dev resource=iot.topic_rule]" in rule["description"]
    assert rule["actions"] == [{"kinesis": {"streamName": "iot-sensor-stream-dev", "roleArn": role_arn,
                                            "partitionKey": "${topic(3)}"}}]
    assert rule["errorAction"] == {"cloudwatchLogs": {"logGroupName": LOG_GROUP, "roleArn": role_arn}}


def test_up_creates_a_pinned_least_privilege_rule_role_with_kms(engine):
    iam = client("iam")
    role = iam.get_role(RoleName=ROLE)["Role"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "iot.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert trust["Condition"]["ArnLike"] == {"aws:SourceArn": RULE_ARN}
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == ["iot-kinesis-policy"]
    assert iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"] == []
    policy = statements_by_sid(iam.get_role_policy(RoleName=ROLE, PolicyName="iot-kinesis-policy")
                               ["PolicyDocument"])
    assert sorted(policy["PutSensorRecords"]["Action"]) == ["kinesis:PutRecord", "kinesis:PutRecords"]
    assert policy["PutSensorRecords"]["Resource"] == STREAM_ARN
    assert sorted(policy["UseStreamKey"]["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert policy["UseStreamKey"]["Resource"] == key_arn()
    assert sorted(policy["WriteRuleErrors"]["Action"]) == [
        "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    assert sorted(policy["WriteRuleErrors"]["Resource"]) == [LOG_GROUP_ARN, f"{LOG_GROUP_ARN}:*"]
    assert all(s["Effect"] == "Allow" and "*" not in json.dumps(s["Resource"]).replace(":*", "")
               for s in policy.values())
    tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=ROLE)["Tags"]}
    assert tags["iotpipe:env"] == "dev" and tags["iotpipe:resource"] == "iot.rule_role"


def test_up_creates_the_encrypted_iot_log_group(engine):
    (group,) = client("logs").describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]
    assert group["retentionInDays"] == 30
    assert group["kmsKeyId"] == key_arn()


def test_up_creates_the_thing_type_with_marker_and_attributes(engine):
    found = client("iot").describe_thing_type(thingTypeName=THING_TYPE)
    props = found["thingTypeProperties"]
    assert sorted(props["searchableAttributes"]) == ["equipment_type", "facility", "location"]
    assert props["thingTypeDescription"].endswith("[managed-by=iotpipe env=dev resource=iot.thing_type]")
    assert found["thingTypeMetadata"]["deprecated"] is False


def test_up_creates_the_least_privilege_device_policy(engine):
    found = client("iot").get_policy(policyName=POLICY)
    stmts = {s["Action"]: s for s in json.loads(found["policyDocument"])["Statement"]}
    connect, publish = stmts["iot:Connect"], stmts["iot:Publish"]
    assert connect["Effect"] == publish["Effect"] == "Allow"
    assert connect["Action"] == "iot:Connect"
    assert connect["Resource"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:client/${{iot:Connection.Thing.ThingName}}"
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    assert publish["Action"] == "iot:Publish"
    assert publish["Resource"] == (f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/manufacturing/sensors/"
                                   "${iot:Connection.Thing.ThingName}/data")
    assert len(stmts) == 2


def test_iot_resources_get_tags_at_create(make, log):
    """Real AWS stores IoT tags (moto drops them): the create calls must carry them."""
    seen: dict[str, object] = {}

    def capture(params, model, **_):
        seen[model.name] = params.get("tags")

    e = make(resources=RESOURCES, log=log)
    e.ctx.aws.events.register("before-parameter-build.iot.*", capture)
    e.up()
    assert {t["Key"] for t in seen["CreateThingType"]} >= {"iotpipe:env", "iotpipe:resource", "managed-by"}
    assert {t["Key"] for t in seen["CreatePolicy"]} >= {"iotpipe:env", "managed-by"}
    rule_tags = dict(pair.split("=") for pair in seen["CreateTopicRule"].split("&"))
    assert {unquote(k): unquote(v) for k, v in rule_tags.items()}["iotpipe:resource"] == "iot.topic_rule"


# --- converged ---------------------------------------------------------------------------------
def test_second_up_makes_no_mutating_calls(engine, log):
    result = engine.up()
    assert log.mutating == []
    assert all(r.action == "unchanged" for r in result.resources)
    assert engine.status().in_sync


def test_topic_rule_existence_never_relies_on_get_topic_rule(make, log):
    """Real AWS answers GetTopicRule on a missing rule with UnauthorizedException."""
    e = make(resources=RESOURCES, log=log)
    plan = e.plan()
    assert by_id(plan, "iot.topic_rule").action == "create"
    assert ("iot", "ListTopicRules") in log.calls
    assert ("iot", "GetTopicRule") not in log.calls


# --- drift ---------------------------------------------------------------------------------------
def test_changed_rule_sql_is_replaced(engine, log):
    found = client("iot").get_topic_rule(ruleName=RULE)["rule"]
    payload = {k: found[k] for k in ("description", "actions", "ruleDisabled", "awsIotSqlVersion",
                                     "errorAction")}
    client("iot").replace_topic_rule(ruleName=RULE, topicRulePayload={**payload, "sql": "SELECT * FROM 'x/#'"})
    assert_repaired(engine, log, "iot.topic_rule", "sql", {"iot.ReplaceTopicRule": 1})
    assert client("iot").get_topic_rule(ruleName=RULE)["rule"]["sql"] == iot.RULE_SQL


def test_removed_error_action_is_restored(engine, log):
    found = client("iot").get_topic_rule(ruleName=RULE)["rule"]
    payload = {k: found[k] for k in ("sql", "description", "actions", "ruleDisabled", "awsIotSqlVersion")}
    client("iot").replace_topic_rule(ruleName=RULE, topicRulePayload=payload)
    assert_repaired(engine, log, "iot.topic_rule", "error_action", {"iot.ReplaceTopicRule": 1})
    assert client("iot").get_topic_rule(ruleName=RULE)["rule"]["errorAction"]["cloudwatchLogs"][
        "logGroupName"] == LOG_GROUP


def test_disabled_rule_is_only_re_enabled(engine, log):
    client("iot").disable_topic_rule(ruleName=RULE)
    assert_repaired(engine, log, "iot.topic_rule", "disabled", {"iot.EnableTopicRule": 1})
    assert client("iot").get_topic_rule(ruleName=RULE)["rule"]["ruleDisabled"] is False


def test_changed_inline_policy_is_put_back(engine, log):
    weaker = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesis:*", "Resource": "*"}]}
    client("iam").put_role_policy(RoleName=ROLE, PolicyName="iot-kinesis-policy",
                                  PolicyDocument=json.dumps(weaker))
    assert_repaired(engine, log, "iot.rule_role", "inline_policies", {"iam.PutRolePolicy": 1})
    doc = client("iam").get_role_policy(RoleName=ROLE, PolicyName="iot-kinesis-policy")["PolicyDocument"]
    assert "UseStreamKey" in statements_by_sid(doc)


def test_shortened_log_retention_is_restored(engine, log):
    client("logs").put_retention_policy(logGroupName=LOG_GROUP, retentionInDays=1)
    assert_repaired(engine, log, "iot.log_group", "retention_days", {"logs.PutRetentionPolicy": 1})
    (group,) = client("logs").describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]
    assert group["retentionInDays"] == 30


def test_deprecated_thing_type_is_undeprecated(engine, log):
    client("iot").deprecate_thing_type(thingTypeName=THING_TYPE)
    assert_repaired(engine, log, "iot.thing_type", "deprecated", {"iot.DeprecateThingType": 1})
    meta = client("iot").describe_thing_type(thingTypeName=THING_TYPE)["thingTypeMetadata"]
    assert meta["deprecated"] is False


def test_changed_device_policy_gets_a_new_default_version(engine, log):
    broad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
    client("iot").create_policy_version(policyName=POLICY, policyDocument=json.dumps(broad), setAsDefault=True)
    assert_repaired(engine, log, "iot.device_policy", "document", {"iot.CreatePolicyVersion": 1})
    doc = client("iot").get_policy(policyName=POLICY)["policyDocument"]
    assert same(doc, iot.device_policy_document(engine.ctx))


def test_policy_update_makes_room_when_five_versions_exist(engine, log):
    iot_client = client("iot")
    for n in range(4):  # versions 2..5; the last one (broad) is the default
        doc = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/t{n}"}]}
        iot_client.create_policy_version(policyName=POLICY, policyDocument=json.dumps(doc), setAsDefault=True)
    assert_repaired(engine, log, "iot.device_policy", "document",
                    {"iot.DeletePolicyVersion": 1, "iot.CreatePolicyVersion": 1})
    versions = iot_client.list_policy_versions(policyName=POLICY)["policyVersions"]
    assert sorted(v["versionId"] for v in versions) == ["2", "3", "4", "5", "6"]  # 1, the oldest, went
    assert next(v for v in versions if v["isDefaultVersion"])["versionId"] == "6"


def test_changed_thing_type_attributes_are_reported_not_silently_replaced(engine, log):
    """AWS cannot change a thing type: `up` says how to replace it and changes nothing."""
    iot_client = client("iot")
    description = iot_client.describe_thing_type(thingTypeName=THING_TYPE)["thingTypeProperties"][
        "thingTypeDescription"]
    iot_client.deprecate_thing_type(thingTypeName=THING_TYPE)
    iot_client.delete_thing_type(thingTypeName=THING_TYPE)  # moto: no 5-minute wait
    iot_client.create_thing_type(thingTypeName=THING_TYPE, thingTypeProperties={
        "thingTypeDescription": description, "searchableAttributes": ["location"]})
    status = by_id(engine.status(), "iot.thing_type")
    assert status.health == "drifted"
    assert {c.field for c in status.changes} == {"searchable_attributes"}
    planned = by_id(engine.plan(), "iot.thing_type")
    assert planned.action == "update" and planned.message.startswith(
        "`up` will refuse this: searchable_attributes cannot change in place")
    log.clear()
    with pytest.raises(iot.ThingTypeImmutableError, match="cannot change a thing type in place"):
        engine.up()
    assert ("iot", "DeprecateThingType") not in log.mutating
    assert ("iot", "DeleteThingType") not in log.mutating
    assert iot_client.describe_thing_type(thingTypeName=THING_TYPE)["thingTypeProperties"][
        "searchableAttributes"] == ["location"]


# --- ownership --------------------------------------------------------------------------------
def test_same_name_rule_without_marker_is_not_ours(make, log):
    client("iot").create_topic_rule(ruleName=RULE, topicRulePayload={
        "sql": "SELECT * FROM 'other/#'", "description": "someone else's", "actions": []})
    e = make(resources=RESOURCES, log=log)
    with pytest.raises(OwnershipError, match=RULE):
        e.up()
    assert ("iot", "ReplaceTopicRule") not in log.calls
    result = make(resources=RESOURCES).destroy()
    assert by_id(result, "iot.topic_rule").action == "skipped"
    assert client("iot").get_topic_rule(ruleName=RULE)["rule"]["description"] == "someone else's"


def test_same_name_thing_type_without_marker_is_not_ours(make):
    client("iot").create_thing_type(thingTypeName=THING_TYPE,
                                    thingTypeProperties={"thingTypeDescription": "hand-made"})
    with pytest.raises(OwnershipError):
        make(resources=RESOURCES).up()
    result = make(resources=RESOURCES).destroy()
    assert by_id(result, "iot.thing_type").action == "skipped"
    assert client("iot").describe_thing_type(thingTypeName=THING_TYPE)["thingTypeMetadata"]["deprecated"] is False


def test_other_env_marker_is_not_ours(make):
    """The marker names the env: prod's rule is not dev's even with dev's name."""
    made = make(env="prod", resources=RESOURCES)
    made.up()
    description = client("iot").get_topic_rule(ruleName="sensor_data_rule_prod")["rule"]["description"]
    assert "env=prod" in description
    client("iot").create_topic_rule(ruleName=RULE, topicRulePayload={
        "sql": iot.RULE_SQL, "description": description, "actions": []})
    with pytest.raises(OwnershipError):
        make(resources=RESOURCES).up()


# --- destroy ----------------------------------------------------------------------------------
def assert_nothing_left():
    iot_client = client("iot")
    assert iot_client.list_topic_rules()["rules"] == []
    assert [t["thingTypeName"] for t in iot_client.list_thing_types()["thingTypes"]] == []
    with pytest.raises(ClientError) as gone:
        iot_client.describe_thing_type(thingTypeName=THING_TYPE)  # neither active nor deprecated
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert [p["policyName"] for p in iot_client.list_policies()["policies"]] == []
    assert [r["RoleName"] for r in client("iam").list_roles()["Roles"] if r["RoleName"] == ROLE] == []
    assert client("logs").describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"] == []


def test_destroy_leaves_nothing(engine, log):
    # A certificate attached to the device policy: destroy must detach it first.
    cert = client("iot").create_keys_and_certificate(setAsActive=True)
    client("iot").attach_policy(policyName=POLICY, target=cert["certificateArn"])
    # And an old policy version, which also blocks DeletePolicy.
    client("iot").create_policy_version(policyName=POLICY, policyDocument=json.dumps(
        iot.device_policy_document(engine.ctx)), setAsDefault=False)
    result = engine.destroy()
    assert {r.logical_id: r.action for r in result.resources} == {
        r.logical_id: "scheduled" if r.logical_id == "kms.key" else "delete" for r in RESOURCES}
    assert_nothing_left()
    assert log.counts(mutating_only=True)["iot.DetachPolicy"] == 1
    again = engine.destroy()
    assert all(r.action == "absent" for r in again.resources)


def test_thing_type_deletion_pending_then_finished_on_next_destroy(engine, make, log):
    """AWS refuses DeleteThingType for 5 minutes after deprecation (moto does not):
    destroy reports "pending", and the next destroy goes straight to the delete.

    Each run is a fresh engine (same state file), as each CLI run is: botocore copies the
    session's event emitter into a client when it is created, so a hook must be registered
    before the run's clients exist.
    """
    refuse = fail_with("InvalidRequestException",
                       "Thing type manufacturing-sensor-dev is deprecated for less than 5 minutes")
    first = make(resources=RESOURCES, log=log)
    first.ctx.aws.events.register("before-call.iot.DeleteThingType", refuse)
    result = first.destroy()
    pending = by_id(result, "iot.thing_type")
    assert pending.action == "pending" and pending.health == "pending"
    stamps = re.search(r"deprecated at (\S+ \S+) UTC; AWS deletes it from (\S+ \S+) UTC", pending.message)
    assert stamps, pending.message
    deprecated_at, deletable_from = (datetime.fromisoformat(t) for t in stamps.groups())
    assert deletable_from - deprecated_at == timedelta(minutes=5)
    assert "run `iotpipe destroy` again" in pending.message
    assert all(r.action == ("scheduled" if r.logical_id == "kms.key" else "delete")
               for r in result.resources if r.logical_id != "iot.thing_type")
    meta = client("iot").describe_thing_type(thingTypeName=THING_TYPE)["thingTypeMetadata"]
    assert meta["deprecated"] is True
    assert first.store.get("iot.thing_type") is not None  # still recorded: not forgotten

    # Still within the 5 minutes: pending again, and no second deprecation.
    log.clear()
    second = make(resources=RESOURCES, log=log)
    second.ctx.aws.events.register("before-call.iot.DeleteThingType", refuse)
    assert by_id(second.destroy(), "iot.thing_type").action == "pending"
    assert ("iot", "DeprecateThingType") not in log.calls

    # After the 5 minutes (no hook): the re-run just deletes.
    log.clear()
    result = make(resources=RESOURCES, log=log).destroy()
    assert by_id(result, "iot.thing_type").action == "delete"
    assert log.counts(mutating_only=True) == {"iot.DeleteThingType": 1}
    assert_nothing_left()


def test_other_delete_errors_are_not_pending(engine, make):
    e = make(resources=RESOURCES)
    e.ctx.aws.events.register("before-call.iot.DeleteThingType", fail_with("InternalFailure", "boom"))
    with pytest.raises(IotpipeError, match="boom"):
        e.destroy()


# --- IAM propagation and crash safety -----------------------------------------------------------
def test_create_topic_rule_retries_while_the_new_role_propagates(make, log):
    slept: list[float] = []
    e = make(resources=RESOURCES, log=log, sleep=slept.append)
    attempts = {"n": 0}

    def not_yet(model, **_):
        attempts["n"] += 1
        if attempts["n"] <= 2:
            raise ClientError({"Error": {"Code": "InvalidRequestException", "Message":
                               f"iot.amazonaws.com is unable to assume role {ROLE}: role cannot be assumed"}},
                              model.name)

    e.ctx.aws.events.register("before-call.iot.CreateTopicRule", not_yet)
    result = e.up()
    assert by_id(result, "iot.topic_rule").action == "create"
    assert attempts["n"] == 3
    assert log.counts()["iot.CreateTopicRule"] == 3
    assert slept == [PROPAGATION_POLL_S] * 2
    assert client("iot").get_topic_rule(ruleName=RULE)["rule"]["sql"] == iot.RULE_SQL


def test_unrelated_create_topic_rule_error_is_not_retried(make):
    slept: list[float] = []
    e = make(resources=RESOURCES, sleep=slept.append)
    e.ctx.aws.events.register("before-call.iot.CreateTopicRule",
                              fail_with("InvalidRequestException", "sql is malformed"))
    with pytest.raises(IotpipeError, match="malformed"):
        e.up()
    assert slept == []


def test_a_crash_at_any_mutating_call_is_finished_by_the_next_up(make):
    """Fail the Nth mutating call of a fresh `up` (each N in its own env), then re-run:
    the re-run converges, nothing is duplicated, and a third run makes no mutating call."""
    probe = CallLog()
    make(env="probe", resources=RESOURCES, log=probe, parallelism=1).up()  # the Nth call: a fixed one
    total = len(probe.mutating)
    first_iot = next(i for i, (service, _op) in enumerate(probe.mutating) if service != "kms")
    assert total - first_iot >= 7  # log group x2, role x2, thing type, policy, rule
    for n in range(first_iot, total):  # the KMS step's own crashes are its module's tests
        env = f"crash{n}"
        log = CallLog()
        e = make(env=env, resources=RESOURCES, log=log, parallelism=1)
        fault = FaultAt(n + 1, "error")
        fault.attach(e.ctx.aws.events)
        with pytest.raises(IotpipeError):
            e.up()
        assert fault.fired is not None
        e = make(env=env, resources=RESOURCES, log=log)  # the next run: new session, no fault
        e.up()
        log.clear()
        e.up()
        assert log.mutating == [], (n, log.mutating)
        assert e.status().in_sync, n
        rules = [r["ruleName"] for r in client("iot").list_topic_rules()["rules"]]
        assert rules.count(f"sensor_data_rule_{env}") == 1


def test_pending_message_uses_the_deprecation_date_aws_reports(engine, make):
    """Real AWS reports thingTypeMetadata.deprecationDate (moto does not): a re-run of destroy
    names the time deletion becomes possible from that date, without deprecating again."""
    client("iot").deprecate_thing_type(thingTypeName=THING_TYPE)
    deprecated_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def with_date(parsed, **_):
        parsed.get("thingTypeMetadata", {})["deprecationDate"] = deprecated_at

    log = CallLog()
    e = make(resources=RESOURCES, log=log)
    e.ctx.aws.events.register("after-call.iot.DescribeThingType", with_date)
    e.ctx.aws.events.register("before-call.iot.DeleteThingType",
                              fail_with("InvalidRequestException", "deprecated less than 5 minutes ago"))
    pending = by_id(e.destroy(), "iot.thing_type")
    assert pending.action == "pending"
    assert "deprecated at 2026-01-02 03:04:05 UTC; AWS deletes it from 2026-01-02 03:09:05 UTC" in pending.message
    assert ("iot", "DeprecateThingType") not in log.calls
