from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import CallLog

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    """Fake credentials and no real endpoint, ever."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")


@pytest.fixture
def moto():
    from moto import mock_aws

    with mock_aws(config={"lambda": {"use_docker": False}}):
        yield


@pytest.fixture
def make(tmp_path: Path, moto, monkeypatch):
    """Build an engine against in-process moto: make(env=..., sets=(...), resources=...)."""
    from iotpipe.aws import AwsContext
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine

    monkeypatch.chdir(tmp_path)  # the repo's config/<env>.toml must not leak into unit tests

    def build(env: str = "dev", *, sets: tuple[str, ...] = ("storage.enforce_tls=false",),
              resources=None, state_root: Path | None = None, sleep=lambda _s: None, log: CallLog | None = None,
              parallelism: int | None = None):
        config = load_config(env, region=REGION, assignments=sets)
        aws = AwsContext(config.region, sleep=sleep)
        if log is not None:
            log.attach(aws.events)
        engine = make_engine(config, aws, state_root or tmp_path / ".iotpipe", resources=resources)
        if parallelism is not None:  # 1: a fixed call order, for faults at the Nth call
            engine.parallelism = parallelism
        return engine

    return build


@pytest.fixture
def log() -> CallLog:
    """A call log to hand to make(log=...)."""
    return CallLog()
