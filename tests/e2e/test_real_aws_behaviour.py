"""The CLI against AWS's behaviour, not moto's: every rule of the table (``ALL_RULES``), applied
by the proxy to the real HTTP requests of an ``iotpipe`` subprocess whose sleeps advance the
proxy's clock (no real waiting).

What moto forgives and these runs do not: tables, streams, functions and mappings that are not
ready at once, deleted things still visible for a while, IoT's five-minute thing-type rule,
and every other rule the table holds (propagation errors, quotas...).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

from iotpipe.errors import ExitCode
from tests.pipeline_checks import assert_nothing_left, verify_pipeline

KILLER = Path(__file__).resolve().parents[1] / "killer.py"
# What a clean `up` must have met, or the proxy did not stand between the CLI and moto. Not
# Lambda's Pending: in a parallel run the other threads' waits move the one virtual clock, and
# the function may be Active by the time it is read again, so this check does not require it.
STATES_MET_BY_UP = {"dynamodb.table-creating", "kinesis.stream-creating"}


def _ok(proc, *codes: int) -> None:
    assert proc.returncode in (codes or (0,)), (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])


def _other_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", "def lambda_handler(event, context):\n    return {}\n")
    return buf.getvalue()


def _resources(proc) -> dict[str, dict]:
    return {r["logical_id"]: r for r in json.loads(proc.stdout)["resources"]}


def test_up_converge_repair_devices_destroy(aws_iotpipe, proxy, clients):
    started, clock0 = time.monotonic(), proxy.clock.now()
    up = aws_iotpipe("up", "--env", "dev")
    _ok(up)
    verify_pipeline(clients, "dev", enforce_tls=True)
    assert proxy.behaviour.fired_rules() >= STATES_MET_BY_UP
    # The waits happened on the proxy's clock (20 s CREATING, 30 s stream...), not in real time.
    assert proxy.clock.now() - clock0 >= 30

    # Converged: reads only, counted where they arrive (the proxy), not in the client.
    seen = len(proxy.seen)
    again = aws_iotpipe("up", "--env", "dev", "--json")
    _ok(again)
    assert {r["action"] for r in _resources(again).values()} == {"unchanged"}
    assert proxy.operations(mutating=True)[seen:] == [] and len(proxy.seen) > seen

    # Drift made out of band (straight to moto), repaired through AWS's update states.
    clients.client("lambda").update_function_configuration(FunctionName="iot-processor-dev",
                                                           MemorySize=512)
    clients.dynamodb.update_continuous_backups(
        TableName="sensor-metrics-dev",
        PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    clients.logs.put_retention_policy(logGroupName="/aws/lambda/iot-processor-dev", retentionInDays=7)
    lam = clients.client("lambda")
    lam.update_function_code(FunctionName="iot-processor-dev", ZipFile=_other_zip())
    clients.kinesis.increase_stream_retention_period(StreamName="iot-sensor-stream-dev",
                                                     RetentionPeriodHours=48)
    stream_arn = clients.kinesis.describe_stream_summary(
        StreamName="iot-sensor-stream-dev")["StreamDescriptionSummary"]["StreamARN"]
    clients.kinesis.update_stream_mode(StreamARN=stream_arn,
                                       StreamModeDetails={"StreamMode": "PROVISIONED"})
    mapping = lam.list_event_source_mappings(EventSourceArn=stream_arn)["EventSourceMappings"][0]
    lam.update_event_source_mapping(UUID=mapping["UUID"], BatchSize=50)
    # The repair shortens the stream retention someone raised to 48 h: without the env's config
    # file `up` asks before that (it drops records), so the operator says --yes. One resource at
    # a time, so that each repair meets its own update state: in parallel, the other repairs'
    # waits advance the proxy's one clock past it, and there is nothing left to wait out.
    repaired = aws_iotpipe("up", "--env", "dev", "--json", "--yes", "--parallelism", "1")
    _ok(repaired)
    updated = {lid for lid, r in _resources(repaired).items() if r["action"] == "update"}
    assert updated == {"lambda.function", "storage.metrics_table", "lambda.log_group",
                       "stream.sensor_stream", "lambda.event_source_mapping"}
    # Each repair met AWS's update state and waited it out before the next change.
    assert proxy.behaviour.fired_rules() >= {
        "lambda.function-inprogress-after-UpdateFunctionCode",
        "lambda.function-inprogress-after-UpdateFunctionConfiguration",
        "kinesis.stream-updating-after-UpdateStreamMode",
        "kinesis.stream-updating-after-DecreaseStreamRetentionPeriod", "dynamodb.pitr-enabling"}
    # Right after, while AWS still shows the mapping Updating and PITR ENABLING: in sync.
    _ok(aws_iotpipe("status", "--env", "dev"))
    verify_pipeline(clients, "dev", enforce_tls=True)

    for device in ("press-01", "press-02"):
        _ok(aws_iotpipe("device", "add", device, "--env", "dev", "--location", "hall-2"))
    assert len(clients.iot.list_things(thingTypeName="manufacturing-sensor-dev")["things"]) == 2

    # AWS refuses DeleteThingType for 5 minutes after DeprecateThingType, and DeletePolicy for
    # minutes after the devices' certificates were detached from it: everything else goes, those
    # two are reported pending with AWS's own words, exit 3.
    destroy = aws_iotpipe("destroy", "--env", "dev", "--yes", "--json")
    _ok(destroy, ExitCode.INCOMPLETE)
    results = _resources(destroy)
    pending = {lid for lid, r in results.items() if r["action"] == "pending"}
    assert pending == {"iot.thing_type", "iot.device_policy"}
    assert "Please wait for 5 minutes after deprecation" in results["iot.thing_type"]["message"]
    assert {r["action"] for lid, r in results.items() if lid not in pending} == {"delete", "scheduled"}  # the key: scheduled
    assert clients.iot.list_things()["things"] == []
    assert proxy.behaviour.fired_rules() >= {"iot.thing-type-delete-within-5-minutes",
                                             "iot.delete-policy-after-detach"}
    # The stream and table are left DELETING to AWS: nothing deleted after them needs them
    # gone, so destroy did not poll them once their delete was accepted.
    assert not proxy.behaviour.fired_rules() & {"kinesis.stream-deleting", "dynamodb.table-deleting"}

    # The operator comes back five minutes later (destroy --wait is the interrupted test's).
    proxy.clock.advance(300)
    finish = aws_iotpipe("destroy", "--env", "dev", "--yes", "--json")
    _ok(finish)
    finished = _resources(finish)
    assert {finished["iot.thing_type"]["action"], finished["iot.device_policy"]["action"]} == {"delete"}
    assert_nothing_left(clients, "dev")
    # Minutes of AWS time (CREATING, UPDATING, DELETING, five-minute rules), not of test time.
    assert proxy.clock.now() - clock0 > 2 * (time.monotonic() - started)


def test_interrupted_up_and_destroy_converge(aws_iotpipe, proxy, clients):
    """SIGKILL at sampled mutating calls, before the request left and after AWS answered it:
    the re-runs converge through AWS's transitional states and five-minute rules."""
    for n, when in ((9, "before"), (12, "after")):
        killed = aws_iotpipe(str(n), when, "up", "--env", "dev", script=KILLER)
        assert killed.returncode == -9, (n, when, killed.stderr[-2000:])
    _ok(aws_iotpipe("up", "--env", "dev"))
    verify_pipeline(clients, "dev", enforce_tls=True)
    killed = aws_iotpipe("6", "after", "destroy", "--env", "dev", "--yes", script=KILLER)
    assert killed.returncode == -9, killed.stderr[-2000:]
    _ok(aws_iotpipe("destroy", "--env", "dev", "--yes", "--wait"))
    assert_nothing_left(clients, "dev")
