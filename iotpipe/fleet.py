"""`iotpipe fleet up|plan|status|destroy FLEET.toml`: one command over many envs.

A manufacturer runs one env per plant. The fleet file lists them, each with its config file,
region and profile; the envs run side by side (bounded by ``concurrency``, because each run
holds AWS connections and a share of the account's API rate), a failing env never stops the
others, and the result is one table and one exit code: 0 all in sync, 2 changes or drift
somewhere, 1 a failure somewhere.

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
    result: str  # "in sync", "changed", "changes pending", "drifted", "destroyed", "pending", "failed"
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
        if codes - {ExitCode.OK, ExitCode.CHANGES_PENDING}:
            return ExitCode.ERROR
        return ExitCode.CHANGES_PENDING if ExitCode.CHANGES_PENDING in codes else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "fleet": self.fleet, "exit_code": int(self.exit_code),
                "elapsed_s": round(self.elapsed_s, 3), "envs": [o.as_dict() for o in self.outcomes]}


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


Runner = Callable[[Any], Any]  # engine -> RunResult


def run_fleet(
    fleet: Fleet,
    command: str,
    *,
    state_dir: Path,
    lock_timeout: float = 0.0,
    parallelism: int | None = None,
    build: Callable[[FleetEnv], Any] | None = None,
    on_done: Callable[[EnvOutcome], None] | None = None,
) -> FleetResult:
    """Run ``command`` on every env, at most ``fleet.concurrency`` at a time (each env's
    resources ``parallelism`` at a time, the engine's default when None)."""
    started = time.monotonic()
    # What the endpoint implements is probed once per run (AwsContext.supports); a fleet is one
    # run, so the envs that share an endpoint and region share the answers.
    capabilities: dict[tuple[str, str], dict[str, bool]] = {}
    make = build or (lambda env: build_engine(env, state_dir, lock_timeout, capabilities, parallelism))

    def one(env: FleetEnv) -> EnvOutcome:
        begun = time.monotonic()
        try:
            engine = make(env)
            result = getattr(engine, command)()
            outcome = _outcome(command, env, result)
        except IotpipeError as err:
            outcome = EnvOutcome(env.name, env.region or "", "failed", 0, 0.0, int(err.exit_code), str(err))
        except Exception as err:  # noqa: BLE001 - one env's surprise must not stop the others
            from iotpipe.aws import translate

            typed = translate(err)
            code = typed.exit_code if isinstance(typed, IotpipeError) else ExitCode.ERROR
            outcome = EnvOutcome(env.name, env.region or "", "failed", 0, 0.0, int(code),
                                 f"{type(err).__name__}: {typed}")
        outcome.elapsed_s = time.monotonic() - begun
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=min(fleet.concurrency, len(fleet.envs))) as pool:
        outcomes = list(pool.map(one, fleet.envs))
    return FleetResult(command, str(fleet.path), outcomes, time.monotonic() - started)


def build_engine(env: FleetEnv, state_dir: Path, lock_timeout: float = 0.0,
                 capabilities: dict[tuple[str, str], dict[str, bool]] | None = None,
                 parallelism: int | None = None) -> Any:
    from iotpipe.aws import AwsContext, default_region
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine

    fallback = None if env.region else default_region(env.profile)
    config = load_config(env.name, env.config, region=env.region, fallback_region=fallback,
                         fallback_region_source=f"the region of AWS profile {env.profile or 'default'!r}")
    aws = AwsContext(config.region, profile=env.profile)
    if capabilities is not None:
        endpoint = aws.client("sts").meta.endpoint_url  # honours AWS_ENDPOINT_URL
        aws.capabilities = capabilities.setdefault((endpoint, config.region), {})
    engine = make_engine(config, aws, state_dir, lock_timeout=lock_timeout, state=env.state)
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
