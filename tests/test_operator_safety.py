"""Issue 8, the operator's side: one env per command, what destroy will touch shown (and
checked) before anything goes, device keys kept, `unlock` that cannot be pointed elsewhere.

The CLI runs in-process (`main`) against in-process moto; an independent boto3 client checks
what survived, and a call log on every AwsContext the CLI builds proves what was written.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import boto3
import click
import pytest

from iotpipe import aws as aws_module
from iotpipe import devices
from iotpipe.cli import main
from iotpipe.engine import Engine
from iotpipe.errors import ExitCode, OwnershipError
from iotpipe.state import StateStore
from iotpipe.steps import all_resources
from iotpipe.steps.base import Current, Resource, StepContext
from tests.pipeline_checks import Clients, verify_pipeline
from tests.support import CallLog

REGION = "us-east-1"
EMU = ("--set", "storage.enforce_tls=false")  # moto applies the TLS-only Deny to every object call


@pytest.fixture
def cli(moto, monkeypatch, tmp_path):
    """main() in an empty directory; every AwsContext it builds logs its calls into cli.log."""
    monkeypatch.chdir(tmp_path)
    log = CallLog()
    original = aws_module.AwsContext.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        log.attach(self.events)

    monkeypatch.setattr(aws_module.AwsContext, "__init__", patched)

    def run(*args: str) -> int:
        return main(list(args))

    run.log = log
    return run


def s3():
    return boto3.client("s3", region_name=REGION)


def buckets() -> list[str]:
    return sorted(b["Name"] for b in s3().list_buckets().get("Buckets", []))


class _Tty:
    """stdin as a terminal, so destroy and up ask instead of refusing."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def answer(monkeypatch):
    """Answer click's confirmation with ``answer.value``; ``answer.asked`` records the questions."""
    asked: list[str] = []

    def confirm(text: str, *args, **kwargs) -> bool:
        asked.append(text)
        return fake.value

    class fake:
        value = False

    fake.asked = asked
    monkeypatch.setattr(sys, "stdin", _Tty())
    monkeypatch.setattr(click, "confirm", confirm)
    return fake


# -- item 1: one env per command ----------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ("destroy", "--yes"),
    ("destroy",),  # refused before the question, not after it
    ("up",),
    ("plan", "--destroy"),
    ("status",),
    ("device", "add", "s1"),
    ("device", "list"),
    ("device", "remove", "s1"),  # no --yes and no terminal: the env is checked before that refusal
])
def test_set_env_other_than_env_is_refused_before_anything(cli, command, capsys):
    assert cli("up", "--env", "victim1", *EMU) == ExitCode.OK
    before = buckets()
    cli.log.clear()
    code = cli(*command, "--env", "dev", "--set", "env=victim1", *EMU)
    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "env=victim1" in err and "--env" in err
    assert cli.log.calls == []  # not even STS: nothing read, nothing written
    assert buckets() == before
    assert cli("status", "--env", "victim1", *EMU) == ExitCode.OK  # victim1 is whole


def test_env_key_in_the_config_file_other_than_env_is_refused(cli, tmp_path, capsys):
    assert cli("up", "--env", "victim1", *EMU) == ExitCode.OK
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dev.toml").write_text('env = "victim1"\n[storage]\nenforce_tls = false\n')
    cli.log.clear()
    assert cli("destroy", "--env", "dev", "--yes") == ExitCode.CONFIG
    assert "victim1" in capsys.readouterr().err
    assert cli.log.calls == []
    assert cli("status", "--env", "victim1", *EMU) == ExitCode.OK


def test_set_env_equal_to_env_is_accepted(cli):
    assert cli("plan", "--env", "dev", "--set", "env=dev", *EMU) == ExitCode.CHANGES_PENDING


