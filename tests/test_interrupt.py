"""Interrupted at every mutating call, in three ways; a plain re-run must converge.

For each N from 1 to the number of mutating calls of a clean `up` (and of a clean
`destroy`), the Nth call fails as
  - "error":   AWS answers with an error (nothing happened at AWS),
  - "abort":   the process stops right there (KeyboardInterrupt raised before the request),
  - "lost":    AWS did it, but the client never saw the answer (raised after the call).
Then a fresh engine over the same state directory re-runs the command, and the env must
equal the clean reference: same resources, same settings, no duplicates, no orphans.

By default (CI) every call is interrupted once, the mode rotating with N: "lost" at every other
call, "error" and "abort" taking turns at the rest, so every call point is met and every mode runs
all through the command, in a third of the time. ``IOTPIPE_FULL_MATRIX=1`` runs all three modes
at every call; run it before a release and after any change to the engine, state or a step's
create/delete. The cases are cut into shards so that pytest-xdist spreads them over the cores.

The engine runs resources in parallel. "The Nth mutating call" names one fixed call only when
they run one at a time, so the interrupted run of the index matrix has parallelism 1 (the
engine's graph scheduler, in declared order) and every re-run the default parallelism. The
parallel matrix interrupts each mutating call by name instead ("the 2nd iam.CreateRole"),
with the interrupted run itself in parallel, so that calls in flight on other threads when
one fails or is stopped are part of what must converge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from moto import mock_aws

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.graph import DEFAULT_PARALLELISM
from tests.pipeline_checks import Clients, assert_nothing_left, verify_pipeline
from tests.support import CallLog, FaultAt

REGION = "us-east-1"
MODES = ("error", "abort", "lost")
FULL_MATRIX = os.environ.get("IOTPIPE_FULL_MATRIX") == "1"
SHARDS = 4
KINDS = MODES if FULL_MATRIX else ("rotating",)
CASES = [(kind, shard) for kind in KINDS for shard in range(SHARDS)]
ROTATION = ("lost", "error", "lost", "abort")


def _points(total: int, kind: str, shard: int):
    """(N, mode) of this shard's interruptions: a mode at every call, or the rotation."""
    for n in range(1, total + 1):
        if (n - 1) % SHARDS == shard:
            yield n, ROTATION[n % len(ROTATION)] if kind == "rotating" else kind


