"""The runbooks' `bash` blocks, executed in order against a moto server, as an operator would."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / "docs" / "runbooks"
# restore-pitr.md leaves the table's encryption drifted on the emulator (see that runbook):
# it runs after the runbooks that expect `status` to be ok.
ORDER = ["deploy.md", "devices.md", "drift.md", "alarm-fired.md", "interrupted-run.md", "replay-failed.md",
         "replay-rejected.md", "restore-pitr.md", "teardown.md", "emulator.md", "shared-state.md"]
BLOCK = re.compile(r"(?:<!-- setup: (?P<setup>[\w-]+) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)
# "# exit N": the line exits N; "# emulator: exit N": N on the emulator only, where the runbook
# says what the emulator cannot do (on AWS the line succeeds).
EXPECT = re.compile(r"#\s*(?:emulator:\s*)?exit\s+(\d+)\s*$")
ENV = "line7"
# Run in a shell with nothing set: they must say every variable they need. The AWS CLI has no
# default region ("You must specify a region"); it reads AWS_DEFAULT_REGION, see
# https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-envvars.html
BARE = {"emulator.md"}


def _blocks(path: Path):
    for match in BLOCK.finditer(path.read_text()):
        if match["lang"] == "bash":
            yield match["setup"], [line for line in match["body"].splitlines() if line.strip()]


def test_every_runbook_is_listed_and_has_commands():
    listed = set(re.findall(r"\((\w[\w-]*\.md)\)", (RUNBOOKS / "README.md").read_text()))
    present = {p.name for p in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert listed == present == set(ORDER)
    assert all(list(_blocks(RUNBOOKS / name)) for name in ORDER)


@pytest.fixture
def shell(tmp_path, moto_url):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "iotpipe"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m iotpipe "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWS_ENDPOINT_URL": moto_url,
           "PYTHONPATH": str(REPO)}

    shutil.copytree(REPO / "config", work / "config")  # runbooks run from the repository's root

    def run(line: str, *, exports: tuple[str, ...] = (), bare: bool = False) -> subprocess.CompletedProcess:
        """One pasted line, after the runbook's ``exports``; ``bare``: a fresh shell with no AWS_*
        variables (credentials, region, endpoint) but those the runbook exports itself."""
        use = {k: v for k, v in env.items() if not k.startswith("AWS_")} if bare else env
        if bare:
            use["AWS_CONFIG_FILE"] = use["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
        script = "\n".join([*exports, line]).replace("http://127.0.0.1:5000", moto_url if bare else
                                                      "http://127.0.0.1:5000")
        return subprocess.run(["bash", "-c", script], cwd=work, env=use, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    run.env = env
    run.work = work
    return run


def _setup(name: str, shell, moto_url: str) -> None:
    region = os.environ["AWS_DEFAULT_REGION"]
    if name == "drift":
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name=region)
        logs = boto3.client("logs", endpoint_url=moto_url, region_name=region)
        s3.put_bucket_versioning(Bucket=f"iot-sensor-data-{ENV}-123456789012",
                                 VersioningConfiguration={"Status": "Suspended"})
        logs.put_retention_policy(logGroupName=f"/aws/lambda/iot-processor-{ENV}", retentionInDays=7)
    elif name == "half-built":  # a destroy killed at its 12th mutating call
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "killer.py"), "12", "after",
                               "destroy", "--env", ENV, "--yes"], cwd=shell.work, env=shell.env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr
    elif name == "foreign-lock":
        lock = shell.work / ".iotpipe" / "locks" / f"{ENV}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps({"ID": "1", "Operation": "up", "Who": "ci@build-agent-3",
                                    "Host": "build-agent-3", "Pid": 4242, "Created": "2026-11-29T08:00:00Z"}))
        assert socket.gethostname() != "build-agent-3"
    elif name == "s3-foreign-lock":  # another operator's run, on another machine, holds the env
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name=region)
        s3.put_object(Bucket="acme-iotpipe-state", Key="plants/plant4.lock", Body=json.dumps(
            {"ID": "2", "Operation": "up", "Who": "maria@plant4-laptop", "User": "maria",
             "Host": "plant4-laptop", "Pid": 5151, "Created": "2026-11-29T08:00:00Z"}).encode())
    elif name in ("failed-batches", "quarantined"):
        _pipeline_trouble(name, shell, moto_url)
    elif name == "traffic":
        _push_readings(shell, moto_url, region)
    else:
        raise AssertionError(f"unknown runbook setup {name!r}")


def _pipeline_trouble(name: str, shell, moto_url: str) -> None:
    """Readings that went wrong in env line7, made by iotpipe's local event source (the
    emulator's stand-in for Lambda): batches whose DynamoDB writes kept failing until they
    were written to aws/lambda/ ("failed-batches"), or records quarantined under rejected/ by
    today's handler and by an older one that refused millisecond timestamps ("quarantined").

    moto denies every object call under the TLS-only bucket policy (it ignores the Deny's
    Condition), so the policy is lifted first, as config/local.toml does for the emulator."""
    import base64
    import gzip

    from iotpipe.aws import AwsContext
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine
    from iotpipe.handler import index as handler_index
    from iotpipe.local.simulator import (
        HandlerTotals,
        deliver,
        local_handler,
        make_readings,
        publish,
    )
    from tests.support import fail_with

    region = os.environ["AWS_DEFAULT_REGION"]
    aws = AwsContext(region, endpoint_url=moto_url, sleep=lambda _s: None)
    ctx = make_engine(load_config(ENV, region=region), aws, shell.work / ".iotpipe", resources=()).ctx
    s3 = aws.client("s3")
    s3.delete_bucket_policy(Bucket=ctx.names.sensor_bucket)
    if name == "failed-batches":
        publish(ctx, make_readings(30, seed=11))
        with local_handler(ctx, HandlerTotals(echo_errors=False)) as handler:
            handler_index.client("dynamodb").meta.events.register(
                "before-call.dynamodb.BatchWriteItem", fail_with("ProvisionedThroughputExceededException"))
            assert deliver(ctx, handler, max_redeliveries=1).failure_records
        return
    publish(ctx, [{"device_id": "press-004", "timestamp": 1_700_000_500, "temperature": "hot"}, b"not json"])
    with local_handler(ctx, HandlerTotals(echo_errors=False)) as handler:
        deliver(ctx, handler)
    line = {"sequence_number": "1", "partition_key": "press-004", "received_at": 1_700_000_000,
            "reason": "invalid_timestamp: milliseconds are not accepted",
            "data": base64.b64encode(json.dumps({"device_id": "press-004", "timestamp": 1_700_000_000_000,
                                                  "temperature": 20.5}).encode()).decode()}
    s3.put_object(Bucket=ctx.names.sensor_bucket, Key="rejected/dt=2023-11-14/hh=22/shardId-000000000000-1.jsonl.gz",
                  Body=gzip.compress((json.dumps(line) + "\n").encode(), mtime=0))


def _push_readings(shell, moto_url: str, region: str) -> None:
    """Readings through the stream and the real handler, as `iotpipe demo` pushes them (IoT
    never routes a publish on the emulator, and Lambda runs no code there). The emulator
    applies the sensor bucket's TLS-only Deny without its condition, so the policy is set
    aside while the handler archives, then put back as it was."""
    from iotpipe.aws import AwsContext
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine
    from iotpipe.local.demo import exercise

    engine = make_engine(load_config(ENV, region=region), AwsContext(region, endpoint_url=moto_url),
                         shell.work / ".iotpipe")
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=region)
    bucket = f"iot-sensor-data-{ENV}-123456789012"
    policy = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    s3.delete_bucket_policy(Bucket=bucket)
    try:
        report = exercise(engine.ctx, 50)
    finally:
        s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    assert report.items_stored >= 50 and report.undelivered == 0


def test_runbooks_in_order(shell, server):
    for name in ORDER:
        exports: list[str] = []
        for setup, lines in _blocks(RUNBOOKS / name):
            if setup:
                _setup(setup, shell, server)
            for line in lines:
                expected = int(m.group(1)) if (m := EXPECT.search(line)) else 0
                proc = shell(line, exports=tuple(exports), bare=name in BARE)
                if line.startswith("export "):
                    exports.append(line)
                assert proc.returncode == expected, f"{name}: `{line}` exited {proc.returncode}\n{proc.stderr}"
                assert "Traceback" not in proc.stderr, proc.stderr