# -- item 4 (engine): every read and ownership check before the first delete -----------------------
class _Fake(Resource):
    """A resource whose read is scripted and whose delete is recorded."""

    resource_type = "Test::Fake"

    def __init__(self, logical_id: str, deleted: list[str], *, managed: bool = True,
                 blockers: tuple[str, ...] = ()) -> None:
        self.logical_id = logical_id
        self._deleted, self._managed, self._blockers = deleted, managed, blockers

    def name(self, ctx: StepContext) -> str:
        return f"fake-{self.logical_id}"

    def desired(self, ctx):
        return {}

    def read(self, ctx):
        return Current({}, {"name": self.name(ctx)}, managed=self._managed, blockers=self._blockers)

    def create(self, ctx, desired):
        return {}

    def update(self, ctx, current, desired, changes):
        pass

    def delete(self, ctx, current):
        self._deleted.append(self.logical_id)


def _fake_engine(make, resources) -> Engine:
    real = make(resources=())
    return Engine(real.ctx, real.store, resources)


def test_a_blocker_in_the_middle_stops_destroy_before_any_delete(make):
    deleted: list[str] = []
    resources = [_Fake("a.first", deleted), _Fake("b.middle", deleted, blockers=("hand-made",)),
                 _Fake("c.last", deleted)]
    with pytest.raises(OwnershipError, match="b.middle.*hand-made"):
        _fake_engine(make, resources).destroy()
    assert deleted == []  # c.last comes first in destroy's order, and it is still there


def test_a_foreign_resource_in_the_middle_is_skipped_and_named_before_any_delete(make):
    deleted: list[str] = []
    seen = {}

    def confirm(preview) -> bool:
        seen["deleted_so_far"] = list(deleted)
        seen["actions"] = {r.logical_id: r.action for r in preview.resources}
        return True

    resources = [_Fake("a.first", deleted), _Fake("b.middle", deleted, managed=False), _Fake("c.last", deleted)]
    result = _fake_engine(make, resources).destroy(confirm)
    assert seen == {"deleted_so_far": [],
                    "actions": {"c.last": "delete", "b.middle": "skipped", "a.first": "delete"}}
    assert deleted == ["c.last", "a.first"]
    skipped = next(r for r in result.resources if r.logical_id == "b.middle")
    assert skipped.action == "skipped" and "not managed by iotpipe" in skipped.message


def test_a_foreign_thing_of_our_type_stops_destroy_of_the_whole_pipeline_before_any_write(make, log):
    """Devices sit in the middle of destroy's order (after trail and lambda): before, destroy
    deleted the trail, the function and the devices, then failed on the foreign thing."""
    make().up()
    devices.add_device(make(), "s1")
    iot = boto3.client("iot", region_name=REGION)
    iot.create_thing(thingName="hand-made", thingTypeName="manufacturing-sensor-dev")
    with pytest.raises(OwnershipError, match="iot.devices.*hand-made"):
        make(log=log).destroy()
    assert log.mutating == []
    verify_pipeline(Clients(REGION), "dev")
    assert len(iot.list_thing_principals(thingName="s1")["principals"]) == 1


def test_plan_destroy_names_the_blocker_and_exits_68(cli, capsys):
    assert cli("up", *EMU) == ExitCode.OK
    boto3.client("iot", region_name=REGION).create_thing(thingName="hand-made",
                                                         thingTypeName="manufacturing-sensor-dev")
    capsys.readouterr()
    assert cli("plan", "--destroy", *EMU) == ExitCode.OWNERSHIP
    out, err = capsys.readouterr()
    assert "iot.devices" in out and "stops destroy" in out and "hand-made" in err


