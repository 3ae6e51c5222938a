"""Fixtures for e2e tests through the AWS behaviour proxy (conftest.py makes them available)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.awsbehaviour.proxy import TIMESHIM, BehaviourProxy
from tests.awsbehaviour.rules import on_every_account

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def proxy(server):
    """Every rule of the behaviour table that holds for any caller, in front of a freshly reset
    moto server."""
    with BehaviourProxy(server, on_every_account(), region=os.environ["AWS_DEFAULT_REGION"]) as running:
        yield running


def proxied_env(proxy: BehaviourProxy) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "IOTPIPE_STATE_DIR"}
    env.update(proxy.subprocess_env())
    env["PYTHONPATH"] = os.pathsep.join([str(TIMESHIM), str(REPO)])
    return env


@pytest.fixture
def aws_iotpipe(proxy, tmp_path):
    """``iotpipe`` as a subprocess that meets AWS's behaviour (through the proxy, on its clock)."""

    def run(*args: str, input: str | None = None, script: Path | None = None,
            ) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script)] if script else [sys.executable, "-m", "iotpipe"]
        return subprocess.run([*command, *args], cwd=tmp_path, env=proxied_env(proxy), input=input,
                              capture_output=True, text=True, timeout=300)

    return run
