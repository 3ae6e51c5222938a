"""Survive anything, as an operator meets it: killed processes, concurrent runs, throttling,
look-alike resources that are not ours."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.errors import ExitCode
from tests.pipeline_checks import assert_nothing_left, snapshot, verify_pipeline
from tests.support import CallLog

REPO = Path(__file__).resolve().parents[2]
# Sampled through a clean up (~45 mutating calls) and destroy (~20): each point is killed once,
# before or after, alternating. The in-process matrix (tests/test_interrupt.py) covers every call.
KILL_POINTS = {"before": (1, 26), "after": (9, 38)}
DESTROY_KILL_POINTS = {"before": (14,), "after": (6,)}


def _killed(server, tmp_path, n: int, when: str, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "AWS_ENDPOINT_URL": server, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tests" / "killer.py"), str(n), when, *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("when", ["before", "after"])
def test_up_killed_then_rerun_converges(iotpipe, clients, server, tmp_path, when):
    reference = None
    for n in KILL_POINTS[when]:
        killed = _killed(server, tmp_path, n, when, "up", "--env", "dev")
        assert killed.returncode == -9, (n, killed.stderr)  # really died by SIGKILL
        state = tmp_path / ".iotpipe" / "state" / "dev.json"
        if state.exists():
            json.loads(state.read_text())  # never half-written
        rerun = iotpipe("up", "--env", "dev")  # takes over the dead process's lock
        assert rerun.returncode == 0, (n, rerun.stderr)
        snap = verify_pipeline(clients, "dev", enforce_tls=True)
        reference = reference or snap
        assert snap == reference
        destroy = iotpipe("destroy", "--env", "dev", "--yes")
        assert destroy.returncode == 0, (n, destroy.stderr)
        assert_nothing_left(clients, "dev")


@pytest.mark.parametrize("when", ["before", "after"])
def test_destroy_killed_then_rerun_finishes(iotpipe, clients, server, tmp_path, when):
    for n in DESTROY_KILL_POINTS[when]:
        assert iotpipe("up", "--env", "dev").returncode == 0
        killed = _killed(server, tmp_path, n, when, "destroy", "--env", "dev", "--yes")
        assert killed.returncode == -9, (n, killed.stderr)
        rerun = iotpipe("destroy", "--env", "dev", "--yes")
        assert rerun.returncode == 0, (n, rerun.stderr)
        assert_nothing_left(clients, "dev")


def test_concurrent_up_second_fails_at_once_or_waits(server, tmp_path, iotpipe, clients):
    import os

    env = {**os.environ, "AWS_ENDPOINT_URL": server, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, str(REPO / "tests" / "killer.py"), "3", "pause", "up", "--env", "dev"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".iotpipe" / "locks" / "dev.lock"
    deadline = time.monotonic() + 30
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.exists()
    second = iotpipe("up", "--env", "dev")
    assert second.returncode == ExitCode.LOCKED
    assert f"pid {first.pid}" in second.stderr and "operation up" in second.stderr
    # Failed at once rather than waiting: the holder had not finished when it gave up, and no
    # lock wait was said (a clock bound here would fail on a loaded machine, not on a bug).
    assert first.poll() is None
    assert "waiting for the lock" not in second.stderr
    waiting = iotpipe("destroy", "--env", "dev", "--yes", "--lock-timeout", "120")
    first.wait(timeout=120)
    assert first.returncode == 0, first.stderr
    assert waiting.returncode == 0, waiting.stderr
    assert_nothing_left(clients, "dev")


THROTTLES = [
    (400, "ThrottlingException"), (400, "TooManyRequestsException"),
    (400, "ProvisionedThroughputExceededException"), (503, "ServiceUnavailable"),
    (400, "Throttling"), (503, "SlowDown"), (500, "InternalError"),
]


def _cbor_text_map(items: dict[str, str]) -> bytes:
    """A CBOR map of short text strings (RFC 8949: major types 5 and 3), enough for an error."""
    def text(value: str) -> bytes:
        raw = value.encode()
        return (bytes([0x60 + len(raw)]) if len(raw) < 24 else bytes([0x78, len(raw)])) + raw

    return bytes([0xA0 + len(items)]) + b"".join(text(k) + text(v) for k, v in items.items())


def _error_response(url: str, protocol: str, status: int, code: str) -> AWSResponse:
    """An AWS error answer in the wire format of the service's protocol."""
    if protocol in ("json", "rest-json"):
        body = json.dumps({"__type": code, "message": "injected"}).encode()
        headers = {"x-amzn-errortype": code, "content-type": "application/x-amz-json-1.1"}
    elif protocol == "smithy-rpc-v2-cbor":  # CloudWatch's protocol in botocore >= 1.40
        body = _cbor_text_map({"__type": code, "message": "injected"})
        headers = {"smithy-protocol": "rpc-v2-cbor", "content-type": "application/cbor"}
    elif protocol == "rest-xml":
        body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        headers = {"content-type": "application/xml"}
    else:  # query
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected</Message>"
                "</Error><RequestId>r</RequestId></ErrorResponse>").encode()
        headers = {"content-type": "text/xml"}
    return AWSResponse(url, status, headers, _Raw(body))