# -- item 6: what destroy will touch, before it does ----------------------------------------------
def test_destroy_shows_everything_then_asks_and_a_no_deletes_nothing(cli, answer, capsys):
    assert cli("up", *EMU) == ExitCode.OK
    capsys.readouterr()
    cli.log.clear()
    assert cli("destroy", *EMU) == ExitCode.ABORTED
    out = capsys.readouterr().out
    assert cli.log.mutating == []
    assert len(answer.asked) == 1 and "123456789012" in answer.asked[0] and REGION in answer.asked[0]
    head = out.splitlines()[:2]
    assert "env dev" in head[0] and "account 123456789012" in head[0] and f"region {REGION}" in head[0]
    assert "endpoint AWS (default endpoints)" in head[0]
    assert "built-in defaults: config/dev.toml not found" in head[1]
    for resource in all_resources():
        assert resource.logical_id in out or resource.retired
    assert "versioned: emptied first" in out
    assert "scheduled for deletion (30 days)" in out
    verify_pipeline(Clients(REGION), "dev")


def test_destroy_asked_and_confirmed_reports_the_key_as_scheduled(cli, answer, capsys):
    assert cli("up", *EMU, "--set", "kms.deletion_window_days=7") == ExitCode.OK
    capsys.readouterr()
    answer.value = True
    assert cli("destroy", *EMU, "--set", "kms.deletion_window_days=7") == ExitCode.OK
    out = capsys.readouterr().out
    (key_line,) = [line for line in out.splitlines() if "kms.key" in line and line.startswith("- scheduled")]
    assert "scheduled for deletion (7 days)" in key_line and "deleted" not in key_line.split("kms.key")[0]
    assert buckets() == []


def test_nothing_to_destroy_is_not_asked(cli, answer):
    assert cli("destroy", *EMU) == ExitCode.OK
    assert answer.asked == []


def test_destroy_without_a_terminal_shows_what_would_go_and_refuses(cli, capsys):
    assert cli("up", *EMU) == ExitCode.OK
    capsys.readouterr()
    cli.log.clear()
    assert cli("destroy", *EMU) == ExitCode.ABORTED
    out, err = capsys.readouterr()
    assert "stream.sensor_stream" in out and "will be deleted" in out
    assert "--yes" in err and cli.log.mutating == []


def test_plan_destroy_exit_codes_and_json(cli, capsys):
    assert cli("plan", "--destroy", *EMU) == ExitCode.OK  # nothing there
    assert cli("up", *EMU) == ExitCode.OK
    capsys.readouterr()
    cli.log.clear()
    assert cli("plan", "--destroy", "--json", *EMU) == ExitCode.CHANGES_PENDING
    doc = json.loads(capsys.readouterr().out)
    assert cli.log.mutating == []
    assert doc["account"] == "123456789012" and doc["region"] == REGION and doc["env"] == "dev"
    assert doc["endpoint"] == "AWS (default endpoints)" and doc["config_file"] is None
    assert doc["config"].startswith("built-in defaults: config/dev.toml not found")
    actions = {r["logical_id"]: r["action"] for r in doc["resources"]}
    assert actions["kms.key"] == "scheduled" and actions["storage.sensor_bucket"] == "delete"
    assert [r["logical_id"] for r in doc["resources"]][0] == "monitor.dashboard"  # destroy's order
    assert cli("destroy", "--yes", *EMU) == ExitCode.OK
    assert cli("plan", "--destroy", *EMU) == ExitCode.OK


@pytest.mark.parametrize("command", [("up",), ("plan",), ("status",)])
def test_header_names_env_account_region_endpoint_and_config(cli, tmp_path, capsys, command):
    code = cli(*command, "--env", "dev", *EMU)
    assert code in (ExitCode.OK, ExitCode.CHANGES_PENDING)
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first == f"env dev · account 123456789012 · region {REGION} · endpoint AWS (default endpoints)"
    assert second.startswith("config: built-in defaults: config/dev.toml not found")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dev.toml").write_text("[storage]\nenforce_tls = false\n")
    cli(*command, "--env", "dev", "--json")
    doc = json.loads(capsys.readouterr().out)
    assert doc["config_file"] == "config/dev.toml" and doc["config"] == "config/dev.toml"
    assert doc["account"] == "123456789012" and doc["endpoint"] == "AWS (default endpoints)"
    assert doc["state_file"] == ".iotpipe/state/dev.json"


