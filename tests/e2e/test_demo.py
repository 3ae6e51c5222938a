"""`iotpipe demo`: the README's first command, on its embedded emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_job_without_an_account(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # no credentials at all
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "iotpipe", "demo", "--readings", "250", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "error running docker" not in proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    # 17 resources made; iot.devices (no devices yet) reads as there, with nothing to make
    assert result["up"]["counts"] == {"create": 17, "unchanged": 1}
    assert result["status"]["status_counts"] == {"ok": 18}
    pipeline = result["pipeline"]
    assert pipeline["items_stored"] == pipeline["readings_sent"] == 250
    assert pipeline["invalid_sent"] == 3 and pipeline["rejected_objects"] >= 1
    assert pipeline["archive_objects"] >= 1 and pipeline["undelivered"] == 0
    assert pipeline["anomalous_items"] > 0
    assert result["destroy"]["counts"] == {"delete": 17, "scheduled": 1}  # the key: scheduled for deletion
    assert not list(tmp_path.rglob("*.json"))  # the demo's state lived in a temporary directory
