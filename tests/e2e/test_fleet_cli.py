"""`iotpipe fleet` as an operator runs it: the envs in worker processes, Ctrl-C on a terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tests.awsbehaviour.proxy import BehaviourProxy
from tests.e2e.gate import GateProxy

REPO = Path(__file__).resolve().parents[2]
CONFIG = "[storage]\nenforce_tls = false\n\n[trail]\nenabled = false\n"


def _fleet_file(tmp_path: Path, region: str, names: list[str], concurrency: int) -> Path:
    lines = [f"concurrency = {concurrency}", ""]
    for name in names:
        (tmp_path / f"{name}.toml").write_text(CONFIG)
        lines += ["[[env]]", f'name = "{name}"', f'region = "{region}"', f'config = "{name}.toml"', ""]
    path = tmp_path / "plants.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.mark.parametrize("start", ["fork", "spawn"])  # Linux's default; macOS's and Windows'
def test_ctrl_c_stops_every_running_env_at_a_safe_point_and_a_rerun_converges(server, iotpipe, tmp_path, start):
    """Ctrl-C on a terminal goes to the whole process group: each worker's engine gets it in
    its main thread and stops as a single run does; the env not yet begun is not begun. With
    envs as threads of one process, no engine ever saw Ctrl-C and every env ran to its end."""
    region = os.environ["AWS_DEFAULT_REGION"]
    names = ["plant-a", "plant-b", "plant-c"]
    _fleet_file(tmp_path, region, names, concurrency=2)
    env = {k: v for k, v in os.environ.items() if k not in ("IOTPIPE_STATE_DIR", "IOTPIPE_STATE")}
    with GateProxy(server, region) as proxy:
        env.update(AWS_ENDPOINT_URL=proxy.url, PYTHONPATH=str(REPO), IOTPIPE_FLEET_WORKERS=start)
        run = subprocess.Popen([sys.executable, "-m", "iotpipe", "fleet", "up", "plants.toml"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a terminal's job
        try:
            deadline = time.monotonic() + 120
            while proxy.held < 2 and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proxy.held == 2, run.poll() is None or run.communicate()
            os.killpg(run.pid, signal.SIGINT)  # both running envs are inside their first create
            proxy.gate.set()
            out, err = run.communicate(timeout=180)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, err
    assert "Traceback" not in err, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] and line.split()[0] in names}
    assert sorted(rows) == names, out
    assert "interrupted" in rows["plant-a"] and "interrupted" in rows["plant-b"], out
    assert "not run" in rows["plant-c"], out
    assert "exit 130" in out

    again = iotpipe("fleet", "up", "plants.toml", "--json")
    assert again.returncode == 0, again.stderr
    assert {e["env"]: e["result"] for e in json.loads(again.stdout)["envs"]} == dict.fromkeys(names, "changed")
    status = iotpipe("fleet", "status", "plants.toml", "--json")
    assert status.returncode == 0 and {e["result"] for e in json.loads(status.stdout)["envs"]} == {"in sync"}
    # Nothing orphaned: the keys whose CreateKey was in flight at Ctrl-C were recorded and
    # adopted, not made again.
    kms = boto3.client("kms", endpoint_url=server, region_name=region)
    keys = [k["KeyId"] for k in kms.list_keys()["Keys"]]
    live = [k for k in keys if kms.describe_key(KeyId=k)["KeyMetadata"]["KeyState"] == "Enabled"]
    assert len(live) == len(names), live


def test_a_fleet_in_two_regions_with_s3_state_is_converged_and_destroyed_by_workers(server, iotpipe, tmp_path):
    """The CLI's way, worker processes (tests/test_fleet.py runs the same in threads, in-process):
    four envs in two regions on two workers, so that each worker runs envs of both regions."""
    state = "s3://iotpipe-fleet-state/plants"
    names = ["plant-a", "plant-b", "plant-c", "plant-d"]
    path = _fleet_file(tmp_path, "us-east-1", names, concurrency=2)
    text = path.read_text().replace('name = "plant-b"\nregion = "us-east-1"', 'name = "plant-b"\nregion = "eu-west-1"')
    text = text.replace('name = "plant-d"\nregion = "us-east-1"', 'name = "plant-d"\nregion = "eu-west-1"')
    path.write_text(f'state = "{state}"\n' + text)
    assert iotpipe("state", "bootstrap", state, "--no-enforce-tls", "--region", "us-east-1").returncode == 0

    up = iotpipe("fleet", "up", "plants.toml", "--json")
    assert up.returncode == 0, up.stderr
    assert [(e["env"], e["region"], e["result"]) for e in json.loads(up.stdout)["envs"]] == [
        ("plant-a", "us-east-1", "changed"), ("plant-b", "eu-west-1", "changed"),
        ("plant-c", "us-east-1", "changed"), ("plant-d", "eu-west-1", "changed")]
    status = iotpipe("fleet", "status", "plants.toml", "--json")
    assert status.returncode == 0 and {e["result"] for e in json.loads(status.stdout)["envs"]} == {"in sync"}
    gone = iotpipe("fleet", "destroy", "plants.toml", "--yes", "--json")
    assert gone.returncode == 0, gone.stderr
    assert {e["result"] for e in json.loads(gone.stdout)["envs"]} == {"destroyed"}
    s3 = boto3.client("s3", endpoint_url=server, region_name="us-east-1")
    assert "Contents" not in s3.list_objects_v2(Bucket="iotpipe-fleet-state")  # no record, no lock left


def test_the_workers_setting_is_checked_before_anything_runs(iotpipe, tmp_path):
    _fleet_file(tmp_path, "us-east-1", ["plant-a"], concurrency=1)
    bad = iotpipe("fleet", "status", "plants.toml", extra_env={"IOTPIPE_FLEET_WORKERS": "fibers"})
    assert bad.returncode == 65 and bad.stderr.count("\n") == 1, bad.stderr
    assert "IOTPIPE_FLEET_WORKERS='fibers': use one of fork, spawn, threads" in bad.stderr
    assert not (tmp_path / ".iotpipe").exists()  # nothing ran


def test_an_assumed_role_profile_is_assumed_once_for_the_whole_fleet(server, tmp_path):
    """A profile that assumes a role (MFA, say) is resolved in the fleet's process before the
    workers are forked: one AssumeRole (one MFA prompt) for the fleet, not one per worker."""
    (tmp_path / "aws-config").write_text(
        "[profile plant]\nrole_arn = arn:aws:iam::123456789012:role/plant-operator\n"
        "source_profile = base\nregion = us-east-1\n\n[profile base]\n"
        "aws_access_key_id = testing\naws_secret_access_key = testing\n")
    names = ["plant-a", "plant-b", "plant-c"]
    path = _fleet_file(tmp_path, "us-east-1", names, concurrency=3)
    path.write_text(path.read_text().replace('region = "us-east-1"', 'region = "us-east-1"\nprofile = "plant"'))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("IOTPIPE_STATE_DIR", "IOTPIPE_STATE")}
    with BehaviourProxy(server, (), region="us-east-1") as proxy:
        env.update(AWS_ENDPOINT_URL=proxy.url, PYTHONPATH=str(REPO), AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), IOTPIPE_FLEET_WORKERS="fork")
        done = subprocess.run([sys.executable, "-m", "iotpipe", "fleet", "plan", "plants.toml", "--json"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        calls = [(s.service, s.operation) for s in proxy.seen]
    assert done.returncode == 2, done.stderr  # changes pending: nothing deployed
    assert {e["result"] for e in json.loads(done.stdout)["envs"]} == {"changes pending"}
    assert calls.count(("sts", "AssumeRole")) == 1, calls
    assert calls.count(("sts", "GetCallerIdentity")) == 1, calls  # the account, asked once too