# -- item 6: `up` with built-in defaults on a live env ---------------------------------------------
def _retention() -> int:
    kinesis = boto3.client("kinesis", region_name=REGION)
    return kinesis.describe_stream_summary(StreamName="iot-sensor-stream-dev")[
        "StreamDescriptionSummary"]["RetentionPeriodHours"]


@pytest.fixture
def deployed_with_config(cli, tmp_path):
    """An env deployed from its config file (168 h retention); then the file is gone."""
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "dev.toml"
    path.write_text("[storage]\nenforce_tls = false\n[stream]\nretention_hours = 168\n")
    assert cli("up", "--env", "dev") == ExitCode.OK
    path.unlink()
    assert _retention() == 168
    cli.log.clear()


def test_up_without_its_config_file_refuses_to_shorten_retention_without_a_terminal(
        cli, deployed_with_config, capsys):
    assert cli("up", "--env", "dev", *EMU) == ExitCode.ABORTED
    err = capsys.readouterr().err
    assert "config/dev.toml not found" in err and "retention_hours: 168 → 24" in err and "--yes" in err
    assert cli.log.mutating == [] and _retention() == 168
    assert cli("up", "--env", "dev", "--yes", *EMU) == ExitCode.OK
    assert _retention() == 24


def test_up_without_its_config_file_asks_in_a_terminal(cli, deployed_with_config, answer):
    assert cli("up", "--env", "dev", *EMU) == ExitCode.ABORTED
    assert len(answer.asked) == 1 and cli.log.mutating == [] and _retention() == 168


def test_up_with_defaults_only_warns_when_no_data_would_be_lost(cli, capsys):
    assert cli("up", *EMU, "--set", "lambda.memory_mb=512") == ExitCode.OK
    capsys.readouterr()
    assert cli("up", *EMU) == ExitCode.OK
    err = capsys.readouterr().err
    assert "memory_mb: 512 → 256" in err and "warning" in err


def test_up_on_a_new_env_or_with_the_config_file_does_not_warn(cli, tmp_path, capsys):
    assert cli("up", *EMU) == ExitCode.OK
    assert "warning" not in capsys.readouterr().err
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dev.toml").write_text("[storage]\nenforce_tls = false\n[stream]\nretention_hours = 48\n")
    cli.log.clear()
    assert cli("up") == ExitCode.OK  # the file is the operator's intent: no question
    assert "warning" not in capsys.readouterr().err and _retention() == 48


# -- item 7: device keys are precious ------------------------------------------------------------
def test_destroy_names_the_local_key_files_it_leaves(cli, tmp_path, capsys):
    assert cli("up", *EMU) == ExitCode.OK
    assert cli("device", "add", "s1", *EMU) == ExitCode.OK
    key = Path(".iotpipe/devices/dev/s1/private.pem.key")
    capsys.readouterr()
    assert cli("destroy", "--yes", *EMU) == ExitCode.OK
    out = capsys.readouterr().out
    assert str(key) in out and "left" in out
    assert (tmp_path / key).is_file()
    assert cli("destroy", "--yes", "--json", *EMU) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["local_key_files"] == [str(key)]


# -- item 8: unlock ------------------------------------------------------------------------------
def _write_lock(path: Path, pid: int, host: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ID": "x", "Operation": "up", "Who": "ops@here", "Pid": pid, "Host": host,
                                "Created": "2026-12-03T10:00:00Z"}))


def test_unlock_refuses_a_path_outside_the_state_dir(tmp_path, capsys):
    victim = tmp_path / "victim" / "important.lock"
    victim.parent.mkdir()
    victim.write_text("precious")
    state_dir = tmp_path / "x" / "y"
    assert main(["unlock", "--env", "../../../victim/important", "--state-dir", str(state_dir), "--yes"]) \
        == ExitCode.CONFIG
    assert victim.read_text() == "precious"
    assert "not a valid env name" in capsys.readouterr().err


