"""What a person reads: status/plan/up/destroy at 80 and 200 columns and piped, diffs a
reviewer can approve, and quiet successes in one line. Real engine runs against in-process
moto, rendered into rich consoles of a given width (a terminal, or not: piped)."""

from __future__ import annotations

import io
import re

import boto3
import pytest
from rich.console import Console

from iotpipe.diffview import DiffLine, explain
from iotpipe.render import Renderer
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