def test_throttling_bursts_on_every_service_are_absorbed(server, tmp_path, monkeypatch, clients):
    """Two throttled or 5xx answers before every single call: botocore's retries carry the run.

    The engine calls AWS from several threads: a call's attempts are counted in the thread
    that makes it (its before-call and before-send events come from that thread)."""
    import threading

    import botocore.retries.standard as standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
    monkeypatch.chdir(tmp_path)
    config = load_config("dev", region=clients.region)
    aws = AwsContext(config.region, endpoint_url=server)
    current = threading.local()  # this thread's call: its protocol and attempts so far
    counted = {"calls": 0}
    lock = threading.Lock()
    injected: list[str] = []
    services: set[str] = set()

    def on_call(model, **_):
        current.protocol, current.attempt = model.service_model.protocol, 0
        with lock:
            counted["calls"] += 1
            services.add(model.service_model.service_name)

    def throttle(request, **_):
        current.attempt += 1
        if current.attempt > 2:
            return None  # the third attempt goes through to the server
        with lock:
            status, code = THROTTLES[len(injected) % len(THROTTLES)]
            injected.append(code)
        protocol = current.protocol
        if protocol == "smithy-rpc-v2-cbor" and request.headers.get("smithy-protocol") != "rpc-v2-cbor":
            protocol = "json"  # a service model offering several protocols: the client chose JSON
        return _error_response(request.url, protocol, status, code)

    aws.events.register("before-call.*.*", on_call)
    aws.events.register("before-send.*.*", throttle)
    engine = make_engine(config, aws, tmp_path / ".iotpipe")
    engine.up()
    verify_pipeline(clients, "dev", enforce_tls=True)
    assert counted["calls"] > 60
    assert len(injected) == 2 * counted["calls"]  # every call was refused twice, then went through
    assert set(injected) == {code for _, code in THROTTLES}
    assert services >= {"kms", "s3", "dynamodb", "kinesis", "logs", "iam", "lambda", "iot", "sqs", "cloudtrail"}
    engine.destroy()
    assert_nothing_left(clients, "dev")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_):
        yield self._body

    def read(self, *_args, **_kwargs) -> bytes:
        body, self._body = self._body, b""
        return body


def test_second_up_over_http_makes_zero_writes(iotpipe, server, tmp_path, clients, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the same (default) config as the CLI run
    assert iotpipe("up", "--env", "dev").returncode == 0
    log = CallLog()
    config = load_config("dev", region=clients.region)
    aws = AwsContext(config.region, endpoint_url=server)
    log.attach(aws.events)
    result = make_engine(config, aws, tmp_path / ".iotpipe").up()
    assert log.mutating == []
    assert {r.action for r in result.resources} == {"unchanged"}
    # reads only, and not many of them: about 70 for the pipeline, 22 for the monitor step (its
    # topic, dashboard and each alarm with its tags: CloudWatch lists tags one alarm at a time)
    assert len(log.calls) < 100


def test_lookalike_resources_are_refused_and_left_alone(iotpipe, clients):
    bucket = "iot-sensor-data-dev-123456789012"
    clients.s3.create_bucket(Bucket=bucket)
    clients.s3.put_object(Bucket=bucket, Key="someone-elses.txt", Body=b"precious")
    up = iotpipe("up", "--env", "dev")
    assert up.returncode == ExitCode.OWNERSHIP
    assert bucket in up.stderr and "not managed by iotpipe" in up.stderr
    destroy = iotpipe("destroy", "--env", "dev", "--yes", "--json")
    assert destroy.returncode == 0, destroy.stderr
    skipped = [r for r in json.loads(destroy.stdout)["resources"] if r["action"] == "skipped"]
    assert [r["name"] for r in skipped] == [bucket]
    assert clients.s3.get_object(Bucket=bucket, Key="someone-elses.txt")["Body"].read() == b"precious"
    leftovers = snapshot(clients, "dev")
    assert leftovers["buckets"] == [bucket] and not leftovers["keys"] and not leftovers["roles"]


def test_lookalike_role_of_another_env_is_refused(iotpipe, clients):
    clients.iam.create_role(RoleName="iot-lambda-role-dev", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}),
        Tags=[{"Key": "iotpipe:env", "Value": "prod"}, {"Key": "managed-by", "Value": "iotpipe"}])
    up = iotpipe("up", "--env", "dev")
    assert up.returncode == ExitCode.OWNERSHIP
    assert "iot-lambda-role-dev" in up.stderr
    assert clients.iam.list_role_policies(RoleName="iot-lambda-role-dev")["PolicyNames"] == []
