"""`iotpipe fleet up|plan|status|destroy FLEET.toml`: one command over many envs.

A manufacturer runs one env per plant. The fleet file lists them, each with its config file,
region and profile; the envs run side by side (bounded by ``concurrency``, because each run
holds AWS connections and a share of the account's API rate), a failing env never stops the
others, and the result is one table and one exit code: 0 all in sync, 2 changes or drift
somewhere, 1 a failure somewhere, 130 interrupted.

From the CLI the envs run in ``concurrency`` worker processes, forked once the imports and the
service models are loaded, so that the workers share them: botocore's work per request is CPU,
and envs that are threads of one process queue for one core. And Ctrl-C reaches every env's
engine in its worker's main thread, where it stops at a safe point as a single env's run does
(a thread never sees Ctrl-C). A worker runs one env at a time and keeps its AWS context
(session, clients) for the next env it runs with the same region and profile: making the
clients is half of a converged env's `status`. The workers are in iotpipe.fleet_workers.

Example fleet file::

    concurrency = 4                       # optional; envs run at the same time (1-32)
    state = "s3://acme-iotpipe-state/plants"   # optional; every env's state backend

    [[env]]
    name = "plant-a"
    config = "plant-a.toml"               # optional; relative to this file
    region = "eu-west-1"
    profile = "plant-a"                   # optional
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotpipe.errors import ConfigError, ExitCode, IotpipeError

DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 32


@dataclass(frozen=True)
class FleetEnv:
    name: str
    region: str | None
    config: Path | None
    profile: str | None
    state: str | None


@dataclass
class Fleet:
    path: Path
    envs: list[FleetEnv]
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass
class EnvOutcome:
    env: str
    region: str
    # "in sync", "changed", "changes pending", "drifted", "destroyed", "pending", "failed",
    # "interrupted" (stopped by Ctrl-C at a safe point), "not run" (Ctrl-C came before it began)
    result: str
    changes: int
    elapsed_s: float
    exit_code: int
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "region": self.region, "result": self.result, "changes": self.changes,
                "elapsed_s": round(self.elapsed_s, 3), "exit_code": self.exit_code, "message": self.message}


@dataclass
class FleetResult:
    command: str
    fleet: str
    outcomes: list[EnvOutcome] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        codes = {o.exit_code for o in self.outcomes}
        if ExitCode.INTERRUPTED in codes:
            return ExitCode.INTERRUPTED
        if codes - {ExitCode.OK, ExitCode.CHANGES_PENDING}:
            return ExitCode.ERROR
        return ExitCode.CHANGES_PENDING if ExitCode.CHANGES_PENDING in codes else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "fleet": self.fleet, "exit_code": int(self.exit_code),
                "elapsed_s": round(self.elapsed_s, 3), "envs": [o.as_dict() for o in self.outcomes]}


@dataclass(frozen=True)
class Activity:
    """What one env's run is doing, for the fleet's live view: small, so that a worker can
    send it to the parent at every step of the run."""

    verb: str  # the engine's run under way: read, plan, status, up, destroy ("" before one)
    done: int  # resources of that run finished
    total: int
    doing: tuple[tuple[str, str], ...] = ()  # (logical id, what it is doing) in flight
    note: str = ""  # the latest wait of no resource: another run's lock, say


class ActivityTracker:
    """An engine's event sink that keeps an env's Activity and passes on every change."""

    def __init__(self, send: Callable[[Activity], None]) -> None:
        self._send = send
        self._lock = threading.Lock()  # the engine reports from its worker threads
        self._verb, self._done, self._total, self._note = "", 0, 0, ""
        self._doing: dict[str, str] = {}

    def __call__(self, event: Any) -> None:
        from iotpipe.progress import aws_state

        with self._lock:
            if event.kind == "begin":
                self._verb, self._done, self._total, self._note = event.verb, 0, len(set(event.order)), ""
                self._doing.clear()
            elif event.kind == "start":
                self._doing[event.logical_id] = event.verb
            elif event.kind == "phase" and event.logical_id in self._doing:
                self._doing[event.logical_id] = event.phase
            elif event.kind == "progress" and event.progress is not None:
                if event.logical_id in self._doing:
                    phase = self._doing[event.logical_id].split(",")[0]
                    self._doing[event.logical_id] = f"{phase}, {aws_state(event.progress)}"
                else:
                    self._note = event.progress.message
            elif event.kind == "done":
                self._doing.pop(event.logical_id, None)
                self._done += 1
            else:
                return
            activity = Activity(self._verb, self._done, self._total, tuple(self._doing.items()), self._note)
        self._send(activity)


def load_fleet(path: Path) -> Fleet:
    """Read and check the whole file before any env runs: a typo stops the fleet, not one plant."""
    from iotpipe.config import validate_env
    from iotpipe.s3state import parse_location

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"fleet file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"fleet file {path}: {err}") from None
    unknown = sorted(set(raw) - {"concurrency", "state", "env"})
    if unknown:
        raise ConfigError(f"fleet file {path}: unknown key(s) {', '.join(unknown)} (known: concurrency, state, env)")
    concurrency = raw.get("concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"fleet file {path}: concurrency must be a whole number 1-{MAX_CONCURRENCY}")
    shared_state = raw.get("state")
    entries = raw.get("env")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"fleet file {path}: list the envs as [[env]] tables with at least a name")
    envs: list[FleetEnv] = []
    seen: set[tuple[str, str | None]] = set()
    for number, entry in enumerate(entries, 1):
        where = f"fleet file {path}: env #{number}"
        extra = sorted(set(entry) - {"name", "region", "config", "profile", "state"})
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} (known: name, region, config, profile, state)")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: name is missing")
        try:
            validate_env(name)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        for key in ("region", "config", "profile", "state"):
            if key in entry and not isinstance(entry[key], str):
                raise ConfigError(f"{where} ({name}): {key} must be a string")
        state = entry.get("state", shared_state)
        if state is not None:
            parse_location(str(state), origin=f"{where} ({name}): state")
        region = entry.get("region")
        if (name, region) in seen:
            raise ConfigError(f"{where}: env {name!r} in {region or 'its default region'} is listed twice")
        seen.add((name, region))
        config = (path.parent / entry["config"]) if "config" in entry else None
        if config is not None and not config.is_file():
            raise ConfigError(f"{where} ({name}): config file {config} not found")
        envs.append(FleetEnv(name, region, config, entry.get("profile"), state))
    return Fleet(path, envs, concurrency)


Builder = Callable[[FleetEnv], Any]  # env -> engine (tests: with an in-process emulator)


def run_fleet(
    fleet: Fleet,
    command: str,
    *,
    state_dir: Path,
    lock_timeout: float = 0.0,
    parallelism: int | None = None,
    build: Builder | None = None,
    on_done: Callable[[EnvOutcome], None] | None = None,
    on_activity: Callable[[FleetEnv, Activity], None] | None = None,
    processes: bool = False,
) -> FleetResult:
    """Run ``command`` on every env, at most ``fleet.concurrency`` at a time (each env's
    resources ``parallelism`` at a time, the engine's default when None).

    ``on_done`` hears of each env as it finishes; ``on_activity`` of what each env's run is
    doing, as it goes. ``processes`` runs the envs in worker processes (the CLI does; see
    ``worker_start``).
    Without it, and always with ``build`` (its engines may talk to an in-process emulator,
    whose state a worker's copy would not share), the envs are threads of this process.
    """
    started = time.monotonic()
    job = Job(command, state_dir, lock_timeout, parallelism, build)
    workers = min(fleet.concurrency, len(fleet.envs))
    start = worker_start() if processes and build is None else "threads"
    if start == "threads":
        outcomes = in_threads(fleet.envs, job, workers, on_done, on_activity)
    else:
        from iotpipe.fleet_workers import in_processes

        outcomes = in_processes(fleet.envs, job, workers, on_done, on_activity, start)
    return FleetResult(command, str(fleet.path), outcomes, time.monotonic() - started)


WORKERS_VARIABLE = "IOTPIPE_FLEET_WORKERS"
WORKER_STARTS = ("fork", "spawn", "threads")


def worker_start() -> str:
    """How the fleet's workers start: ``IOTPIPE_FLEET_WORKERS`` when set, else "fork" where
    that is safe and "spawn" elsewhere.

    A fork shares the parent's imports and parsed service models (a spawned worker loads its
    own, a third of a second of CPU). It is safe on Linux while this process has no thread but
    its main one (a fork copies the locks other threads hold, held); not on macOS, where a fork
    after the system's proxy lookup (urllib uses it) can crash the child. "threads" runs the
    envs in this process: no worker, and no Ctrl-C for the envs under way.
    """
    chosen = os.environ.get(WORKERS_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in WORKER_STARTS:
            raise ConfigError(f"{WORKERS_VARIABLE}={chosen!r}: use one of {', '.join(WORKER_STARTS)}")
        return chosen
    forkable = (sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
                and threading.active_count() == 1)
    return "fork" if forkable else "spawn"


class ContextPool:
    """AWS contexts kept between the envs of a fleet, each lent to one env at a time.

    An AwsContext is a session, its clients and the hooks that report retries to the engine
    using it. Lending it to one env at a time keeps what per-env clients guarantee: botocore's
    retry quota is per client, and one env's throttling does not spend another's; a retry is
    reported to the engine that is waiting for it. The next env with the same profile and
    region gets the context back, with its clients, its account id and its probed capabilities.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[str, str | None], list[Any]] = {}
        self._failed: dict[tuple[str, str | None], Exception] = {}  # by prepare: said, not tried again
        self._lock = threading.Lock()

    def lend(self, region: str, profile: str | None) -> Any:
        from iotpipe.aws import AwsContext

        with self._lock:
            if (region, profile) in self._failed:
                raise self._failed[(region, profile)]
            free = self._free.get((region, profile))
            if free:
                return free.pop()
        return AwsContext(region, profile=profile)

    def prepare(self, keys: set[tuple[str, str | None]]) -> None:
        """Make a context for each (region, profile), with its clients, before a fork: every
        worker starts with its own copy of each (no request has been made: no connection is
        shared). The credentials and the account are resolved now too: a profile that assumes
        a role would otherwise assume it (and prompt for its MFA code) once in every worker.
        What fails here (no such profile, an endpoint that does not answer) is kept, and each
        env of that region and profile reports it, instead of waiting for it once more."""
        from iotpipe.aws import SERVICES, AwsContext

        for region, profile in sorted(keys, key=str):
            try:
                aws = AwsContext(region, profile=profile)
                credentials = aws.session.get_credentials()
                if credentials is not None:
                    credentials.get_frozen_credentials()
                for service in SERVICES:
                    aws.client(service)
                aws.account_id  # noqa: B018 - asked once here, not once per worker
            except Exception as err:  # noqa: BLE001 - reported by each env's own run
                self._failed[(region, profile)] = err
                continue
            self.give(aws)

    def give(self, aws: Any) -> None:
        """Take a context back once its env has finished (never while its engine runs)."""
        from iotpipe.progress import ignore

        aws.sleep, aws.on_progress = time.sleep, ignore  # unwrap what the engine wrapped
        with self._lock:
            self._free.setdefault((aws.region, aws.profile), []).append(aws)


