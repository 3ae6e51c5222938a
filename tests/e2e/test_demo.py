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
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
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
    assert pipeline["items_stored"] == pipeline["handler_stored"] == pipeline["readings_sent"] == 250
    assert pipeline["handler_rejected"] == pipeline["invalid_sent"] == 3
    assert pipeline["batches"] >= pipeline["archive_objects"] >= 1
    assert pipeline["invalid_sent"] == 3 and pipeline["rejected_objects"] >= 1
    assert pipeline["archive_objects"] >= 1 and pipeline["undelivered"] == 0
    assert pipeline["anomalous_items"] > 0
    # `health` reads what the local event source published as Kinesis, Lambda and CloudWatch
    # Logs would: the same numbers as the data itself
    health = result["health"]
    assert health["published"] == 253 and health["stored"] == pipeline["items_stored"] == 250
    assert health["rejected"] == 3 and health["anomalies"] == pipeline["anomalous_items"]
    assert health["failed"] == 0 and health["in_stream"] == 0 and health["verdict"] == "healthy"
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
        headings = re.findall(r"^(\d)/5 (\w+):", out, re.MULTILINE)
        assert headings == [("1", "emulator"), ("2", "provisioning"), ("3", "publishing"),
                            ("4", "results"), ("5", "teardown")]
        assert "published to Kinesis: 43 of 43 records" in out  # progress (piped: per quarter)
        assert "handled by the Lambda handler: 43 of 43 records" in out
        assert "40 valid readings + 3 invalid" in out and "stored 40 readings" in out
        assert "health of env local" in out and "stored 40, rejected 3" in out and "verdict: healthy" in out
        assert f"kill {pid}" in out and f"AWS_ENDPOINT_URL={url}" in out
        assert "destroy env" not in out  # --keep skips the teardown
        # the env is still there, on an emulator that outlived the demo
        clients = Clients("us-east-1", url)
        assert clients.dynamodb.describe_table(TableName="sensor-metrics-local")["Table"]["ItemCount"] == 40
    finally:
        os.kill(pid, signal.SIGTERM)
