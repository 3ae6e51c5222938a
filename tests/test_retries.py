"""Retries and transient errors: AWS's "not yet" answers, reproduced by the behaviour layer with
AWS's own codes and texts (each rule names its source in tests/awsbehaviour/rules/), handled by
the one retry primitive (aws.call_with_retries) and its predicates, on an injected clock.

moto answers all of these calls at once; without the rules every test here would pass on code
that has no retry at all, so each test asserts that its rule actually fired.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe import aws as aws_module
from iotpipe import devices
from iotpipe.aws import (
    BACKUPS_BEING_ENABLED,
    BUCKET_NAME_BEING_RELEASED,
    KEY_NOT_FOUND_YET,
    MAPPING_IN_USE,
    POLICY_DETACH_PROPAGATING,
    ROLE_NOT_ASSUMABLE_YET,
    AwsContext,
    call_with_retries,
    is_caller_denied,
)
from iotpipe.cli import main
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.errors import AccessDeniedError, ExitCode
from iotpipe.steps import all_resources, kms, lambda_, storage, stream
from iotpipe.timing import PROPAGATION_POLL_S
from tests.awsbehaviour import FakeClock, install, rules_named
from tests.awsbehaviour.fixture import attach, behaviour_for, fake_waiter_time
from tests.support import CallLog, by_id

REGION = "us-east-1"
ACCOUNT = "123456789012"
TABLE = "sensor-metrics-dev"
LAMBDA_RESOURCES = kms.RESOURCES + stream.RESOURCES + lambda_.RESOURCES


def _error(code: str, message: str, operation: str = "Op") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


@pytest.fixture
def world(tmp_path: Path, moto, monkeypatch):
    """world(*rule names, resources=...) -> (engine, behaviour, log), all on one FakeClock."""
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    fake_waiter_time(monkeypatch, clock)

    def build(*rules: str, resources=None, env: str = "dev"):
        config = load_config(env, region=REGION, assignments=("storage.enforce_tls=false",))
        aws = AwsContext(config.region, sleep=clock.sleep, clock=clock.now)
        log = CallLog().attach(aws.events)
        behaviour = attach(aws, rules_named(*rules), clock)
        engine = make_engine(config, aws, tmp_path / ".iotpipe", resources=resources)
        return engine, behaviour, log

    build.clock = clock
    return build


# ---------------------------------------------------------------------------------------------
# The primitive
# ---------------------------------------------------------------------------------------------
def test_the_retry_is_bounded_and_its_last_pause_ends_at_the_deadline():
    clock = FakeClock(start=0.0)
    calls = []

    def never(**_):
        calls.append(clock.now())
        raise _error("InvalidParameterValueException",
                     "The role defined for the function cannot be assumed by Lambda.")

    with pytest.raises(ClientError) as raised:
        call_with_retries(never, ROLE_NOT_ASSUMABLE_YET, sleep=clock.sleep, clock=clock.now)
    assert "still refused after 120s of retries" in raised.value.response["Error"]["Message"]
    # IAM propagation ends seconds after CreateRole: asked at an even short cadence, no doubling
    assert set(clock.slept) == {PROPAGATION_POLL_S}
    assert clock.total_slept == ROLE_NOT_ASSUMABLE_YET.timeout_s  # never past the bound
    assert calls[-1] == ROLE_NOT_ASSUMABLE_YET.timeout_s  # one last try right at the deadline


def test_a_sleep_that_does_not_move_the_clock_still_ends_the_loop():
    slept: list[float] = []

    def never():
        raise _error("OperationAborted", "A conflicting conditional operation is currently in "
                     "progress against this resource. Please try again.")

    with pytest.raises(ClientError):
        call_with_retries(never, BUCKET_NAME_BEING_RELEASED, sleep=slept.append, clock=lambda: 0.0)
    assert sum(slept) == BUCKET_NAME_BEING_RELEASED.timeout_s


def test_each_behaviour_has_a_bound_that_fits_it():
    assert ROLE_NOT_ASSUMABLE_YET.timeout_s == 120.0  # IAM propagation: ~2 minutes (Chalice, DESIGN)
    assert KEY_NOT_FOUND_YET.timeout_s == 120.0  # terraform-provider-aws kms propagationTimeout
    assert BACKUPS_BEING_ENABLED.timeout_s >= 300.0  # minutes after a table turns ACTIVE
    assert MAPPING_IN_USE.timeout_s >= 60.0
    for transient in (ROLE_NOT_ASSUMABLE_YET, KEY_NOT_FOUND_YET, BACKUPS_BEING_ENABLED, MAPPING_IN_USE,
                      BUCKET_NAME_BEING_RELEASED, POLICY_DETACH_PROPAGATING):
        assert transient.source and transient.max_delay_s <= 15.0


@pytest.mark.parametrize(("code", "message"), [
    # The caller itself: permanent, never a propagation delay.
    ("AccessDeniedException", "User: arn:aws:iam::123456789012:user/x is not authorized to perform: "
                              "iam:PassRole on resource: arn:aws:iam::123456789012:role/r"),
    ("InvalidRequestException", "User: arn:aws:sts::123456789012:assumed-role/Admin/me is not "
                                "authorized to perform: iam:PassRole on resource: role r"),
    ("UnauthorizedException", "User: arn:aws:iam::123456789012:user/x is not authorized to perform: "
                              "iot:CreateTopicRule on resource: rule"),
])
def test_the_callers_own_denial_is_never_taken_for_propagation(code, message):
    err = _error(code, message)
    assert is_caller_denied(err)
    assert not ROLE_NOT_ASSUMABLE_YET.matches(err)


@pytest.mark.parametrize("message", [
    "The role defined for the function cannot be assumed by Lambda.",
    "Lambda was unable to configure access to your environment variables because the KMS key is "
    "invalid for CreateGrant. Please check your KMS key settings. KMS Exception: InvalidArnException "
    "KMS Message: ARN does not refer to a valid principal: arn:aws:iam::123456789012:role/r",
    "Cannot access stream arn:aws:kinesis:us-east-1:123456789012:stream/s. Please ensure the role can "
    "perform the GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your stream in IAM.",
    "iot.amazonaws.com is unable to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/r",
])
def test_the_services_view_of_a_new_role_is_propagation(message):
    code = "InvalidRequestException" if message.startswith("iot.") else "InvalidParameterValueException"
    err = _error(code, message)
    assert ROLE_NOT_ASSUMABLE_YET.matches(err)
    assert not is_caller_denied(err)


# ---------------------------------------------------------------------------------------------
# IAM propagation as Lambda and IoT see it, and the caller's permanent denial
# ---------------------------------------------------------------------------------------------
PROPAGATION_RULES = (
    "lambda.create-function-role-not-assumable",
    "lambda.create-function-kms-grant-principal",
    "lambda.create-mapping-cannot-access-stream",
    "iot.create-rule-role-not-assumable",
)


def test_up_rides_out_every_role_propagation_text(world):
    """test_up_rides_out_every_role_propagation_text: CreateFunction ("cannot be assumed", then
    the KMS CreateGrant principal), CreateEventSourceMapping ("Cannot access stream"),
    CreateTopicRule ("sts:AssumeRole"): each refused until its window ends, then created once."""
    engine, behaviour, log = world(*PROPAGATION_RULES)
    # One at a time, so that each create meets its role's window: in parallel the rule role
    # is made alongside the lambda resources and its window has passed (on the shared clock)
    # by the time the topic rule is created, so the IoT text would never be seen.
    engine.parallelism = 1
    result = engine.up()
    assert behaviour.fired_rules() == set(PROPAGATION_RULES)
    for lid in ("lambda.function", "lambda.event_source_mapping", "iot.topic_rule"):
        assert by_id(result, lid).action == "create"
    assert len(boto3.client("lambda", region_name=REGION).list_functions()["Functions"]) == 1
    # The windows end seconds after CreateRole: retried past them, not for the whole bound.
    assert world.clock.total_slept < ROLE_NOT_ASSUMABLE_YET.timeout_s
    log.clear()
    engine.up()
    assert log.mutating == []


def test_a_caller_without_pass_role_fails_at_once_with_exit_77(world):
    engine, behaviour, log = world("lambda.create-function-passrole-denied", resources=LAMBDA_RESOURCES)
    started = world.clock.now()
    with pytest.raises(AccessDeniedError, match="iam:PassRole") as err:
        engine.up()
    assert err.value.exit_code == ExitCode.ACCESS_DENIED
    assert log.counts()["lambda.CreateFunction"] == 1  # no retries
    assert world.clock.now() - started < 1.0  # not two minutes of them
    assert behaviour.fired_rules() == {"lambda.create-function-passrole-denied"}


# ---------------------------------------------------------------------------------------------
# DynamoDB: backups being enabled, then PITR ENABLING -> ENABLED
# ---------------------------------------------------------------------------------------------
def test_pitr_is_retried_while_backups_are_being_enabled_then_waited_until_enabled(world):
    engine, behaviour, log = world("dynamodb.table-creating", "dynamodb.backups-being-enabled",
                                   "dynamodb.pitr-enabling", resources=kms.RESOURCES + storage.RESOURCES)
    result = engine.up()
    assert by_id(result, "storage.metrics_table").action == "create"
    assert {"dynamodb.backups-being-enabled", "dynamodb.pitr-enabling"} <= behaviour.fired_rules()
    refusals = [f for f in behaviour.fired if f[0] == "dynamodb.backups-being-enabled"]
    assert log.counts()["dynamodb.UpdateContinuousBackups"] == len(refusals) + 1
    # up returned only once PITR reads ENABLED through the same (rule-applying) client.
    described = engine.ctx.client("dynamodb").describe_continuous_backups(TableName=TABLE)
    assert described["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"][
        "PointInTimeRecoveryStatus"] == "ENABLED"
    log.clear()
    engine.up()
    assert log.mutating == []


def test_pitr_enabling_reads_as_on_not_as_drift(world):
    engine, _behaviour, log = world("dynamodb.pitr-enabling", resources=kms.RESOURCES + storage.RESOURCES)
    engine.up()
    ddb = engine.ctx.client("dynamodb")
    ddb.update_continuous_backups(TableName=TABLE,
                                  PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    assert ddb.describe_continuous_backups(TableName=TABLE)["ContinuousBackupsDescription"][
        "PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLING"
    log.clear()
    assert by_id(engine.status(), "storage.metrics_table").health == "ok"
    engine.up()
    assert log.mutating == []


# ---------------------------------------------------------------------------------------------
# KMS: the key CreateKey just returned is NotFound for a moment
# ---------------------------------------------------------------------------------------------
def test_enable_key_rotation_is_retried_while_the_new_key_is_not_found(world):
    engine, behaviour, log = world("kms.EnableKeyRotation-key-not-found-after-create",
                                   resources=kms.RESOURCES)
    result = engine.up()
    assert behaviour.fired_rules() == {"kms.EnableKeyRotation-key-not-found-after-create"}
    key_id = result.outputs["kms_key_id"]
    assert boto3.client("kms", region_name=REGION).get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"]
    assert log.counts()["kms.CreateKey"] == 1


def test_put_key_policy_is_retried_on_a_key_a_crashed_run_just_made(world):
    """A run made the key (tags in CreateKey) and died; the next one finds it by its tags and
    sets its policy at once: KMS may not know the key everywhere yet."""
    engine, behaviour, log = world("kms.PutKeyPolicy-key-not-found-after-create", resources=kms.RESOURCES)
    tags = [{"TagKey": k, "TagValue": v} for k, v in engine.ctx.tags("kms.key").items()]
    engine.ctx.client("kms").create_key(Description="half made", Tags=tags)
    result = engine.up()
    assert by_id(result, "kms.key").action == "update"
    assert behaviour.fired_rules() == {"kms.PutKeyPolicy-key-not-found-after-create"}
    refusals = [f for f in behaviour.fired if f[1] == "PutKeyPolicy"]
    assert refusals and log.counts()["kms.PutKeyPolicy"] == len(refusals) + 1
    assert engine.status().in_sync


# ---------------------------------------------------------------------------------------------
# S3: the name of a bucket deleted moments ago
# ---------------------------------------------------------------------------------------------
def test_create_bucket_is_retried_while_the_name_is_being_released(world):
    engine, behaviour, log = world("s3.create-bucket-name-being-released",
                                   resources=kms.RESOURCES + storage.RESOURCES)
    engine.up()
    engine.destroy()
    log.clear()
    result = engine.up()
    assert by_id(result, "storage.sensor_bucket").action == "create"
    assert behaviour.fired_rules() == {"s3.create-bucket-name-being-released"}
    assert log.counts()["s3.CreateBucket"] >= 2
    assert engine.status().in_sync


# ---------------------------------------------------------------------------------------------
# Lambda: a mapping still in use refuses its delete, then reads Deleting for a while
# ---------------------------------------------------------------------------------------------
MAPPING_RULES = ("lambda.mapping-delete-in-use", "lambda.mapping-deleting",
                 "lambda.create-mapping-while-old-one-deleting")


def test_mapping_delete_is_retried_while_in_use_and_not_waited_out(world):
    """Nothing destroy deletes after the mapping needs it gone: the function goes while the
    mapping still reads Deleting, and destroy's critical path is not 20 s longer for it."""
    engine, behaviour, log = world(*MAPPING_RULES, resources=LAMBDA_RESOURCES)
    engine.up()
    gone_at: list[float] = []
    when: dict[str, float] = {}

    def on_call(model, **_):
        if model.name == "DeleteFunction":
            when["delete_function"] = world.clock.now()

    def after(model, http_response, **_):
        if model.name == "DeleteEventSourceMapping" and http_response.status_code < 300:
            gone_at.append(world.clock.now())

    engine.ctx.client("lambda").meta.events.register("before-call.lambda.DeleteFunction", on_call)
    engine.ctx.client("lambda").meta.events.register("after-call.lambda.DeleteEventSourceMapping", after)
    result = engine.destroy()
    assert by_id(result, "lambda.event_source_mapping").action == "delete"
    assert "lambda.mapping-delete-in-use" in behaviour.fired_rules()
    assert log.counts()["lambda.DeleteEventSourceMapping"] >= 2
    assert when["delete_function"] < gone_at[0] + 20.0  # while the mapping still reads Deleting
    assert log.counts()["lambda.GetEventSourceMapping"] <= 1  # no poll until it is gone
    assert boto3.client("lambda", region_name=REGION).list_event_source_mappings()["EventSourceMappings"] == []


