"""Run work items along a dependency graph on a bounded pool of threads.

The engine's resources wait for AWS most of their time (a table becoming ACTIVE, IAM
propagating); independent ones can wait together. An item starts as soon as everything it
depends on is done. With one worker the run is exactly the given order (when that order
respects the dependencies). With more, and more items ready than free workers, the item with
the longest ``priority`` (the engine gives the AWS time still ahead of it: its own expected wait
plus its longest chain of dependants) goes first, then the earliest in the given order: an IAM
role whose propagation gates the function, the mapping and the rule starts before a log group
nothing waits for, so the slow waits overlap instead of queueing behind quick calls.

A failure stops what depends on it, transitively (reported as skipped, naming the failure),
and lets everything else finish: an operator sees every problem of a run at once, and what
was independent of the failure is converged. A failure ``halts`` says ends the run (the state
could not be written) starts nothing new, like an interruption. An interruption (Ctrl-C, a ``BaseException``
that is not an ``Exception``) starts nothing new and is told to ``on_interrupt`` (the engine
ends the waits in flight with it); the items in flight finish or stop (each one's
write-ahead state is its own), then the interruption is raised again.

Outcomes come back in the given order, whatever the order of completion.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

R = TypeVar("R")

DEFAULT_PARALLELISM = 8


@dataclass
class Outcome(Generic[R]):
    key: str
    state: Literal["done", "failed", "skipped"]
    value: R | None = None
    error: BaseException | None = None
    # skipped: the failed item that stopped it ("" when a run was interrupted before it started)
    blocked_by: str = ""


def run_graph(keys: Sequence[str], depends_on: Mapping[str, Iterable[str]], work: Callable[[str], R], *,
              parallelism: int = DEFAULT_PARALLELISM,
              on_skip: Callable[[str, str], None] | None = None,
              halts: Callable[[BaseException], bool] = lambda _err: False,
              on_interrupt: Callable[[], None] = lambda: None,
              priority: Mapping[str, float] | None = None) -> list[Outcome[R]]:
    """Run ``work(key)`` for every key, each after the keys it depends on; outcomes in ``keys`` order.

    ``depends_on`` may name keys that are not in ``keys`` (a resource left out of this run):
    those are ignored. ``on_skip(key, failed_key)`` is told of each item a failure stops, when
    it is decided. ``halts(error)`` true: nothing new starts after that failure (what is
    left is reported skipped, blocked by nothing). Parallelism 1 runs everything in the
    calling thread, one at a time, in the given order; ``priority`` (higher first) orders
    the ready items only when several workers compete for them.
    """
    if parallelism < 1:
        raise ValueError(f"parallelism must be at least 1, not {parallelism}")
    index = {key: pos for pos, key in enumerate(keys)}
    ranked = priority if priority is not None and parallelism > 1 else {}

    def rank(key: str) -> tuple[float, int]:
        return -ranked.get(key, 0.0), index[key]

    waiting = {key: {d for d in depends_on.get(key, ()) if d in index and d != key} for key in keys}
    dependants: dict[str, list[str]] = {key: [] for key in keys}
    for key, deps in waiting.items():
        for dep in deps:
            dependants[dep].append(key)
    _check_acyclic(keys, waiting)
    outcomes: dict[str, Outcome[R]] = {}
    ready = [rank(k) for k in keys if not waiting[k]]
    heapq.heapify(ready)

    def finished(key: str, value: R | None, error: BaseException | None) -> None:
        if error is None:
            outcomes[key] = Outcome(key, "done", value)
            for after in dependants[key]:
                waiting[after].discard(key)
                if not waiting[after] and after not in outcomes:
                    heapq.heappush(ready, rank(after))
            return
        outcomes[key] = Outcome(key, "failed", error=error)
        stack = list(dependants[key])
        while stack:
            after = stack.pop()
            if after not in outcomes:
                outcomes[after] = Outcome(after, "skipped", blocked_by=key)
                if on_skip is not None:
                    on_skip(after, key)
                stack.extend(dependants[after])

    if parallelism == 1:
        while ready:
            key = keys[heapq.heappop(ready)[1]]
            if key in outcomes:
                continue
            try:
                value = work(key)
            except Exception as err:  # noqa: BLE001 - reported with the others, after the rest ran
                finished(key, None, err)
                if halts(err):
                    break
            else:
                finished(key, value, None)
    else:
        _run_pool(keys, work, parallelism, ready, outcomes, finished, halts, on_interrupt)
    return [outcomes.get(key) or Outcome(key, "skipped") for key in keys]


def _run_pool(keys: Sequence[str], work: Callable[[str], R], parallelism: int, ready: list[tuple[float, int]],
              outcomes: dict[str, Outcome[R]], finished: Callable[[str, R | None, BaseException | None], None],
              halts: Callable[[BaseException], bool], on_interrupt: Callable[[], None]) -> None:
    """The pool: only the calling thread touches the bookkeeping; workers only run ``work``."""
    interrupted: BaseException | None = None
    halted = False
    running: dict[Future[R], str] = {}
    pool = ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="iotpipe")
    try:
        while True:
            while ready and len(running) < parallelism and interrupted is None and not halted:
                key = keys[heapq.heappop(ready)[1]]
                if key not in outcomes:
                    running[pool.submit(work, key)] = key
            if not running:
                break
            try:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
            except BaseException as err:  # Ctrl-C reaches the main thread: start nothing new
                if interrupted is None:
                    interrupted = err
                    on_interrupt()
                continue
            for future in sorted(done, key=lambda f: keys.index(running[f])):
                key = running.pop(future)
                error = future.exception()
                if error is not None and not isinstance(error, Exception):
                    if interrupted is None:  # the process is being stopped
                        interrupted = error
                        on_interrupt()
                elif error is not None and halts(error):
                    halted = True
                finished(key, None if error else future.result(), error)
    finally:
        pool.shutdown(wait=True)
    if interrupted is not None:
        raise interrupted


def _check_acyclic(keys: Sequence[str], waiting: Mapping[str, set[str]]) -> None:
    """A cycle would leave its items waiting forever: refuse it up front, naming one."""
    state: dict[str, int] = {}

    def visit(key: str, path: list[str]) -> None:
        state[key] = 1
        for dep in sorted(waiting[key]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [key, dep]
                raise ValueError("dependency cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[key] = 2

    for key in keys:
        if key not in state:
            visit(key, [key])
