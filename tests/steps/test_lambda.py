"""lambda step: log group, role, DLQ, function and Kinesis mapping against in-process moto."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe import package
from iotpipe.errors import AwsCallError
from iotpipe.steps import kms, lambda_
from iotpipe.timing import PROPAGATION_POLL_S
from tests.support import CallLog, by_id

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's
RESOURCES = kms.RESOURCES + lambda_.RESOURCES
PROPAGATION_MESSAGE = "The role defined for the function cannot be assumed by Lambda."


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture
def handler_src(tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the handler source (a stub when the real one is not written yet).

    The step packages ``iotpipe.package.HANDLER_DIR``; pointing it at a copy lets a test edit
    the code without touching the tree other engineers work in.
    """
    src = tmp_path / "handler-src"
    src.mkdir()
    for path in package.HANDLER_DIR.glob("*.py"):
        shutil.copy(path, src / path.name)
    if not (src / "index.py").exists():
        (src / "index.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    monkeypatch.setattr(package, "HANDLER_DIR", src)
    package.clear_cache()
    yield src
    package.clear_cache()


class Params:
    """The API parameters of chosen operations, as the caller passed them."""

    def __init__(self, events: Any, *operations: str) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        for op in operations:
            service, name = op.split(".")
            events.register(f"provide-client-params.{service}.{name}", self._make(op),
                            unique_id=f"params-{id(self)}-{op}")

    def _make(self, op: str):
        def record(params: dict[str, Any], **_: Any) -> None:
            self.calls.append((op, dict(params)))
        return record

    def of(self, op: str) -> list[dict[str, Any]]:
        return [p for o, p in self.calls if o == op]


@pytest.fixture
def env(make, handler_src):
    """An engine over kms + lambda with a call log, and the stream the mapping reads."""
    log = CallLog()
    engine = make(resources=RESOURCES, log=log)
    _create_stream(engine)
    return engine, log


def _create_stream(engine) -> None:
    boto3.client("kinesis", region_name=REGION).create_stream(
        StreamName=engine.ctx.names.stream, StreamModeDetails={"StreamMode": "ON_DEMAND"})


def _client(service: str):
    """An independent client: what AWS holds, not what the engine believes."""
    return boto3.client(service, region_name=REGION)



def _fields(result, logical_id: str) -> set[str]:
    return {c.field for c in by_id(result)[logical_id].changes}


def _key_arn(engine) -> str:
    return engine.ctx.refs["kms.key"]["arn"]


def _mappings(engine) -> list[dict[str, Any]]:
    stream_arn = _client("kinesis").describe_stream_summary(
        StreamName=engine.ctx.names.stream)["StreamDescriptionSummary"]["StreamARN"]
    return _client("lambda").list_event_source_mappings(EventSourceArn=stream_arn)["EventSourceMappings"]


def _events(engine, service: str) -> Any:
    """The event system of the engine's client for ``service``: hooks put there apply even
    after the client exists (a client copies the session's hooks when it is created)."""
    return engine.ctx.client(service).meta.events


def _fail(events: Any, operation: str, code: str, message: str, times: int) -> list[int]:
    """Make ``operation`` fail ``times`` times before it is sent; returns the attempt counter."""
    attempts: list[int] = []

    def hook(**_: Any) -> None:
        attempts.append(1)
        if len(attempts) <= times:
            raise ClientError({"Error": {"Code": code, "Message": message}}, operation.split(".")[1])

    events.register(f"before-call.{operation}", hook, unique_id=f"fail-{operation}-{id(attempts)}")
    return attempts


# --------------------------------------------------------------------------------------------
# create: every attribute, checked with independent clients
# --------------------------------------------------------------------------------------------
def test_up_creates_function_with_every_setting(env, handler_src) -> None:
    engine, _ = env
    params = Params(_events(engine, "lambda"), "lambda.CreateFunction")
    result = engine.up()
    assert {r.logical_id: r.action for r in result.resources} == {
        r.logical_id: "create" for r in RESOURCES if not r.retired}
    names, key_arn = engine.ctx.names, _key_arn(engine)

    fn = _client("lambda").get_function(FunctionName=names.function)
    cfg = fn["Configuration"]
    role_arn = _client("iam").get_role(RoleName=names.lambda_role)["Role"]["Arn"]
    assert cfg["Runtime"] == "python3.11"
    assert cfg["Handler"] == "index.lambda_handler"
    assert cfg["Timeout"] == 60
    assert cfg["MemorySize"] == 256
    assert cfg["Role"] == role_arn
    assert cfg["Architectures"] == ["arm64"]
    assert cfg["State"] == "Active"
    assert cfg["Environment"]["Variables"] == {
        "DYNAMODB_TABLE": "sensor-metrics-dev",
        "S3_BUCKET": "iot-sensor-data-dev-123456789012",
        "ENVIRONMENT_SUFFIX": "dev",
        "ANOMALY_THRESHOLDS": engine.ctx.config.thresholds_json(),
    }
    assert json.loads(cfg["Environment"]["Variables"]["ANOMALY_THRESHOLDS"]) == {
        "pressure": {}, "temperature": {"max": 100.0}, "vibration": {"max": 50.0}}
    assert cfg["CodeSha256"] == package.code_sha256(package.build_handler_zip(handler_src))
    assert fn["Tags"]["iotpipe:env"] == "dev"
    assert fn["Tags"]["iotpipe:resource"] == "lambda.function"
    assert fn["Tags"]["managed-by"] == "iotpipe"
    # moto does not keep KMSKeyArn for functions: check what was asked for instead
    (create,) = params.of("lambda.CreateFunction")
    assert create["KMSKeyArn"] == key_arn
    assert create["Tags"] == fn["Tags"]
    assert result.outputs["lambda_function_arn"] == cfg["FunctionArn"]


def test_up_creates_least_privilege_role(env) -> None:
    engine, _ = env
    engine.up()
    names, key_arn = engine.ctx.names, _key_arn(engine)
    iam = _client("iam")
    role = iam.get_role(RoleName=names.lambda_role)["Role"]
    trust = role["AssumeRolePolicyDocument"]
    (stmt,) = trust["Statement"]
    assert stmt["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert stmt["Action"] == "sts:AssumeRole"
    # confused deputy: Lambda documents aws:SourceAccount for execution-role trust
    # (https://docs.aws.amazon.com/lambda/latest/dg/permissions-managed-policies.html)
    assert stmt["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    assert iam.list_role_policies(RoleName=names.lambda_role)["PolicyNames"] == ["lambda-permissions"]
    assert iam.list_attached_role_policies(RoleName=names.lambda_role)["AttachedPolicies"] == []
    doc = iam.get_role_policy(RoleName=names.lambda_role, PolicyName="lambda-permissions")["PolicyDocument"]
    grants: dict[str, set[str]] = {}
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow"
        actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
        resources = [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]
        for action in actions:
            grants.setdefault(action, set()).update(resources)
    acct = "123456789012"
    stream = f"arn:aws:kinesis:{REGION}:{acct}:stream/{names.stream}"
    bucket = f"arn:aws:s3:::{names.sensor_bucket}"
    assert grants == {
        "kinesis:DescribeStream": {stream},
        "kinesis:DescribeStreamSummary": {stream},
        "kinesis:GetRecords": {stream},
        "kinesis:GetShardIterator": {stream},
        "kinesis:ListShards": {stream},
        "dynamodb:BatchWriteItem": {f"arn:aws:dynamodb:{REGION}:{acct}:table/{names.metrics_table}"},
        "dynamodb:PutItem": {f"arn:aws:dynamodb:{REGION}:{acct}:table/{names.metrics_table}"},
        "s3:PutObject": {f"{bucket}/raw/*", f"{bucket}/rejected/*", f"{bucket}/aws/lambda/*"},
        "s3:ListBucket": {bucket},
        "logs:CreateLogStream": {f"arn:aws:logs:{REGION}:{acct}:log-group:{names.lambda_log_group}:*"},
        "logs:PutLogEvents": {f"arn:aws:logs:{REGION}:{acct}:log-group:{names.lambda_log_group}:*"},
        "kms:Decrypt": {key_arn},
        "kms:GenerateDataKey": {key_arn},
    }
    assert "s3:PutObjectAcl" not in json.dumps(doc)  # the seed's weakness
    assert "*" not in {r for rs in grants.values() for r in rs}


def test_up_creates_mapping_with_s3_failure_destination_and_log_group(env) -> None:
    engine, _ = env
    engine.up()
    names, key_arn = engine.ctx.names, _key_arn(engine)

    (esm,) = _mappings(engine)
    fn_arn = _client("lambda").get_function(FunctionName=names.function)["Configuration"]["FunctionArn"]
    assert esm["FunctionArn"] == fn_arn
    assert esm["StartingPosition"] == "LATEST"
    assert esm["BatchSize"] == 100
    assert esm["MaximumBatchingWindowInSeconds"] == 10
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["BisectBatchOnFunctionError"] is True
    assert esm["MaximumRetryAttempts"] == 5
    assert esm["MaximumRecordAgeInSeconds"] == 3600
    assert esm["ParallelizationFactor"] == 1
    assert esm["DestinationConfig"]["OnFailure"]["Destination"] == f"arn:aws:s3:::{names.sensor_bucket}"
    assert esm["State"] == "Enabled"
    esm_tags = _client("lambda").list_tags(Resource=esm["EventSourceMappingArn"])["Tags"]
    assert esm_tags["iotpipe:resource"] == "lambda.event_source_mapping"
    assert engine.store.get("lambda.event_source_mapping").ids["uuid"] == esm["UUID"]

    assert _client("sqs").list_queues().get("QueueUrls", []) == []  # the retired DLQ is not made

    (group,) = _client("logs").describe_log_groups(logGroupNamePrefix=names.lambda_log_group)["logGroups"]
    assert group["logGroupName"] == "/aws/lambda/iot-processor-dev"
    assert group["kmsKeyId"] == key_arn
    assert group["retentionInDays"] == 30


# --------------------------------------------------------------------------------------------
# converged = reads only
# --------------------------------------------------------------------------------------------
def test_second_up_makes_no_mutating_call_and_does_not_reupload(env) -> None:
    engine, log = env
    engine.up()
    log.clear()
    again = engine.up()
    assert log.mutating == []
    assert ("lambda", "UpdateFunctionCode") not in log.calls
    assert {r.action for r in again.resources} == {"unchanged"}
    status = engine.status()
    assert {r.health for r in status.resources} == {"ok"}
    assert status.in_sync


def test_plan_on_a_new_env_lists_creates_and_writes_nothing(env) -> None:
    engine, log = env
    result = engine.plan()
    assert {r.action for r in result.resources} == {"create"}
    assert log.mutating == []
    esm_fields = _fields(result, "lambda.event_source_mapping")
    assert {"function_response_types", "starting_position", "on_failure_destination"} <= esm_fields


# --------------------------------------------------------------------------------------------
# code change
# --------------------------------------------------------------------------------------------
def test_code_change_uploads_only_the_code(env, handler_src) -> None:
    engine, log = env
    engine.up()
    old_sha = _client("lambda").get_function(FunctionName=engine.ctx.names.function)["Configuration"]["CodeSha256"]
    with (handler_src / "index.py").open("a") as fh:
        fh.write("\n# a change to the handler\n")
    new_sha = package.code_sha256(package.build_handler_zip())
    assert new_sha != old_sha

    plan = engine.plan()
    assert _fields(plan, "lambda.function") == {"code_sha256"}
    log.clear()
    engine.up()
    assert log.mutating == [("lambda", "UpdateFunctionCode")]
    cfg = _client("lambda").get_function(FunctionName=engine.ctx.names.function)["Configuration"]
    assert cfg["CodeSha256"] == new_sha
    log.clear()
    engine.up()
    assert log.mutating == []


# --------------------------------------------------------------------------------------------
# drift: status reports the field, plan lists it, up repairs it with exactly the needed call
# --------------------------------------------------------------------------------------------
def _assert_drift_repaired(engine, log, logical_id: str, field: str, expected_calls: list) -> None:
    status = engine.status()
    drifted = by_id(status)[logical_id]
    assert drifted.health == "drifted"
    assert field in {c.field for c in drifted.changes}
    assert {r.logical_id for r in status.resources if r.health != "ok"} == {logical_id}
    plan = engine.plan()
    assert by_id(plan)[logical_id].action == "update"
    assert field in _fields(plan, logical_id)
    log.clear()
    engine.up()
    assert log.mutating == expected_calls
    assert engine.status().in_sync


def test_memory_drift_is_reported_and_repaired(env) -> None:
    engine, log = env
    engine.up()
    _client("lambda").update_function_configuration(FunctionName=engine.ctx.names.function, MemorySize=1024)
    params = Params(_events(engine, "lambda"), "lambda.UpdateFunctionConfiguration")
    _assert_drift_repaired(engine, log, "lambda.function", "memory_mb",
                           [("lambda", "UpdateFunctionConfiguration")])
    assert params.of("lambda.UpdateFunctionConfiguration") == [
        {"FunctionName": engine.ctx.names.function, "MemorySize": 256}]
    cfg = _client("lambda").get_function(FunctionName=engine.ctx.names.function)["Configuration"]
    assert cfg["MemorySize"] == 256


def test_environment_drift_is_reported_and_repaired(env) -> None:
    engine, log = env
    engine.up()
    lam = _client("lambda")
    variables = lam.get_function(FunctionName=engine.ctx.names.function)["Configuration"]["Environment"]["Variables"]
    lam.update_function_configuration(FunctionName=engine.ctx.names.function,
                                      Environment={"Variables": {**variables, "S3_BUCKET": "someone-elses"}})
    _assert_drift_repaired(engine, log, "lambda.function", "environment",
                           [("lambda", "UpdateFunctionConfiguration")])
    cfg = lam.get_function(FunctionName=engine.ctx.names.function)["Configuration"]
    assert cfg["Environment"]["Variables"] == variables


def test_mapping_without_report_batch_item_failures_is_drift(env) -> None:
    engine, log = env
    engine.up()
    (esm,) = _mappings(engine)
    _client("lambda").update_event_source_mapping(UUID=esm["UUID"], FunctionResponseTypes=[])
    params = Params(_events(engine, "lambda"), "lambda.UpdateEventSourceMapping")
    _assert_drift_repaired(engine, log, "lambda.event_source_mapping", "function_response_types",
                           [("lambda", "UpdateEventSourceMapping")])
    assert params.of("lambda.UpdateEventSourceMapping") == [
        {"UUID": esm["UUID"], "FunctionResponseTypes": ["ReportBatchItemFailures"]}]
    (after,) = _mappings(engine)
    assert after["UUID"] == esm["UUID"]
    assert after["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_mapping_settings_drift_is_repaired_in_one_call(env) -> None:
    engine, log = env
    engine.up()
    (esm,) = _mappings(engine)
    _client("lambda").update_event_source_mapping(
        UUID=esm["UUID"], BatchSize=500, MaximumRetryAttempts=-1, BisectBatchOnFunctionError=False,
        DestinationConfig={"OnFailure": {}}, Enabled=False)
    status = engine.status()
    assert _fields(status, "lambda.event_source_mapping") == {
        "batch_size", "max_retry_attempts", "bisect_on_error", "on_failure_destination", "enabled"}
    log.clear()
    engine.up()
    assert log.mutating == [("lambda", "UpdateEventSourceMapping")]
    (after,) = _mappings(engine)
    assert (after["BatchSize"], after["MaximumRetryAttempts"], after["BisectBatchOnFunctionError"],
            after["State"]) == (100, 5, True, "Enabled")
    assert after["DestinationConfig"]["OnFailure"]["Destination"] == f"arn:aws:s3:::{engine.ctx.names.sensor_bucket}"


def test_inline_policy_drift_is_reported_and_repaired(env) -> None:
    engine, log = env
    engine.up()
    iam, role = _client("iam"), engine.ctx.names.lambda_role
    widened = iam.get_role_policy(RoleName=role, PolicyName="lambda-permissions")["PolicyDocument"]
    widened["Statement"].append({"Effect": "Allow", "Action": "s3:PutObjectAcl", "Resource": "*"})
    iam.put_role_policy(RoleName=role, PolicyName="lambda-permissions", PolicyDocument=json.dumps(widened))
    _assert_drift_repaired(engine, log, "lambda.role", "inline_policies", [("iam", "PutRolePolicy")])
    doc = iam.get_role_policy(RoleName=role, PolicyName="lambda-permissions")["PolicyDocument"]
    assert "PutObjectAcl" not in json.dumps(doc)


def test_function_tag_drift_is_repaired_with_tag_calls_only(env) -> None:
    engine, log = env
    engine.up()
    lam = _client("lambda")
    arn = lam.get_function(FunctionName=engine.ctx.names.function)["Configuration"]["FunctionArn"]
    lam.untag_resource(Resource=arn, TagKeys=["iotpipe:resource"])
    lam.tag_resource(Resource=arn, Tags={"someone": "else"})  # not ours: not drift
    _assert_drift_repaired(engine, log, "lambda.function", "tags", [("lambda", "TagResource")])
    assert lam.list_tags(Resource=arn)["Tags"]["someone"] == "else"


# --------------------------------------------------------------------------------------------
# crash safety: a half-made resource is finished by the next up
# --------------------------------------------------------------------------------------------
def test_role_without_inline_policy_is_finished_by_the_next_up(env) -> None:
    engine, log = env
    _fail(_events(engine, "iam"), "iam.PutRolePolicy", "ServiceUnavailable", "injected", times=1)
    with pytest.raises(AwsCallError):
        engine.up()
    assert _client("iam").list_role_policies(RoleName=engine.ctx.names.lambda_role)["PolicyNames"] == []
    log.clear()
    result = engine.up()
    assert by_id(result)["lambda.role"].action == "update"
    assert log.mutating[0] == ("iam", "PutRolePolicy")
    assert not any(op == "CreateRole" for _, op in log.mutating)
    assert engine.status().in_sync


def test_lost_create_function_answer_adopts_the_function(env) -> None:
    """CreateFunction reached Lambda, the answer was lost: the next up must not create again."""
    engine, log = env

    def lose_answer(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        if http_response.status_code < 300:
            raise ConnectionError("answer lost")

    _events(engine, "lambda").register("after-call.lambda.CreateFunction", lose_answer, unique_id="lose")
    with pytest.raises(ConnectionError):
        engine.up()
    _events(engine, "lambda").unregister("after-call.lambda.CreateFunction", unique_id="lose")
    log.clear()
    engine.up()
    assert ("lambda", "CreateFunction") not in log.mutating
    assert ("lambda", "CreateEventSourceMapping") in log.mutating
    assert len(_client("lambda").list_functions()["Functions"]) == 1
    assert engine.status().in_sync


# --------------------------------------------------------------------------------------------
# IAM eventual consistency
# --------------------------------------------------------------------------------------------
def test_create_function_retries_while_the_new_role_propagates(make, handler_src) -> None:
    slept: list[float] = []
    log = CallLog()
    engine = make(resources=RESOURCES, log=log, sleep=slept.append)
    _create_stream(engine)
    attempts = _fail(_events(engine, "lambda"), "lambda.CreateFunction", "InvalidParameterValueException",
                     PROPAGATION_MESSAGE, times=2)
    result = engine.up()
    assert by_id(result)["lambda.function"].action == "create"
    assert len(attempts) == 3
    assert slept == [PROPAGATION_POLL_S] * 2  # asked again at the propagation cadence, through the injected sleep
    assert _client("lambda").get_function(FunctionName=engine.ctx.names.function)["Configuration"]["State"] == "Active"


def test_other_create_function_errors_are_raised_at_once(make, handler_src) -> None:
    slept: list[float] = []
    engine = make(resources=RESOURCES, sleep=slept.append)
    _create_stream(engine)
    attempts = _fail(_events(engine, "lambda"), "lambda.CreateFunction", "InvalidParameterValueException",
                     "Unzipped size must be smaller than 262144000 bytes", times=99)
    with pytest.raises(AwsCallError, match="Unzipped size"):
        engine.up()
    assert len(attempts) == 1
    assert slept == []


def test_create_mapping_also_waits_for_the_role_policy(make, handler_src) -> None:
    slept: list[float] = []
    engine = make(resources=RESOURCES, sleep=slept.append)
    _create_stream(engine)
    attempts = _fail(
        _events(engine, "lambda"), "lambda.CreateEventSourceMapping", "InvalidParameterValueException",
        "The provided execution role does not have permissions to call GetRecords on Kinesis", times=1)
    engine.up()
    assert len(attempts) == 2
    assert slept == [PROPAGATION_POLL_S]
    assert len(_mappings(engine)) == 1


# --------------------------------------------------------------------------------------------
# event source mapping: duplicates, transitions
# --------------------------------------------------------------------------------------------
def test_duplicate_mapping_is_reported_and_removed(env, tmp_path) -> None:
    engine, log = env
    engine.up()
    (ours,) = _mappings(engine)
    stream_arn = ours["EventSourceArn"]
    extra = _client("lambda").create_event_source_mapping(
        EventSourceArn=stream_arn, FunctionName=engine.ctx.names.function, StartingPosition="LATEST",
        BatchSize=100)
    assert len(_mappings(engine)) == 2

    status = engine.status()
    change = {c.field: c for c in by_id(status)["lambda.event_source_mapping"].changes}
    assert set(change) == {"duplicates"}
    assert change["duplicates"].current == [extra["UUID"]]
    log.clear()
    engine.up()
    assert log.mutating == [("lambda", "DeleteEventSourceMapping")]
    (left,) = _mappings(engine)
    assert left["UUID"] == ours["UUID"]
    assert engine.status().in_sync


def test_duplicates_without_a_state_file_keep_our_tagged_mapping(make, handler_src, tmp_path) -> None:
    first = make(resources=RESOURCES, state_root=tmp_path / "state-a")
    _create_stream(first)
    first.up()
    (ours,) = _mappings(first)
    # an untagged mapping created out of band, on the same pair
    _client("lambda").create_event_source_mapping(
        EventSourceArn=ours["EventSourceArn"], FunctionName=ours["FunctionArn"], StartingPosition="LATEST")
    fresh = make(resources=RESOURCES, state_root=tmp_path / "state-b")  # the state file is lost
    status = fresh.status()
    assert by_id(status)["lambda.event_source_mapping"].ids["uuid"] == ours["UUID"]
    fresh.up()
    (left,) = _mappings(fresh)
    assert left["UUID"] == ours["UUID"]


def test_mapping_in_state_deleting_counts_as_absent(env) -> None:
    engine, _ = env
    engine.up()

    def deleting(parsed: dict[str, Any], **_: Any) -> None:
        for mapping in parsed.get("EventSourceMappings", []):
            mapping["State"] = "Deleting"

    _events(engine, "lambda").register("after-call.lambda.ListEventSourceMappings", deleting, unique_id="del")
    status = engine.status()
    assert by_id(status)["lambda.event_source_mapping"].health == "missing"


def test_update_waits_for_a_mapping_in_transition(env) -> None:
    engine, _ = env
    engine.up()
    (esm,) = _mappings(engine)
    slept: list[float] = []
    engine.ctx.aws.sleep = slept.append
    seen: list[str] = []

    def updating(parsed: dict[str, Any], **_: Any) -> None:
        if len(seen) < 2:
            parsed["State"] = "Updating"
        seen.append(parsed["State"])

    _events(engine, "lambda").register("after-call.lambda.GetEventSourceMapping", updating, unique_id="upd")
    mapping = lambda_.EventSourceMapping()
    assert mapping._settle(engine.ctx, esm["UUID"], None) == "Enabled"
    assert seen == ["Updating", "Updating", "Enabled"]
    assert slept == [lambda_.ESM_POLL_S, lambda_.ESM_POLL_S]
    # a known stable state costs no call at all
    assert mapping._settle(engine.ctx, esm["UUID"], "Enabled") == "Enabled"
    assert len(seen) == 3


def test_a_mapping_stuck_in_transition_is_reported_not_waited_for_forever(env) -> None:
    engine, _ = env
    engine.up()
    (esm,) = _mappings(engine)
    now = [0.0]
    engine.ctx.aws.clock = lambda: now[0]
    engine.ctx.aws.sleep = lambda s: now.__setitem__(0, now[0] + s)
    _events(engine, "lambda").register("after-call.lambda.GetEventSourceMapping",
                                   lambda parsed, **_: parsed.__setitem__("State", "Creating"),
                                   unique_id="stuck")
    with pytest.raises(AwsCallError, match="still Creating"):
        lambda_.EventSourceMapping()._settle(engine.ctx, esm["UUID"], None)
    assert now[0] <= lambda_.ESM_SETTLE_TIMEOUT_S


# --------------------------------------------------------------------------------------------
# destroy
# --------------------------------------------------------------------------------------------
def test_destroy_leaves_nothing(env) -> None:
    engine, log = env
    engine.up()
    _client("lambda").create_event_source_mapping(  # a duplicate goes too
        EventSourceArn=_mappings(engine)[0]["EventSourceArn"], FunctionName=engine.ctx.names.function,
        StartingPosition="LATEST")
    result = engine.destroy()
    lambda_ids = [r.logical_id for r in lambda_.RESOURCES if not r.retired]
    assert {r.logical_id: r.action for r in result.resources if r.logical_id in lambda_ids} == {
        lid: "delete" for lid in lambda_ids}
    names = engine.ctx.names
    assert _client("lambda").list_functions()["Functions"] == []
    assert _mappings(engine) == []
    assert _client("sqs").list_queues().get("QueueUrls", []) == []
    assert [r["RoleName"] for r in _client("iam").list_roles()["Roles"]
            if r["RoleName"] == names.lambda_role] == []
    assert _client("logs").describe_log_groups(logGroupNamePrefix=names.lambda_log_group)["logGroups"] == []
    again = engine.destroy()
    assert {r.action for r in again.resources} == {"absent"}