def test_unlock_refuses_an_invalid_env_instead_of_saying_not_locked(tmp_path, capsys):
    assert main(["unlock", "--env", "Dev", "--state-dir", str(tmp_path), "--yes"]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "not locked" not in err and "'Dev'" in err


def test_unlock_keeps_a_lock_whose_holder_runs_on_this_host(tmp_path, capsys):
    lock = tmp_path / "locks" / "dev.lock"
    _write_lock(lock, os.getpid(), socket.gethostname())  # this test's process: alive
    assert main(["unlock", "--env", "dev", "--state-dir", str(tmp_path), "--yes"]) == ExitCode.LOCKED
    assert lock.exists()
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert main(["unlock", "--env", "dev", "--state-dir", str(tmp_path), "--yes", "--force"]) == ExitCode.OK
    assert not lock.exists()


def test_unlock_removes_a_lock_of_another_host_or_a_dead_process(tmp_path):
    lock = tmp_path / "locks" / "dev.lock"
    _write_lock(lock, os.getpid(), "build-agent-3")  # a pid here means nothing for another host
    assert main(["unlock", "--env", "dev", "--state-dir", str(tmp_path), "--yes"]) == ExitCode.OK
    assert not lock.exists()


def test_state_store_refuses_an_env_that_is_a_path(tmp_path):
    from iotpipe.errors import StateError

    with pytest.raises(StateError):
        StateStore(tmp_path, "../escape", "us-east-1")


def test_destroy_checks_the_state_file_before_asking_or_reading_aws(cli, tmp_path, capsys):
    state = tmp_path / ".iotpipe" / "state" / "dev.json"
    state.parent.mkdir(parents=True)
    state.write_text("{truncated")
    assert cli("destroy", *EMU) == ExitCode.STATE  # not 70: the state is checked first
    assert cli.log.calls == [] and state.read_text() == "{truncated"


def test_status_of_an_alias_to_someone_elses_key_is_foreign(make):
    """The foreign key's ids must not vouch for the alias that points at it."""
    kms = boto3.client("kms", region_name=REGION)
    foreign = kms.create_key(Description="someone else's")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/iot-manufacturing-dev", TargetKeyId=foreign)
    from iotpipe.steps import kms as kms_step

    status = {r.logical_id: r.health for r in make(resources=kms_step.RESOURCES).status().resources}
    assert status == {"kms.key": "foreign", "kms.alias": "foreign"}


def test_no_doc_line_removes_the_whole_state_directory():
    """It holds every device's private key, which AWS cannot hand out again."""
    import re

    repo = Path(__file__).resolve().parents[1]
    whole_dir = re.compile(r"\brm\s+(?:-\w+\s+)*(?:\S*/)?\.iotpipe/?(?:\s|$|`)")
    docs = [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]
    offending = [f"{path.name}: {line}" for path in docs for line in path.read_text().splitlines()
                 if whole_dir.search(line)]
    assert offending == []
    assert whole_dir.search("rm -rf .iotpipe") and whole_dir.search("rm -r ./.iotpipe/")
    assert not whole_dir.search("rm .iotpipe/state/line7.json")


def test_finishing_a_half_made_resource_is_not_data_loss(make):
    """A run killed inside a create leaves e.g. a log group without retention: the next `up`
    sets it without asking, while the same change on a finished resource counts as loss."""
    from iotpipe.steps import kms as kms_step
    from iotpipe.steps import stream as stream_step

    resources = kms_step.RESOURCES + stream_step.RESOURCES
    make(resources=resources, sets=("stream.retention_hours=48",)).up()
    finished = make(resources=resources)
    assert [(r.logical_id, c.field) for r, c in finished.lossy_changes(finished.plan())] == [
        ("stream.sensor_stream", "retention_hours")]
    half_made = make(resources=resources)
    half_made.store.intend("stream.sensor_stream", "AWS::Kinesis::Stream", "iot-sensor-stream-dev")
    assert half_made.lossy_changes(half_made.plan()) == []