def test_an_up_right_after_destroy_waits_for_the_old_mapping_to_go(world):
    """The new mapping joins the same stream and function ARNs (both made from the names):
    Lambda refuses it while the old one is Deleting, so `up` waits for that one first."""
    engine, behaviour, log = world(*MAPPING_RULES, resources=LAMBDA_RESOURCES)
    engine.up()
    engine.destroy()
    deleted_at = world.clock.now()
    created_at: list[float] = []
    engine.ctx.client("lambda").meta.events.register(
        "after-call.lambda.CreateEventSourceMapping",
        lambda http_response, **_: created_at.append(world.clock.now()) if http_response.status_code < 300 else None)
    result = engine.up()
    assert by_id(result, "lambda.event_source_mapping").action == "create"
    assert "lambda.create-mapping-while-old-one-deleting" not in behaviour.fired_rules()
    assert created_at and created_at[0] >= deleted_at + 20.0 - 1e-9
    assert log.counts()["lambda.CreateEventSourceMapping"] == 2  # one per up: never refused


# ---------------------------------------------------------------------------------------------
# IoT: a detached device policy IoT still sees attached
# ---------------------------------------------------------------------------------------------
def _gone(ddb_table: str, bucket: str) -> bool:
    s3 = boto3.client("s3", region_name=REGION)
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    tables = boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"]
    return bucket not in names and ddb_table not in tables


