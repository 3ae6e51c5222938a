"""`iotpipe device import` against in-process moto: files checked before anything is made,
concurrent registration paced per API, and runs killed at sampled calls then re-run, counted
afterwards with an independent boto3 client and the files on disk.

20 devices per test keep the suite fast; the 200/500/1,000-device runs are in
benchmarks/devices.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import boto3
import pytest

from iotpipe import device_import as di
from iotpipe.cli import main
from iotpipe.errors import ExitCode
from iotpipe.ratelimit import IOT_API_RATES, RateLimiter, TokenBucket, minimum_seconds
from iotpipe.steps import iot, kms
from tests.bulk_devices import Killed, Killer, ModelClock, serial_moto  # noqa: F401 - a fixture
from tests.support import CallLog

REGION = "us-east-1"
THING_TYPE = "manufacturing-sensor-dev"
POLICY = "iot-sensor-device-policy-dev"
RESOURCES = kms.RESOURCES + iot.RESOURCES
N = 20


def client():
    return boto3.client("iot", region_name=REGION)


def fast() -> RateLimiter:
    """AWS's rates times a million: pacing on, waiting off (pacing itself is tested below)."""
    return RateLimiter(scale=1e6)


@pytest.fixture
def env(make):
    make(resources=RESOURCES).up()

    def fresh(log: CallLog | None = None):
        return make(resources=RESOURCES, log=log)

    return fresh


def write_csv(path: Path, n: int = N, extra: str = "") -> Path:
    lines = ["id,location,facility,equipment_type"]
    lines += [f"sensor-{i:03d},hall-{i % 3},plant-a,press" for i in range(n)]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def fleet_state(tmp_path: Path, ids: list[str]) -> dict:
    """Everything counted independently: AWS through boto3, keys through the file system."""
    c = client()
    things = sorted(t["thingName"] for t in c.list_things(thingTypeName=THING_TYPE, maxResults=250)["things"])
    certs = c.list_certificates(pageSize=250)["certificates"]
    attached = {}
    for thing in things:
        principals = c.list_thing_principals(thingName=thing)["principals"]
        attached[thing] = principals
    active = [x for x in certs if x["status"] == "ACTIVE"]
    orphans = [x for x in certs if not c.list_principal_things(principal=x["certificateArn"])["things"]]
    problems = []
    for thing in ids:
        principals = attached.get(thing, [])
        if len(principals) != 1:
            problems.append(f"{thing}: {len(principals)} certificates attached")
            continue
        arn = principals[0]
        cid = arn.split("/")[-1]
        desc = c.describe_certificate(certificateId=cid)["certificateDescription"]
        if desc["status"] != "ACTIVE":
            problems.append(f"{thing}: certificate {desc['status']}")
        policies = [p["policyName"] for p in c.list_attached_policies(target=arn)["policies"]]
        if policies != [POLICY]:
            problems.append(f"{thing}: policies {policies}")
        folder = tmp_path / ".iotpipe" / "devices" / "dev" / thing
        key = folder / "private.pem.key"
        if not key.exists() or stat.S_IMODE(key.stat().st_mode) != 0o600:
            problems.append(f"{thing}: key missing or not 0600")
            continue
        record = json.loads((folder / "certificate.json").read_text())
        if record["certificate_arn"] != arn or record["status"] != "active":
            problems.append(f"{thing}: record {record['certificate_arn'][-8:]} {record['status']}")
        if hashlib.sha256(key.read_bytes()).hexdigest() != record["key_sha256"]:
            problems.append(f"{thing}: key does not match its record")
        if (folder / "certificate.pem.crt").read_text() != desc["certificatePem"]:
            problems.append(f"{thing}: certificate file differs")
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
        if leftovers:
            problems.append(f"{thing}: temporary files {leftovers}")
    return {"things": things, "active": len(active), "orphans": orphans, "problems": problems}


