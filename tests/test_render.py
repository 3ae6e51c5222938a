"""What a person reads: status/plan/up/destroy at 80 and 200 columns and piped, diffs a
reviewer can approve, and quiet successes in one line. Real engine runs against in-process
moto, rendered into rich consoles of a given width (a terminal, or not: piped)."""

from __future__ import annotations

import io
import re
import threading

import boto3
import pytest
from rich.console import Console

from iotpipe.diffview import DiffLine, explain
from iotpipe.engine import Event, ResourceResult
from iotpipe.progress import Progress
from iotpipe.render import LIVE_LINES, Renderer, ascii_safe
from iotpipe.steps.base import Change
from tests.conftest import REGION

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def console(width: int, terminal: bool) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=terminal, color_system=None,
                   highlight=False, soft_wrap=True, legacy_windows=False)


def output(con: Console) -> str:
    return ANSI.sub("", con.file.getvalue())


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def render(result, method: str, *, width: int, terminal: bool, wide: bool = False) -> str:
    con = console(width, terminal)
    getattr(Renderer(console=con, wide=wide), method)(result)
    return output(con)


def arns(result) -> list[str]:
    return [r.ids["arn"] for r in result.resources if r.ids.get("arn")]


@pytest.fixture
def deployed(make):
    engine = make()
    engine.up()
    return engine


# --- item 2: readable at 80 columns and when piped ---------------------------------------------
def test_status_fits_80_columns_by_dropping_type_and_arn(deployed):
    result = deployed.status()
    text = render(result, "status", width=80, terminal=True)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "AWS::S3::Bucket" not in text and "arn:aws:" not in text
    assert "(type and arn / id hidden at 80 columns: --wide shows all)" in text
    for r in result.resources:  # every resource still has its row, status included
        assert re.search(rf"^\s*{re.escape(r.logical_id)}\s.*\bok\b", text, re.MULTILINE), r.logical_id


def test_status_at_200_columns_shows_whole_arns_on_one_row_each(deployed):
    result = deployed.status()
    text = render(result, "status", width=200, terminal=True)
    assert all(len(line) <= 200 for line in text.splitlines())
    rows = text.splitlines()
    for r in result.resources:
        if r.ids.get("arn"):
            assert any(r.logical_id in row and r.ids["arn"] in row for row in rows), r.ids["arn"]


@pytest.mark.parametrize("how", ["piped", "wide"])
def test_piped_or_wide_status_is_one_row_per_resource_with_every_column(deployed, how):
    result = deployed.status()
    text = render(result, "status", width=80, terminal=how == "wide", wide=how == "wide")
    rows = text.splitlines()
    assert "─" not in text and "│" not in text  # no table box: plain rows for grep and cut
    for r in result.resources:
        (row,) = [row for row in rows if row.split()[:1] == [r.logical_id]]
        assert r.resource_type in row and r.name in row and row.rstrip().endswith("ok")
        if r.ids.get("arn"):
            assert r.ids["arn"] in row  # whole, never folded
    assert len(arns(result)) >= 15


def test_up_and_destroy_lines_fit_80_columns_and_stay_whole_when_piped(make):
    narrow, piped = console(80, True), console(80, False)
    engine = make()
    renderers = [Renderer(console=narrow), Renderer(console=piped)]
    engine.on_event = lambda e: [r.progress(e) for r in renderers]
    result = engine.up()
    for renderer in renderers:
        renderer.run_summary(result)
    assert all(len(line) <= 80 for line in output(narrow).splitlines())
    piped_text = output(piped)
    assert "+ created   lambda.event_source_mapping  iot-processor-dev<-iot-sensor-stream-dev" in piped_text
    assert re.search(r"^up env dev \(us-east-1, account \d{12}\): 28 created, 1 unchanged", piped_text, re.M)
    # in the declared order, whatever order the parallel run finished them in
    assert re.findall(r"^\+ created\s+(\S+)", piped_text, re.M) == \
        [r.logical_id for r in result.resources if r.action == "create"]