def test_destroy_with_devices_reports_the_device_policy_pending_and_deletes_everything_else(world):
    engine, behaviour, _log = world("iot.delete-policy-after-detach")
    engine.up()
    for device in ("press-01", "press-02"):
        devices.add_device(engine, device)
    result = engine.destroy()
    assert by_id(result, "iot.device_policy").action == "pending"
    assert "destroy" in by_id(result, "iot.device_policy").message
    assert behaviour.fired_rules() == {"iot.delete-policy-after-detach"}
    everything_else = [r for r in result.resources if r.logical_id != "iot.device_policy"]
    assert {r.action for r in everything_else} <= {"delete", "scheduled", "absent"}
    assert _gone(TABLE, f"iot-sensor-data-dev-{ACCOUNT}")
    assert boto3.client("kinesis", region_name=REGION).list_streams()["StreamNames"] == []
    key_id = by_id(result, "kms.key").ids["id"]
    assert boto3.client("kms", region_name=REGION).describe_key(KeyId=key_id)["KeyMetadata"][
        "KeyState"] == "PendingDeletion"
    assert engine.store.get("iot.device_policy") is not None  # remembered for the next run
    world.clock.advance(300)
    again = engine.destroy()
    assert by_id(again, "iot.device_policy").action == "delete"
    assert boto3.client("iot", region_name=REGION).list_policies()["policies"] == []


