"""Interrupted at every mutating call, in three ways; a plain re-run must converge.

For each N from 1 to the number of mutating calls of a clean `up` (and of a clean
`destroy`), the Nth call fails as
  - "error":   AWS answers with an error (nothing happened at AWS),
  - "abort":   the process stops right there (KeyboardInterrupt raised before the request),
  - "lost":    AWS did it, but the client never saw the answer (raised after the call).
Then a fresh engine over the same state directory re-runs the command, and the env must
equal the clean reference: same resources, same settings, no duplicates, no orphans.
"""

from __future__ import annotations

import json
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


def _engine(state_root: Path, log: CallLog | None = None, fault: FaultAt | None = None):
    config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
    aws = AwsContext(REGION, sleep=lambda _s: None)
    if log:
        log.attach(aws.events)
    if fault:
        fault.attach(aws.events)
    return make_engine(config, aws, state_root)


def _run(engine, command: str):
    try:
        getattr(engine, command)()
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - every kind of interruption is the point
        return False
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The clean reference: the snapshot of a fresh env and the mutating calls it took."""
    root = tmp_path_factory.mktemp("reference")
    with mock_aws(config={"lambda": {"use_docker": False}}):
        log = CallLog()
        _engine(root / "up", log).up()
        up_calls = list(log.mutating)
        clients = Clients(REGION)
        snap = verify_pipeline(clients, "dev")
        log.clear()
        log2 = CallLog()
        _engine(root / "up", log2).destroy()
        destroy_calls = list(log2.mutating)
        assert_nothing_left(clients, "dev")
    return {"snapshot": snap, "up": up_calls, "destroy": destroy_calls}


def test_reference_is_complete(reference):
    assert reference["snapshot"]["keys"] == 1 and reference["snapshot"]["mappings"] == 1
    assert len(reference["up"]) > 30 and len(reference["destroy"]) > 15


def _state_is_valid(root: Path) -> None:
    path = root / "state" / "dev.json"
    if path.exists():
        json.loads(path.read_text())  # never half-written


@pytest.mark.parametrize("mode", MODES)
def test_up_interrupted_at_every_call_converges(reference, tmp_path, mode):
    total = len(reference["up"])
    failures = []
    for n in range(1, total + 1):
        root = tmp_path / f"{mode}-{n}"
        with mock_aws(config={"lambda": {"use_docker": False}}):
            fault = FaultAt(n, mode)
            ok = _run(_engine(root, fault=fault), "up")
            if ok or fault.fired is None:
                failures.append((n, "fault did not fire"))
                continue
            _state_is_valid(root)
            try:
                _engine(root).up()
                clients = Clients(REGION)
                snap = verify_pipeline(clients, "dev")
                assert snap == reference["snapshot"], (snap, reference["snapshot"])
                _engine(root).destroy()
                assert_nothing_left(clients, "dev")
            except (AssertionError, Exception) as err:  # noqa: BLE001 - collect every N, report all
                failures.append((n, fault.fired, f"{type(err).__name__}: {err}"[:400]))
    assert not failures, f"{len(failures)} of {total} interruption points did not converge: {failures}"


@pytest.mark.parametrize("mode", MODES)
def test_destroy_interrupted_at_every_call_finishes(reference, tmp_path, mode):
    total = len(reference["destroy"])
    failures = []
    for n in range(1, total + 1):
        root = tmp_path / f"{mode}-{n}"
        with mock_aws(config={"lambda": {"use_docker": False}}):
            _engine(root).up()
            fault = FaultAt(n, mode)
            ok = _run(_engine(root, fault=fault), "destroy")
            if ok or fault.fired is None:
                failures.append((n, "fault did not fire"))
                continue
            _state_is_valid(root)
            try:
                result = _engine(root).destroy()
                assert all(r.action in ("delete", "scheduled", "absent") for r in result.resources), result.count()
                assert_nothing_left(Clients(REGION), "dev")
            except (AssertionError, Exception) as err:  # noqa: BLE001
                failures.append((n, fault.fired, f"{type(err).__name__}: {err}"[:400]))
    assert not failures, f"{len(failures)} of {total} interruption points did not finish: {failures}"