# --- item 4: diffs a reviewer can approve ---------------------------------------------------------
def test_plan_on_a_new_env_shows_creation_fields_and_agrees_with_up(make):
    engine = make()
    planned = engine.plan()
    text = render(planned, "plan", width=200, terminal=False)
    assert "+ stream.sensor_stream" in text
    assert re.search(r"^\s+retention_hours = 24$", text, re.M), text  # a creation field
    assert re.search(r"^\s+tags\.managed-by = iotpipe$", text, re.M)  # a dict, key by key
    assert "(known after apply: kms.key.arn)" in text
    narrow = render(planned, "plan", width=80, terminal=True)
    assert all(len(line) <= 80 for line in narrow.splitlines()), narrow

    done = engine.up()
    assert {r.logical_id: r.action for r in planned.resources} == {r.logical_id: r.action for r in done.resources}
    assert [r.action for r in planned.resources].count("unchanged") == 1  # iot.devices, in both
    assert "Plan: 28 to create, 0 to update, 1 unchanged." in text


def test_plan_shows_one_line_per_changed_tag_and_threshold(make):
    make(sets=("storage.enforce_tls=false", "tags.owner=ops", "tags.team=a")).up()
    engine = make(sets=("storage.enforce_tls=false", "tags.owner=plant", "tags.site=b",
                        "anomaly.temperature.max=90"))
    text = render(engine.plan(), "plan", width=200, terminal=False)
    assert re.search(r"^\s+~ tags\.owner: ops → plant$", text, re.M), text
    assert re.search(r"^\s+\+ tags\.site = b$", text, re.M)
    assert re.search(r"^\s+~ environment\.ANOMALY_THRESHOLDS\.temperature\.max: 100 → 90$", text, re.M)
    assert "tags: {" not in text  # never the whole dict as one value


def test_policy_drift_is_a_unified_diff_of_the_statement_that_changed(deployed):
    iam = boto3.client("iam", region_name=REGION)
    role = "iot-lambda-role-dev"
    (name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    statement = next(s for s in document["Statement"] if s.get("Sid") == "WriteMetrics" or "dynamodb:BatchWriteItem" in str(s["Action"]))
    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    statement["Action"] = [*actions, "dynamodb:DeleteTable"]  # widened out of band
    iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=__import__("json").dumps(document))

    text = render(deployed.plan(), "plan", width=200, terminal=False)
    block = text[text.index("~ lambda.role"):]
    assert re.search(r"^\s+~ inline_policies\.lambda-permissions:$", block, re.M), block
    assert re.search(r'^\s+-\s+"dynamodb:DeleteTable",?$', block, re.M)  # the one line that goes
    assert not re.search(r'^\s+[-+]\s+"dynamodb:BatchWriteItem"', block, re.M)  # context, unchanged


def test_diff_lines_per_key_for_nested_dicts_and_json_text():
    change = Change("environment",
                    {"A": "1", "GONE": "x", "ANOMALY_THRESHOLDS": '{"temperature": {"max": 100}}'},
                    {"A": "1", "NEW": "y", "ANOMALY_THRESHOLDS": '{"temperature": {"max": 90, "min": -5}}'})
    assert explain(change) == [
        DiffLine("change", "environment.ANOMALY_THRESHOLDS.temperature.max", old="100", new="90"),
        DiffLine("add", "environment.ANOMALY_THRESHOLDS.temperature.min", new="-5"),
        DiffLine("remove", "environment.GONE", old="x"),
        DiffLine("add", "environment.NEW", new="y"),
    ]
    assert explain(Change("tags", None, {"a": "1", "b": "2"})) == [
        DiffLine("set", "tags.a", new="1"), DiffLine("set", "tags.b", new="2")]


