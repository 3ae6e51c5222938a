"""The CLI as an operator runs it: a subprocess talking HTTP to a moto server."""

from __future__ import annotations

import json
import shutil

from iotpipe.errors import ExitCode
from tests.pipeline_checks import assert_nothing_left, verify_pipeline

SEED_OUTPUTS = {
    "sensor_data_bucket_name", "sensor_metrics_table_name", "kinesis_stream_name",
    "lambda_function_name", "iot_thing_type_name", "cloudtrail_name", "kms_key_id",
}


def _json(proc):
    assert proc.returncode in (0, 2), proc.stderr
    return json.loads(proc.stdout)


def test_up_status_outputs_destroy(iotpipe, clients, tmp_path):
    up = iotpipe("up", "--env", "dev")
    assert up.returncode == 0, up.stderr
    assert "created" in up.stdout and "kms.key" in up.stdout
    verify_pipeline(clients, "dev", enforce_tls=True)

    again = _json(iotpipe("up", "--env", "dev", "--json"))
    assert {r["action"] for r in again["resources"]} == {"unchanged"}

    assert iotpipe("plan", "--env", "dev").returncode == ExitCode.OK
    status = iotpipe("status", "--env", "dev", "--json")
    assert status.returncode == ExitCode.OK
    assert {r["status"] for r in _json(status)["resources"]} == {"ok"}

    outputs = _json(iotpipe("outputs", "--env", "dev", "--json"))
    assert set(outputs) >= SEED_OUTPUTS
    assert outputs["kinesis_stream_name"] == "iot-sensor-stream-dev"
    assert outputs["cloudtrail_name"] == "iot-audit-trail-dev"
    assert outputs["sensor_data_bucket_name"] == "iot-sensor-data-dev-123456789012"

    state = json.loads((tmp_path / ".iotpipe" / "state" / "dev.json").read_text())
    assert state["account"] == "123456789012" and "lambda.function" in state["resources"]

    destroy = iotpipe("destroy", "--env", "dev", "--yes")
    assert destroy.returncode == 0, destroy.stderr
    assert_nothing_left(clients, "dev")
    assert not (tmp_path / ".iotpipe" / "state" / "dev.json").exists()

    second = iotpipe("destroy", "--env", "dev", "--yes", "--json")
    assert second.returncode == 0
    assert {r["action"] for r in _json(second)["resources"]} == {"absent"}


def test_drift_is_reported_planned_and_repaired(iotpipe, clients):
    assert iotpipe("up", "--env", "dev").returncode == 0
    key_id = _json(iotpipe("outputs", "--env", "dev", "--json"))["kms_key_id"]
    bucket = "iot-sensor-data-dev-123456789012"
    clients.kms.disable_key_rotation(KeyId=key_id)
    clients.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    clients.s3.delete_bucket_lifecycle(Bucket=bucket)
    clients.logs.put_retention_policy(logGroupName="/aws/lambda/iot-processor-dev", retentionInDays=7)
    clients.dynamodb.update_continuous_backups(
        TableName="sensor-metrics-dev", PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    clients.client("lambda").update_function_configuration(FunctionName="iot-processor-dev", MemorySize=512)
    rule = clients.iot.get_topic_rule(ruleName="sensor_data_rule_dev")["rule"]
    clients.iot.replace_topic_rule(ruleName="sensor_data_rule_dev", topicRulePayload={
        "sql": "SELECT * FROM 'other/topic'", "actions": rule["actions"], "ruleDisabled": False,
        "description": rule["description"], "errorAction": rule["errorAction"],
        "awsIotSqlVersion": "2016-03-23"})
    clients.iam.put_role_policy(RoleName="iot-lambda-role-dev", PolicyName="iot-lambda-policy",
                                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))

    expected = {
        "kms.key": "rotation", "storage.sensor_bucket": "versioning", "lambda.log_group": "retention_days",
        "storage.metrics_table": "point_in_time_recovery", "lambda.function": "memory_mb",
        "iot.topic_rule": "sql", "lambda.role": "inline_policies",
    }
    status = iotpipe("status", "--env", "dev", "--json")
    assert status.returncode == ExitCode.CHANGES_PENDING
    drifted = {r["logical_id"]: {c["field"] for c in r["changes"]}
               for r in _json(status)["resources"] if r["status"] == "drifted"}
    for lid, field in expected.items():
        assert field in drifted.get(lid, set()), (lid, field, drifted)
    assert "lifecycle" in drifted["storage.sensor_bucket"]

    plan = iotpipe("plan", "--env", "dev", "--json")
    assert plan.returncode == ExitCode.CHANGES_PENDING
    assert {r["logical_id"] for r in _json(plan)["resources"] if r["action"] == "update"} == set(expected)

    repaired = iotpipe("up", "--env", "dev", "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert {r["logical_id"] for r in _json(repaired)["resources"] if r["action"] == "update"} == set(expected)
    assert iotpipe("status", "--env", "dev").returncode == ExitCode.OK
    verify_pipeline(clients, "dev", enforce_tls=True)


def test_lost_state_file_is_rebuilt_from_aws(iotpipe, clients, tmp_path):
    assert iotpipe("up", "--env", "dev").returncode == 0
    shutil.rmtree(tmp_path / ".iotpipe")
    adopted = _json(iotpipe("up", "--env", "dev", "--json"))
    assert {r["action"] for r in adopted["resources"]} == {"unchanged"}  # zero creates
    assert (tmp_path / ".iotpipe" / "state" / "dev.json").exists()
    shutil.rmtree(tmp_path / ".iotpipe")
    assert iotpipe("destroy", "--env", "dev", "--yes").returncode == 0
    assert_nothing_left(clients, "dev")


def test_two_envs_do_not_touch_each_other(iotpipe, clients):
    assert iotpipe("up", "--env", "dev").returncode == 0
    assert iotpipe("up", "--env", "qa").returncode == 0
    assert iotpipe("destroy", "--env", "qa", "--yes").returncode == 0
    assert_nothing_left(clients, "qa")
    verify_pipeline(clients, "dev", enforce_tls=True)
