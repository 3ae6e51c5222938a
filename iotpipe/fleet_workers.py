"""The worker processes of `iotpipe fleet`: forked, each runs one env at a time.

Why processes (see iotpipe.fleet): botocore's work per request is CPU, and envs that are threads
of one process queue for one core; Ctrl-C reaches every env's engine in its worker's main
thread, where it stops at a safe point as a single env's run does. The parent hands out the
envs over one pipe per worker and collects each outcome; a worker that dies fails its env only.
Workers are forked where that is safe (they then share the parent's imports, models and AWS
contexts) and spawned elsewhere (see fleet.worker_start).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from iotpipe.errors import ExitCode
from iotpipe.fleet import Activity, EnvOutcome, FleetEnv, Job, in_threads, not_run

_running = False  # in a worker: an env is being run (Ctrl-C stops it) or not (Ctrl-C is noted)
_stopped = False  # in a worker: Ctrl-C came; it starts no further env


def in_processes(envs: list[FleetEnv], job: Job, workers: int, on_done: Callable[[EnvOutcome], None] | None,
                 on_activity: Callable[[FleetEnv, Activity], None] | None = None,
                 start: str = "fork") -> list[EnvOutcome]:
    """Start ``workers`` processes (``start``: "fork" or "spawn", see fleet.worker_start) and
    hand each the next env as it finishes one.

    The next env is one with the region and profile of an env the worker has run, where there
    is one: the worker has that env's AWS context, clients made (see ContextPool). Ctrl-C
    reaches the workers too (one process group): each stops its env at a safe point and the
    parent starts nothing more. A worker that dies (killed, out of memory) fails its env only.
    """
    from multiprocessing.connection import wait

    if start == "fork":  # what is made now, every worker has without making it
        _preload()
        # A context only one env uses is made as well by its worker, beside the others' (the
        # parent would make them one after another: with a profile per plant account, each
        # with its AssumeRole, that is seconds before any env starts).
        shared = Counter((e.region, e.profile) for e in envs if e.region)
        job.contexts.prepare({key for key, count in shared.items() if count > 1})
        # Python's recipe for fork without exec: what the parent made stays out of the workers'
        # collections, which would otherwise touch (and so copy) every page of it. It stays
        # frozen in the parent too: the CLI's process ends with the fleet.
        gc.freeze()
    context = multiprocessing.get_context(start)
    outcomes: list[EnvOutcome | None] = [None] * len(envs)
    pending = list(range(len(envs)))
    busy: dict[Any, int] = {}  # a worker's end of its pipe -> the index of the env it runs
    ran: dict[Any, set[tuple[str | None, str | None]]] = {}  # ... -> (region, profile)s it ran
    processes: list[tuple[Any, Any]] = []
    interrupted = False

    def hand_out(conn: Any) -> None:
        keys = ran.setdefault(conn, set())
        index = next_env(envs, pending, keys)
        pending.remove(index)
        busy[conn] = index  # before it is sent: a Ctrl-C between must not lose its outcome
        try:
            conn.send(index)
        except OSError:  # the worker is gone already: the env waits for another
            del busy[conn]
            pending.insert(0, index)
            conn.close()
            return
        keys.add((envs[index].region, envs[index].profile))

    def collect(conn: Any) -> bool:
        """Take the worker's next message; True once it has finished its env."""
        try:
            kind, index, payload = conn.recv()
        except (EOFError, OSError):
            kind, index, payload = "done", busy[conn], _died(envs[busy[conn]])
            conn.close()
        if kind == "activity":
            if on_activity is not None:
                on_activity(envs[index], payload)
            return False
        del busy[conn]
        outcomes[index] = payload
        if on_done is not None:
            on_done(payload)
        return True

    try:
        for _ in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker, args=(theirs, envs, job, on_activity is not None),
                                      daemon=True)
            try:
                process.start()
            except OSError:  # no more processes allowed: those started do the work
                ours.close()
                break
            finally:
                theirs.close()
            processes.append((process, ours))
            hand_out(ours)
    except KeyboardInterrupt:
        interrupted = True
    if not processes:  # Ctrl-C before the first started; or none could be
        return [not_run(env) for env in envs] if interrupted else in_threads(envs, job, workers, on_done,
                                                                             on_activity)
    while busy:
        try:
            for conn in wait(list(busy)):
                if collect(conn) and pending and not interrupted and not conn.closed:
                    hand_out(conn)
        except KeyboardInterrupt:
            interrupted = True  # the workers had it too: collect what their envs end with
    for process, conn in processes:
        if not conn.closed:
            with contextlib.suppress(OSError):
                conn.send(None)
        _join(process)
    left = not_run if interrupted else _died  # not begun: Ctrl-C, or every worker died
    return [o if o is not None else left(env) for o, env in zip(outcomes, envs, strict=True)]