# --- item 10: quiet successes in one line ---------------------------------------------------------
def test_a_second_destroy_says_in_one_line_that_nothing_was_left(deployed):
    deployed.destroy()
    con = console(80, False)
    renderer = Renderer(console=con)
    deployed.on_event = renderer.progress
    result = deployed.destroy()
    renderer.run_summary(result)
    assert {r.action for r in result.resources} == {"absent"}
    (line,) = lines(output(con))
    assert re.fullmatch(r"destroy env dev \(us-east-1, account \d{12}\): nothing left to destroy, "
                        r"all 29 resources are already gone \(\d+\.\ds\)", line), line


def test_a_partial_destroy_lists_what_it_deleted_and_counts_the_absent(deployed):
    boto3.client("cloudtrail", region_name=REGION).delete_trail(Name="iot-audit-trail-dev")
    con = console(200, False)
    renderer = Renderer(console=con)
    deployed.on_event = renderer.progress
    result = deployed.destroy()
    renderer.run_summary(result)
    text = output(con)
    assert "trail.trail" not in text  # already gone: counted, not listed
    assert "- deleted   trail.bucket" in text
    assert re.search(r": 27 deleted, 1 absent, 1 scheduled in", text)


# --- issue 10 item 2: readable progress with concurrent resources -------------------------------
class Clock:
    """The renderer's injected clock: elapsed seconds without real time passing."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def created(lid: str, action: str = "create", message: str = "") -> ResourceResult:
    return ResourceResult(lid, "Test::Fake", f"fake-{lid}", action, message=message)  # type: ignore[arg-type]


def screen(con: Console) -> str:
    """What a terminal's lines held, in order: the live region redraws itself with carriage
    returns and cursor moves, each of which starts a line here."""
    return ANSI.sub("\n", con.file.getvalue()).replace("\r", "\n")


def result_ids(text: str) -> list[str]:
    """The logical ids of the result lines, in the order they were printed."""
    return re.findall(r"^[+!~-] (?:created|failed|stopped|skipped|updated|deleted)\s+(\S+)", text, re.M)


@pytest.mark.parametrize("terminal", [True, False])
def test_result_lines_keep_the_declared_order_whatever_the_completion_order(terminal):
    order = [f"step.r{i}" for i in range(8)]
    finish = [order[i] for i in (5, 2, 7, 0, 3, 6, 1, 4)]  # the first declared finishes fourth
    outcomes = {lid: Event("done", lid, verb="up", result=created(lid)) for lid in order}
    outcomes["step.r2"] = Event("done", "step.r2", verb="up", error="AccessDenied: no")  # failed
    outcomes["step.r5"] = Event("done", "step.r5", verb="up",
                                result=created("step.r5", "skipped", "not attempted: step.r2 failed"))
    outcomes["step.r6"] = Event("done", "step.r6", verb="up", result=created("step.r6", "absent"))
    con = console(200, terminal)
    renderer = Renderer(console=con, clock=Clock())
    renderer.progress(Event("begin", "", verb="up", order=tuple(order)))
    turn = {lid: threading.Event() for lid in order}
    held: list[str] = []

    def worker(lid: str) -> None:
        renderer.progress(Event("start", lid, verb="up"))
        renderer.progress(Event("phase", lid, verb="up", phase="creating"))
        assert turn[lid].wait(10)
        if lid == order[0]:  # everything finished so far was declared after it: nothing printed yet
            held.append(screen(con))
        renderer.progress(outcomes[lid])
        if (after := finish.index(lid) + 1) < len(finish):
            turn[finish[after]].set()

    threads = [threading.Thread(target=worker, args=(lid,)) for lid in order]
    for thread in threads:
        thread.start()
    turn[finish[0]].set()
    for thread in threads:
        thread.join(10)
    renderer.progress(Event("end", "", verb="up"))
    (before_first,) = held
    assert result_ids(before_first) == []
    text = screen(con)
    # declared order; the failure and the skipped one in their places; absent only counted
    assert result_ids(text) == [lid for lid in order if lid != "step.r6"], text
    assert re.search(r"^! failed\s+step\.r2\s+AccessDenied: no$", text, re.M)


def test_a_run_that_ends_early_still_prints_what_finished_in_order():
    """An interruption (or a failed state write) leaves resources never started: "end"
    lets the finished results behind them out."""
    con = console(200, False)
    renderer = Renderer(console=con)
    renderer.progress(Event("begin", "", verb="destroy", order=("c", "b", "a")))
    for lid in ("b", "a"):
        renderer.progress(Event("start", lid, verb="destroy"))
    renderer.progress(Event("done", "a", verb="destroy", result=created("a", "delete")))
    renderer.progress(Event("done", "b", verb="destroy", error="interrupted"))
    assert result_ids(output(con)) == []  # c first: not finished, not started
    renderer.progress(Event("end", "", verb="destroy"))
    text = output(con)
    assert result_ids(text) == ["b", "a"]
    assert re.search(r"^! stopped\s+b\s+interrupted$", text, re.M)


def live_text(renderer: Renderer, width: int = 120) -> str:
    con = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    con.print(renderer.live_view())
    return con.export_text()


def test_the_live_region_shows_each_resource_in_flight_with_its_latest_aws_state(capsys):
    clock = Clock()
    con = console(120, True)
    renderer = Renderer(console=con, clock=clock)
    renderer.progress(Event("begin", "", verb="up", order=("storage.metrics_table", "lambda.function",
                                                           "stream.sensor_stream")))
    for lid in ("storage.metrics_table", "lambda.function", "stream.sensor_stream"):
        renderer.progress(Event("start", lid, verb="up"))
        renderer.progress(Event("phase", lid, verb="up", phase="creating"))
        clock.now += 1
    table_waits = (Progress("waiter", "waiting for sensor-metrics-dev: AWS reports Table.TableStatus = CREATING",
                            {"state": "Table.TableStatus = CREATING"}),
                   Progress("waiter", "waiting for sensor-metrics-dev: AWS reports Table.TableStatus = UPDATING",
                            {"state": "Table.TableStatus = UPDATING"}))
    renderer.progress(Event("progress", "storage.metrics_table", verb="up", progress=table_waits[0]))
    renderer.progress(Event("progress", "lambda.function", verb="up", progress=Progress(
        "role-propagation", "role not assumable yet (...)",
        {"transient": "the new IAM role is not usable by the service yet", "waited": 3.0})))
    renderer.progress(Event("progress", "stream.sensor_stream", verb="up", progress=Progress(
        "waiter", "waiting for iot-sensor-stream-dev: AWS reports StreamDescription.StreamStatus = CREATING",
        {"state": "StreamDescription.StreamStatus = CREATING"})))
    clock.now += 9
    region = live_text(renderer)
    assert re.search(r"^\s+storage\.metrics_table\s+12 s  creating, waiting: Table\.TableStatus = CREATING$",
                     region, re.M), region
    assert re.search(r"^\s+lambda\.function\s+11 s  creating, retrying: the new IAM role is not usable by the "
                     r"service yet \(3 s\)$", region, re.M), region
    assert "stream.sensor_stream" in region and "StreamStatus = CREATING" in region
    assert "up: 3 in flight, 0 of 3 done" in region
    assert "CREATING" in output(con)  # drawn on the terminal, not only in the view
    # the latest state replaces the one before; a resource that is done leaves the region
    renderer.progress(Event("progress", "storage.metrics_table", verb="up", progress=table_waits[1]))
    renderer.progress(Event("done", "lambda.function", verb="up", result=created("lambda.function")))
    region = live_text(renderer)
    assert "Table.TableStatus = UPDATING" in region and "Table.TableStatus = CREATING" not in region
    assert "lambda.function" not in region and "up: 2 in flight, 1 of 3 done" in region
    renderer.progress(Event("phase", "storage.metrics_table", verb="up", phase="updating"))
    assert re.search(r"storage\.metrics_table\s+12 s  updating$", live_text(renderer), re.M)  # a new phase: state reset
    for lid in ("storage.metrics_table", "stream.sensor_stream"):
        renderer.progress(Event("done", lid, verb="up", result=created(lid)))
    renderer.progress(Event("end", "", verb="up"))
    assert result_ids(screen(con)) == ["storage.metrics_table", "lambda.function", "stream.sensor_stream"]
    assert capsys.readouterr().err == ""  # the waits went to the region, not to stderr lines


def test_the_live_region_is_bounded():
    con = console(80, True)
    renderer = Renderer(console=con, clock=Clock())
    order = tuple(f"step.r{i:02}" for i in range(12))
    renderer.progress(Event("begin", "", verb="destroy", order=order))
    for lid in order:
        renderer.progress(Event("start", lid, verb="destroy"))
    region = live_text(renderer, width=80)
    listed = re.findall(r"^\s+(step\.r\d\d)\s", region, re.M)
    assert listed == list(order[:LIVE_LINES - 1])  # in declared order, then a count
    assert f"... and {12 - LIVE_LINES + 1} more" in region
    assert len(region.splitlines()) == LIVE_LINES + 1
    renderer.progress(Event("end", "", verb="destroy"))


def test_piped_waits_are_lines_naming_their_resource(capsys):
    con = console(200, False)
    renderer = Renderer(console=con)
    renderer.progress(Event("begin", "", verb="up", order=("storage.metrics_table", "lambda.function")))
    for lid in ("storage.metrics_table", "lambda.function"):
        renderer.progress(Event("start", lid, verb="up"))
        renderer.progress(Event("phase", lid, verb="up", phase="creating"))
    renderer.progress(Event("progress", "lambda.function", verb="up", progress=Progress(
        "role-propagation", "role not assumable yet (CreateFunction: ...), retrying in 1 s (0 s of 120 s)")))
    renderer.progress(Event("progress", "storage.metrics_table", verb="up", progress=Progress(
        "waiter", "waiting for sensor-metrics-dev: AWS reports Table.TableStatus = CREATING (attempt 1 of 120, 0 s)")))
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "  … lambda.function: role not assumable yet (CreateFunction: ...), retrying in 1 s (0 s of 120 s)",
        "  … storage.metrics_table: waiting for sensor-metrics-dev: AWS reports Table.TableStatus = CREATING "
        "(attempt 1 of 120, 0 s)"]
    assert output(con) == ""  # stdout: the results only, and none is done yet


def test_json_mode_writes_nothing_while_a_run_is_in_flight(capsys):
    renderer = Renderer(json_mode=True, console=console(120, True))
    renderer.progress(Event("begin", "", verb="up", order=("a", "b")))
    for lid in ("a", "b"):
        renderer.progress(Event("start", lid, verb="up"))
        renderer.progress(Event("phase", lid, verb="up", phase="creating"))
        renderer.progress(Event("progress", lid, verb="up", progress=Progress("waiter", "waiting", {"state": "X"})))
    renderer.progress(Event("done", "b", verb="up", result=created("b")))
    renderer.progress(Event("done", "a", verb="up", error="boom"))
    renderer.progress(Event("end", "", verb="up"))
    assert capsys.readouterr() == ("", "")
    assert output(renderer.out) == ""


def test_the_live_region_is_ascii_on_an_ascii_terminal():
    """LANG=C or an old code page: the spinner and the cut lines must not need Unicode."""
    raw = io.TextIOWrapper(io.BytesIO(), encoding="ascii", write_through=True)
    con = Console(file=ascii_safe(raw), width=60, force_terminal=True, color_system=None, legacy_windows=False)
    renderer = Renderer(console=con, clock=Clock())
    renderer.progress(Event("begin", "", verb="up", order=("storage.metrics_table",)))
    renderer.progress(Event("start", "storage.metrics_table", verb="up"))
    renderer.progress(Event("progress", "storage.metrics_table", verb="up", progress=Progress(
        "waiter", "w", {"state": "Table.TableStatus = CREATING, and on and on past the width"})))
    renderer.progress(Event("done", "storage.metrics_table", verb="up", result=created("storage.metrics_table")))
    renderer.progress(Event("end", "", verb="up"))
    text = raw.buffer.getvalue().decode("ascii")  # would raise on anything else
    assert "- up: 1 in flight, 0 of 1 done" in text  # the "line" spinner's first frame
    assert "storage.metrics_table           0 s  up, waiting: Table.T...\r" in text  # cut to 60 columns
    assert "+ created   storage.metrics_table" in text


def test_a_fleet_shows_each_running_env_and_what_its_run_is_doing(capsys):
    """`fleet up` on a terminal: a line per running env, fed by each engine's events through
    an ActivityTracker (in a worker process, over its pipe); a finished env leaves the region
    for its result line; piped or --json, nothing of it."""
    from iotpipe.fleet import Activity, ActivityTracker, EnvOutcome, FleetEnv

    clock = Clock()
    con = console(140, True)
    renderer = Renderer(console=con, clock=clock)
    plant_a, plant_b = FleetEnv("plant-a", "eu-west-1", None, None, None), FleetEnv("plant-b", None, None, None, None)
    track_a = ActivityTracker(lambda activity: renderer.fleet_activity(plant_a, activity))
    track_b = ActivityTracker(lambda activity: renderer.fleet_activity(plant_b, activity))
    track_a(Event("begin", "", verb="up", order=("kms.key", "storage.metrics_table", "stream.sensor_stream")))
    track_b(Event("begin", "", verb="read", order=("kms.key", "kms.alias")))
    track_a(Event("start", "kms.key", verb="up"))
    track_a(Event("done", "kms.key", verb="up", result=created("kms.key")))
    for lid in ("storage.metrics_table", "stream.sensor_stream"):
        track_a(Event("start", lid, verb="up"))
        track_a(Event("phase", lid, verb="up", phase="creating"))
    track_a(Event("progress", "storage.metrics_table", verb="up", progress=Progress(
        "waiter", "waiting", {"state": "Table.TableStatus = CREATING"})))
    clock.now += 7
    track_b(Event("start", "kms.alias", verb="read"))
    plant_c = FleetEnv("plant-c", "us-east-1", None, None, None)
    ActivityTracker(lambda activity: renderer.fleet_activity(plant_c, activity))(Event(
        "progress", "", verb="up", progress=Progress("lock-wait", "locked by ops@host2 (pid 4242, up) since 12:00; "
                                                                  "waited 3 s of 60 s")))
    view = Console(file=io.StringIO(), width=140, color_system=None, record=True)
    view.print(renderer.fleet_view())
    region = view.export_text()
    assert "fleet: 3 running, 0 done" in region
    assert re.search(r"^\s+plant-c\s+us-east-1\s+0 s  locked by ops@host2 \(pid 4242, up\) since 12:00; "
                     r"waited 3 s of 60 s$", region, re.M), region  # waiting for another run's lock
    assert re.search(r"^\s+plant-a\s+eu-west-1\s+7 s  up: 1 of 3 done · storage\.metrics_table creating, "
                     r"waiting: Table\.TableStatus = CREATING \(\+1\)$", region, re.M), region
    assert re.search(r"^\s+plant-b\s+7 s  read: 0 of 2 done · kms\.alias read$", region, re.M), region
    renderer.fleet_env_done(EnvOutcome("plant-a", "eu-west-1", "changed", 12, 7.0, 0))
    view = Console(file=io.StringIO(), width=140, color_system=None, record=True)
    view.print(renderer.fleet_view())
    region = view.export_text()
    assert "plant-a" not in region and "fleet: 2 running, 1 done" in region
    assert "plant-a (eu-west-1): changed in 7.0 s" in output(con)  # above the region, on the terminal
    assert capsys.readouterr().err == ""

    piped = Renderer(console=console(140, False), clock=clock)
    assert not piped.live and not Renderer(console=console(140, True), json_mode=True).live
    piped.fleet_activity(plant_a, Activity("up", 0, 3))
    assert piped._live is None and output(piped.out) == ""
