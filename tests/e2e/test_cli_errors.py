"""Each failure class: one line on stderr, no traceback, the documented exit code."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from iotpipe.errors import ExitCode


def _one_line_error(proc):
    """The one error line; anything else on stderr may only be progress ("… retrying")."""
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), proc.stderr
    assert all(line.startswith("  … ") for line in lines[:-1]), proc.stderr
    assert "internal error" not in lines[-1]
    return lines[-1]


@contextlib.contextmanager
def fake_endpoint(status: int, body: bytes, content_type: str = "text/html"):
    """A web server on 127.0.0.1 that answers every request the same way (not AWS)."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            requests.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


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


HTML_PAGE = b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body><h1>Welcome</h1></body></html>"


@pytest.mark.parametrize("command", [("status",), ("up",), ("outputs", "--json")])
def test_endpoint_answering_html_is_an_endpoint_error(iotpipe, tmp_path, command):
    with fake_endpoint(200, HTML_PAGE) as (url, requests):
        proc = iotpipe(*command, "--endpoint-url", url, endpoint=False)
    assert proc.returncode == ExitCode.ENDPOINT, proc.stderr
    line = _one_line_error(proc)
    assert "not an AWS API" in line and "<html" not in proc.stderr.lower()
    assert requests  # it did ask, and then said so in one line
    assert not (tmp_path / ".iotpipe").exists()  # nothing written


def test_endpoint_answering_500_says_it_retries_then_gives_up(iotpipe, tmp_path):
    with fake_endpoint(500, b"<html><body>Internal Server Error</body></html>") as (url, requests):
        proc = iotpipe("up", "--endpoint-url", url, endpoint=False)
    assert proc.returncode == ExitCode.ENDPOINT, proc.stderr
    line = _one_line_error(proc)
    assert "HTTP 500" in line and "GetCallerIdentity" in line
    retries = [x for x in proc.stderr.splitlines() if "retrying" in x]
    assert len(retries) == len(requests) - 1 >= 1, proc.stderr  # one line per retry, none after the last
    assert "HTTP 500" in retries[0]
    assert not (tmp_path / ".iotpipe").exists()


@pytest.mark.parametrize("via_env", [False, True])
def test_endpoint_without_scheme_is_a_usage_error(iotpipe, tmp_path, via_env):
    args, env = (("status",), {"AWS_ENDPOINT_URL": "127.0.0.1:5000"}) if via_env else \
        (("status", "--endpoint-url", "127.0.0.1:5000"), {})
    proc = iotpipe(*args, endpoint=False, extra_env=env)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = _one_line_error(proc)
    assert "http://127.0.0.1:5000" in line and ("AWS_ENDPOINT_URL" if via_env else "--endpoint-url") in line
    assert not (tmp_path / ".iotpipe").exists()


@pytest.mark.parametrize("command", [("status",), ("up",)])
def test_state_dir_that_is_a_file(iotpipe, clients, tmp_path, command):
    (tmp_path / "not-a-dir").write_text("hello")
    proc = iotpipe(*command, "--state-dir", "not-a-dir")
    assert proc.returncode == ExitCode.STATE, proc.stderr
    assert "not-a-dir is a file" in _one_line_error(proc)
    assert (tmp_path / "not-a-dir").read_text() == "hello"
    assert clients.s3.list_buckets().get("Buckets", []) == []


def test_terminal_that_cannot_print_unicode_falls_back_to_ascii(iotpipe, tmp_path):
    """LANG=C / an ASCII-only terminal: plan's "→" and status' table borders become ASCII."""
    env = {"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"}
    sets = ("--set", "storage.enforce_tls=false")
    assert iotpipe("up", *sets, extra_env=env).returncode == 0
    plan = iotpipe("plan", *sets, "--set", "lambda.memory_mb=512", extra_env=env)
    assert plan.returncode == ExitCode.CHANGES_PENDING, plan.stderr
    assert "Traceback" not in plan.stderr
    plan.stdout.encode("ascii")  # nothing but ASCII reached the terminal
    assert "256 -> 512" in plan.stdout  # the arrow, in ASCII
    status = iotpipe("status", *sets, extra_env=env)
    assert status.returncode == 0, status.stderr
    status.stdout.encode("ascii")
    assert "ok" in status.stdout and "kms.key" in status.stdout