def _parallel_points(total: int, kind: str, shard: int):
    """The parallel matrix's points: every call with IOTPIPE_FULL_MATRIX, else every other
    round of the shards (each shard keeps its mode). The index matrix above meets every call;
    this one checks that calls in flight on other threads do no harm, at half the cost."""
    for n, mode in _points(total, kind, shard):
        if FULL_MATRIX or ((n - 1) // SHARDS) % 2 == 0:
            yield n, mode


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """Durability against power loss is not what these cases check, and 3,000 fsyncs are a minute."""
    monkeypatch.setattr(os, "fsync", lambda _fd: None)


def _engine(state_root: Path, log: CallLog | None = None, fault: FaultAt | None = None,
            parallelism: int = DEFAULT_PARALLELISM):
    config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
    aws = AwsContext(REGION, sleep=lambda _s: None)
    if log:
        log.attach(aws.events)
    if fault:
        fault.attach(aws.events)
    return make_engine(config, aws, state_root, parallelism=parallelism)


def _named(calls: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """Every call as ("service.Operation", k): the k-th call of that operation."""
    seen: dict[str, int] = {}
    named = []
    for service, operation in calls:
        name = f"{service}.{operation}"
        seen[name] = seen.get(name, 0) + 1
        named.append((name, seen[name]))
    return named


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
        _engine(root / "up", log, parallelism=1).up()
        up_calls = list(log.mutating)
        clients = Clients(REGION)
        snap = verify_pipeline(clients, "dev")
        log.clear()
        log2 = CallLog()
        _engine(root / "up", log2, parallelism=1).destroy()
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


def _converges_after(root: Path, fault: FaultAt, reference, parallelism: int = DEFAULT_PARALLELISM) -> str | None:
    """Interrupt `up` with ``fault``, re-run it (in parallel), compare, destroy: what went wrong, if anything."""
    ok = _run(_engine(root, fault=fault, parallelism=parallelism), "up")
    if ok or fault.fired is None:
        return "fault did not fire"
    _state_is_valid(root)
    try:
        _engine(root).up()
        clients = Clients(REGION)
        snap = verify_pipeline(clients, "dev")
        assert snap == reference["snapshot"], (snap, reference["snapshot"])
        _engine(root).destroy()
        assert_nothing_left(clients, "dev")
    except (AssertionError, Exception) as err:  # noqa: BLE001 - collect every call, report all
        return f"{fault.fired}: {type(err).__name__}: {err}"[:400]
    return None


def _finishes_after(root: Path, fault: FaultAt, parallelism: int = DEFAULT_PARALLELISM) -> str | None:
    """Interrupt `destroy` of a converged env with ``fault``, re-run it: what went wrong, if anything."""
    _engine(root).up()
    ok = _run(_engine(root, fault=fault, parallelism=parallelism), "destroy")
    if ok or fault.fired is None:
        return "fault did not fire"
    _state_is_valid(root)
    try:
        result = _engine(root).destroy()
        assert all(r.action in ("delete", "scheduled", "absent") for r in result.resources), result.count()
        assert_nothing_left(Clients(REGION), "dev")
    except (AssertionError, Exception) as err:  # noqa: BLE001 - collect every call, report all
        return f"{fault.fired}: {type(err).__name__}: {err}"[:400]
    return None


@pytest.mark.parametrize(("kind", "shard"), CASES)
def test_up_interrupted_at_every_call_converges(reference, tmp_path, kind, shard):
    total = len(reference["up"])
    failures = []
    for n, mode in _points(total, kind, shard):
        with mock_aws(config={"lambda": {"use_docker": False}}):
            problem = _converges_after(tmp_path / f"{mode}-{n}", FaultAt(n, mode), reference, parallelism=1)
        if problem:
            failures.append((n, mode, problem))
    assert not failures, f"{len(failures)} of {total} interruption points did not converge: {failures}"


@pytest.mark.parametrize(("kind", "shard"), CASES)
def test_destroy_interrupted_at_every_call_finishes(reference, tmp_path, kind, shard):
    total = len(reference["destroy"])
    failures = []
    for n, mode in _points(total, kind, shard):
        with mock_aws(config={"lambda": {"use_docker": False}}):
            problem = _finishes_after(tmp_path / f"{mode}-{n}", FaultAt(n, mode), parallelism=1)
        if problem:
            failures.append((n, mode, problem))
    assert not failures, f"{len(failures)} of {total} interruption points did not finish: {failures}"


@pytest.mark.parametrize(("kind", "shard"), CASES)
def test_parallel_up_interrupted_at_each_call_by_name_converges(reference, tmp_path, kind, shard):
    named = _named(reference["up"])
    failures = []
    for n, mode in _parallel_points(len(named), kind, shard):
        operation, k = named[n - 1]
        with mock_aws(config={"lambda": {"use_docker": False}}):
            problem = _converges_after(tmp_path / f"{mode}-{n}", FaultAt(k, mode, operation=operation), reference)
        if problem:
            failures.append((operation, k, mode, problem))
    assert not failures, f"{len(failures)} of {len(named)} interruption points did not converge: {failures}"


@pytest.mark.parametrize(("kind", "shard"), CASES)
def test_parallel_destroy_interrupted_at_each_call_by_name_finishes(reference, tmp_path, kind, shard):
    named = _named(reference["destroy"])
    failures = []
    for n, mode in _parallel_points(len(named), kind, shard):
        operation, k = named[n - 1]
        with mock_aws(config={"lambda": {"use_docker": False}}):
            problem = _finishes_after(tmp_path / f"{mode}-{n}", FaultAt(k, mode, operation=operation))
        if problem:
            failures.append((operation, k, mode, problem))
    assert not failures, f"{len(failures)} of {len(named)} interruption points did not finish: {failures}"


def test_each_call_is_named_once():
    calls = [("iam", "CreateRole"), ("kms", "CreateKey"), ("iam", "CreateRole")]
    assert _named(calls) == [("iam.CreateRole", 1), ("kms.CreateKey", 1), ("iam.CreateRole", 2)]


def test_the_cases_meet_every_call_and_every_mode():
    for total in (3, 7, 61):
        for kind in (*MODES, "rotating"):
            points = sorted(p for shard in range(SHARDS) for p in _points(total, kind, shard))
            assert [n for n, _ in points] == list(range(1, total + 1)), (kind, total)
        rotated = dict(p for shard in range(SHARDS) for p in _points(total, "rotating", shard))
        assert set(rotated.values()) == set(MODES)
        assert all(rotated[n] == "lost" for n in rotated if n % 2 == 0)  # half the calls: AWS acted
        sampled = dict(p for shard in range(SHARDS) for p in _parallel_points(total, "rotating", shard))
        assert set(sampled.values()) == set(MODES) and len(sampled) >= total // 2
