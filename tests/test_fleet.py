"""`iotpipe fleet`: the fleet file, and a fleet of 5 envs in 2 regions converging and going
away (in-process moto, shared S3 state)."""

from __future__ import annotations

import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.errors import ConfigError, CredentialsError, ExitCode, OwnershipError
from iotpipe.fleet import EnvOutcome, load_fleet, run_fleet
from iotpipe.s3state import parse_location
from iotpipe.statecmd import bootstrap
from tests.bulk_devices import serial_moto  # noqa: F401 - envs run in threads against in-process moto

STATE = "s3://acme-iotpipe-state/plants"
FLEET = f"""
concurrency = 3
state = "{STATE}"
""" + "".join(f"""
[[env]]
name = "plant-{n}"
region = "{region}"
""" for n, region in enumerate(["us-east-1", "eu-west-1", "us-east-1", "eu-west-1", "us-east-1"], 1))


def test_the_fleet_file_is_checked_before_anything_runs(tmp_path):
    path = tmp_path / "fleet.toml"
    for text, match in [
        ("", "list the envs"),
        ("[[env]]\nregion = 'us-east-1'\n", "name is missing"),
        ("[[env]]\nname = 'Bad_Name'\n", "env #1"),
        ("[[env]]\nname = 'a'\nconfig = 'nope.toml'\n", "not found"),
        ("[[env]]\nname = 'a'\n[[env]]\nname = 'a'\n", "listed twice"),
        ("concurrency = 0\n[[env]]\nname = 'a'\n", "concurrency"),
        ("colour = 1\n[[env]]\nname = 'a'\n", "unknown key"),
        ("state = 'bucket/x'\n[[env]]\nname = 'a'\n", "not an S3 location"),
        ("[[env]\n", "fleet file"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_fleet(path)
    with pytest.raises(ConfigError, match="not found"):
        load_fleet(tmp_path / "missing.toml")


def test_a_failing_env_does_not_stop_the_others_and_sets_the_exit_code(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text("[[env]]\nname = 'a'\n[[env]]\nname = 'b'\n[[env]]\nname = 'c'\n")
    fleet = load_fleet(path)

    class Fake:
        def __init__(self, name):
            self.name = name

        def status(self):
            if self.name == "b":
                raise OwnershipError("kms.key: not ours")
            from iotpipe.engine import RunResult

            return RunResult("status", self.name, "us-east-1", "123456789012")

    seen: list[EnvOutcome] = []
    result = run_fleet(fleet, "status", state_dir=tmp_path, build=lambda env: Fake(env.name), on_done=seen.append)
    assert [(o.env, o.result, o.exit_code) for o in result.outcomes] == [
        ("a", "in sync", 0), ("b", "failed", ExitCode.OWNERSHIP), ("c", "in sync", 0)]
    assert result.exit_code == ExitCode.ERROR and len(seen) == 3
    assert "not ours" in result.as_dict()["envs"][1]["message"]


def test_a_fleet_of_five_envs_in_two_regions_converges_and_is_destroyed(moto, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bootstrap(AwsContext("us-east-1"), parse_location(STATE), enforce_tls=False)
    path = tmp_path / "plants.toml"
    path.write_text(FLEET)
    fleet = load_fleet(path)

    def build(env):  # as fleet.build_engine, with the emulator's switch and no real sleeps
        config = load_config(env.name, region=env.region, assignments=(
            "storage.enforce_tls=false", "trail.enabled=false"))
        return make_engine(config, AwsContext(config.region, sleep=lambda _s: None), tmp_path / ".iotpipe",
                           state=env.state)

    up = run_fleet(fleet, "up", state_dir=tmp_path, build=build)
    assert [(o.env, o.region, o.result) for o in up.outcomes] == [
        (f"plant-{n}", region, "changed") for n, region in
        enumerate(["us-east-1", "eu-west-1", "us-east-1", "eu-west-1", "us-east-1"], 1)], up.as_dict()
    assert up.exit_code == ExitCode.OK and all(o.changes > 10 for o in up.outcomes)
    listed = AwsContext("us-east-1").client("s3").list_objects_v2(Bucket="acme-iotpipe-state")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"plants/plant-{n}.json" for n in range(1, 6)]
    gone = run_fleet(fleet, "destroy", state_dir=tmp_path, build=build)
    assert {o.result for o in gone.outcomes} == {"destroyed"}, gone.as_dict()
    assert "Contents" not in AwsContext("us-east-1").client("s3").list_objects_v2(Bucket="acme-iotpipe-state")


def test_a_context_is_lent_to_one_env_at_a_time_and_kept_for_the_next(moto, tmp_path, monkeypatch):
    """An env's AWS context (session, clients, retry hooks) is its own while it runs; the next
    env with the same region and profile gets it back, clients made, instead of new ones."""
    import time

    import iotpipe.aws
    from iotpipe.fleet import ContextPool
    from iotpipe.progress import ignore

    made: list[AwsContext] = []

    class Counted(AwsContext):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(iotpipe.aws, "AwsContext", Counted)
    pool = ContextPool()
    first, second = pool.lend("us-east-1", None), pool.lend("us-east-1", None)
    assert first is not second  # two envs at once: one context each
    pool.give(first)
    assert pool.lend("eu-west-1", None) not in (first, second)
    assert pool.lend("us-east-1", None) is first

    monkeypatch.chdir(tmp_path)
    regions = ["us-east-1", "eu-west-1", "us-east-1", "us-east-1"]
    lines = ["concurrency = 1"]
    for n, region in enumerate(regions):
        (tmp_path / f"p{n}.toml").write_text("[storage]\nenforce_tls = false\n")
        lines += ["[[env]]", f'name = "p{n}"', f'region = "{region}"', f'config = "p{n}.toml"']
    (tmp_path / "plants.toml").write_text("\n".join(lines))
    made.clear()
    result = run_fleet(load_fleet(tmp_path / "plants.toml"), "plan", state_dir=tmp_path / ".iotpipe")
    assert [o.result for o in result.outcomes] == ["changes pending"] * 4, result.as_dict()
    assert sorted(a.region for a in made) == ["eu-west-1", "us-east-1"]  # one per region, not per env
    for aws in made:  # given back as made: no engine's sleep wrapper or listener left on it
        assert aws.sleep is time.sleep and aws.on_progress is ignore

    # Made before a fork: what fails then is each env's answer, not tried again per worker.
    made.clear()
    pool.prepare({("us-east-1", None), ("us-east-1", "no-such-profile")})
    assert [(a.region, a.profile, a.account_id) for a in made] == [("us-east-1", None, "123456789012")]
    assert pool.lend("us-east-1", None) is made[0]
    with pytest.raises(CredentialsError, match="no-such-profile"):
        pool.lend("us-east-1", "no-such-profile")
    assert len(made) == 1


def test_every_service_a_fleet_command_calls_is_preloaded(moto, tmp_path, monkeypatch):
    """`fleet` parses the models of iotpipe.aws.SERVICES before it forks its workers; a
    service missing there is parsed again in every worker."""
    from iotpipe.aws import SERVICES

    monkeypatch.chdir(tmp_path)
    bootstrap(AwsContext("us-east-1"), parse_location(STATE), enforce_tls=False)
    contexts: list[AwsContext] = []

    def build(env):
        config = load_config(env.name, region=env.region, assignments=("storage.enforce_tls=false",))
        contexts.append(AwsContext(config.region, sleep=lambda _s: None))
        return make_engine(config, contexts[-1], tmp_path / ".iotpipe", state=env.state)

    path = tmp_path / "one.toml"
    path.write_text(f'state = "{STATE}"\n[[env]]\nname = "plant-1"\nregion = "us-east-1"\n')
    for command in ("up", "status", "plan", "destroy"):
        assert run_fleet(load_fleet(path), command, state_dir=tmp_path, build=build).exit_code == 0, command
    used = set().union(*(aws._clients for aws in contexts))
    assert "cloudtrail" in used and used <= set(SERVICES), used - set(SERVICES)


WORKERS_SCRIPT = """
import os, sys
from pathlib import Path
from iotpipe.fleet import Activity, ContextPool, EnvOutcome, FleetEnv
from iotpipe.fleet_workers import in_processes

class Job:  # an env "dies" kills its worker; the others report and answer with their worker's pid
    contexts = ContextPool()
    def run(self, env, on_activity=None):
        if env.name == "dies":
            os._exit(9)
        on_activity(Activity("up", 1, 2, (("kms.key", "creating"),)))
        return EnvOutcome(env.name, "", "in sync", 0, 0.0, 0, str(os.getpid()))

heard = []
envs = [FleetEnv(name, None, None, None, None) for name in ("a", "dies", "b", "c", "d")]
outcomes = in_processes(envs, Job(), 2, None, lambda env, activity: heard.append((env.name, activity)))
for o in outcomes:
    print(o.env, o.result, o.exit_code, o.message, sep="|")
print(sorted(name for name, _a in heard), {a for _n, a in heard})
"""


def test_a_worker_that_dies_fails_its_env_and_the_others_still_run(tmp_path):
    """Each env in a worker process of its own (what the CLI does): one killed mid-run (out
    of memory, say) is that env's failure; the others run in the workers left, and what
    they are doing reaches the parent as they go. In a process of its own: a fork is only
    safe from a process with one thread."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", WORKERS_SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    *lines, heard = done.stdout.splitlines()
    assert heard == ("['a', 'b', 'c', 'd'] {Activity(verb='up', done=1, total=2, "
                     "doing=(('kms.key', 'creating'),), note='')}")  # what each run was doing reached the parent
    rows = [line.split("|") for line in lines]
    assert [(env, result, code) for env, result, code, _msg in rows] == [
        ("a", "in sync", "0"), ("dies", "failed", "1"), ("b", "in sync", "0"), ("c", "in sync", "0"),
        ("d", "in sync", "0")], done.stdout
    assert "worker process died" in rows[1][3]
    pids = {msg for env, _r, _c, msg in rows if env != "dies"}
    assert len(pids) == 1 and pids != {str(os.getpid())}  # the worker left ran the rest; not this process


def test_a_worker_is_handed_an_env_it_has_a_context_for_first():
    from iotpipe.fleet import FleetEnv
    from iotpipe.fleet_workers import next_env

    envs = [FleetEnv(f"p{n}", region, None, profile, None) for n, (region, profile) in enumerate(
        [("us-east-1", None), ("eu-west-1", None), ("eu-west-1", "b"), ("eu-west-1", None)])]
    assert next_env(envs, [0, 1, 2, 3], set()) == 0
    assert next_env(envs, [0, 1, 2, 3], {("eu-west-1", None)}) == 1
    assert next_env(envs, [0, 2, 3], {("eu-west-1", "b")}) == 2
    assert next_env(envs, [0, 3], {("ap-south-1", None)}) == 0


def test_workers_are_forked_only_where_a_fork_is_safe(monkeypatch):
    import sys
    import threading

    from iotpipe.fleet import worker_start

    monkeypatch.delenv("IOTPIPE_FLEET_WORKERS", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    assert worker_start() == "fork"
    monkeypatch.setattr(threading, "active_count", lambda: 3)  # a fork would copy their held locks
    assert worker_start() == "spawn"
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert worker_start() == "spawn"
    monkeypatch.setenv("IOTPIPE_FLEET_WORKERS", " Threads ")
    assert worker_start() == "threads"
    monkeypatch.setenv("IOTPIPE_FLEET_WORKERS", "fibers")
    with pytest.raises(ConfigError, match="use one of fork, spawn, threads"):
        worker_start()