class Job:
    """One fleet command: what every env's run needs, and the state its runs share."""

    def __init__(self, command: str, state_dir: Path, lock_timeout: float, parallelism: int | None,
                 build: Builder | None) -> None:
        self.command, self.state_dir, self.lock_timeout = command, state_dir, lock_timeout
        self.parallelism, self.build = parallelism, build
        # What the endpoint implements is probed once per run (AwsContext.supports); a fleet is
        # one run, so the envs that share an endpoint and region share the answers.
        self.capabilities: dict[tuple[str, str], dict[str, bool]] = {}
        self.contexts = ContextPool()

    def __getstate__(self) -> dict[str, Any]:
        """What a spawned worker is sent: the command, not this process's contexts."""
        return {k: v for k, v in self.__dict__.items() if k != "contexts"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, contexts=ContextPool())

    def run(self, env: FleetEnv, on_activity: Callable[[Activity], None] | None = None) -> EnvOutcome:
        """One env's run; whatever it raises (but Ctrl-C) is its outcome, not the fleet's end."""
        begun = time.monotonic()
        try:
            pooled = self.build is None
            engine = build_engine(env, self.state_dir, self.lock_timeout, self.capabilities, self.parallelism,
                                  self.contexts) if pooled else self.build(env)
            if on_activity is not None:
                engine.on_event = ActivityTracker(on_activity)
            try:
                outcome = _outcome(self.command, env, getattr(engine, self.command)())
            finally:  # the run is over, its threads too: the next env may have the context
                if pooled:
                    self.contexts.give(engine.ctx.aws)
        except IotpipeError as err:
            outcome = EnvOutcome(env.name, env.region or "", "failed", 0, 0.0, int(err.exit_code), str(err))
        except Exception as err:  # noqa: BLE001 - one env's surprise must not stop the others
            from iotpipe.aws import translate

            typed = translate(err)
            code = typed.exit_code if isinstance(typed, IotpipeError) else ExitCode.ERROR
            outcome = EnvOutcome(env.name, env.region or "", "failed", 0, 0.0, int(code),
                                 f"{type(err).__name__}: {typed}")
        outcome.elapsed_s = time.monotonic() - begun
        return outcome