# --- the file ----------------------------------------------------------------------------------
def test_csv_and_json_lines_read_the_same_rows(tmp_path):
    csv_rows = di.read_rows(write_csv(tmp_path / "a.csv", 3))
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": r.device_id, **r.attributes}) for r in csv_rows) + "\n\n")
    assert [(r.device_id, r.attributes) for r in di.read_rows(jsonl)] == \
        [(r.device_id, r.attributes) for r in csv_rows]
    assert [r.line for r in csv_rows] == [2, 3, 4]
    assert csv_rows[0].attributes == {"location": "hall-0", "facility": "plant-a", "equipment_type": "press"}


def test_empty_attributes_are_not_set(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("device_id,location\ns1,\ns2,hall-1\n")
    assert [(r.device_id, r.attributes) for r in di.read_rows(f)] == [("s1", {}), ("s2", {"location": "hall-1"})]


@pytest.mark.parametrize("body, expected", [
    ("", ["the file is empty"]),
    ("\n  \n", ["the file is empty"]),
    ("id,location\n", ["no devices in the file"]),
    ("id,location\ns1,hall-1\ns2,hall 2\ns1,hall-3\n", ["line 3: invalid location 'hall 2'",
                                                         "line 4: duplicate id 's1' (first on line 2)"]),
    ("id,colour\ns1,red\n", ["line 1: the header must name the column id"]),
    ("id,location\ns1\nbad/id,x\n", ["line 2: 1 fields, the header has 2", "line 3: invalid device id 'bad/id'"]),
    ('{"id": "s1"}\n{"id": "s2", "location": 7}\nnot json\n{"id": "s1"}\n{"id": "s3", "owner": "x"}\n',
     ["line 2: location must be a string", "line 3: not a JSON object",
      "line 4: duplicate id 's1' (first on line 1)", "line 5: unknown key(s) owner"]),
    ('{"location": "hall-1"}\n', ["line 1: no id"]),
    ("id\n" + "x" * 5000 + "\n", ["line 2: longer than 4096 characters"]),
])
def test_bad_files_are_refused_with_every_line_number(tmp_path, body, expected):
    f = tmp_path / "devices.txt"
    f.write_text(body)
    with pytest.raises(di.ImportFileError) as caught:
        di.read_rows(f)
    for text in expected:
        assert text in str(caught.value)
    assert "\n" not in str(caught.value)


def test_too_many_devices_and_too_large_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(di, "MAX_DEVICES", 5)
    with pytest.raises(di.ImportFileError, match="line 7: more than 5 devices in one file"):
        di.read_rows(write_csv(tmp_path / "many.csv", 8))
    monkeypatch.setattr(di, "MAX_FILE_BYTES", 100)
    with pytest.raises(di.ImportFileError, match="more than 100"):
        di.read_rows(write_csv(tmp_path / "big.csv", 8))


def test_a_bad_file_exits_65_naming_lines_and_creates_nothing(moto, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = write_csv(tmp_path / "plant.csv", 5, extra="sensor-001,hall-1,plant-a,press\nok-1,hall:2,pl ant,x\n")
    code = main(["device", "import", str(f), "--env", "dev", "--region", REGION])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG
    assert "line 7: duplicate id 'sensor-001' (first on line 3)" in err
    assert "line 8: invalid facility 'pl ant'" in err
    assert client().list_things(thingTypeName=THING_TYPE)["things"] == []
    assert client().list_certificates()["certificates"] == []
    assert not (tmp_path / ".iotpipe" / "devices").exists()


# --- importing ---------------------------------------------------------------------------------
def test_import_registers_every_device_and_a_rerun_writes_nothing(env, tmp_path):
    rows = di.read_rows(write_csv(tmp_path / "plant.csv"))
    result = di.import_devices(env(), rows, limiter=fast())
    assert result.counts() == {"added": N}
    ids = [r.device_id for r in rows]
    state = fleet_state(tmp_path, ids)
    assert state["problems"] == [] and state["things"] == ids
    assert state["active"] == N and state["orphans"] == []
    thing = client().describe_thing(thingName="sensor-004")
    assert thing["attributes"] == {"location": "hall-1", "facility": "plant-a", "equipment_type": "press",
                                   "iotpipe:env": "dev"}

    log = CallLog()
    again = di.import_devices(env(log), rows, limiter=fast())
    assert again.counts() == {"unchanged": N}
    assert log.mutating == []
    assert log.counts()["iot.DescribeEndpoint"] == 1  # once per import, not per device


def test_changed_attributes_are_merged_and_reported_as_updated(env, tmp_path):
    f = write_csv(tmp_path / "plant.csv", 3)
    di.import_devices(env(), di.read_rows(f), limiter=fast())
    f.write_text(f.read_text().replace("sensor-001,hall-1", "sensor-001,hall-9"))
    result = di.import_devices(env(), di.read_rows(f), limiter=fast())
    assert [d.outcome for d in result.devices] == ["unchanged", "updated", "unchanged"]
    assert client().describe_thing(thingName="sensor-001")["attributes"]["location"] == "hall-9"


def test_a_device_that_cannot_be_registered_fails_alone_with_its_reason(env, tmp_path):
    client().create_thing(thingName="sensor-002", thingTypeName=THING_TYPE)  # someone else's
    rows = di.read_rows(write_csv(tmp_path / "plant.csv", 4))
    result = di.import_devices(env(), rows, limiter=fast())
    assert result.counts() == {"added": 3, "failed": 1}
    (failed,) = result.failed
    assert (failed.device_id, failed.line) == ("sensor-002", 4)
    assert "not an iotpipe device" in failed.reason
    assert client().list_thing_principals(thingName="sensor-002")["principals"] == []


def test_dry_run_reads_only_and_says_what_would_happen(env, tmp_path):
    f = write_csv(tmp_path / "plant.csv", 4)
    di.import_devices(env(), di.read_rows(f)[:2], limiter=fast())
    client().create_thing(thingName="sensor-003", thingTypeName=THING_TYPE)
    f.write_text(f.read_text().replace("sensor-001,hall-1", "sensor-001,hall-7"))
    log = CallLog()
    result = di.import_devices(env(log), di.read_rows(f), dry_run=True)
    assert [d.outcome for d in result.devices] == ["unchanged", "would-update", "would-add", "would-fail"]
    assert "attributes location" in result.devices[1].reason
    assert log.mutating == []
    assert not (tmp_path / ".iotpipe" / "devices" / "dev" / "sensor-002").exists()


def test_cli_import_json_summary_and_exit_3_when_a_device_fails(env, tmp_path, capsys):
    client().create_thing(thingName="sensor-001", thingTypeName=THING_TYPE)
    f = write_csv(tmp_path / "plant.csv", 3)
    code = main(["device", "import", str(f), "--env", "dev", "--region", REGION, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == ExitCode.INCOMPLETE
    assert out["counts"] == {"added": 2, "failed": 1}
    assert out["devices"][1]["line"] == 3 and "not an iotpipe device" in out["devices"][1]["reason"]
    assert "PRIVATE KEY" not in json.dumps(out)


# --- pacing ------------------------------------------------------------------------------------
def test_token_bucket_spaces_calls_at_its_rate_without_real_sleeps():
    now = [0.0]
    bucket = TokenBucket(10.0, 1.0, clock=lambda: now[0], sleep=lambda s: None, slots=[])
    for _ in range(30):
        bucket.take()
    assert bucket.slots == pytest.approx([i / 10 for i in range(30)])
    now[0] = 100.0  # a quiet spell refills at most ``burst`` tokens
    assert bucket.take() == 0.0 and bucket.take() == pytest.approx(0.1)


def test_import_keeps_every_iot_api_under_awss_rate_and_near_its_bound(env, tmp_path):
    """On a model clock (AWS answering instantly): no API gets more calls in any second than
    AWS allows, and the import takes at most 1.2x the least time AWS's limits allow for its
    calls. One worker, because per-thread model clocks cannot order several threads' calls
    in time; the threads' overlap under call latency is modelled in benchmarks/devices.py."""
    model = ModelClock()
    limiter = RateLimiter(clock=model.clock, sleep=model.sleep, trace=True)
    rows = di.read_rows(write_csv(tmp_path / "plant.csv"))
    result = di.import_devices(env(), rows, limiter=limiter, workers=1)
    assert result.counts() == {"added": N}
    for op, bucket in limiter.buckets.items():
        slots = sorted(bucket.slots or [])
        rate = IOT_API_RATES[op]
        busiest = max((sum(1 for t in slots if s <= t < s + 1 - 1e-9) for s in slots), default=0)
        assert busiest <= rate, (op, busiest)
    assert limiter.calls["CreateKeysAndCertificate"] == N
    bound = minimum_seconds(limiter.calls)
    assert bound == pytest.approx(N / 10)  # CreateKeysAndCertificate and UpdateCertificate, 10/s
    assert (N - 1) / 10 <= model.elapsed <= 1.2 * bound  # the first call goes at once


# --- killed halfway and re-run -----------------------------------------------------------------
@pytest.mark.parametrize("at, when", [(3, "before"), (41, "before"), (57, "after")])
def test_killed_at_a_sampled_call_then_rerun_ends_with_one_of_everything(env, tmp_path, at, when):
    """5 mutating calls a device (CreateThing, CreateKeysAndCertificate, UpdateCertificate,
    AttachPolicy, AttachThingPrincipal): 100 for 20 devices, sampled early and mid-way, the
    request failed before it was sent or its answer lost after AWS acted."""
    rows = di.read_rows(write_csv(tmp_path / "plant.csv"))
    engine = env()
    killer = Killer(at, when)
    killer.attach(engine.ctx.aws.events)
    with pytest.raises(Killed):
        di.import_devices(engine, rows, limiter=fast(), workers=4)
    assert killer.dead

    rerun = di.import_devices(env(), rows, limiter=fast())
    assert rerun.failed == []
    ids = [r.device_id for r in rows]
    state = fleet_state(tmp_path, ids)
    assert state["problems"] == []
    assert state["things"] == ids
    assert state["active"] == N  # one active certificate per device, none elsewhere
    lost = sum("without its answer" in d.reason for d in rerun.devices)
    assert len(state["orphans"]) <= lost  # every certificate a kill may have left is reported
    for orphan in state["orphans"]:  # a CreateKeysAndCertificate in flight whose answer was lost
        assert orphan["status"] == "INACTIVE"
        assert client().list_attached_policies(target=orphan["certificateArn"])["policies"] == []

    log = CallLog()
    assert di.import_devices(env(log), rows, limiter=fast()).counts() == {"unchanged": N}
    assert log.mutating == []


def test_an_interrupted_import_keeps_no_half_written_key(env, tmp_path):
    """Every key file on disk after a kill is whole and 0600, or absent (no temporary leftovers
    survive the re-run)."""
    rows = di.read_rows(write_csv(tmp_path / "plant.csv", 8))
    engine = env()
    Killer(17, "after").attach(engine.ctx.aws.events)
    with pytest.raises(Killed):
        di.import_devices(engine, rows, limiter=fast(), workers=3)
    for key in (tmp_path / ".iotpipe" / "devices" / "dev").glob("*/private.pem.key"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert key.read_text().rstrip().endswith("PRIVATE KEY-----")
    di.import_devices(env(), rows, limiter=fast())
    assert fleet_state(tmp_path, [r.device_id for r in rows])["problems"] == []


def test_skip_invalid_reports_bad_lines_first_then_imports_the_valid_rows(env, tmp_path, capsys):
    f = write_csv(tmp_path / "plant.csv", 5, extra="sensor-001,hall-1,plant-a,press\nbad id,hall-1,,\n")
    assert main(["device", "import", str(f), "--env", "dev", "--region", REGION]) == ExitCode.CONFIG
    assert "pass --skip-invalid to import the 5 valid rows" in capsys.readouterr().err
    code = main(["device", "import", str(f), "--env", "dev", "--region", REGION, "--skip-invalid", "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == ExitCode.INCOMPLETE
    assert out["counts"] == {"added": 5}
    assert [s["line"] for s in out["skipped_lines"]] == [7, 8]
    assert "line 7: duplicate id 'sensor-001'" in captured.err
    assert len(client().list_things(thingTypeName=THING_TYPE)["things"]) == 5


def test_a_file_wrong_as_a_whole_is_refused_even_with_skip_invalid(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("serial,location\n1,2\n")
    with pytest.raises(di.ImportFileError, match="line 1: the header"):
        di.read_file(f, skip_invalid=True)


THROTTLE_RULES = ("iot.throttle-CreateKeysAndCertificate", "iot.throttle-CreateThing",
                  "iot.throttle-AttachPolicy", "iot.throttle-AttachThingPrincipal")


def test_aws_throttles_an_unpaced_burst_and_never_the_paced_import(moto, tmp_path, monkeypatch):
    """AWS's per-API rates as behaviour rules (moto has none): 11 CreateKeysAndCertificate
    in one second are refused with AWS's ThrottlingException; the paced import of 20 devices,
    sleeping on the same clock, is refused nothing."""
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from iotpipe.aws import AwsContext
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine
    from tests.awsbehaviour import FakeClock, install, rules_named
    from tests.awsbehaviour.fixture import attach, behaviour_for

    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    burst = behaviour_for(rules_named(*THROTTLE_RULES), clock, REGION)
    session = boto3.session.Session(region_name=REGION)
    install(session._session.get_component("event_emitter"), burst)
    raw = session.client("iot", config=Config(retries={"total_max_attempts": 1}))
    for _ in range(10):
        raw.create_keys_and_certificate(setAsActive=False)
    with pytest.raises(ClientError) as caught:
        raw.create_keys_and_certificate(setAsActive=False)
    assert caught.value.response["Error"] == {"Code": "ThrottlingException", "Message": "The rate exceeds the limit."}
    clock.advance(1.0)
    raw.create_keys_and_certificate(setAsActive=False)  # the next second has room again
    clock.advance(2.0)  # the import shares the account's rate with nobody from here on

    config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
    aws = AwsContext(config.region, sleep=clock.sleep, clock=clock.now)
    behaviour = attach(aws, rules_named(*THROTTLE_RULES), clock)
    engine = make_engine(config, aws, tmp_path / ".iotpipe", resources=RESOURCES)
    engine.up()
    rows = di.read_rows(write_csv(tmp_path / "plant.csv"))
    result = di.import_devices(engine, rows, workers=1)  # the default buckets, on the clock
    assert result.counts() == {"added": N}, [d.reason for d in result.failed]
    assert behaviour.fired == []
    assert result.throttle_wait_s > 0


def test_text_summary_names_each_failure_with_its_line_and_counts_the_rest():
    import io

    from rich.console import Console

    from iotpipe.render import Renderer

    out = io.StringIO()
    renderer = Renderer(console=Console(file=out, width=200, force_terminal=False))
    result = di.ImportResult("dev", "plant.csv", False, devices=[
        di.DeviceOutcome("a", 2, "added"), di.DeviceOutcome("b", 3, "failed", "thing 'b' is not ours"),
        di.DeviceOutcome("c", 4, "unchanged")], seconds=1.5, throttle_wait_s=0.8)
    for done in (1, 2, 3):
        renderer.bulk_progress("importing", done, 3)
    renderer.bulk_summary(result, "import")
    text = out.getvalue()
    assert "importing: 3 of 3 devices" in text
    assert "failed line 3 b: thing 'b' is not ours" in text
    assert "import env dev: 1 added, 0 updated, 1 unchanged, 1 failed in 1.5 s" in text
    assert "paced to AWS's IoT rate limits" in text
