from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from iotpipe.errors import LockHeldError, StateError
from iotpipe.state import SCHEMA_VERSION, StateStore


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path, "dev", "us-east-1")


def test_write_ahead_then_record(store):
    store.intend("kms.key", "AWS::KMS::Key", "alias/x")
    on_disk = json.loads(store.path.read_text())
    assert on_disk["resources"]["kms.key"]["status"] == "creating"
    store.record("kms.key", "AWS::KMS::Key", "alias/x", {"id": "k1", "arn": "arn:k1"})
    fresh = StateStore(store.root, "dev", "us-east-1")
    record = fresh.get("kms.key")
    assert record.status == "present" and record.ids == {"id": "k1", "arn": "arn:k1"}


def test_record_unchanged_does_not_rewrite(store):
    store.record("a", "T", "n", {"arn": "x"})
    before = store.path.stat().st_mtime_ns
    os.utime(store.path, ns=(1, 1))
    store.record("a", "T", "n", {"arn": "x"})
    assert store.path.stat().st_mtime_ns == 1 != before


def test_atomic_replace_leaves_no_temp_files(store):
    for i in range(20):
        store.record(f"r{i}", "T", "n", {"arn": str(i)})
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["dev.json"]


def test_forget_and_remove_if_empty(store):
    store.record("a", "T", "n", {})
    store.forget("a")
    store.remove_if_empty()
    assert not store.path.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "corrupt"),
        ('{"schema_version": 1, "env": "dev"', "corrupt"),  # truncated
        ("[]", "not a JSON object"),
        (json.dumps({"schema_version": SCHEMA_VERSION + 1, "env": "dev", "region": "us-east-1"}), "newer"),
        (json.dumps({"schema_version": 1, "env": "prod", "region": "us-east-1"}), "env 'prod'"),
        (json.dumps({"schema_version": 1, "env": "dev", "region": "eu-west-1"}), "eu-west-1"),
        (json.dumps({"schema_version": 1, "env": "dev", "region": "us-east-1", "resources": {"a": 3}}), "invalid"),
    ],
)
def test_bad_state_files_are_refused(store, content, match):
    store.path.parent.mkdir(parents=True)
    store.path.write_text(content)
    with pytest.raises(StateError, match=match):
        store.load()
    assert store.path.read_text() == content  # nothing written


def test_foreign_account(store):
    store.set_account("111111111111")
    fresh = StateStore(store.root, "dev", "us-east-1")
    with pytest.raises(StateError, match="account 111111111111"):
        fresh.check_account("222222222222")


def test_lock_is_exclusive_and_names_the_holder(store):
    with store.lock("up"):
        other = StateStore(store.root, "dev", "us-east-1")
        with pytest.raises(LockHeldError) as err, other.lock("destroy"):
            pass
        assert f"pid {os.getpid()}" in str(err.value) and "operation up" in str(err.value)
    with store.lock("destroy"):  # released
        pass
    assert not store.lock_path.exists()


def test_lock_timeout_waits_for_release(store):
    clock = [0.0]
    slept = []
    holder = StateStore(store.root, "dev", "us-east-1")
    ctx = holder.lock("up")
    ctx.__enter__()

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds
        if len(slept) == 3:
            ctx.__exit__(None, None, None)

    with store.lock("destroy", timeout=10, sleep=sleep, clock=lambda: clock[0]) as info:
        assert info["Operation"] == "destroy"
    assert len(slept) == 3


def test_lock_timeout_expires(store):
    clock = [0.0]

    def sleep(seconds):
        clock[0] += seconds

    other = StateStore(store.root, "dev", "us-east-1")
    with store.lock("up"), pytest.raises(LockHeldError), \
            other.lock("up", timeout=2, sleep=sleep, clock=lambda: clock[0]):
        pass
    assert clock[0] >= 2


def test_stale_lock_of_dead_process_is_taken_over(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store.lock_path.parent.mkdir(parents=True)
    store.lock_path.write_text(json.dumps({"ID": "x", "Operation": "up", "Host": socket.gethostname(),
                                           "Pid": proc.pid, "Who": "someone", "Created": "2026-01-01T00:00:00Z"}))
    with store.lock("up") as info:
        assert json.loads(store.lock_path.read_text())["ID"] == info["ID"]


def test_lock_of_other_host_is_not_taken_over(store):
    store.lock_path.parent.mkdir(parents=True)
    store.lock_path.write_text(json.dumps({"ID": "x", "Operation": "up", "Host": "elsewhere",
                                           "Pid": 1, "Who": "ops@elsewhere", "Created": "2026-01-01T00:00:00Z"}))
    with pytest.raises(LockHeldError, match="elsewhere"), store.lock("up"):
        pass
    assert store.force_unlock()["Host"] == "elsewhere"
    with store.lock("up"):
        pass


def test_only_one_of_many_threads_gets_the_lock(tmp_path):
    winners, losers = [], []
    barrier = threading.Barrier(8)

    def contend():
        s = StateStore(tmp_path, "dev", "us-east-1")
        barrier.wait()
        try:
            with s.lock("up"):
                winners.append(1)
                barrier2.wait()
        except LockHeldError:
            losers.append(1)
            barrier2.wait()

    barrier2 = threading.Barrier(8)
    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
