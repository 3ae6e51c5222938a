"""`iotpipe demo`: the README's first command, on its embedded emulator."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.pipeline_checks import Clients

REPO = Path(__file__).resolve().parents[2]


def _env(**aws: str) -> dict[str, str]:
    # COLUMNS too: a width inherited from the test runner would fold the lines asserted on
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "COLUMNS"}
    env["PYTHONPATH"] = str(REPO)
    env.update(aws)
    return env


def test_demo_runs_the_whole_job_without_an_account(tmp_path):
    # A user's AWS settings must not reach the demo: a profile that does not exist here, a
    # session token and an endpoint that answers nothing would each fail it if they did.
    env = _env(AWS_PROFILE="no-such-profile", AWS_SESSION_TOKEN="real-looking-token",
               AWS_ACCESS_KEY_ID="AKIAREALKEY", AWS_SECRET_ACCESS_KEY="secret",
               AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_DEFAULT_REGION="eu-west-3")
    proc = subprocess.run([sys.executable, "-m", "iotpipe", "demo", "--readings", "250", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "error running docker" not in proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    # 28 resources made (17 + the monitor step's topic, 9 alarms and dashboard); iot.devices
    # (no devices yet) reads as there, with nothing to make; the retired lambda.dlq is neither
    # made nor shown
    assert result["up"]["counts"] == {"create": 28, "unchanged": 1}
    assert result["status"]["status_counts"] == {"ok": 29}
    pipeline = result["pipeline"]
    assert pipeline["readings_sent"] == 250 and pipeline["invalid_sent"] == 3
    # One batch met the simulated DynamoDB outage on its first delivery and on each of the
    # mapping's 5 retries (lambda.max_retry_attempts), then went, whole, to the failure
    # destination: one failure record; everything else was stored or quarantined.
    given_up = pipeline["given_up_records"]
    assert pipeline["outage_refused"] == 6 and pipeline["redeliveries"] == 5 and pipeline["undelivered"] == 1
    assert len(pipeline["failure_records"]) == 1 and pipeline["failure_records"][0].startswith("aws/lambda/")
    assert pipeline["handler_errors"] == []  # the handler logged nothing but the outage's refusals
    assert pipeline["handler_stored"] + pipeline["handler_rejected"] + given_up == 253
    missing = 250 - pipeline["items_stored"]
    assert pipeline["items_stored"] == pipeline["handler_stored"] and 1 <= missing <= given_up
    assert pipeline["batches"] >= pipeline["archive_objects"] >= 1
    assert pipeline["rejected_objects"] >= 1 and pipeline["anomalous_items"] > 0
    # `health` (before the replay) reads what the local event source published as Kinesis,
    # Lambda and CloudWatch Logs would: the outage is there, as an operator would see it
    health = result["health"]
    assert health["published"] == 253 and health["stored"] == pipeline["items_stored"]
    assert health["rejected"] == pipeline["handler_rejected"] and health["anomalies"] == pipeline["anomalous_items"]
    assert health["failed"] == 6 * given_up and health["given_up"] == given_up  # every delivery counts the batch
    assert health["in_stream"] == 0 and health["errors"] == 0 and health["failure_records_waiting"] == 1
    assert health["verdict"] == "degraded" and any("replay failed" in p for p in health["problems"])
    # `replay failed` stores the batch with the handler's own code: every reading sent is in DynamoDB
    replay = result["replay"]
    assert replay["replay"]["complete"] and replay["replay"]["totals"] == {
        "records": 1, "readings": given_up, "stored": missing, "rejected": given_up - missing,
        "still_failing": 0, "expired_ranges": 0}
    assert [i["ref"] for i in replay["replay"]["items"]] == pipeline["failure_records"]
    assert replay["items_before"] == pipeline["items_stored"] and replay["missing_before"] == missing
    assert replay["items_after"] == replay["readings_sent"] == 250 and replay["missing_after"] == 0
    assert (replay["failure_records_before"], replay["failure_records_after"]) == (1, 0)
    assert pipeline["handler_rejected"] + replay["replay"]["totals"]["rejected"] == 3
    assert result["destroy"]["counts"] == {"delete": 28, "scheduled": 1}  # the key: scheduled for deletion
    assert not list(tmp_path.rglob("*.json"))  # the demo's state lived in a temporary directory


def test_demo_says_what_it_does_and_keep_leaves_the_emulator_up(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "iotpipe", "demo", "--readings", "40", "--keep"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    match = re.search(r"still running at (http://127\.0\.0\.1:\d+) \(pid (\d+)\)", out)
    assert match, out
    url, pid = match.group(1), int(match.group(2))
    try:
        headings = re.findall(r"^(\d)/6 (\w+):", out, re.MULTILINE)
        assert headings == [("1", "emulator"), ("2", "provisioning"), ("3", "publishing"),
                            ("4", "results"), ("5", "replay"), ("6", "teardown")]
        assert "published to Kinesis: 43 of 43 records" in out  # progress (piped: per quarter)
        assert "handled by the Lambda handler: 43 of 43 records" in out
        assert "40 valid readings + 3 invalid" in out
        # the outage is said, with the readings it kept from DynamoDB; health shows it
        assert "one batch was made to fail on purpose: a simulated DynamoDB outage" in out
        missing = int(re.search(r"before the replay, DynamoDB misses (\d+) of the 40 readings sent", out).group(1))
        assert missing >= 1 and f"stored {40 - missing} readings" in out
        assert "health of env local" in out and "verdict: degraded" in out and "failure records 1 " in out
        assert "degraded because of the outage" in out and "`iotpipe replay failed` is the remedy" in out
        # the replay stores what was missing; the counts add up
        assert re.search(rf"replayed 1 failure record\(s\): \d+ records, {missing} readings stored, "
                         r"\d+ quarantined, 0 still failing", out), out
        assert f"{40 - missing} items before the replay ({missing} readings missing), 40 after: " \
               "0 of the 40 readings sent missing" in out
        assert "failure records 1 before, 0 after" in out
        assert "counts differ" not in out and "handler error" not in out
        assert f"kill {pid}" in out and f"AWS_ENDPOINT_URL={url}" in out
        assert "destroy env" not in out  # --keep skips the teardown
        # the env is still there, on an emulator that outlived the demo
        clients = Clients("us-east-1", url)
        assert clients.dynamodb.describe_table(TableName="sensor-metrics-local")["Table"]["ItemCount"] == 40
    finally:
        os.kill(pid, signal.SIGTERM)
