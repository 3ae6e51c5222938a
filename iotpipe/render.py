"""Everything iotpipe shows: live progress, tables, summaries, JSON and error lines.

The only module that prints. Commands hand it result objects from the engine; in ``--json``
mode the same objects are dumped as one JSON document on stdout and progress is silent.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iotpipe.engine import Event, ResourceResult, RunResult

ACTION_STYLE = {
    "create": ("+", "green", "created"),
    "update": ("~", "yellow", "updated"),
    "unchanged": ("=", "dim", "unchanged"),
    "delete": ("-", "red", "deleted"),
    "absent": (" ", "dim", "absent"),
    "skipped": ("!", "magenta", "skipped"),
    "pending": ("…", "yellow", "pending"),
}
PLAN_WORDS = {"create": "will be created", "update": "will be updated", "unchanged": "no changes"}
DEMO_STAGES = {"publish": "published to Kinesis", "deliver": "handled by the Lambda handler"}
DEMO_ENV_NAME = "local"
HEALTH_STYLE = {"ok": "green", "missing": "red", "drifted": "yellow", "foreign": "magenta"}


def _short(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Renderer:
    def __init__(self, *, json_mode: bool = False, console: Console | None = None) -> None:
        self.json_mode = json_mode
        self.out = console or Console(highlight=False, soft_wrap=True)
        if console is None and not self.out.is_terminal and "COLUMNS" not in os.environ:
            self.out.width = 200  # piped into a file or CI log: don't fold ARNs into 80 columns
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self._status: Any = None
        self._demo_bar: Any = None
        self._demo_quarters: dict[str, int] = {}

    # -- live progress -------------------------------------------------------------------------
    def progress(self, event: Event) -> None:
        """Engine callback: a spinner while a resource is worked on, one line when it is done."""
        if self.json_mode:
            return
        if event.kind == "start":
            if self.out.is_terminal:
                self._stop_spinner()
                self._status = self.out.status(f"{event.verb}: {event.logical_id}")
                self._status.start()
            return
        self._stop_spinner()
        # plan, status and outputs show their results as a whole at the end instead
        if event.verb in ("up", "destroy") and event.result is not None and event.result.action in ACTION_STYLE:
            self._resource_line(event.result)

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _resource_line(self, r: ResourceResult) -> None:
        mark, style, word = ACTION_STYLE[r.action]
        line = f"[{style}]{mark} {word:<9}[/] {r.logical_id:<30} [dim]{escape(r.name)}[/]"
        if r.message:
            line += f"  [{style}]{escape(r.message)}[/]"
        self.out.print(line)
        for change in r.changes if r.action == "update" else ():
            self.out.print(f"      [yellow]{change.field}[/]: {escape(_short(change.current))} → "
                           f"{escape(_short(change.desired))}")

    # -- final results -------------------------------------------------------------------------
    def run_summary(self, result: RunResult) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        counts = result.count()
        parts = [f"{n} {ACTION_STYLE[a][2]}" for a, n in counts.items() if a in ACTION_STYLE]
        self.out.print(f"\n[bold]{result.command}[/] env [bold]{result.env}[/] "
                       f"({result.region}, account {result.account}): {', '.join(parts) or 'nothing to do'} "
                       f"in {result.elapsed_s:.1f}s")

    def plan(self, result: RunResult) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        pending = [r for r in result.resources if r.action != "unchanged"]
        for r in result.resources:
            mark, style, _ = ACTION_STYLE[r.action]
            self.out.print(f"[{style}]{mark} {r.logical_id:<30}[/] [dim]{escape(r.name)}[/] "
                           f"{PLAN_WORDS.get(r.action, r.action)}")
            if r.action == "update":
                for c in r.changes:
                    self.out.print(f"      [yellow]{c.field}[/]: {escape(_short(c.current))} → "
                                   f"{escape(_short(c.desired))}")
        self.out.print(f"\nPlan: {sum(r.action == 'create' for r in pending)} to create, "
                       f"{sum(r.action == 'update' for r in pending)} to update, "
                       f"{len(result.resources) - len(pending)} unchanged.")

    def status(self, result: RunResult) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        table = Table(title=f"env {result.env} ({result.region}, account {result.account})")
        for column in ("resource", "type", "name", "arn / id", "status"):
            table.add_column(column, overflow="fold")
        for r in result.resources:
            style = HEALTH_STYLE.get(r.health, "")
            health = r.health
            if r.changes:
                health += ": " + ", ".join(c.field for c in r.changes)
            table.add_row(r.logical_id, r.resource_type, r.name,
                          r.ids.get("arn") or r.ids.get("id") or r.ids.get("uuid") or "",
                          f"[{style}]{escape(health)}[/]")
        self.out.print(table)
        counts = result.count("health")
        self.out.print(", ".join(f"{n} {h}" for h, n in counts.items()))

    def outputs(self, outputs: dict[str, str]) -> None:
        if self.json_mode:
            self.json(outputs)
            return
        width = max((len(k) for k in outputs), default=0)
        for key, value in outputs.items():
            self.out.print(f"{key:<{width}} = {escape(value)}")

    # -- demo ----------------------------------------------------------------------------------
    def demo_phase(self, number: int, title: str, detail: str) -> None:
        if self.json_mode:
            return
        self._stop_demo_progress()
        self.out.print(f"\n[bold]{number}/5 {title}[/]: {escape(detail)}", soft_wrap=False)

    def demo_progress(self, stage: str, done: int, total: int) -> None:
        """A bar on a terminal; a line per quarter when piped (a log keeps few lines)."""
        if self.json_mode:
            return
        label = DEMO_STAGES[stage]
        if self.out.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            if self._demo_bar is None or self._demo_bar[1] != stage:
                self._stop_demo_progress()
                bar = Progress(TextColumn(f"  {label}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=self.out)
                bar.start()
                self._demo_bar = (bar, stage, bar.add_task(label, total=total))
            bar, _, task = self._demo_bar
            bar.update(task, completed=done)
            if done >= total:
                self._stop_demo_progress()
            return
        quarter = done * 4 // max(total, 1)
        if quarter > self._demo_quarters.get(stage, 0):
            self._demo_quarters[stage] = quarter
            self.out.print(f"  {label}: {done:,} of {total:,} records")

    def _stop_demo_progress(self) -> None:
        if self._demo_bar is not None:
            self._demo_bar[0].stop()
            self._demo_bar = None

    def demo_report(self, report: Any) -> None:
        """The demo's numbers, each with what it counts, so that they visibly add up."""
        if self.json_mode:
            self.json(report.__dict__)
            return
        r = report
        lines = [
            f"[bold]Kinesis[/]   {r.records_sent:,} records published ({r.readings_sent:,} valid readings + "
            f"{r.invalid_sent} invalid) in {r.publish_s:.1f}s",
            f"[bold]Lambda[/]    {r.batches:,} handler invocations: each of the {r.shards} shards delivers its "
            f"records in batches of up to {r.batch_size} ({r.redeliveries} re-deliveries, "
            f"{r.undelivered} batches undelivered) in {r.deliver_s:.1f}s",
            f"          the handler stored {r.handler_stored:,} readings and quarantined "
            f"{r.handler_rejected} invalid records",
            f"[bold]DynamoDB[/]  {r.items_stored:,} items, one per stored reading; {r.anomalous_items:,} "
            "flagged as anomalies (above the anomaly thresholds)",
            f"[bold]S3[/]        {r.archive_objects:,} raw archive objects under raw/ (one gzip file per batch "
            f"that had valid readings) and {r.rejected_objects} under rejected/ (one per batch that had "
            "invalid records)",
        ]
        for line in lines:
            self.out.print(line, soft_wrap=False)
        mismatches = []
        if r.handler_stored != r.readings_sent or r.items_stored != r.readings_sent:
            mismatches.append(f"{r.readings_sent:,} readings sent, {r.handler_stored:,} stored by the handler, "
                              f"{r.items_stored:,} items in DynamoDB")
        if r.handler_rejected != r.invalid_sent:
            mismatches.append(f"{r.invalid_sent} invalid records sent, {r.handler_rejected} quarantined")
        for text in mismatches:
            self.out.print(f"[yellow]counts differ:[/] {escape(text)}", soft_wrap=False)

    def demo_next(self, kept: dict[str, Any] | None) -> None:
        if self.json_mode:
            return
        if not kept:
            self.out.print("\n[bold]What next[/]: `iotpipe demo --keep` leaves the emulator and env up to explore; "
                           "`iotpipe plan --env dev` shows what `up` would build in your own AWS account.",
                           soft_wrap=False)
            return
        url, pid, state_dir = kept["url"], kept["pid"], kept["state_dir"]
        self.out.print(f"\n[bold]Kept[/]: the emulator is still running at {url} (pid {pid}) with env "
                       f"{DEMO_ENV_NAME!r} up; it holds everything in memory. To explore it:", soft_wrap=False)
        for line in (
            "unset AWS_PROFILE AWS_SESSION_TOKEN",
            f"export AWS_ENDPOINT_URL={url} AWS_ACCESS_KEY_ID=emulator AWS_SECRET_ACCESS_KEY=emulator "
            "AWS_DEFAULT_REGION=us-east-1",
            f"iotpipe status --env {DEMO_ENV_NAME} --state-dir {state_dir} --set storage.enforce_tls=false",
            f"aws dynamodb scan --table-name sensor-metrics-{DEMO_ENV_NAME} --max-items 3",
        ):
            self.out.print(f"  {escape(line)}")
        self.out.print(f"Stop it with: [bold]kill {pid}[/]", soft_wrap=False)

    # -- devices -------------------------------------------------------------------------------
    def device_added(self, result: Any) -> None:
        """`device add`: what to configure on the sensor. Paths only: the key is never shown."""
        if self.json_mode:
            self.json(result.as_dict())
            return
        mark, style, word = ("~", "yellow", "rotated") if result.action == "rotate" else ACTION_STYLE[result.action]
        self.out.print(f"[{style}]{mark} {word}[/] device [bold]{escape(result.device_id)}[/] "
                       f"(env {escape(result.env)})")
        for note in result.notes:
            self.out.print(f"  [dim]{escape(note)}[/]")
        rows = [
            ("thing", result.thing_arn),
            ("certificate id", result.certificate_id),
            ("certificate arn", result.certificate_arn),
            ("endpoint", result.endpoint),
            ("client id", result.device_id),
            ("publish to", result.topic),
            ("certificate", result.certificate_path),
            ("private key", f"{result.key_path}  (mode 0600; keep it secret)"),
            ("root CA", f"{result.root_ca}  (download it; not stored by iotpipe)"),
        ]
        if result.replaced_certificates:
            rows.append(("retired", ", ".join(result.replaced_certificates)))
        for key, value in rows:
            self.out.print(f"  {key:<16} {escape(value)}")

    def device_list(self, env: str, devices: list[Any]) -> None:
        if self.json_mode:
            self.json({"env": env, "devices": [d.as_dict() for d in devices]})
            return
        table = Table(title=f"devices of env {env}")
        for column in ("device", "attributes", "certificates", "local key", "ours"):
            table.add_column(column, overflow="fold")
        for d in devices:
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(d.attributes.items()))
            certs = "\n".join(f"{c.id[:12]}… {c.status}" for c in d.certificates) or "[red]none[/]"
            table.add_row(escape(d.device_id), escape(attrs), certs,
                          "yes" if d.local_key else "[yellow]no[/]",
                          "yes" if d.managed else "[magenta]no[/]")
        self.out.print(table)
        self.out.print(f"{len(devices)} device(s)")

    def device_removed(self, result: Any) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        if result.action == "absent":
            extra = " (local files removed)" if result.local_files_removed else ""
            self.out.print(f"device {escape(result.device_id)} of env {escape(result.env)} is already gone{extra}")
            return
        certs = ", ".join(c[:12] + "…" for c in result.deleted_certificates) or "none"
        self.out.print(f"[red]- deleted[/] device [bold]{escape(result.device_id)}[/] (env {escape(result.env)}); "
                       f"certificates deleted: {certs}; local files "
                       f"{'removed' if result.local_files_removed else 'none'}")

    def lock_holder(self, text: str) -> None:
        self.out.print(text)

    def message(self, text: str) -> None:
        if not self.json_mode:
            self.out.print(text)

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

    def error(self, text: str) -> None:
        self._stop_spinner()
        self.err.print(f"[red]error:[/] {escape(text)}")
