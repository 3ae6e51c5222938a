"""`--json` all the way: results, errors and `outputs` a script can rely on; usage hints."""

from __future__ import annotations

import json
import re

import pytest

from iotpipe.errors import ExitCode

SETS = ("--set", "storage.enforce_tls=false")


def _error_object(proc, code: ExitCode) -> dict:
    assert proc.returncode == code, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is one JSON document, nothing else
    assert doc == {"error": True, "code": int(code), "name": code.name, "message": doc["message"]}
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert err_lines == [f"error: {doc['message']}"]  # the same line, still on stderr
    return doc


@pytest.mark.parametrize(("args", "code", "needle"), [
    (("status", "--json", "--set", "lambda.memory_mb=5"), ExitCode.CONFIG, "from --set lambda.memory_mb=5"),
    (("up", "--json", "--no-such-flag"), ExitCode.USAGE, "--no-such-flag"),
    (("plan", "--json", "--endpoint-url", "localhost:5000"), ExitCode.USAGE, "no scheme"),
    (("destroy", "--json"), ExitCode.ABORTED, "--yes"),
    (("outputs", "--json"), ExitCode.CHANGES_PENDING, "not deployed"),
])
def test_errors_are_json_objects_on_stdout(iotpipe, args, code, needle):
    doc = _error_object(iotpipe(*args, input=""), code)
    assert needle in doc["message"]


def test_endpoint_error_is_a_json_object(iotpipe):
    doc = _error_object(iotpipe("status", "--json", "--endpoint-url", "http://127.0.0.1:9", endpoint=False),
                        ExitCode.ENDPOINT)
    assert "127.0.0.1:9" in doc["message"]


def test_outputs_of_an_env_that_is_not_deployed(iotpipe):
    text = iotpipe("outputs", "--env", "dev")
    assert text.returncode == ExitCode.CHANGES_PENDING
    assert text.stdout == ""
    assert text.stderr.strip() == ("error: env 'dev' is not deployed in us-east-1 (account 123456789012): "
                                   "run `iotpipe up --env dev`")


def test_outputs_carry_what_a_device_integrator_needs(iotpipe, clients):
    assert iotpipe("up", *SETS).returncode == 0
    outputs = json.loads(iotpipe("outputs", *SETS, "--json").stdout)
    assert outputs["region"] == "us-east-1" and outputs["account_id"] == "123456789012"
    # moto invents a new prefix per call; AWS's format is <prefix>-ats.iot.<region>.amazonaws.com
    # (https://docs.aws.amazon.com/iot/latest/apireference/API_DescribeEndpoint.html, iot:Data-ATS)
    assert re.fullmatch(r"[a-z0-9]+-ats\.iot\.us-east-1\.amazonaws\.com", outputs["iot_data_endpoint"])
    assert outputs["iot_topic_pattern"] == "manufacturing/sensors/+/data"
    assert outputs["iot_device_topic"] == "manufacturing/sensors/<device_id>/data"
    assert outputs["iot_rule_role_arn"] == clients.iam.get_role(RoleName="iot-rule-role-dev")["Role"]["Arn"]
    assert outputs["lambda_role_arn"] == clients.iam.get_role(RoleName="iot-lambda-role-dev")["Role"]["Arn"]
    assert "dead_letter_queue_arn" not in outputs  # retired: failed batches go to the sensor bucket
    text = iotpipe("outputs", *SETS)
    assert text.returncode == 0 and "iot_data_endpoint" in text.stdout and "manufacturing/sensors/+/data" in text.stdout


def test_outputs_of_a_half_deployed_env_exit_2_and_say_what_is_missing(iotpipe, clients):
    assert iotpipe("up", *SETS).returncode == 0
    clients.cloudtrail.delete_trail(Name="iot-audit-trail-dev")
    proc = iotpipe("outputs", *SETS, "--json")
    assert proc.returncode == ExitCode.CHANGES_PENDING
    outputs = json.loads(proc.stdout)
    assert "cloudtrail_name" not in outputs and outputs["kinesis_stream_name"] == "iot-sensor-stream-dev"
    assert "warning: env 'dev' is not fully deployed (missing: trail.trail)" in proc.stderr


# -- usage -----------------------------------------------------------------------------------------
def test_bare_iotpipe_prints_its_help(iotpipe):
    proc = iotpipe()
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("Usage: iotpipe [OPTIONS] COMMAND") and "Commands:" in proc.stdout


def test_bare_group_prints_its_help(iotpipe):
    proc = iotpipe("device")
    assert proc.returncode == 0 and "Usage: iotpipe device" in proc.stdout


@pytest.mark.parametrize(("args", "fixed"), [
    (("-e", "dev", "status"), "iotpipe status -e dev"),
    (("--env", "prod", "--json", "plan", "--wide"), "iotpipe plan --env prod --json --wide"),
])
def test_options_before_the_command_get_the_working_command_line(iotpipe, args, fixed):
    proc = iotpipe(*args)
    assert proc.returncode == ExitCode.USAGE
    (line,) = proc.stderr.splitlines()
    assert line.endswith(f"goes after the command: `{fixed}`")
