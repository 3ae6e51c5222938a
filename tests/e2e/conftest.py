"""A real moto server on 127.0.0.1 for the whole session, wiped before each test."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.behaviour_fixtures import aws_iotpipe, proxy  # noqa: F401 - through the behaviour proxy
from tests.pipeline_checks import Clients

REPO = Path(__file__).resolve().parents[2]


def _post(url: str, path: str, body: dict | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture(scope="session")
def moto_url():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def server(moto_url):
    _post(moto_url, "/moto-api/reset")
    _post(moto_url, "/moto-api/config", {"lambda": {"use_docker": False}})
    return moto_url


@pytest.fixture
def clients(server):
    return Clients(os.environ["AWS_DEFAULT_REGION"], server)


@pytest.fixture
def iotpipe(server, tmp_path):
    """Run the installed CLI as a subprocess in an empty directory, against the server."""

    def run(*args: str, input: str | None = None, extra_env: dict | None = None,
            endpoint: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "IOTPIPE_STATE_DIR"}
        if endpoint:
            env["AWS_ENDPOINT_URL"] = server  # read by boto3 itself, as by the AWS CLI
        env["PYTHONPATH"] = str(REPO)
        env.update(extra_env or {})
        return subprocess.run([sys.executable, "-m", "iotpipe", *args], cwd=tmp_path, env=env,
                              input=input, capture_output=True, text=True, timeout=300)

    return run
