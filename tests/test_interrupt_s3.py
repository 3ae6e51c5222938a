"""Interrupted runs with the S3 state backend: a deterministic sample of the mutating calls.

tests/test_interrupt.py covers every mutating call, three ways, with local state. Here the
state lives in S3 through the run's own session, so the state writes (PutObject IfMatch), the
lock's create and delete are mutating calls the faults hit too. Every STRIDE-th call is
interrupted (from the first), the mode rotating through error / abort / lost, and a fresh engine (on another
machine: an empty local directory) must converge to the clean reference with the lock free.
The full matrix would cost minutes; the sample covers AWS calls and state writes alike.
The interrupted runs have parallelism 1, so that the Nth call is a fixed one (see
tests/test_interrupt.py); the runs after them the engine's default parallelism.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from moto import mock_aws

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from tests.pipeline_checks import Clients, assert_nothing_left, verify_pipeline
from tests.support import CallLog, FaultAt

REGION = "us-east-1"
MODES = ("error", "abort", "lost")
STATE = "s3://iotpipe-state-interrupt/envs"
STRIDE = 15  # 6 of 89 calls, two per mode; odd, so it falls on AWS calls and state writes alike
SETS = ("storage.enforce_tls=false",)


def _engine(root: Path, log: CallLog | None = None, fault: FaultAt | None = None, parallelism: int | None = None):
    config = load_config("dev", region=REGION, assignments=SETS)
    aws = AwsContext(REGION, sleep=lambda _s: None)
    if log:
        log.attach(aws.events)
    if fault:
        fault.attach(aws.events)
    engine = make_engine(config, aws, root, state=STATE)
    if parallelism is not None:
        engine.parallelism = parallelism
    return engine


def _bucket() -> None:
    Clients(REGION).s3.create_bucket(Bucket="iotpipe-state-interrupt")


def _lock_is_free() -> bool:
    listed = Clients(REGION).s3.list_objects_v2(Bucket="iotpipe-state-interrupt", Prefix="envs/dev.lock")
    return listed.get("KeyCount", 0) == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3ref")
    with mock_aws(config={"lambda": {"use_docker": False}}):
        _bucket()
        log = CallLog()
        _engine(root / "a", log, parallelism=1).up()
        calls = list(log.mutating)
        snap = verify_pipeline(Clients(REGION), "dev")
    assert ("s3", "PutObject") in calls and ("s3", "DeleteObject") in calls  # state and lock writes
    return {"snapshot": snap, "up": calls}


def _run(engine) -> bool:
    try:
        engine.up()
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - every kind of interruption is the point
        return False
    return True


def test_up_interrupted_at_sampled_calls_converges_with_s3_state(reference, tmp_path):
    total = len(reference["up"])
    points = list(range(1, total + 1, STRIDE))
    failures, fired = [], []
    for i, n in enumerate(points):
        mode = MODES[i % len(MODES)]
        with mock_aws(config={"lambda": {"use_docker": False}}):
            _bucket()
            fault = FaultAt(n, mode)
            ok = _run(_engine(tmp_path / f"{n}-first", fault=fault, parallelism=1))
            if ok or fault.fired is None:
                failures.append((n, mode, "fault did not fire"))
                continue
            fired.append(fault.fired)
            try:
                if not _lock_is_free():  # an aborted run leaves its lock: the operator unlocks
                    _engine(tmp_path / f"{n}-unlock").store.force_unlock()
                _engine(tmp_path / f"{n}-second").up()  # another machine, nothing local
                snap = verify_pipeline(Clients(REGION), "dev")
                assert snap == reference["snapshot"], (snap, reference["snapshot"])
                assert _lock_is_free()
            except (AssertionError, Exception) as err:  # noqa: BLE001 - collect every point
                failures.append((n, mode, fault.fired, f"{type(err).__name__}: {err}"[:400]))
    assert not failures, f"{len(failures)} of {len(points)} sampled points did not converge: {failures}"
    assert "s3.PutObject" in fired and any(not f.startswith("s3.") for f in fired), fired


def test_destroy_after_an_interrupted_destroy_leaves_nothing_with_s3_state(tmp_path):
    with mock_aws(config={"lambda": {"use_docker": False}}):
        _bucket()
        _engine(tmp_path / "a").up()
        log = CallLog()
        fault = FaultAt(9, "lost")  # past the first deletes: state writes and AWS deletes interleave
        engine = _engine(tmp_path / "b", log=log, fault=fault, parallelism=1)
        with pytest.raises(ConnectionResetError):
            engine.destroy()
        _engine(tmp_path / "c").destroy()
        assert_nothing_left(Clients(REGION), "dev")
        assert _lock_is_free()


@pytest.mark.parametrize("mode", MODES)
def test_parallel_up_with_a_state_write_interrupted_converges(reference, tmp_path, mode):
    """A state write (the 5th PutObject: the lock, then write-ahead records) fails while other
    resources are in flight: nothing new starts after it, and another machine converges."""
    with mock_aws(config={"lambda": {"use_docker": False}}):
        _bucket()
        fault = FaultAt(5, mode, operation="s3.PutObject")
        assert not _run(_engine(tmp_path / "first", fault=fault))
        assert fault.fired == "s3.PutObject"
        if not _lock_is_free():
            _engine(tmp_path / "unlock").store.force_unlock()
        _engine(tmp_path / "second").up()
        assert verify_pipeline(Clients(REGION), "dev") == reference["snapshot"]
        assert _lock_is_free()
