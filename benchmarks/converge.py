"""`up`, a converged `up` and `destroy` against a model of AWS's time, next to the model's
critical path: how close does iotpipe's parallel engine come to what AWS itself imposes?

    python benchmarks/converge.py [--time-scale 0.25] [--parallelism 8] [--json]

Run by hand (it is not a test); it prints figures. What it measures:

- The real CLI runs as a subprocess against the embedded emulator (moto), through the
  behaviour proxy of the test suite (``tests/awsbehaviour``): every rule that holds for any
  caller (``on_every_account``), so the CLI meets AWS's transitional states (a table CREATING
  for 20 s, a stream UPDATING after encryption starts, a function Pending) and its transient
  refusals (a role not assumable for seconds after CreateRole, a mapping that cannot read the
  stream for 45 s after PutRolePolicy...).
- Time is real, so the parallel engine's waits overlap as they do on AWS (the tests' virtual
  clock adds them up instead). ``--time-scale`` shrinks it: at 0.25 a 20 s CREATING costs 5 s;
  the proxy's clock and the CLI's ``time.sleep``/``time.monotonic`` (``timescale/
  sitecustomize.py``) run at the same rate, so every figure below is in *model seconds* (AWS's
  seconds) unless it says real. What is not modelled is not scaled: the CLI's own CPU time
  and the emulator's are multiplied by 1/scale in model seconds (a run that spends 1 s of CPU
  shows 4 s at 0.25). Process start-up is measured apart and counted in real seconds. Use
  ``--time-scale 1`` for figures to publish.
- Every request costs at least its modelled round trip (``LATENCY_S``, by service): the proxy
  holds the answer until then (the emulator's own time counts towards it).

The critical path is a lower bound for *any* client under the same model: the longest path
through the resource graph (``depends_on``; destroy walks it reversed), where a resource costs
its minimal rounds of requests (``CREATE`` / ``DESTROY``: a round is a set of requests that can
go at once, and costs its slowest round trip), plus the transitional states AWS imposes on it
(``Wait``: the state's duration after the call that started it, then one read that sees it
over), and a request gated by a rule (``Gate``: CreateFunction refused until 20 s after
CreateRole) goes no earlier than the rule allows after its trigger, in the same resource or in
the dependency named. Durations come from the rules themselves (``rules_named``), not copies.
Reads that find out what exists are not counted (a client may create blindly and take
"already exists" for an answer). Workers are unlimited in the bound. Destroy's critical path
leaves out what AWS makes everyone wait minutes or days for and iotpipe reports as pending or
scheduled: IoT's 5-minute rule for a deprecated thing type (and for a detached policy), the KMS
key's deletion window.

Targets (issue 10): `up` at most 1.2x its critical path, `destroy` at most 1.2x its own, a
converged `up` at most 2 s plus process start. At parallelism 1 the ratio is information: the
declared order cannot overlap waits, so the run is compared with the *serial* bound as well
(the same model with one resource at a time, in the declared order).

Each run uses a fresh env name, one env at a time, with the built-in default configuration
(no config file). The converged `up` runs twice: as is, and with an empty config file for the
env (the same defaults), which spares the defaults guard's plan pass.
The per-resource table after the summary says where iotpipe spent time beyond the model: for
each resource, the model's own duration (from its last dependency's end to its end) and
iotpipe's (the same, read from the time each resource's line was printed). iotpipe prints
result lines in the declared order, so a line can wait for those before it: a resource's
figure can include that wait (the summary's wall times do not depend on it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from tests.awsbehaviour.model import ErrorRule, GhostRule, StateRule  # noqa: E402
from tests.awsbehaviour.proxy import _SCOPE, CONTROL, BehaviourProxy  # noqa: E402
from tests.awsbehaviour.rules import on_every_account, rules_named  # noqa: E402

TIMESCALE = Path(__file__).resolve().parent / "timescale"  # the CLI's sitecustomize
# Rules an `up` arms that would refuse a delete made right after it (let pass before destroy).
SETTLE_RULES = ("lambda.mapping-delete-in-use",)
SCALE_ENV = "IOTPIPE_BENCH_TIME_SCALE"
DEFAULT_PARALLELISM = 8  # iotpipe.graph.DEFAULT_PARALLELISM, checked in main()

# -- the model -----------------------------------------------------------------------------------

# One request's round trip, by service (the SigV4 scope name), in seconds. AWS publishes no
# control-plane latency figures: these are assumptions, of the order a client in the same region
# sees (tens of milliseconds on the network, plus the service's own processing), with the reason
# for each one that differs from the default.
LATENCY_S: dict[str, tuple[float, str]] = {
    "default": (0.05, "assumed: in-region round trip plus a control-plane answer"),
    "iam": (0.15, "assumed: IAM is global, served from us-east-1, and its writes are slower"),
    "lambda": (0.10, "assumed: CreateFunction uploads the code package in the request"),
    "iot": (0.08, "assumed: IoT control plane (thing types, policies, rules)"),
    "cloudtrail": (0.08, "assumed: CreateTrail checks the bucket policy and the KMS key"),
}


def latency(scope: str) -> float:
    return LATENCY_S.get(scope, LATENCY_S["default"])[0]


@dataclass(frozen=True)
class Gate:
    """This request is refused until ``rule``'s window after its trigger is over; the trigger
    is a request of resource ``of`` ("": the same resource)."""

    rule: str
    of: str = ""


@dataclass(frozen=True)
class Req:
    service: str
    operation: str
    gates: tuple[Gate, ...] = ()


@dataclass(frozen=True)
class Wait:
    """A transitional state (a ``StateRule`` or ``GhostRule``): over ``duration_s`` after its
    trigger (a request of this resource), then one read to see it over."""

    rule: str


Round = tuple[Req, ...] | Wait

_BUCKET_CONFIG = (Req("s3", "PutBucketTagging"), Req("s3", "PutPublicAccessBlock"),
                  Req("s3", "PutBucketOwnershipControls"), Req("s3", "PutBucketEncryption"),
                  Req("s3", "PutBucketVersioning"), Req("s3", "PutBucketLifecycleConfiguration"),
                  Req("s3", "PutBucketPolicy"))
_BUCKET_DELETE: tuple[Round, ...] = ((Req("s3", "ListObjectVersions"),), (Req("s3", "DeleteBucket"),))


def _alarm() -> tuple[Round, ...]:
    return ((Req("monitoring", "PutMetricAlarm"),),)


# What `up` needs from AWS for each resource in a new env (the default configuration), at least.
CREATE: dict[str, tuple[Round, ...]] = {
    "kms.key": ((Req("kms", "CreateKey"),),
                (Req("kms", "EnableKeyRotation", (Gate("kms.EnableKeyRotation-key-not-found-after-create"),)),)),
    "kms.alias": ((Req("kms", "CreateAlias"),),),
    "storage.access_log_bucket": ((Req("s3", "CreateBucket"),), _BUCKET_CONFIG),
    "storage.sensor_bucket": ((Req("s3", "CreateBucket"),), (*_BUCKET_CONFIG, Req("s3", "PutBucketLogging"))),
    "storage.metrics_table": (
        (Req("dynamodb", "CreateTable"),),  # tags and encryption go with it
        Wait("dynamodb.table-creating"),
        (Req("dynamodb", "UpdateContinuousBackups", (Gate("dynamodb.backups-being-enabled"),)),),
        Wait("dynamodb.pitr-enabling")),
    "stream.sensor_stream": (
        (Req("kinesis", "CreateStream"),),  # tags go with it
        Wait("kinesis.stream-creating"),
        (Req("kinesis", "StartStreamEncryption"),),
        Wait("kinesis.stream-updating-after-StartStreamEncryption")),
    "lambda.log_group": ((Req("logs", "CreateLogGroup"),), (Req("logs", "PutRetentionPolicy"),)),
    "lambda.role": ((Req("iam", "CreateRole"),), (Req("iam", "PutRolePolicy"),)),
    "lambda.function": (
        (Req("lambda", "CreateFunction", (Gate("lambda.create-function-role-not-assumable", "lambda.role"),
                                          Gate("lambda.create-function-kms-grant-principal", "lambda.role"))),),
        Wait("lambda.function-pending")),
    "lambda.event_source_mapping": (
        # The rule is armed by any PutRolePolicy; the one that matters is the function role's.
        (Req("lambda", "CreateEventSourceMapping",
             (Gate("lambda.create-mapping-cannot-access-stream", "lambda.role"),)),),
        Wait("lambda.mapping-creating")),
    "lambda.dlq": ((Req("sqs", "CreateQueue"),),),
    "iot.log_group": ((Req("logs", "CreateLogGroup"),), (Req("logs", "PutRetentionPolicy"),)),
    "iot.rule_role": ((Req("iam", "CreateRole"),), (Req("iam", "PutRolePolicy"),)),
    "iot.thing_type": ((Req("iot", "CreateThingType"),),),
    "iot.device_policy": ((Req("iot", "CreatePolicy"),),),
    "iot.devices": (),  # no devices in a new env
    "iot.topic_rule": ((Req("iot", "CreateTopicRule", (Gate("iot.create-rule-role-not-assumable", "iot.rule_role"),)),),),
    "trail.bucket": ((Req("s3", "CreateBucket"),), (*_BUCKET_CONFIG, Req("s3", "PutBucketLogging"))),
    "trail.trail": ((Req("cloudtrail", "CreateTrail"),),
                    (Req("cloudtrail", "PutEventSelectors"), Req("cloudtrail", "StartLogging"))),
    "monitor.topic": ((Req("sns", "CreateTopic"),),),
    "monitor.dashboard": ((Req("monitoring", "PutDashboard"),),),
}

# What `destroy` needs, at least. Not waited for by anyone: DeleteThingType 5 minutes after
# DeprecateThingType (iotpipe reports it pending), the KMS key's deletion window (scheduled).
DESTROY: dict[str, tuple[Round, ...]] = {
    "kms.key": ((Req("kms", "ScheduleKeyDeletion"),),),
    "kms.alias": ((Req("kms", "DeleteAlias"),),),
    "storage.access_log_bucket": _BUCKET_DELETE,
    "storage.sensor_bucket": _BUCKET_DELETE,
    "storage.metrics_table": (
        (Req("dynamodb", "UpdateTable"),),  # deletion protection off
        Wait("dynamodb.table-updating"),  # DeleteTable is refused while the table is UPDATING
        (Req("dynamodb", "DeleteTable"),)),
    "stream.sensor_stream": ((Req("kinesis", "DeleteStream"),),),
    "lambda.log_group": ((Req("logs", "DeleteLogGroup"),),),
    "lambda.role": ((Req("iam", "DeleteRolePolicy"),), (Req("iam", "DeleteRole"),)),
    "lambda.function": ((Req("lambda", "DeleteFunction"),),),
    "lambda.event_source_mapping": ((Req("lambda", "DeleteEventSourceMapping"),),),
    "lambda.dlq": ((Req("sqs", "DeleteQueue"),),),
    "iot.log_group": ((Req("logs", "DeleteLogGroup"),),),
    "iot.rule_role": ((Req("iam", "DeleteRolePolicy"),), (Req("iam", "DeleteRole"),)),
    "iot.thing_type": ((Req("iot", "DeprecateThingType"),),),  # DeleteThingType: 5 minutes on
    "iot.device_policy": ((Req("iot", "DeletePolicy"),),),
    "iot.devices": (),
    "iot.topic_rule": ((Req("iot", "DeleteTopicRule"),),),
    "trail.bucket": _BUCKET_DELETE,
    "trail.trail": ((Req("cloudtrail", "DeleteTrail"),),),
    "monitor.topic": ((Req("sns", "DeleteTopic"),),),
    "monitor.dashboard": ((Req("monitoring", "DeleteDashboards"),),),
}


def rounds_for(command: str, logical_id: str) -> tuple[Round, ...]:
    table = CREATE if command == "up" else DESTROY
    if logical_id.startswith("monitor.") and logical_id not in table:
        return _alarm() if command == "up" else ((Req("monitoring", "DeleteAlarms"),),)
    return table[logical_id]


def _duration(rule_name: str) -> tuple[float, tuple[str, str]]:
    (rule,) = rules_named(rule_name)
    assert isinstance(rule, (ErrorRule, StateRule, GhostRule)) and rule.after is not None, rule_name
    return rule.duration_s, rule.after


def schedule(command: str, order: list[str], deps: dict[str, tuple[str, ...]], *,
             serial: bool = False) -> dict[str, tuple[float, float]]:
    """(start, end) of each resource under the model, from 0: as soon as its dependencies are
    done (``serial``: after the previous one in ``order``, which respects the dependencies)."""
    done: dict[str, tuple[float, float]] = {}
    calls: dict[str, dict[tuple[str, str], float]] = {}  # when each request came back
    previous = 0.0
    for lid in order:
        start = previous if serial else max((done[d][1] for d in deps[lid] if d in done), default=0.0)
        t = start
        made: dict[tuple[str, str], float] = {}
        for rnd in rounds_for(command, lid):
            if isinstance(rnd, Wait):
                seconds, after = _duration(rnd.rule)
                trigger = made[after]
                t = max(t, trigger + seconds) + latency(_scope(after[0]))
                continue
            begin = t
            for req in rnd:
                for gate in req.gates:
                    seconds, after = _duration(gate.rule)
                    trigger = (calls.get(gate.of, {}) if gate.of else made).get(after)
                    if trigger is not None:
                        begin = max(begin, trigger + seconds)
            t = begin + max(latency(_scope(r.service)) for r in rnd)
            for req in rnd:
                made[(req.service, req.operation)] = t
        calls[lid] = made
        done[lid] = (start, t)
        previous = t
    return done


def _scope(service: str) -> str:
    """botocore service name -> SigV4 scope name (the latency table's key)."""
    return {"cloudwatch": "monitoring"}.get(service, service)


def converged_bound() -> float:
    """A converged `up`: one round of reads per resource, all at once, after the identity check."""
    return latency("sts") + max(latency(s) for s in ("kms", "s3", "dynamodb", "kinesis", "logs", "iam",
                                                      "lambda", "iot", "cloudtrail", "sns", "monitoring"))


# -- the harness ---------------------------------------------------------------------------------

class ScaledClock:
    """Real time, ``1/scale`` times as fast: what the proxy's rules and the CLI's shim agree on."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) / self.scale

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) * self.scale)

    advance = sleep


class TimedProxy(BehaviourProxy):
    """The behaviour proxy, plus each request's modelled round trip: an answer leaves no
    earlier than ``latency(service)`` after the request arrived (the emulator's time counts)."""

    def __init__(self, *args: Any, scale: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = scale
        self.requests = 0
        self._count = threading.Lock()

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path.startswith(CONTROL):
            return super().handle(method, path, headers, body)
        arrived = time.monotonic()
        found = _SCOPE.search(headers.get("Authorization", ""))
        answer = super().handle(method, path, headers, body)
        left = latency(found.group(2) if found else "") * self.scale - (time.monotonic() - arrived)
        if left > 0:
            time.sleep(left)
        with self._count:
            self.requests += 1
        return answer


@dataclass
class Run:
    name: str
    command: str
    parallelism: int
    real_s: float = 0.0
    model_s: float = 0.0
    exit_code: int = 0
    requests: int = 0
    done_at: dict[str, float] = field(default_factory=dict)  # logical id -> model s from process start
    waits: list[str] = field(default_factory=list)  # what the CLI said it waited for


LINE = re.compile(r"^\S+\s+(created|updated|unchanged|deleted|pending|scheduled|replaced)\s+(\S+)")


def run_cli(proxy: TimedProxy, clock: ScaledClock, env: dict[str, str], cwd: Path, name: str,
            command: str, parallelism: int, *args: str, ok: Iterable[int] = (0,)) -> Run:
    run = Run(name, command, parallelism)
    argv = [sys.executable, "-m", "iotpipe", command, *args, "--parallelism", str(parallelism)]
    before = proxy.requests
    started_real, started = time.monotonic(), clock.now()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        at = clock.now() - started
        lines.append(line)
        found = LINE.match(line.strip())
        if found:
            run.done_at[found.group(2)] = at
        elif line.strip().startswith("…"):
            run.waits.append(f"{at:6.1f} {line.strip()[2:]}")
    run.exit_code = proc.wait()
    run.real_s = time.monotonic() - started_real
    run.model_s = clock.now() - started
    run.requests = proxy.requests - before
    if run.exit_code not in ok:
        raise SystemExit(f"`iotpipe {command} {' '.join(args)}` exited {run.exit_code}:\n{''.join(lines)[-3000:]}")
    return run


def process_start_s(env: dict[str, str], cwd: Path) -> float:
    """Real seconds for the CLI's interpreter to start and import what a run imports before its
    first request (the median of three). ``iotpipe --help`` would not do: it imports no boto3."""
    code = ("import boto3, iotpipe.cli, iotpipe.engine, iotpipe.aws\n"
            "from iotpipe.steps import all_resources\nall_resources()")
    times = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, check=True)
        times.append(time.monotonic() - started)
    return sorted(times)[1]


def graph() -> tuple[list[str], dict[str, tuple[str, ...]]]:
    from iotpipe.steps import all_resources

    resources = all_resources()
    return [r.logical_id for r in resources], {r.logical_id: tuple(r.depends_on) for r in resources}


def modelled(command: str, present: Iterable[str], *, serial: bool = False
             ) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """The model's schedule over the resources a run worked on (destroy: the reversed graph)."""
    order, deps = graph()
    keep = set(present)
    order = [lid for lid in order if lid in keep]
    if command == "destroy":
        order = list(reversed(order))
        dependants: dict[str, list[str]] = {lid: [] for lid in order}
        for lid in order:
            for d in deps[lid]:
                if d in dependants:
                    dependants[d].append(lid)
        deps = {lid: tuple(v) for lid, v in dependants.items()}
    else:
        deps = {lid: tuple(d for d in deps[lid] if d in keep) for lid in order}
    return schedule(command, order, deps, serial=serial), order


def critical_chain(command: str, sched: dict[str, tuple[float, float]], present: Iterable[str]) -> list[str]:
    order, deps = graph()
    if command == "destroy":
        rev: dict[str, list[str]] = {lid: [] for lid in order}
        for lid in order:
            for d in deps[lid]:
                rev[d].append(lid)
        deps = {k: tuple(v) for k, v in rev.items()}
    lid = max(sched, key=lambda k: sched[k][1])
    chain = [lid]
    while True:
        before = [d for d in deps[lid] if d in sched and abs(sched[d][1] - sched[lid][0]) < 1e-9]
        if not before:
            return list(reversed(chain))
        lid = before[0]
        chain.append(lid)


def per_resource(run: Run, start_offset: float) -> list[dict[str, Any]]:
    """Each resource's own duration in the run against the model's (both: from the end of its
    last dependency, or of the previous resource at parallelism 1, to its own end)."""
    serial = run.parallelism == 1
    sched, order = modelled(run.command, run.done_at, serial=serial)
    _, deps = graph()
    if run.command == "destroy":
        rev: dict[str, list[str]] = {lid: [] for lid in order}
        for lid in order:
            for d in deps[lid]:
                if d in rev:
                    rev[d].append(lid)
        deps = {k: tuple(v) for k, v in rev.items()}
    rows = []
    previous = start_offset
    for lid in sorted(order, key=lambda k: run.done_at[k]):
        if serial:
            began = previous
        else:
            began = max((run.done_at[d] for d in deps[lid] if d in run.done_at), default=start_offset)
        own = run.done_at[lid] - began
        model = sched[lid][1] - sched[lid][0]
        rows.append({"resource": lid, "done_at_s": round(run.done_at[lid], 1), "own_s": round(own, 1),
                     "model_s": round(model, 1), "beyond_s": round(own - model, 1)})
        previous = run.done_at[lid]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=0.25,
                        help="real seconds per model second (1: real time)")
    parser.add_argument("--parallelism", type=int, default=DEFAULT_PARALLELISM,
                        help="the default run's parallelism (the other run is at 1)")
    parser.add_argument("--skip-serial", action="store_true", help="only the runs at --parallelism")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    args = parser.parse_args()
    scale = args.time_scale

    from iotpipe.graph import DEFAULT_PARALLELISM as ENGINE_DEFAULT
    from iotpipe.local.demo import emulator_environment
    from iotpipe.local.emulator import emulator_process

    assert ENGINE_DEFAULT == DEFAULT_PARALLELISM, "iotpipe's default parallelism changed"
    os.environ.update(emulator_environment())  # the proxy's quota checks read the emulator too
    work = Path(tempfile.mkdtemp(prefix="iotpipe-bench-converge-"))
    clock = ScaledClock(scale)
    runs: list[Run] = []
    with emulator_process() as emu, TimedProxy(emu.url, on_every_account(), region=os.environ["AWS_DEFAULT_REGION"],
                                               clock=clock, scale=scale, idle_s=1800,
                                               max_lifetime_s=4 * 3600, max_in_flight=32) as proxy:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IOTPIPE_"))},
               **emulator_environment(), "AWS_ENDPOINT_URL": proxy.url,
               "PYTHONPATH": os.pathsep.join([str(TIMESCALE), str(REPO)]), SCALE_ENV: repr(scale)}
        start_s = process_start_s(env, work)
        plan = [args.parallelism] if args.skip_serial else [1, args.parallelism]
        for n, par in enumerate(plan):
            name = f"bench{n}{int(time.time()) % 100000}"
            runs.append(run_cli(proxy, clock, env, work, f"up p={par}", "up", par, "--env", name))
            made = clock.now()
            if n == len(plan) - 1:
                runs.append(run_cli(proxy, clock, env, work, "converged up", "up", par, "--env", name))
                # Without the env's config file `up` first plans under the lock (the defaults
                # guard), then reads again as it applies; with one (empty: the same defaults),
                # it reads once.
                (work / "config").mkdir(exist_ok=True)
                (work / "config" / f"{name}.toml").write_text("")
                runs.append(run_cli(proxy, clock, env, work, "converged up+cfg", "up", par, "--env", name))
            # A destroy right after `up` meets the rules `up` armed (a mapping created under 30 s
            # ago refuses DeleteEventSourceMapping): not destroy's own time, and not in its
            # critical path, so the windows are let pass first.
            settle = max(rule.duration_s for rule in rules_named(*SETTLE_RULES))
            if clock.now() < made + settle:
                clock.sleep(made + settle - clock.now())
            # 3: IoT's 5-minute thing-type rule leaves the thing type pending
            runs.append(run_cli(proxy, clock, env, work, f"destroy p={par}", "destroy", par, "--env", name,
                                "--yes", ok=(0, 3)))

    start_model = start_s / scale
    report: dict[str, Any] = {"time_scale": scale, "process_start_real_s": round(start_s, 2),
                              "latency_s": {k: v[0] for k, v in LATENCY_S.items()}, "runs": []}
    for run in runs:
        # Process start is CPU, not AWS time: counted at its real duration, not 1/scale of it.
        wall = run.model_s - start_model + start_s
        if run.name.startswith("converged up"):
            bound, target = converged_bound(), 2.0
            measure = wall - start_s
            passed = measure <= target
            target_text = "<= 2 s + start"
            chain: list[str] = []
            serial_bound = None
        else:
            sched, _ = modelled(run.command, run.done_at)
            bound = max(end for _, end in sched.values())
            chain = critical_chain(run.command, sched, run.done_at)
            serial_sched, _ = modelled(run.command, run.done_at, serial=True)
            serial_bound = max(end for _, end in serial_sched.values())
            target = 1.2
            measure = wall / bound
            passed = measure <= target if run.parallelism != 1 else None
            target_text = "<= 1.2x" if run.parallelism != 1 else "(serial)"
        report["runs"].append({
            "run": run.name, "command": run.command, "parallelism": run.parallelism,
            "wall_model_s": round(wall, 1), "wall_real_s": round(run.real_s, 1),
            "critical_path_s": round(bound, 1), "ratio": round(wall / bound, 2),
            "serial_bound_s": None if serial_bound is None else round(serial_bound, 1),
            "target": target_text, "pass": passed, "exit_code": run.exit_code, "requests": run.requests,
            "critical_chain": chain,
            "resources": per_resource(run, 0.0) if run.done_at and not run.name.startswith("converged up") else [],
            "waits": run.waits,
        })
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    scale = report["time_scale"]
    print(f"time scale {scale} (model s = AWS's seconds; real s = this machine's), process start "
          f"{report['process_start_real_s']} s real")
    print(f"latency per request (s): {report['latency_s']}")
    print()
    head = f"{'run':<18}{'wall model s':>13}{'wall real s':>12}{'crit. path s':>13}{'ratio':>7}" \
           f"{'serial bnd s':>13}  {'target':<16}{'result':<6}"
    print(head)
    print("-" * len(head))
    for r in report["runs"]:
        result = {True: "pass", False: "FAIL", None: "-"}[r["pass"]]
        serial = "" if r["serial_bound_s"] is None else f"{r['serial_bound_s']:.1f}"
        print(f"{r['run']:<18}{r['wall_model_s']:>13.1f}{r['wall_real_s']:>12.1f}{r['critical_path_s']:>13.1f}"
              f"{r['ratio']:>7.2f}{serial:>13}  {r['target']:<16}{result:<6}")
    print()
    print("destroy's critical path leaves out what nobody waits for: DeleteThingType 5 minutes after "
          "DeprecateThingType (reported pending), the KMS key's deletion window (scheduled).")
    if scale != 1:
        print("wall model s counts process start at its real duration; the CLI's and the emulator's "
              f"CPU time shows {1 / scale:g}x in model seconds (use --time-scale 1 to publish).")
    for r in report["runs"]:
        if not r["resources"]:
            continue
        print()
        print(f"{r['run']}: critical chain {' > '.join(r['critical_chain']) or '-'}")
        print(f"  {'resource':<30}{'done at':>8}{'own':>7}{'model':>7}{'beyond':>8}")
        for row in sorted(r["resources"], key=lambda x: -x["beyond_s"])[:8]:
            print(f"  {row['resource']:<30}{row['done_at_s']:>8.1f}{row['own_s']:>7.1f}{row['model_s']:>7.1f}"
                  f"{row['beyond_s']:>8.1f}")


if __name__ == "__main__":
    main()