def in_threads(envs: list[FleetEnv], job: Job, workers: int, on_done: Callable[[EnvOutcome], None] | None,
               on_activity: Callable[[FleetEnv, Activity], None] | None = None) -> list[EnvOutcome]:
    def one(env: FleetEnv) -> EnvOutcome:
        outcome = job.run(env, None if on_activity is None else functools.partial(on_activity, env))
        if on_done is not None:
            on_done(outcome)
        return outcome

    pool = ThreadPoolExecutor(max_workers=workers)
    futures = [pool.submit(one, env) for env in envs]
    try:
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        # Only the main thread sees Ctrl-C: the envs under way run to their end (they are
        # not stopped at a safe point as in a worker process); those not begun are not begun.
        pool.shutdown(wait=True, cancel_futures=True)
        return [not_run(env) if future.cancelled() else future.result()
                for future, env in zip(futures, envs, strict=True)]
    finally:
        pool.shutdown(wait=True)


def not_run(env: FleetEnv) -> EnvOutcome:
    return EnvOutcome(env.name, env.region or "", "not run", 0, 0.0, int(ExitCode.INTERRUPTED),
                      "interrupted before it began")


def build_engine(env: FleetEnv, state_dir: Path, lock_timeout: float = 0.0,
                 capabilities: dict[tuple[str, str], dict[str, bool]] | None = None,
                 parallelism: int | None = None, contexts: ContextPool | None = None) -> Any:
    from iotpipe.aws import AwsContext, default_region
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine

    fallback = None if env.region else default_region(env.profile)
    config = load_config(env.name, env.config, region=env.region, fallback_region=fallback,
                         fallback_region_source=f"the region of AWS profile {env.profile or 'default'!r}")
    aws = contexts.lend(config.region, env.profile) if contexts else AwsContext(config.region, profile=env.profile)
    try:
        if capabilities is not None:
            endpoint = aws.client("sts").meta.endpoint_url  # honours AWS_ENDPOINT_URL
            aws.capabilities = capabilities.setdefault((endpoint, config.region), {})
        engine = make_engine(config, aws, state_dir, lock_timeout=lock_timeout, state=env.state)
    except BaseException:
        if contexts:
            contexts.give(aws)
        raise
    if parallelism is not None:
        engine.parallelism = parallelism
    return engine


