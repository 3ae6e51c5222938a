"""`iotpipe emulator`: a busy port fails at once, Ctrl-C is a clean stop, the help is usable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from iotpipe.errors import ExitCode
from tests.e2e.conftest import REPO


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &`, nohup)
    # passes SIGINT on ignored, and a Python started that way never raises KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-m", "iotpipe", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_busy_port_fails_at_once_naming_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = _spawn("emulator", "--port", str(port))
        try:
            out, err = proc.communicate(timeout=30)  # it used to wait forever
        finally:
            proc.kill()
    assert proc.returncode == ExitCode.ENDPOINT, err
    assert time.monotonic() - started < 30
    (line,) = err.splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "--port" in line
    assert out == ""


def test_ctrl_c_is_a_clean_exit():
    proc = _spawn("emulator", "--port", "0")
    try:
        line = proc.stdout.readline()
        assert line.startswith("AWS emulator listening at http://127.0.0.1:"), line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "emulator stopped" in out and "interrupted" not in err and "Traceback" not in err


def test_help_names_the_port_and_what_a_client_must_set(iotpipe):
    text = iotpipe("emulator", "--help").stdout
    assert "--port INTEGER RANGE  TCP port on 127.0.0.1" in text
    for var in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert var in text


def test_the_embedded_emulator_does_not_list_its_packages_per_request(monkeypatch):
    """moto's server lists its own package directory on every request to find the service
    (measured: a fifth of its time); the embedded emulator asks once."""
    import os

    import boto3

    from iotpipe.local.emulator import embedded_emulator

    with embedded_emulator() as url:
        sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="emulator", aws_secret_access_key="emulator")
        sts.get_caller_identity()  # the first request may fill the caches
        listed: list[str] = []
        real = os.listdir
        monkeypatch.setattr(os, "listdir", lambda path=".": listed.append(str(path)) or real(path))
        for _ in range(3):
            sts.get_caller_identity()
    assert listed == []