@pytest.fixture
def cli_world(moto, monkeypatch, tmp_path):
    """main() in-process, every AwsContext on one FakeClock and one behaviour (shared armings)."""
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    fake_waiter_time(monkeypatch, clock)
    behaviour = behaviour_for(rules_named("iot.delete-policy-after-detach"), clock, REGION)
    original = aws_module.AwsContext.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.sleep, self.clock = clock.sleep, clock.now
        install(self.events, behaviour)

    monkeypatch.setattr(aws_module.AwsContext, "__init__", patched)
    return clock, behaviour


def _add_devices(tmp_path: Path, *names: str) -> None:
    config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
    engine = make_engine(config, AwsContext(REGION), tmp_path / ".iotpipe", resources=all_resources())
    for name in names:
        devices.add_device(engine, name)


def test_cli_destroy_exits_3_on_the_pending_policy_and_wait_finishes_it(cli_world, tmp_path, capsys):
    clock, behaviour = cli_world
    assert main(["up", "--set", "storage.enforce_tls=false"]) == ExitCode.OK
    _add_devices(tmp_path, "press-01", "press-02")
    assert main(["destroy", "--yes"]) == ExitCode.INCOMPLETE
    out = capsys.readouterr().out
    assert "pending" in out and "iot-sensor-device-policy-dev" in out
    assert "iot.delete-policy-after-detach" in behaviour.fired_rules()
    started = clock.now()
    assert main(["destroy", "--yes", "--wait"]) == ExitCode.OK
    assert clock.now() - started <= 360  # within --wait's bound
    assert main(["destroy", "--yes"]) == ExitCode.OK
    assert boto3.client("iot", region_name=REGION).list_policies()["policies"] == []