def next_env(envs: list[FleetEnv], pending: list[int], ran: set[tuple[str | None, str | None]]) -> int:
    """The first pending env with a (region, profile) the worker has run, for the AWS context
    it kept; else the first pending env."""
    return next((i for i in pending if (envs[i].region, envs[i].profile) in ran), pending[0])


def _join(process: Any) -> None:
    """Wait for a worker to end; a second Ctrl-C does not abandon one mid-run (it is the
    worker's to stop: it had the Ctrl-C too)."""
    while True:
        try:
            process.join()
            return
        except KeyboardInterrupt:
            continue


def _preload() -> None:
    """Before the fork: import what every worker's run imports (the CLI imports lazily, to
    start fast) and parse the service models, once for all workers instead of once in each."""
    import iotpipe.aws
    import iotpipe.engine
    import iotpipe.steps

    iotpipe.steps.all_resources()
    iotpipe.aws.preload_models()


def _died(env: FleetEnv) -> EnvOutcome:
    return EnvOutcome(env.name, env.region or "", "failed", 0, 0.0, int(ExitCode.ERROR),
                      "its worker process died (killed, or out of memory?) before it reported: run the same "
                      "command again")


def _worker(conn: Any, envs: list[FleetEnv], job: Job, report: bool) -> None:
    """A worker process: run the env whose index comes, until None comes. It sends
    ("activity", index, Activity) as the run goes (when ``report``) and ("done", index,
    EnvOutcome) at its end."""
    signal.signal(signal.SIGINT, _on_ctrl_c)
    lock = threading.Lock()  # the engine's threads report while the main thread waits

    def send(message: tuple[str, int, Any]) -> None:
        with lock:
            conn.send(message)

    while True:
        try:
            index = conn.recv()
        except EOFError:  # the parent is gone
            return
        if index is None:
            return
        activity = functools.partial(_activity, send, index) if report else None
        send(("done", index, _run_in_worker(envs, job, index, activity)))


def _activity(send: Callable[[tuple[str, int, Any]], None], index: int, activity: Activity) -> None:
    send(("activity", index, activity))


def _on_ctrl_c(_signum: int, _frame: Any) -> None:
    """A worker's Ctrl-C: the env being run stops as a single run does (KeyboardInterrupt in
    its engine's main thread); an idle worker notes it and runs nothing more."""
    global _stopped
    _stopped = True
    if _running:
        raise KeyboardInterrupt


def _run_in_worker(envs: list[FleetEnv], job: Job, index: int,
                   on_activity: Callable[[Activity], None] | None) -> EnvOutcome:
    global _running
    env = envs[index]
    if _stopped:
        return not_run(env)
    begun = time.monotonic()
    _running = True
    try:
        return job.run(env, on_activity)
    except KeyboardInterrupt:
        return EnvOutcome(env.name, env.region or "", "interrupted", 0, time.monotonic() - begun,
                          int(ExitCode.INTERRUPTED), "stopped at a safe point: run the same command again")
    finally:
        _running = False
