"""Exit codes for the failure classes that need AWS to misbehave (in-process, moto)."""

from __future__ import annotations

import errno
import os

import pytest

from iotpipe import aws as aws_module
from iotpipe.cli import main
from iotpipe.errors import ExitCode
from tests.support import fail_with


@pytest.fixture
def hooked(moto, monkeypatch, tmp_path):
    """Run main() in-process with a botocore hook on every AwsContext it creates."""
    monkeypatch.chdir(tmp_path)
    hooks: list[tuple[str, object]] = []
    original = aws_module.AwsContext.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for event, fn in hooks:
            self.events.register(event, fn)

    monkeypatch.setattr(aws_module.AwsContext, "__init__", patched)
    return hooks


def test_access_denied(hooked, capsys):
    hooked.append(("before-call.kms.CreateKey", fail_with("AccessDeniedException", "User is not authorized")))
    assert main(["up", "--set", "storage.enforce_tls=false"]) == ExitCode.ACCESS_DENIED
    err = capsys.readouterr().err
    assert "access denied" in err and "CreateKey" in err and "Traceback" not in err


def test_unexpected_aws_error_names_resource_and_operation(hooked, capsys):
    hooked.append(("before-call.dynamodb.CreateTable", fail_with("LimitExceededException", "too many tables")))
    assert main(["up", "--set", "storage.enforce_tls=false"]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "storage.metrics_table" in err and "CreateTable" in err and "too many tables" in err


def test_ctrl_c(hooked, capsys):
    def interrupt(**_):
        raise KeyboardInterrupt

    hooked.append(("before-call.s3.CreateBucket", interrupt))
    assert main(["up", "--set", "storage.enforce_tls=false"]) == ExitCode.INTERRUPTED
    assert "re-run" in capsys.readouterr().err


def test_destroy_pending_thing_type_exits_incomplete_then_finishes(hooked, capsys):
    assert main(["up", "--set", "storage.enforce_tls=false"]) == ExitCode.OK
    refusal = fail_with("InvalidRequestException", "Can not delete thing type until 5 minutes after deprecation")
    hooked.append(("before-call.iot.DeleteThingType", refusal))
    assert main(["destroy", "--yes"]) == ExitCode.INCOMPLETE
    out = capsys.readouterr().out
    assert "pending" in out and "manufacturing-sensor-dev" in out
    hooked.clear()
    assert main(["destroy", "--yes"]) == ExitCode.OK
    assert main(["destroy", "--yes"]) == ExitCode.OK


def _nothing_in_aws() -> bool:
    import boto3

    return (boto3.client("kms", region_name="us-east-1").list_keys()["Keys"] == []
            and boto3.client("s3", region_name="us-east-1").list_buckets()["Buckets"] == [])


@pytest.mark.parametrize(("where", "err", "needle"), [
    ("lock", errno.EROFS, "read-only"),  # a read-only state directory: the lock is the first write
    ("state", errno.ENOSPC, "no space left"),  # a full disk: the state file's first write
    ("state", errno.EACCES, "permission denied"),
])
def test_unwritable_state_directory_is_a_state_error(hooked, capsys, monkeypatch, tmp_path, where, err, needle):
    """Root ignores file modes, so the refusals are injected where the OS would raise them."""
    real_open, real_fsync = os.open, os.fsync

    def refusing_open(path, flags, *args, **kwargs):
        if where == "lock" and str(path).endswith(".lock"):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    def refusing_fsync(fd):
        if where == "state":
            raise OSError(err, os.strerror(err))
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "fsync", refusing_fsync)
    assert main(["up", "--set", "storage.enforce_tls=false"]) == ExitCode.STATE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert "internal error" not in lines[0]
    assert _nothing_in_aws()
    assert not list((tmp_path / ".iotpipe").rglob("*.tmp"))  # no half-written temp file left


def test_destroy_wait_says_how_long_of_how_long(hooked, capsys, monkeypatch):
    assert main(["up", "--set", "storage.enforce_tls=false"]) == ExitCode.OK
    slept: list[float] = []
    original = aws_module.AwsContext.__init__

    def no_real_sleep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.sleep = slept.append

    monkeypatch.setattr(aws_module.AwsContext, "__init__", no_real_sleep)
    refusals = []

    def refuse_twice(model, **kwargs):
        refusals.append(1)
        if len(refusals) <= 2:
            fail_with("InvalidRequestException", "Can not delete thing type until 5 minutes after deprecation")(
                model=model, **kwargs)

    hooked.append(("before-call.iot.DeleteThingType", refuse_twice))
    capsys.readouterr()
    assert main(["destroy", "--yes", "--wait"]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "what is pending (IoT's 5-minute rules): 0 s of 360 s" in err
    assert "what is pending (IoT's 5-minute rules): 10 s of 360 s" in err
    assert slept == [10, 10]


def test_two_failures_in_one_parallel_up_both_named_first_decides_the_code(hooked, capsys):
    """Independent failures: the run goes on around them, then names both; the first in the
    declared order (kms before iot) gives the exit code."""
    hooked.append(("before-call.kms.CreateKey", fail_with("AccessDeniedException", "User is not authorized")))
    hooked.append(("before-call.iot.CreateThingType", fail_with("LimitExceededException", "too many types")))
    assert main(["up", "--set", "storage.enforce_tls=false", "--parallelism", "4"]) == ExitCode.ACCESS_DENIED
    err = capsys.readouterr().err
    assert "CreateKey" in err and "iot.thing_type" in err and "too many types" in err


@pytest.mark.parametrize(("parallelism", "threaded"), [("1", False), ("4", True)])
def test_parallelism_option_reaches_the_engine(hooked, parallelism, threaded):
    import threading

    workers: set[str] = set()
    hooked.append(("before-call.*.*", lambda **_: workers.add(threading.current_thread().name)))
    assert main(["up", "--set", "storage.enforce_tls=false", "--parallelism", parallelism]) == ExitCode.OK
    # the engine's workers ("iotpipe_N"), not the shared read threads ("iotpipe-read_N")
    assert any(name.startswith("iotpipe_") for name in workers) == threaded