# ---------------------------------------------------------------------------------------------
# A role deleted and re-created under the same name: a new principal for the same ARN
# ---------------------------------------------------------------------------------------------
def _recreate_role(name: str) -> str:
    iam = boto3.client("iam", region_name=REGION)
    role = iam.get_role(RoleName=name)["Role"]
    policies = {p: iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
                for p in iam.list_role_policies(RoleName=name)["PolicyNames"]}
    tags = iam.list_role_tags(RoleName=name)["Tags"]
    for policy in policies:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    iam.delete_role(RoleName=name)
    made = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(role["AssumeRolePolicyDocument"]),
                           Description=role.get("Description", ""), Tags=tags)["Role"]
    for policy, document in policies.items():
        iam.put_role_policy(RoleName=name, PolicyName=policy, PolicyDocument=json.dumps(document))
    assert made["RoleId"] != role["RoleId"]
    return made["RoleId"]


def test_a_recreated_role_makes_up_set_the_functions_role_again(make, log):
    engine = make(resources=LAMBDA_RESOURCES, log=log)
    engine.up()
    role_name = engine.ctx.names.lambda_role
    new_id = _recreate_role(role_name)
    status = by_id(engine.status(), "lambda.function")
    assert status.health == "drifted" and "role_id" in {c.field for c in status.changes}
    log.clear()
    updates: list[dict] = []
    engine.ctx.client("lambda").meta.events.register(
        "before-parameter-build.lambda.UpdateFunctionConfiguration",
        lambda params, **_: updates.append(dict(params)))
    assert by_id(engine.up(), "lambda.function").action == "update"
    assert updates == [{"FunctionName": engine.ctx.names.function,
                        "Role": f"arn:aws:iam::{ACCOUNT}:role/{role_name}"}]
    assert engine.store.get("lambda.function").ids["role_id"] == new_id
    log.clear()
    engine.up()
    assert log.mutating == []
    assert engine.status().in_sync


def test_a_lost_state_file_records_the_role_id_without_a_write(make, log, tmp_path):
    make(resources=LAMBDA_RESOURCES).up()
    engine = make(resources=LAMBDA_RESOURCES, log=log, state_root=tmp_path / "other")
    engine.up()
    assert log.mutating == []
    role_id = boto3.client("iam", region_name=REGION).get_role(
        RoleName=engine.ctx.names.lambda_role)["Role"]["RoleId"]
    assert engine.store.get("lambda.function").ids["role_id"] == role_id