def _outcome(command: str, env: FleetEnv, result: Any) -> EnvOutcome:
    region = result.region
    if command == "status":
        bad = [r for r in result.resources if r.health not in ("ok", "disabled", "")]
        return EnvOutcome(env.name, region, "drifted" if bad else "in sync", len(bad), 0.0,
                          ExitCode.CHANGES_PENDING if bad else ExitCode.OK,
                          ", ".join(f"{r.logical_id} {r.health}" for r in bad[:3]))
    if command == "plan":
        pending = [r for r in result.resources if r.action not in ("unchanged", "read")]
        return EnvOutcome(env.name, region, "changes pending" if pending else "in sync", len(pending), 0.0,
                          ExitCode.CHANGES_PENDING if pending else ExitCode.OK,
                          ", ".join(f"{r.logical_id} {r.action}" for r in pending[:3]))
    if command == "destroy":
        gone = [r for r in result.resources if r.action in ("delete", "scheduled")]
        pending = [r for r in result.resources if r.action == "pending"]
        if pending:
            return EnvOutcome(env.name, region, "pending", len(gone), 0.0, ExitCode.CHANGES_PENDING,
                              "run again later: " + ", ".join(r.logical_id for r in pending))
        return EnvOutcome(env.name, region, "destroyed" if gone else "absent", len(gone), 0.0, ExitCode.OK)
    changed = [r for r in result.resources if r.action not in ("unchanged", "read", "disabled", "absent")]
    return EnvOutcome(env.name, region, "changed" if changed else "in sync", len(changed), 0.0, ExitCode.OK)
