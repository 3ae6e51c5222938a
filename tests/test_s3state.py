"""The S3 state backend: conditional writes, the lock object, stale locks, and a lost local
directory (in-process moto; moto answers IfMatch/IfNoneMatch with AWS's 412, and the behaviour
layer adds AWS's 409 ConditionalRequestConflict, which moto never answers)."""

from __future__ import annotations

import json
import shutil

import pytest

from iotpipe.aws import AwsContext
from iotpipe.errors import ConfigError, LockHeldError, StateConflictError, StateError
from iotpipe.s3state import S3Backend, parse_location
from iotpipe.state import StateStore
from tests.awsbehaviour import FakeClock, rules_named
from tests.support import CallLog

REGION = "us-east-1"
BUCKET = "iotpipe-state-test"
LOCATION = f"s3://{BUCKET}/plants"


@pytest.fixture
def aws(moto):
    context = AwsContext(REGION, sleep=lambda _s: None)
    s3 = context.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return context


def store_of(aws, tmp_path, env="dev"):
    backend = S3Backend(aws.client("s3"), parse_location(LOCATION), env)
    return StateStore(tmp_path / "local", env, REGION, backend=backend)


def body(aws, key):
    return json.loads(aws.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_locations_are_checked_in_one_line():
    assert str(parse_location("s3://my-bucket/a/b/")) == "s3://my-bucket/a/b"
    assert parse_location("s3://my-bucket").key("dev.json") == "dev.json"
    for bad in ("my-bucket/x", "s3://UPPER/x", "s3://b/x", "s3://ok-bucket/a//b", "s3://ok-bucket/../x"):
        with pytest.raises(ConfigError):
            parse_location(bad)


def test_every_write_is_conditional_and_a_lost_race_overwrites_nothing(aws, tmp_path):
    events = aws.client("s3").meta.events  # the client exists already: its own copy of the hooks
    log = CallLog().attach(events)
    sent: list[dict] = []
    events.register("provide-client-params.s3.PutObject", lambda params, **_: sent.append(dict(params)))
    first, second = store_of(aws, tmp_path), store_of(aws, tmp_path)
    first.intend("kms.key", "AWS::KMS::Key", "alias/x")
    second.load()  # reads the first run's record, ETag included
    first.record("kms.key", "AWS::KMS::Key", "alias/x", {"arn": "arn:k1"})
    with pytest.raises(StateConflictError, match="changed since this run read it"):
        second.record("kms.key", "AWS::KMS::Key", "alias/x", {"arn": "arn:OTHER"})
    assert body(aws, "plants/dev.json")["resources"]["kms.key"]["ids"] == {"arn": "arn:k1"}
    assert len(sent) == 3
    assert sent[0]["IfNoneMatch"] == "*" and all("IfMatch" in p for p in sent[1:])
    assert {c for c in log.calls} == {("s3", "PutObject"), ("s3", "GetObject")}


def test_a_state_created_by_another_run_first_is_a_conflict_too(aws, tmp_path):
    first, second = store_of(aws, tmp_path), store_of(aws, tmp_path)
    first.load()
    second.load()  # both saw no state
    first.set_account("123456789012")
    with pytest.raises(StateConflictError, match="read ETag none"):
        second.set_account("210987654321")


def test_a_resent_write_whose_answer_was_lost_is_ours_not_a_conflict(aws, tmp_path):
    """botocore sends a request again when the answer was lost; the first one already wrote,
    so the resent IfMatch meets 412 although the object holds exactly our bytes."""
    store = store_of(aws, tmp_path)
    store.set_account("123456789012")
    read_etag = store._token
    text = '{"ours": true}'
    written = aws.client("s3").put_object(Bucket=BUCKET, Key="plants/dev.json", Body=text.encode(),
                                          IfMatch=read_etag)["ETag"]  # the first send, answer lost
    assert store.backend.write(text, read_etag) == written  # the resend: no conflict, new ETag
    with pytest.raises(StateConflictError):
        store.backend.write('{"different": true}', read_etag)


def test_aws_409_conflict_is_retried_on_the_same_etag(aws, tmp_path):
    from tests.awsbehaviour import install
    from tests.awsbehaviour.fixture import behaviour_for

    behaviour = install(aws.client("s3").meta.events,
                        behaviour_for(rules_named("s3.conditional-write-conflict"), FakeClock(), REGION))
    store = store_of(aws, tmp_path)
    store.set_account("123456789012")
    assert behaviour.fired_rules() == {"s3.conditional-write-conflict"}
    assert body(aws, "plants/dev.json")["account"] == "123456789012"
    with store.lock("up"):  # the lock's IfNoneMatch put is retried as well
        pass


def test_the_lock_is_exclusive_names_its_holder_and_only_the_holder_removes_it(aws, tmp_path):
    store, other = store_of(aws, tmp_path), store_of(aws, tmp_path)
    with store.lock("up") as info:
        held = body(aws, "plants/dev.lock")
        assert {"ID", "Operation", "User", "Host", "Pid", "Created", "Who"} <= set(held)
        assert held["ID"] == info["ID"] and held["Operation"] == "up"
        with pytest.raises(LockHeldError, match=r"pid \d+ .*operation up"), other.lock("destroy"):
            pass
        assert other.backend.remove_lock({"ID": "someone-else"}) is False
        assert body(aws, "plants/dev.lock")["ID"] == info["ID"]
    assert other.read_lock() is None
    with other.lock("destroy"):  # released; a versioned bucket's delete marker does not block
        pass


def test_lock_timeout_waits_with_progress(aws, tmp_path):
    store, other = store_of(aws, tmp_path), store_of(aws, tmp_path)
    seen, clock = [], [0.0]
    other.on_progress = seen.append
    holding = store.lock("up")
    holding.__enter__()

    def sleep(seconds):
        clock[0] += seconds
        if clock[0] >= 6:
            holding.__exit__(None, None, None)

    with other.lock("destroy", timeout=30, sleep=sleep, clock=lambda: clock[0]):
        pass
    assert [p.kind for p in seen] == ["lock-wait", "lock-wait"]
    assert "held by pid" in seen[0].message


def test_a_stale_lock_is_taken_over_only_with_force(aws, tmp_path):
    old = {"ID": "old", "Operation": "up", "User": "ops", "Host": "laptop-7", "Pid": 4242,
           "Who": "ops@laptop-7", "Created": "2020-01-01T00:00:00Z"}
    aws.client("s3").put_object(Bucket=BUCKET, Key="plants/dev.lock", Body=json.dumps(old).encode())
    store = store_of(aws, tmp_path)
    with pytest.raises(LockHeldError, match="looks stale .*hours old.*--force.*iotpipe unlock"), store.lock("up"):
        pass
    seen = []
    store.force, store.on_progress = True, seen.append
    with store.lock("up") as info:
        assert body(aws, "plants/dev.lock")["ID"] == info["ID"]
    assert seen[0].kind == "lock-takeover" and "laptop-7" in seen[0].message


def test_unlock_removes_only_the_holder_it_was_shown(aws, tmp_path):
    store = store_of(aws, tmp_path)
    holding = store.lock("up")
    shown = (holding.__enter__(), store.read_lock())[1]
    with pytest.raises(LockHeldError, match="changed hands"):
        store.force_unlock({"ID": "another"})
    assert store.force_unlock(shown)["ID"] == shown["ID"]
    assert store.read_lock() is None


def test_a_missing_bucket_says_how_to_create_it(moto, tmp_path):
    aws = AwsContext(REGION)
    store = StateStore(tmp_path, "dev", REGION, backend=S3Backend(
        aws.client("s3"), parse_location("s3://no-such-state-bucket/x"), "dev"))
    with pytest.raises(StateError, match="iotpipe state bootstrap s3://no-such-state-bucket/x"):
        store.load()


def test_up_on_s3_state_then_a_deleted_local_directory_costs_nothing(aws, make, tmp_path):
    log = CallLog()
    local = tmp_path / "machine-a"
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine

    config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false", f'state="{LOCATION}"'))
    first = make_engine(config, AwsContext(REGION, sleep=lambda _s: None), local)
    assert first.store.path == f"{LOCATION}/dev.json"
    first.up()
    assert body(aws, "plants/dev.json")["resources"]
    shutil.rmtree(local, ignore_errors=True)  # the laptop is gone; another machine takes over
    again = AwsContext(REGION, sleep=lambda _s: None)
    log.attach(again.events)
    second = make_engine(config, again, tmp_path / "machine-b")
    second.up()
    mutating = [c for c in log.mutating if c[1] not in ("PutObject", "DeleteObject")]
    assert mutating == [], mutating  # nothing recreated: only the lock object was written
    assert [k["Key"] for k in aws.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]] == ["plants/dev.json"]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_writers_in_one_process_lose_no_record(aws, tmp_path, backend):
    """The parallel engine's worker threads record resources at once: every write-ahead and
    every record must land, each as one conditional replace after the one before (on S3 a
    write with a stale ETag would be refused as another run's)."""
    import threading

    store = store_of(aws, tmp_path) if backend == "s3" else StateStore(tmp_path / "local", "dev", REGION)
    store.load()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        start.wait()
        try:
            for i in range(6):
                lid = f"w{n}.r{i}"
                store.intend(lid, "Test::Fake", lid)
                store.record(lid, "Test::Fake", lid, {"id": lid})
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    saved = StateStore(tmp_path / "local", "dev", REGION, backend=store.backend).load()
    assert {lid for lid, rec in saved.resources.items() if rec.status == "present"} == \
        {f"w{n}.r{i}" for n in range(8) for i in range(6)}
