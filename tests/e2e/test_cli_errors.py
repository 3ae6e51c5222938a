"""Each failure class: one line on stderr, no traceback, the documented exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from iotpipe.errors import ExitCode


def _one_line_error(proc):
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("up", "--env", "Bad_Env"), ExitCode.CONFIG, "env"),
        (("up", "--set", "lambda.memory_mb=1"), ExitCode.CONFIG, "lambda.memory_mb"),
        (("up", "--config", "missing.toml"), ExitCode.CONFIG, "not found"),
        (("up", "--no-such-flag"), ExitCode.USAGE, "no-such-flag"),
        (("frobnicate",), ExitCode.USAGE, "frobnicate"),
        (("destroy",), ExitCode.ABORTED, "--yes"),
    ],
)
def test_input_errors(iotpipe, clients, args, code, needle):
    proc = iotpipe(*args, input="")
    assert proc.returncode == code, proc.stderr
    assert needle in _one_line_error(proc)
    assert clients.s3.list_buckets().get("Buckets", []) == []  # nothing written


def test_missing_credentials(iotpipe):
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
    proc = iotpipe("status", extra_env=env)
    assert proc.returncode == ExitCode.CREDENTIALS
    assert "credentials" in _one_line_error(proc)


def test_unreachable_endpoint(iotpipe):
    proc = iotpipe("status", "--endpoint-url", "http://127.0.0.1:9", endpoint=False)
    assert proc.returncode == ExitCode.ENDPOINT
    assert "127.0.0.1:9" in _one_line_error(proc)


def test_unknown_profile(iotpipe):
    proc = iotpipe("status", "--profile", "nobody-has-this")
    assert proc.returncode == ExitCode.CREDENTIALS
    assert "nobody-has-this" in _one_line_error(proc)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{truncated", "corrupt"),
        (json.dumps({"schema_version": 99, "env": "dev", "region": "us-east-1"}), "newer"),
        (json.dumps({"schema_version": 1, "env": "prod", "region": "us-east-1"}), "prod"),
        (json.dumps({"schema_version": 1, "env": "dev", "region": "us-east-1", "account": "999999999999"}), "999999999999"),
    ],
)
def test_bad_state_file(iotpipe, clients, tmp_path, content, needle):
    path = tmp_path / ".iotpipe" / "state" / "dev.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    proc = iotpipe("up", "--env", "dev")
    assert proc.returncode == ExitCode.STATE
    assert needle in _one_line_error(proc)
    assert path.read_text() == content
    assert clients.s3.list_buckets().get("Buckets", []) == []


def test_lock_held_by_a_live_process(iotpipe, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / ".iotpipe" / "locks" / "dev.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"ID": "x", "Operation": "up", "Who": "ops@here", "Pid": sleeper.pid,
                                    "Host": os.uname().nodename, "Created": "2026-11-29T10:00:00Z"}))
        proc = iotpipe("up", "--env", "dev")
        assert proc.returncode == ExitCode.LOCKED
        line = _one_line_error(proc)
        assert f"pid {sleeper.pid}" in line and "operation up" in line
        unlock = iotpipe("unlock", "--env", "dev", "--yes")  # the holder still runs here
        assert unlock.returncode == ExitCode.LOCKED and lock.exists()
        assert f"pid {sleeper.pid}" in _one_line_error(unlock) and "--force" in _one_line_error(unlock)
        forced = iotpipe("unlock", "--env", "dev", "--yes", "--force")
        assert forced.returncode == 0 and not lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_plan_exit_code_when_changes_pending(iotpipe):
    proc = iotpipe("plan", "--env", "dev")
    assert proc.returncode == ExitCode.CHANGES_PENDING, proc.stderr
    assert "to create" in proc.stdout


def test_help_does_not_import_boto3(tmp_path):
    code = "import sys; from iotpipe.cli import main; main(['up', '--help']); print('boto3' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.strip().endswith("False"), proc.stdout
    assert "Examples" in proc.stdout or "Example" in proc.stdout
