"""`iotpipe fleet`: the fleet file, and a fleet of 5 envs in 2 regions converging and going
away (in-process moto, shared S3 state)."""

from __future__ import annotations

import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.errors import ConfigError, ExitCode, OwnershipError
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
