"""Two machines, one env, one S3 state: two real `iotpipe up` processes in two working
directories race against one moto server. Exactly one proceeds; the other exits 75 naming it.

To make the race certain rather than likely, a proxy in front of moto holds the first KMS
CreateKey (the first create, made under the lock) until the loser has exited: whichever
process takes the lock is still holding it when the other one asks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

from tests.e2e.gate import GateProxy

REPO = Path(__file__).resolve().parents[2]
STATE = "s3://iotpipe-team-state/plants"


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IOTPIPE_STATE_DIR", "IOTPIPE_STATE")}
    env.update(AWS_ENDPOINT_URL=url, PYTHONPATH=str(REPO), IOTPIPE_STATE=STATE)
    return env


def _iotpipe(args: list[str], cwd: Path, url: str) -> subprocess.Popen:
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "iotpipe", *args], cwd=cwd, env=_env(url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_machines_race_up_on_one_env_and_exactly_one_proceeds(server, tmp_path):
    region = os.environ["AWS_DEFAULT_REGION"]
    s3 = boto3.client("s3", endpoint_url=server, region_name=region)
    s3.create_bucket(Bucket="iotpipe-team-state")  # `state bootstrap` runs in the runbook test
    up = ["up", "--env", "race", "--set", "storage.enforce_tls=false", "--set", "trail.enabled=false"]
    with GateProxy(server, region) as proxy:
        runs = [_iotpipe(up, tmp_path / name, proxy.url) for name in ("machine-a", "machine-b")]
        deadline = time.monotonic() + 120
        first = None
        while first is None and time.monotonic() < deadline:
            first = next((p for p in runs if p.poll() is not None), None)
            time.sleep(0.05)
        assert first is not None, "neither run finished"
        loser_err = first.stderr.read()
        winner = runs[1] if first is runs[0] else runs[0]
        assert proxy.reached.wait(60)  # the winner reaches its first create, still holding the lock
        proxy.gate.set()
        winner_out, winner_err = winner.communicate(timeout=180)
        assert proxy.reached.is_set()  # the winner was inside the lock
    assert first.returncode == 75, loser_err
    assert f"pid {winner.pid}" in loser_err and "operation up" in loser_err, loser_err
    assert "locked by" in loser_err and loser_err.count("\n") == 1  # one line, no traceback
    assert winner.returncode == 0, winner_err
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="iotpipe-team-state")["Contents"]]
    assert keys == ["plants/race.json"]  # the lock is gone with its holder
    record = json.loads(s3.get_object(Bucket="iotpipe-team-state", Key="plants/race.json")["Body"].read())
    assert {r["status"] for r in record["resources"].values()} == {"present"} and len(record["resources"]) > 10
    assert not (tmp_path / "machine-a" / ".iotpipe" / "state").exists()  # nothing local but keys' home


def test_fleet_cli_one_table_one_exit_code_and_one_question(iotpipe, tmp_path):
    """The CLI's side of a fleet without deploying anything (the fleet's AWS work is tested
    in-process, tests/test_fleet.py): envs whose profile does not exist fail, each on its row,
    and the fleet exits 1; destroy asks before any AWS call, naming every env."""
    (tmp_path / "plants.toml").write_text(
        '[[env]]\nname = "plant-a"\nregion = "us-east-1"\nprofile = "no-such-profile"\n\n'
        '[[env]]\nname = "plant-b"\nregion = "eu-west-1"\nprofile = "no-such-profile"\n')
    status = iotpipe("fleet", "status", "plants.toml", "--json")
    report = json.loads(status.stdout)
    assert status.returncode == 1 and report["exit_code"] == 1, status.stderr
    assert [(e["env"], e["region"], e["result"], e["exit_code"]) for e in report["envs"]] == [
        ("plant-a", "us-east-1", "failed", 67), ("plant-b", "eu-west-1", "failed", 67)]
    assert "no-such-profile" in report["envs"][0]["message"]
    table = iotpipe("fleet", "status", "plants.toml")
    assert table.returncode == 1 and "plant-a" in table.stdout and "failed" in table.stdout
    refused = iotpipe("fleet", "destroy", "plants.toml")
    assert refused.returncode == 70 and "plant-a" in refused.stderr and "plant-b" in refused.stderr
    (tmp_path / "bad.toml").write_text('[[env]]\nname = "Plant_A"\n')
    bad = iotpipe("fleet", "status", "bad.toml")
    assert bad.returncode == 65 and bad.stderr.count("\n") == 1 and "env #1" in bad.stderr
