"""`iotpipe device import` as an operator meets it: the CLI SIGKILLed halfway through a plant's
file, run again, and everything counted from outside (boto3 against the moto server, the files
on disk). 12 devices here (the in-process tests take 20); benchmarks/devices.py --interrupt 500 does the same at plant scale."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UP = ("--env", "dev", "--set", "storage.enforce_tls=false")
N = 12


def test_import_killed_halfway_then_rerun_leaves_one_of_everything(iotpipe, clients, server, tmp_path):
    assert iotpipe("up", *UP).returncode == 0
    plant = tmp_path / "plant.csv"
    plant.write_text("id,location,facility,equipment_type\n"
                     + "".join(f"press-{i:02d},hall-{i % 3},plant-a,press\n" for i in range(N)))
    env = {**os.environ, "AWS_ENDPOINT_URL": server, "PYTHONPATH": str(REPO)}
    env.pop("IOTPIPE_STATE_DIR", None)
    # SIGKILLed from outside once half the keys are on disk, wherever its 16 threads are
    # (tests/killer.py counts calls, which 16 threads make in no fixed order)
    first = subprocess.Popen([sys.executable, "-m", "iotpipe", "device", "import", str(plant), "--env", "dev"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keys = tmp_path / ".iotpipe" / "devices" / "dev"
    deadline = time.monotonic() + 120
    while first.poll() is None and len(list(keys.glob("*/private.pem.key"))) < N // 2 \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL  # really died by SIGKILL, halfway

    rerun = iotpipe("device", "import", str(plant), "--env", "dev", "--json")  # takes over the lock
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert sum(summary["counts"].values()) == N and "failed" not in summary["counts"]
    assert "PRIVATE KEY" not in rerun.stdout + rerun.stderr

    iot = clients.iot
    things = sorted(t["thingName"] for t in iot.list_things(thingTypeName="manufacturing-sensor-dev")["things"])
    assert things == [f"press-{i:02d}" for i in range(N)]
    certs = iot.list_certificates(pageSize=250)["certificates"]
    assert sum(c["status"] == "ACTIVE" for c in certs) == N
    for thing in things:
        (arn,) = iot.list_thing_principals(thingName=thing)["principals"]
        assert iot.describe_certificate(certificateId=arn.split("/")[-1])["certificateDescription"]["status"] == "ACTIVE"
        assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == \
            ["iot-sensor-device-policy-dev"]
        key = tmp_path / ".iotpipe" / "devices" / "dev" / thing / "private.pem.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for cert in certs:  # at most the certificate whose answer the kill cut off: inactive, bare
        if cert["status"] != "ACTIVE":
            assert cert["status"] == "INACTIVE"
            assert iot.list_principal_things(principal=cert["certificateArn"])["things"] == []

    again = json.loads(iotpipe("device", "import", str(plant), "--env", "dev", "--json").stdout)
    assert again["counts"] == {"unchanged": N}
