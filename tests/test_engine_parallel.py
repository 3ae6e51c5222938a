"""The engine's scheduler: resources along their `depends_on` graph on a bounded pool.

Fake resources keep their "AWS" in memory and check, as they are made and deleted, that
the graph was respected; threading.Event hand-offs (never sleeps) force the interleavings
that prove concurrency and a stable result order.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console

from iotpipe.errors import ExitCode, OwnershipError
from iotpipe.graph import run_graph
from iotpipe.render import Renderer
from iotpipe.steps.base import Current, Resource, Spec, StepContext

HAND_OFF_S = 10  # only reached when the engine failed to run two resources at once


@dataclass
class World:
    """The fake account: what exists, what happened in which order, what went wrong."""

    made: set[str] = field(default_factory=set)
    log: list[tuple[str, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    started: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, lid: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(lid, threading.Event())


class Fake(Resource):
    resource_type = "Test::Fake"

    def __init__(self, world: World, lid: str, deps: tuple[str, ...] = (), *, fail: BaseException | None = None,
                 waits_for: str | None = None, dependants: tuple[str, ...] = ()) -> None:
        self.world, self.logical_id, self.depends_on = world, lid, deps
        self.fail, self.waits_for, self.dependants = fail, waits_for, dependants

    def name(self, ctx: StepContext) -> str:
        return f"fake-{self.logical_id}"

    def desired(self, ctx: StepContext) -> Spec:
        return {"v": 1}

    def read(self, ctx: StepContext) -> Current | None:
        return Current({"v": 1}, {"id": self.logical_id}) if self.logical_id in self.world.made else None

    def _step(self, verb: str) -> None:
        self.world.event(f"{verb}:{self.logical_id}").set()
        if self.waits_for and not self.world.event(self.waits_for).wait(HAND_OFF_S):
            self.world.violations.append(f"{self.logical_id} never saw {self.waits_for} start alongside it")
        if self.fail is not None:
            raise self.fail

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        missing = [d for d in self.depends_on if d not in self.world.made]
        if missing:
            self.world.violations.append(f"{self.logical_id} made before {missing}")
        self._step("create")
        with self.world.lock:
            self.world.made.add(self.logical_id)
            self.world.log.append(("create", self.logical_id))
        self.world.event(f"made:{self.logical_id}").set()
        return {"id": self.logical_id}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Any]) -> None:
        return None

    def delete(self, ctx: StepContext, current: Current) -> None:
        still = [d for d in self.dependants if d in self.world.made]
        if still:
            self.world.violations.append(f"{self.logical_id} deleted before {still}, which depend on it")
        self._step("delete")
        with self.world.lock:
            self.world.made.discard(self.logical_id)
            self.world.log.append(("delete", self.logical_id))


# A diamond with a tail and two independent resources: many orders respect it.
GRAPH: dict[str, tuple[str, ...]] = {
    "a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ("d",), "x": (), "y": ("x",),
}


def fakes(world: World, **kwargs: dict[str, Any]) -> list[Fake]:
    dependants = {lid: tuple(k for k, deps in GRAPH.items() if lid in deps) for lid in GRAPH}
    return [Fake(world, lid, deps, dependants=dependants[lid], **kwargs.get(lid, {})) for lid, deps in GRAPH.items()]


def _engine(make, resources: list[Fake], parallelism: int, events: list | None = None):
    engine = make(resources=resources)
    engine.parallelism = parallelism
    if events is not None:
        engine.on_event = events.append
    return engine


def test_parallelism_1_is_the_declared_order(make):
    world = World()
    engine = _engine(make, fakes(world), 1)
    engine.up()
    assert [lid for _, lid in world.log] == list(GRAPH)
    engine.destroy()
    assert [lid for verb, lid in world.log if verb == "delete"] == list(reversed(GRAPH))
    assert world.violations == []


def test_parallel_up_and_destroy_respect_the_graph_and_overlap(make):
    world = World()
    # b and c both need a; each waits until the other has started: only concurrency passes.
    overlap = {"b": {"waits_for": "create:c"}, "c": {"waits_for": "create:b"}}
    engine = _engine(make, fakes(world, **overlap), 4)
    result = engine.up()
    assert world.violations == []
    assert {lid for _, lid in world.log} == set(GRAPH)
    assert [r.logical_id for r in result.resources] == list(GRAPH)
    assert all(r.action == "create" for r in result.resources)

    world2 = World(made=set(world.made))
    # Deletes: d waits for e, then b and c go together (each waits for the other to start).
    engine = _engine(make, fakes(world2, b={"waits_for": "delete:c"}, c={"waits_for": "delete:b"}), 4)
    result = engine.destroy()
    assert world2.violations == []
    assert world2.made == set()
    assert [r.logical_id for r in result.resources] == list(reversed(GRAPH))


def test_results_keep_the_declared_order_whatever_finishes_first(make):
    world = World()
    # a, declared first, is made only once y (declared last, after x) is: completion order
    # y before a, reported order a before y.
    engine = _engine(make, fakes(world, a={"waits_for": "made:y"}), 4)
    result = engine.up()
    assert world.violations == []
    made = [lid for _, lid in world.log]
    assert made.index("y") < made.index("a")
    assert [r.logical_id for r in result.resources] == list(GRAPH)


@pytest.mark.parametrize("parallelism", [1, 4])
def test_a_failure_stops_its_dependants_the_rest_finishes_all_failures_reported(make, parallelism):
    world = World()
    events: list[Any] = []
    broken = {"b": {"fail": OwnershipError("fake-b is someone else's")},
              "y": {"fail": RuntimeError("y broke")}}
    engine = _engine(make, fakes(world, **broken), parallelism, events)
    with pytest.raises(OwnershipError) as caught:
        engine.up()
    err = caught.value
    assert err.exit_code == ExitCode.OWNERSHIP  # the first failure (declared order) decides the exit code
    assert "fake-b is someone else's" in str(err) and "y: y broke" in str(err)
    # a, c, x did not depend on a failure: made. d and e (after b) were not attempted.
    assert world.made == {"a", "c", "x"}
    assert world.violations == []
    skipped = {e.logical_id: e.result.message for e in events if e.kind == "done" and e.result is not None
               and e.result.action == "skipped"}
    assert skipped == {"d": "not attempted: b failed", "e": "not attempted: b failed"}
    assert not any(e.kind == "start" and e.verb == "up" and e.logical_id in ("d", "e") for e in events)
    # The state recorded what was made, and nothing of what was not.
    assert {lid for lid in GRAPH if engine.store.get(lid) and engine.store.get(lid).status == "present"} \
        == {"a", "c", "x"}


def test_an_interruption_starts_nothing_new_lets_the_flight_land_and_is_raised(make):
    world = World()

    class Stop(KeyboardInterrupt):
        pass

    # b is stopped while c is in flight (c waits until b has started); d and e never start.
    engine = _engine(make, fakes(world, b={"fail": Stop("stop")}, c={"waits_for": "create:b"}), 4)
    with pytest.raises(Stop):
        engine.up()
    assert "c" in world.made and engine.store.get("c").status == "present"
    assert not world.made & {"d", "e"}
    assert world.violations == []


def test_failures_in_destroy_keep_what_they_depend_on(make):
    world = World(made=set(GRAPH))
    dependants = {lid: tuple(k for k, deps in GRAPH.items() if lid in deps) for lid in GRAPH}
    resources = [Fake(world, lid, deps, dependants=dependants[lid],
                      fail=RuntimeError("d will not go") if lid == "d" else None) for lid, deps in GRAPH.items()]
    engine = _engine(make, resources, 4)
    with pytest.raises(RuntimeError, match="d will not go"):
        engine.destroy()
    # d stayed, so what d depends on (b, c, a) must stay too; e, y, x went.
    assert world.made == {"a", "b", "c", "d"}
    assert world.violations == []


def test_run_graph_ignores_outside_dependencies_and_refuses_cycles():
    out = run_graph(["p", "q"], {"q": ["p", "elsewhere"]}, lambda k: k.upper(), parallelism=2)
    assert [(o.key, o.state, o.value) for o in out] == [("p", "done", "P"), ("q", "done", "Q")]
    with pytest.raises(ValueError, match="cycle"):
        run_graph(["p", "q"], {"p": ["q"], "q": ["p"]}, lambda k: k, parallelism=2)
    with pytest.raises(ValueError):
        run_graph(["p"], {}, lambda k: k, parallelism=0)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_halting_failure_starts_nothing_new(parallelism):
    """After a failed state write (``halts``), no other resource starts; in flight ones finish."""
    a_failed = threading.Event()
    started: list[str] = []

    def work(key: str) -> str:
        started.append(key)
        if key == "a":
            a_failed.set()
            raise OSError("state write failed")
        if key == "b" and parallelism > 1:
            assert a_failed.wait(HAND_OFF_S)
        return key

    out = run_graph(["a", "b", "c"], {}, work, parallelism=parallelism, halts=lambda err: isinstance(err, OSError))
    assert "c" not in started
    assert [o.state for o in out] == ["failed", "done" if parallelism > 1 else "skipped", "skipped"]


def test_an_interruption_ends_the_waits_in_flight(make):
    """Ctrl-C reaches one thread; a resource polling AWS on another stops at its next sleep."""
    world = World()

    class Stop(KeyboardInterrupt):
        pass

    class Waiting(Fake):
        def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
            self.world.event(f"create:{self.logical_id}").set()
            for _ in range(20_000_000):  # a table that never becomes ACTIVE, polled through the run's sleep
                ctx.aws.sleep(5)
            self.world.violations.append(f"{self.logical_id} kept waiting after the interruption")
            return {"id": self.logical_id}

    resources = [Fake(world, "a"), Fake(world, "b", ("a",), fail=Stop("stop"), waits_for="create:c"),
                 Waiting(world, "c", ("a",)), Fake(world, "d", ("c",))]
    engine = _engine(make, resources, 4)
    with pytest.raises(KeyboardInterrupt):
        engine.up()
    assert world.violations == []
    assert world.made == {"a"}
    assert engine.store.get("c").status == "creating"  # written ahead: the next run finds it


def test_events_tell_the_order_each_phase_and_end_every_run(make):
    """What the live view and the stable result lines are built from: "begin" with the
    order, per resource its phases between start and done, "end" last (also on failure).
    `up` (like `status` and `plan`) first reads everything at once: a "read" run of its own."""
    world = World()
    events: list[Any] = []
    engine = _engine(make, fakes(world), 4, events)
    engine.up()
    runs = [e for e in events if e.kind in ("begin", "end")]
    assert [(e.kind, e.verb) for e in runs] == [("begin", "read"), ("end", "read"), ("begin", "up"), ("end", "up")]
    assert runs[0].order == runs[2].order == tuple(GRAPH) and events[0] is runs[0] and events[-1] is runs[-1]
    for lid in GRAPH:
        mine = [e.kind if e.kind != "phase" else e.phase for e in events if e.logical_id == lid]
        assert mine == ["start", "done", "start", "reading", "creating", "done"], (lid, mine)
    events.clear()
    engine.up()  # converged: read only
    assert {lid: [e.phase for e in events if e.logical_id == lid and e.kind == "phase"] for lid in GRAPH} \
        == {lid: ["reading"] for lid in GRAPH}

    world2 = World(made=set(world.made))
    events.clear()
    engine = _engine(make, fakes(world2, d={"fail": RuntimeError("d will not go")}), 4, events)
    with pytest.raises(RuntimeError):
        engine.destroy()
    begins = [e for e in events if e.kind == "begin"]
    assert [(e.verb, e.order) for e in begins] == [("read", tuple(GRAPH)), ("destroy", tuple(reversed(GRAPH)))]
    assert events[-1].kind == "end"  # the failure did not keep the last run open
    (failed,) = [e for e in events if e.kind == "done" and e.error]
    assert (failed.logical_id, failed.error, failed.result) == ("d", "d will not go", None)
    assert [e.phase for e in events if e.logical_id == "e" and e.kind == "phase"] == \
        ["reading", "reading", "deleting"]  # the survey, then destroy


def test_rendered_results_keep_the_declared_order_whatever_finishes_first(make):
    world = World()
    con = Console(file=io.StringIO(), width=200, color_system=None, highlight=False, soft_wrap=True)
    renderer = Renderer(console=con)
    engine = _engine(make, fakes(world, a={"waits_for": "made:y"}), 4)
    engine.on_event = renderer.progress
    engine.up()
    made = [lid for _, lid in world.log]
    assert made.index("y") < made.index("a")  # y finished first ...
    shown = re.findall(r"^\+ created\s+(\S+)", con.file.getvalue(), re.M)
    assert shown == list(GRAPH)  # ... a is still shown first
