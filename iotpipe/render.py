"""Everything iotpipe shows: live progress, tables, summaries, JSON and error lines.

The only module that prints. Commands hand it result objects from the engine; in ``--json``
mode the same objects are dumped as one JSON document on stdout and progress is silent.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from iotpipe.diffview import explain
from iotpipe.engine import Event, ResourceResult, RunResult
from iotpipe.progress import Progress, aws_state

ACTION_STYLE = {
    "create": ("+", "green", "created"),
    "update": ("~", "yellow", "updated"),
    "unchanged": ("=", "dim", "unchanged"),
    "delete": ("-", "red", "deleted"),
    "absent": (" ", "dim", "absent"),
    "skipped": ("!", "magenta", "skipped"),
    "pending": ("…", "yellow", "pending"),
    "scheduled": ("-", "red", "scheduled"),
    "blocked": ("!", "red", "blocked"),
}
PLAN_WORDS = {"create": "will be created", "update": "will be updated", "unchanged": "no changes",
              "delete": "will be deleted"}
DESTROY_WORDS = {"delete": "will be deleted", "scheduled": "will be",
                 "absent": "does not exist", "skipped": "will be left alone", "blocked": "stops destroy"}
HEALTH_STYLE = {"ok": "green", "missing": "red", "drifted": "yellow", "foreign": "magenta",
                "disabled": "dim", "unwanted": "yellow"}


def _short(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Target:
    """Where a command works. Shown first, so an operator sees the env, account, region,
    endpoint and config before anything is touched (and scripts get them in --json)."""

    env: str
    account: str
    region: str
    endpoint: str
    config_file: str | None  # None: built-in defaults
    config: str  # the file, or "built-in defaults: config/<env>.toml not found"
    state_file: str

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "config_file": self.config_file, "config": self.config,
                "state_file": self.state_file}


# What the terminal gets instead when its encoding (LANG=C, PYTHONIOENCODING=ascii, an old
# Windows code page) cannot print these; rich itself switches tables to ASCII boxes then.
ASCII_FALLBACK = str.maketrans({"…": "...", "→": "->", "←": "<-", "·": "-", "×": "x", "≤": "<=", "≥": ">=",
                                "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "✓": "ok"})


class _AsciiSafe:
    """A text stream that never raises UnicodeEncodeError: known symbols become ASCII, the
    rest a replacement character, instead of a traceback in place of the output."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        encoding = self.encoding
        safe = text.translate(ASCII_FALLBACK).encode(encoding, "replace").decode(encoding)
        return self._stream.write(safe)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def ascii_safe(stream: Any) -> Any:
    """``stream`` itself when it speaks UTF (nearly always), else an ASCII-safe wrapper."""
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
    return stream if encoding.startswith("utf") else _AsciiSafe(stream)


LIVE_LINES = 8  # resources listed in the live region (the default parallelism); the rest are counted


@dataclass(frozen=True)
class _Flight:
    """One resource in flight, as the live region shows it."""

    logical_id: str
    verb: str
    phase: str  # reading, creating, updating, deleting ("" until the engine says)
    state: str  # what AWS last reported while it waits (see aws_state)
    started: float  # the renderer's clock when it started


DEMO_STAGES = {"publish": "published to Kinesis", "deliver": "handled by the Lambda handler"}
DEMO_ENV_NAME = "local"
DEMO_PHASES = ("emulator", "provisioning", "publishing", "results", "replay", "teardown")
STATUS_COLUMNS = ("resource", "type", "name", "arn / id", "status")
STATUS_PRIORITY = ("resource", "status", "name", "arn / id", "type")


class Renderer:
    def __init__(self, *, json_mode: bool = False, console: Console | None = None, wide: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.json_mode = json_mode
        self.wide = wide  # --wide: every column and whole values, even on a narrow terminal
        self.out = console or Console(highlight=False, soft_wrap=True, file=ascii_safe(sys.stdout))
        if console is None and not self.out.is_terminal and "COLUMNS" not in os.environ:
            self.out.width = 200  # piped into a file or CI log: don't fold ARNs into 80 columns
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, file=ascii_safe(sys.stderr))
        self.target: Target | None = None
        self._demo_bar: Any = None
        self._demo_quarters: dict[str, int] = {}
        # The engine calls ``progress`` from its worker threads, several resources at once.
        self._lock = threading.RLock()
        self.clock = clock  # the elapsed seconds of the live region (tests inject theirs)
        self._live: Any = None
        self._spinner = Spinner("dots" if self.out.encoding.startswith("utf") else "line")  # ASCII terminals
        self._flight: dict[str, _Flight] = {}  # logical id -> what it is doing, as it started
        self._note = ""  # the last wait that belongs to no resource in flight (the lock)
        # The run's result order ("begin"): where each logical id goes, how many lines are
        # out, and the finished results waiting for those before them.
        self._sequence: list[str] = []
        self._order: dict[str, int] | None = None
        self._shown = 0
        self._finished: dict[str, Event] = {}
        self._run_verb = ""
        self._view_state: tuple[tuple[_Flight, ...], str, int, int] = ((), "", 0, 0)
        # Fleet commands: env name -> (region, what its run is doing, when it was first heard of)
        self._fleet: dict[str, tuple[str, Any, float]] = {}
        self._fleet_done = 0
        self._fleet_state: tuple[tuple[str, str, Any, float], ...] = ()

    # -- where ---------------------------------------------------------------------------------
    def header(self, target: Target) -> None:
        """The top of every AWS command's output; in --json its fields join the document."""
        self.target = target
        if self.json_mode:
            return
        self.out.print(f"[bold]env {escape(target.env)}[/] · account {target.account} · region "
                       f"{target.region} · endpoint {escape(target.endpoint)}")
        self.out.print(f"[dim]config: {escape(target.config)} · state: {escape(target.state_file)}[/]")

    def _document(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, **self.target.as_dict()} if self.target else data

    def defaults_warning(self, target: Target, changes: list[tuple[ResourceResult, Any]], data_loss: bool) -> None:
        """`up` with built-in defaults on a live env: say what the defaults would change."""
        shown = "; ".join(f"{r.logical_id} {c.field}: {_short(c.current, 30)} → {_short(c.desired, 30)}"
                          for r, c in changes[:8]) + ("; ..." if len(changes) > 8 else "")
        self.err.print(f"[yellow]warning:[/] config/{escape(target.env)}.toml not found and env "
                       f"{escape(target.env)} exists: the built-in defaults would change {len(changes)} "
                       f"live setting(s): {escape(shown)}")
        if data_loss:
            self.err.print("[yellow]warning:[/] shortening a retention deletes what is older than the new "
                           "period (stream records, log events); pass --config with the env's file to keep them")

    def destroy_preview(self, preview: RunResult, kept_keys: list[str], *, to_stderr: bool = False) -> None:
        """Everything `destroy` would touch, in its order, before it asks (`plan --destroy` too)."""
        if self.json_mode and not to_stderr:
            self.json(self._document({**preview.as_dict(), "local_key_files": kept_keys}))
            return
        out = self.err if to_stderr else self.out
        for r in preview.resources:
            mark, style, _ = ACTION_STYLE.get(r.action, (" ", "", r.action))
            line = (f"[{style}]{mark} {r.logical_id:<30}[/] [dim]{escape(r.name)}[/] "
                    f"{DESTROY_WORDS.get(r.action, r.action)}")
            if r.message and r.action != "absent":
                line += f"  [{style or 'dim'}]{escape(r.message)}[/]"
            out.print(line)
        counts = preview.count()
        out.print(f"\nDestroy: {counts.get('delete', 0)} to delete, {counts.get('scheduled', 0)} to schedule "
                  f"for deletion, {counts.get('skipped', 0)} left alone (not iotpipe's), "
                  f"{counts.get('absent', 0)} already absent.")
        if kept_keys:
            out.print(self._kept_keys_line(kept_keys, future=True))

    @staticmethod
    def _kept_keys_line(kept_keys: list[str], *, future: bool) -> str:
        verb = "will be left" if future else "left"
        return (f"Local device key files {verb} in place ({len(kept_keys)}): {escape(', '.join(kept_keys))}; "
                "destroy never deletes private keys: remove them yourself once no device needs them")

    # -- live progress -------------------------------------------------------------------------
    def progress(self, event: Event) -> None:
        """Engine callback: on a terminal, a live region with every resource in flight; a
        result line per resource of `up`/`destroy`, in the run's declared order.

        Called from the engine's worker threads: one at a time, under the renderer's lock.
        """
        if self.json_mode:
            return  # stdout holds one JSON document: waits are not part of it
        with self._lock:
            self._progress(event)

    def _progress(self, event: Event) -> None:
        lid = event.logical_id
        if event.kind == "begin":
            self._sequence = list(dict.fromkeys(event.order))
            self._order = {key: pos for pos, key in enumerate(self._sequence)}
            self._shown, self._finished, self._run_verb, self._note = 0, {}, event.verb, ""
        elif event.kind == "start":
            self._flight[lid] = _Flight(lid, event.verb, "", "", self.clock())
        elif event.kind == "phase":
            if lid in self._flight:  # a new phase: the state of the one before is stale
                self._flight[lid] = replace(self._flight[lid], phase=event.phase, state="")
        elif event.kind == "progress":
            if event.progress is not None:
                self._waiting(lid, event.progress)
            return
        elif event.kind == "done":
            self._flight.pop(lid, None)
            if self._order is not None and lid in self._order:
                self._finished[lid] = event
                self._flush()
            else:  # no "begin" told the order: as it comes
                self._result_line(event)
        elif event.kind == "end":
            if self._order is not None:
                self._flush(everything=True)
            self._order = None
            self._flight.clear()
        self._show()

    def _waiting(self, lid: str, progress: Progress) -> None:
        """A wait of a resource in flight becomes that resource's state in the live region;
        anything else (the lock, a wait outside a resource, news that must stay) is a line."""
        if progress.kind != "lock-takeover" and lid in self._flight and self._live is not None:
            self._flight[lid] = replace(self._flight[lid], state=aws_state(progress))
            self._show()
            return
        self._wait_line(f"{lid}: {progress.message}" if lid else progress.message,
                        keep=progress.kind == "lock-takeover")

    def _flush(self, *, everything: bool = False) -> None:
        """Print the finished results that every resource before them (in the run's order)
        has joined, so the lines come out in the declared order whatever finished first.
        ``everything``: the run is over; what is left (behind a resource an interruption or a
        halt never started) goes out in order too."""
        order = self._sequence
        while self._shown < len(order):
            event = self._finished.pop(order[self._shown], None)
            if event is None and not everything:
                return
            self._shown += 1
            if event is not None:
                self._result_line(event)

    def _result_line(self, event: Event) -> None:
        """The line of one finished resource: plan, status and outputs show their results as a
        whole at the end instead; a resource already absent had nothing happen to it (the
        summary counts it); a failure is said where it belongs in the order (its error also
        ends the run)."""
        if event.verb not in ("up", "destroy"):
            return
        r = event.result
        if r is not None and r.action in ACTION_STYLE and r.action != "absent":
            self._resource_line(r)
        elif r is None and event.error:
            word = "stopped" if event.error == "interrupted" else "failed"
            self._print(f"[red]! {word:<9}[/] {event.logical_id:<28} [red]{escape(event.error)}[/]")

    def _show(self) -> None:
        """Bring the live region up to date: started with the first resource in flight,
        stopped once the run is over (or, without a "begin", once nothing is in flight)."""
        rows = sorted(self._flight.values(), key=lambda f: (self._order or {}).get(f.logical_id, len(self._flight)))
        done = self._shown + len(self._finished) if self._order is not None else 0
        self._view_state = (tuple(rows), self._run_verb, done, len(self._order or ()))
        if not self.out.is_terminal:
            return
        if not rows and self._order is None:
            self._stop_live()
            return
        if rows and self._live is None:
            from rich.live import Live

            self._live = Live(console=self.out, transient=True, refresh_per_second=4,
                              get_renderable=self.live_view)
            self._live.start()
        elif self._live is not None:
            self._live.refresh()

    def live_view(self) -> Group:
        """The live region: a spinner with the counts, then one line per resource in flight
        (logical id, phase, the AWS state it last reported, seconds since it started), at
        most LIVE_LINES of them and how many more. Built from a snapshot, because rich's
        refresh thread calls it while workers report."""
        rows, verb, done, total = self._view_state
        head = f"{verb or 'working'}: {len(rows)} in flight" + (f", {done} of {total} done" if total else "")
        if self._note:
            head += f"; {self._note}"
        self._spinner.update(text=Text(head, no_wrap=True, overflow="ellipsis"))
        limit = max(1, min(LIVE_LINES, self.out.height - 3))
        shown = rows if len(rows) <= limit else rows[: limit - 1]
        now = self.clock()
        lines: list[Any] = [self._spinner]
        for f in shown:
            doing = f.phase or f.verb
            if f.state:
                doing += f", {f.state}"
            seconds = f"{max(0.0, now - f.started):.0f} s"  # before the state: never cut off
            lines.append(Text(f"  {f.logical_id:<28} {seconds:>6}  {doing}", no_wrap=True, overflow="ellipsis"))
        if len(shown) < len(rows):
            lines.append(Text(f"  ... and {len(rows) - len(shown)} more", style="dim"))
        return Group(*lines)

    def wait_line(self, text: str, *, keep: bool = False) -> None:
        """What a wait is waiting for: in the live region on a terminal, else a line on stderr
        (stdout stays the result, for pipes); ``keep`` for news that must stay on screen."""
        if self.json_mode:
            return
        with self._lock:
            self._wait_line(text, keep)

    def _wait_line(self, text: str, keep: bool) -> None:
        if self._live is not None and not keep:
            self._note = text
            self._live.refresh()
        else:
            self.err.print(f"[dim]  … {escape(text)}[/]")

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._note = ""

    @property
    def _fit(self) -> bool:
        """Cut lines to the terminal's width. Piped output and --wide keep whole values, one
        row per line (no folding), so that grep finds whole ARNs."""
        return self.out.is_terminal and not self.wide

    def _print(self, markup: str) -> None:
        text = Text.from_markup(markup)
        if self._fit:
            text.truncate(self.out.width, overflow="ellipsis")
        self.out.print(text, soft_wrap=True)

    def _resource_line(self, r: ResourceResult) -> None:
        mark, style, word = ACTION_STYLE[r.action]
        line = f"[{style}]{mark} {word:<9}[/] {r.logical_id:<28} [dim]{escape(r.name)}[/]"
        if r.message:
            line += f"  [{style}]{escape(r.message)}[/]"
        self._print(line)
        if r.action == "update":
            self._changes(r.changes)

    def _changes(self, changes: list[Any], indent: int = 6) -> None:
        """Each change as small lines (diffview): per key, per policy line, per creation field."""
        pad = " " * indent
        room = max(20, self.out.width - indent - 8) if self._fit else 0
        headed: set[str] = set()
        for change in changes:
            for d in explain(change):
                path = escape(d.path)
                if d.op == "policy":
                    if d.path not in headed:
                        headed.add(d.path)
                        self._print(f"{pad}[yellow]~ {path}[/]:")
                    style = {"+": "green", "-": "red", "@": "dim"}.get(d.text[:1], "")
                    text = escape(d.text)
                    self._print(f"{pad}  [{style}]{text}[/]" if style else f"{pad}  {text}")
                elif d.op == "set":
                    self._print(f"{pad}{path} = {escape(self._cut(d.new, room - len(d.path)))}")
                elif d.op == "add":
                    self._print(f"{pad}[green]+ {path}[/] = {escape(self._cut(d.new, room - len(d.path)))}")
                elif d.op == "remove":
                    self._print(f"{pad}[red]- {path}[/] (was {escape(self._cut(d.old, room - len(d.path)))})")
                else:
                    half = (room - len(d.path)) // 2
                    self._print(f"{pad}[yellow]~ {path}[/]: {escape(self._cut(d.old, half))} → "
                                f"{escape(self._cut(d.new, half))}")

    def _cut(self, text: str, limit: int) -> str:
        """Shorten one value so that both sides of a change stay visible on a terminal."""
        if not self._fit or len(text) <= max(limit, 12):
            return text
        return text[: max(limit, 12) - 1] + "…"

    # -- final results -------------------------------------------------------------------------
    def run_summary(self, result: RunResult, kept_keys: list[str] | None = None) -> None:
        if self.json_mode:
            extra = {"local_key_files": kept_keys} if kept_keys is not None else {}
            self.json(self._document({**result.as_dict(), **extra}))
            return
        counts = result.count()
        where = f"[bold]{result.command}[/] env [bold]{result.env}[/] ({result.region}, account {result.account})"
        if result.command == "destroy" and result.resources and set(counts) == {"absent"}:
            self._print(f"{where}: nothing left to destroy, all {len(result.resources)} resources "
                        f"are already gone ({result.elapsed_s:.1f}s)")
            if kept_keys:
                self._print(self._kept_keys_line(kept_keys, future=False))
            return
        parts = [f"{counts[a]} {word}" for a, (_, _, word) in ACTION_STYLE.items() if counts.get(a)]
        self._print(f"\n{where}: {', '.join(parts) or 'nothing to do'} in {result.elapsed_s:.1f}s")
        if kept_keys:
            self._print(self._kept_keys_line(kept_keys, future=False))

    def plan(self, result: RunResult) -> None:
        if self.json_mode:
            self.json(self._document(result.as_dict()))
            return
        pending = [r for r in result.resources if r.action != "unchanged"]
        for r in result.resources:
            mark, style, _ = ACTION_STYLE[r.action]
            self._print(f"[{style}]{mark} {r.logical_id:<28}[/] [dim]{escape(r.name)}[/] "
                        f"{PLAN_WORDS.get(r.action, r.action)}")
            if r.message:  # what the configuration gives up, or why a resource is left out
                self._print(f"      [magenta]{escape(r.message)}[/]")
            if r.action in ("create", "update"):
                self._changes(r.changes)
        self._print(f"\nPlan: {sum(r.action == 'create' for r in pending)} to create, "
                    f"{sum(r.action == 'update' for r in pending)} to update, "
                    + (f"{n} to delete, " if (n := sum(r.action == 'delete' for r in pending)) else "") +
                    f"{len(result.resources) - len(pending)} unchanged.")

    def status(self, result: RunResult, certificates: dict[str, Any] | None = None) -> None:
        """A table on a terminal, as many columns as fit; one plain row per line otherwise.

        ``certificates``: the local device certificates expiring soon (certificates.local_expiring)."""
        if self.json_mode:
            extra = {"device_certificates": certificates} if certificates is not None else {}
            self.json(self._document({**result.as_dict(), **extra}))
            return
        rows = []
        for r in result.resources:
            health = r.health + (": " + ", ".join(c.field for c in r.changes) if r.changes else "")
            if r.message:
                health += f" ({r.message})" if r.health in ("disabled", "unwanted") else f" — {r.message}"
            rows.append({"resource": r.logical_id, "type": r.resource_type, "name": r.name,
                         "arn / id": r.ids.get("arn") or r.ids.get("id") or r.ids.get("uuid") or "",
                         "status": health, "_style": HEALTH_STYLE.get(r.health, "")})
        title = f"env {result.env} ({result.region}, account {result.account})"
        if self._fit:
            self._status_table(title, rows)
        else:
            self._status_rows(title, rows)
        counts = result.count("health")
        self._print(", ".join(f"{n} {h}" for h, n in counts.items()))
        if certificates is not None and certificates["local_certificates"]:
            soon = certificates["expiring"]
            style = "yellow" if soon else "dim"
            names = ", ".join(escape(e["device_id"]) for e in soon[:5]) + (", ..." if len(soon) > 5 else "")
            self._print(f"[{style}]device certificates: {len(soon)} of {certificates['local_certificates']} "
                        f"here expire within {certificates['within_days']} days"
                        + (f" ({names}): `iotpipe device rotate --expiring-within "
                           f"{certificates['within_days']}d`" if soon else "") + "[/]")

    def _status_rows(self, title: str, rows: list[dict[str, str]]) -> None:
        """Piped or --wide: every column, whole values, aligned, one resource per line."""
        self.out.print(escape(title), soft_wrap=True)
        widths = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in STATUS_COLUMNS}
        last = STATUS_COLUMNS[-1]
        self.out.print("  ".join(c.ljust(widths[c]) if c != last else c for c in STATUS_COLUMNS),
                       soft_wrap=True, style="bold")
        for row in rows:
            cells = [escape(row[c].ljust(widths[c])) for c in STATUS_COLUMNS[:-1]]
            health = f"[{row['_style']}]{escape(row[last])}[/]" if row["_style"] else escape(row[last])
            self.out.print("  ".join([*cells, health]), soft_wrap=True)

    def _status_table(self, title: str, rows: list[dict[str, str]]) -> None:
        """Columns by priority (resource, status, name, arn, type) while they fit the width."""
        natural = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in STATUS_COLUMNS}
        budget = self.out.width + 3  # each column costs its width + 3 (padding, rule); no edges
        shown: list[str] = []
        for column in STATUS_PRIORITY:
            need = min(natural[column], 30) if column == "status" else natural[column]
            if column in ("resource", "status", "name") or budget - (need + 3) >= 0:
                shown.append(column)
                budget -= need + 3
        shown = [c for c in STATUS_COLUMNS if c in shown]
        table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for column in shown:
            table.add_column(column, no_wrap=column != "status", overflow="ellipsis" if column != "status" else "fold",
                             min_width=min(natural[column], 12))
        for row in rows:
            cells = [escape(row[c]) for c in shown]
            if "status" in shown and row["_style"]:
                cells[shown.index("status")] = f"[{row['_style']}]{escape(row['status'])}[/]"
            table.add_row(*cells)
        self.out.print(table)
        hidden = [c for c in STATUS_COLUMNS if c not in shown]
        if hidden:
            self._print(f"[dim]({' and '.join(hidden)} hidden at {self.out.width} columns: --wide shows all)[/]")

    def outputs(self, outputs: dict[str, str]) -> None:
        if self.json_mode:
            self.json(outputs)
            return
        width = max((len(k) for k in outputs), default=0)
        for key, value in outputs.items():
            self.out.print(f"{key:<{width}} = {escape(value)}")

    # -- demo ----------------------------------------------------------------------------------
    def demo_phase(self, title: str, detail: str) -> None:
        """A phase's heading, numbered by its place in DEMO_PHASES."""
        if self.json_mode:
            return
        self._stop_demo_progress()
        number = DEMO_PHASES.index(title) + 1
        self.out.print(f"\n[bold]{number}/{len(DEMO_PHASES)} {title}[/]: {escape(detail)}", soft_wrap=False)

    def demo_progress(self, stage: str, done: int, total: int) -> None:
        """A bar on a terminal; a line per quarter when piped (a log keeps few lines)."""
        self._counted(stage, DEMO_STAGES[stage], done, total, "records")

    def _counted(self, key: str, label: str, done: int, total: int, unit: str) -> None:
        """Progress of ``done`` of ``total``: a bar on a terminal, a line per quarter when piped."""
        if self.json_mode:
            return
        if self.out.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            if self._demo_bar is None or self._demo_bar[1] != key:
                self._stop_demo_progress()
                bar = Progress(TextColumn(f"  {label}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=self.out)
                bar.start()
                self._demo_bar = (bar, key, bar.add_task(label, total=total))
            bar, _, task = self._demo_bar
            bar.update(task, completed=done)
            if done >= total:
                self._stop_demo_progress()
            return
        quarter = done * 4 // max(total, 1)
        if quarter > self._demo_quarters.get(key, 0):
            self._demo_quarters[key] = quarter
            self.out.print(f"  {label}: {done:,} of {total:,} {unit}")

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
        if r.outage_refused:
            lines += [
                "[yellow]Outage[/]    one batch was made to fail on purpose: a simulated DynamoDB outage refused its "
                f"writes (ProvisionedThroughputExceededException) on all {r.outage_refused} deliveries,",
                f"          so the event source gave its {r.given_up_records} records up and sent them to the "
                "on-failure destination, as Lambda would:",
                *[f"          {escape(key)}" for key in r.failure_records],
                f"          before the replay, DynamoDB misses {r.readings_missing:,} of the {r.readings_sent:,} "
                "readings sent",
            ]
        for line in lines:
            self.out.print(line, soft_wrap=False)
        mismatches = []
        accounted = r.handler_stored + r.handler_rejected + r.given_up_records
        if accounted != r.records_sent:
            mismatches.append(f"{r.records_sent:,} records sent, {accounted:,} stored, quarantined or given up")
        if r.items_stored != r.handler_stored:
            mismatches.append(f"{r.handler_stored:,} readings stored by the handler, {r.items_stored:,} items "
                              "in DynamoDB")
        if not r.outage_refused and r.handler_rejected != r.invalid_sent:
            mismatches.append(f"{r.invalid_sent} invalid records sent, {r.handler_rejected} quarantined")
        for text in mismatches:
            self.out.print(f"[yellow]counts differ:[/] {escape(text)}", soft_wrap=False)
        for line in r.handler_errors:
            self.out.print(f"[yellow]handler error:[/] {escape(json.dumps(line, default=str))}", soft_wrap=False)

    def demo_health_note(self, health: Any, report: Any) -> None:
        """Why `health` says what it says after the outage: the alarm the operator would see."""
        if self.json_mode or health.healthy or not report.outage_refused:
            return
        # each delivery of the batch counts all of it as failed, when it failed from its first record
        product = report.outage_refused * report.given_up_records
        failed = f"failed {health.failed:,}" + (f" = {report.outage_refused} x {report.given_up_records} records"
                                                 if health.failed == product else "")
        self.out.print(
            f"[dim]degraded because of the outage: the handler reported the batch failed on each of its "
            f"{report.outage_refused} deliveries ({failed}), the event source gave {health.given_up:,} records up, and "
            f"{health.failure_records_waiting} failure record(s) wait for a replay. This is what an operator "
            "sees; `iotpipe replay failed` is the remedy (next phase).[/]",
            soft_wrap=False)

    def demo_replay(self, result: Any) -> None:
        """`replay failed` as it prints, then DynamoDB's count before and after it."""
        if self.json_mode:
            self.json(result.as_dict())
            return
        self.replay_report(result.replay)
        r = result
        self.out.print(f"[bold]DynamoDB[/]  {r.items_before:,} items before the replay ({r.missing_before:,} "
                       f"readings missing), {r.items_after:,} after: {r.missing_after:,} of the "
                       f"{r.readings_sent:,} readings sent missing", soft_wrap=False)
        self.out.print(f"[bold]waiting[/]   failure records {r.failure_records_before} before, "
                       f"{r.failure_records_after} after (a replayed record stays as a noncurrent version, "
                       "for audit); `health` over this hour still counts the outage's failed readings",
                       soft_wrap=False)
        if r.missing_after:
            self.out.print(f"[yellow]counts differ:[/] {r.missing_after:,} readings still missing", soft_wrap=False)

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

    # -- replay --------------------------------------------------------------------------------
    def replay_report(self, report: Any) -> None:
        """`replay failed|rejected`: one line per failure record or quarantine object, then totals."""
        if self.json_mode:
            self.json(self._document(report.as_dict()))
            return
        for text in getattr(report, "warnings", []):
            self.warning(text)
        style = {"replayed": "green", "would-replay": "cyan", "failing": "red", "expired": "red",
                 "nothing": "dim"}
        what = "failure record" if report.kind == "failed" else "quarantine object"
        for item in report.items:
            colour = style.get(item.outcome, "")
            counts = (f"{item.records} records, {item.stored} stored, {item.rejected} quarantined"
                      if report.kind == "failed" else
                      f"{item.records} records, {item.stored} valid (back into the stream), "
                      f"{item.rejected} still invalid")
            line = f"[{colour}]{item.outcome:<12}[/] {escape(item.ref)}  [dim]{counts}[/]"
            if item.message:
                line += f"  [{colour or 'dim'}]{escape(item.message)}[/]"
            self._print(line)
        t = report.totals
        verb = "would replay" if report.dry_run else "replayed"
        if report.kind == "failed":
            self._print(f"\n{verb} {t['records']} {what}(s): {t['readings']} records, {t['stored']} readings stored, "
                        f"{t['rejected']} quarantined, {t['still_failing']} still failing, "
                        f"{t['expired_ranges']} range(s) expired" + ("" if report.complete else
                                                                       " (kept for the next run)"))
        else:
            self._print(f"\n{verb} {t['records']} {what}(s): {t['readings']} records, {t['stored']} valid "
                        f"{'to put' if report.dry_run else 'put'} back into the stream, {t['rejected']} still invalid")

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
            certs = "\n".join(f"{c.id[:12]}… {c.status}" + (f" until {c.not_after[:10]}" if c.not_after else "")
                              for c in d.certificates) or "[red]none[/]"
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
            where = f"{escape(result.device_id)} in env {escape(result.env)}"
            if result.local_files_removed:
                self.out.print(f"no such device {where} on AWS: nothing to remove there; its local files were removed")
            else:
                self.out.print(f"no such device {where}: nothing to remove")
            return
        certs = ", ".join(c[:12] + "…" for c in result.deleted_certificates) or "none"
        self.out.print(f"[red]- deleted[/] device [bold]{escape(result.device_id)}[/] (env {escape(result.env)}); "
                       f"certificates deleted: {certs}; local files "
                       f"{'removed' if result.local_files_removed else 'none'}")

    # -- shared state and fleets (iotpipe/statecmd.py, iotpipe/fleet.py) ---------------------------
    def state_bootstrap(self, result: Any) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        self.out.print(f"[bold]state bucket {escape(result.location)}[/] ({result.region})")
        for setting, action in result.settings:
            self.out.print(f"  {escape(setting):<20} {escape(action)}")
        self.out.print(f"use it with: --state {escape(result.location)} (or IOTPIPE_STATE, or the config key state)")

    def state_migrated(self, result: Any) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        self.out.print(f"env {escape(result.env)}: {result.resources} resource records moved from "
                       f"{escape(result.source)} to {escape(result.target)}; the local file is now "
                       f"{escape(result.moved_aside)}")
        keys = len(result.kept_keys)
        self.out.print(f"device private keys never go to S3: {keys} key file(s) stay in "
                       f"{escape(result.key_directory)} on this machine (mode 0600); copy them by a secure "
                       "channel to whoever runs `device add --rotate` or the devices themselves")

    def state_show(self, data: dict[str, Any]) -> None:
        if self.json_mode:
            self.json(data)
            return
        self.out.print(f"[bold]env {escape(data['env'])}[/] · state {escape(data['location'])}")
        if not data["exists"]:
            self.out.print("  no state recorded")
        else:
            self.out.print(f"  account {data['account']} · region {data['region']} · "
                           f"{len(data['resources'])} resources")
            for r in data["resources"]:
                self.out.print(f"  {escape(r['logical_id']):<30} {escape(r['status']):<9} {escape(r['name'])}")
        self.out.print(f"  lock: {escape(data['lock_text']) if data['lock'] is not None else 'not locked'}")
        if "envs" in data:
            self.out.print(f"  envs with state under this prefix: {escape(', '.join(data['envs']) or 'none')}")

    @property
    def live(self) -> bool:
        """Whether a live region is shown (a terminal, not --json): what feeds it is wasted otherwise."""
        return not self.json_mode and self.out.is_terminal

    def fleet_activity(self, env: Any, activity: Any) -> None:
        """What a running env's run is doing (fleet commands): on a terminal, a live region with
        a line per running env; nothing when piped (the line per finished env says enough).

        Called from the engines' threads (envs as threads) or the fleet's main thread (workers).
        """
        if not self.live:
            return
        with self._lock:
            first = self._fleet.get(env.name)
            self._fleet[env.name] = (env.region or "", activity, first[2] if first else self.clock())
            self._fleet_state = tuple((name, *row) for name, row in self._fleet.items())
            if self._live is None:
                from rich.live import Live

                self._live = Live(console=self.out, transient=True, refresh_per_second=4,
                                  get_renderable=self.fleet_view)
                self._live.start()

    def fleet_view(self) -> Group:
        """The fleet's live region: a spinner with the counts, then per running env its
        region, seconds running, the engine's run (read, up, ...) with its counts and the
        first resource in flight. Built from a snapshot: rich's refresh thread calls it."""
        rows, done = self._fleet_state, self._fleet_done
        self._spinner.update(text=Text(f"fleet: {len(rows)} running, {done} done", no_wrap=True,
                                       overflow="ellipsis"))
        limit = max(1, min(LIVE_LINES, self.out.height - 3))
        shown = rows if len(rows) <= limit else rows[: limit - 1]
        now = self.clock()
        lines: list[Any] = [self._spinner]
        for name, region, activity, started in shown:
            parts = [f"{activity.verb}: {activity.done} of {activity.total} done"] if activity.verb else []
            if activity.doing:
                lid, what = activity.doing[0]
                more = f" (+{len(activity.doing) - 1})" if len(activity.doing) > 1 else ""
                parts.append(f"{lid} {what}{more}")
            if activity.note:
                parts.append(activity.note)
            doing = " · ".join(parts) or "starting"
            seconds = f"{max(0.0, now - started):.0f} s"
            lines.append(Text(f"  {name:<20} {region:<14} {seconds:>6}  {doing}", no_wrap=True, overflow="ellipsis"))
        if len(shown) < len(rows):
            lines.append(Text(f"  ... and {len(rows) - len(shown)} more", style="dim"))
        return Group(*lines)

    def fleet_env_done(self, outcome: Any) -> None:
        """One line per env as it finishes (stderr, so stdout stays the table or the JSON; above
        the live region on a terminal)."""
        line = (f"[dim]{escape(outcome.env)} ({escape(outcome.region)}): {escape(outcome.result)} "
                f"in {outcome.elapsed_s:.1f} s[/]")
        with self._lock:
            self._fleet.pop(outcome.env, None)
            self._fleet_done += 1
            self._fleet_state = tuple((name, *row) for name, row in self._fleet.items())
            (self.out if self._live is not None else self.err).print(line)

    def fleet_summary(self, result: Any) -> None:
        with self._lock:
            self._stop_live()
        if self.json_mode:
            self.json(result.as_dict())
            return
        table = Table(title=f"fleet {escape(result.fleet)}: {result.command}", box=box.SIMPLE_HEAD,
                      pad_edge=False, show_edge=False)
        for column in ("env", "region", "result", "changes", "elapsed", "detail"):
            table.add_column(column, overflow="fold")
        styles = {"failed": "red", "drifted": "yellow", "changes pending": "yellow", "pending": "yellow",
                  "interrupted": "yellow", "not run": "yellow"}
        for o in result.outcomes:
            shown = f"[{styles[o.result]}]{escape(o.result)}[/]" if o.result in styles else escape(o.result)
            table.add_row(escape(o.env), escape(o.region), shown, str(o.changes), f"{o.elapsed_s:.1f} s",
                          escape(o.message))
        self.out.print(table)
        self.out.print(f"{len(result.outcomes)} envs in {result.elapsed_s:.1f} s; exit {int(result.exit_code)}")

    def fleet_preview(self, envs: list[Any]) -> None:
        """What `fleet destroy` is about to remove, before the one question (stderr)."""
        self.err.print(f"[bold]fleet destroy will remove every resource of {len(envs)} envs:[/]")
        for env in envs:
            self.err.print(f"  env {escape(env.name)} · region {escape(env.region or 'default')} · profile "
                           f"{escape(env.profile or 'default')} · config {escape(str(env.config or 'built-in defaults'))}")

    def bulk_progress(self, verb: str, done: int, total: int) -> None:
        """`device import`/`rotate`: a bar on a terminal, a line per quarter when piped."""
        self._counted(verb, verb, done, total, "devices")

    def skipped_lines(self, file: str, lines: list[tuple[int, str]]) -> None:
        """`device import --skip-invalid`: the bad lines, on stderr, before anything is created."""
        for line, why in lines:
            self.err.print(f"[yellow]skipped[/] {escape(file)} line {line}: {escape(why)}")

    def bulk_summary(self, result: Any, what: str) -> None:
        """`device import` / `device rotate`: every failure with its line and reason, then counts."""
        self._stop_demo_progress()
        if self.json_mode:
            self.json(result.as_dict())
            return
        for d in result.devices:
            if d.outcome in ("failed", "would-fail"):
                where = f"line {d.line} " if what == "import" else ""
                self.out.print(f"[red]! {d.outcome}[/] {where}[bold]{escape(d.device_id)}[/]: {escape(d.reason)}")
            elif d.outcome in ("would-update",) and d.reason:
                self.out.print(f"[yellow]~ would update[/] {escape(d.device_id)}: {escape(d.reason)}")
        lost = sum("without its answer" in d.reason for d in result.devices)
        if lost:
            self.out.print(f"[yellow]note:[/] {lost} certificate request(s) of a run that died got no "
                           "answer; any certificate AWS made for them is INACTIVE and attached to nothing "
                           "(it cannot connect): see `aws iot list-certificates`")
        counts = result.counts()
        order = (("would-add", "would add"), ("would-update", "would update"), ("unchanged", "unchanged"),
                 ("would-fail", "would fail")) if getattr(result, "dry_run", False) else (
                 ("rotated", "rotated") if what == "rotate" else ("added", "added"), ("updated", "updated"),
                 ("unchanged", "unchanged"), ("failed", "failed"))
        parts = [f"{counts.get(key, 0)} {word}" for key, word in order]
        if what == "rotate":
            parts.append(f"{result.skipped} not selected")
        if getattr(result, "skipped_lines", None):
            parts.append(f"{len(result.skipped_lines)} bad line(s) skipped")
        tail = " (dry run: nothing written)" if getattr(result, "dry_run", False) else \
            f" in {result.seconds:.1f} s"
        if getattr(result, "throttle_wait_s", 0) > 0.05:
            tail += f"; paced to AWS's IoT rate limits ({result.throttle_wait_s:.1f} s of waits over all threads)"
        self.out.print(f"{what} env {escape(result.env)}: " + ", ".join(parts) + tail)

    def device_exported(self, result: Any) -> None:
        if self.json_mode:
            self.json(result.as_dict())
            return
        self.out.print(f"[green]+ exported[/] {len(result.devices)} device(s) of env {escape(result.env)} "
                       f"to {escape(result.out)}" + (" (zip; the key entries keep mode 0600)"
                                                      if result.kind == "zip" else ""))
        for name in result.files:
            self.out.print(f"  {escape(name)}" + ("  (mode 0600; keep it secret)" if name.endswith(".key") else ""))
        self.out.print("  root CA: not included, get https://www.amazontrust.com/repository/AmazonRootCA1.pem")

    def lock_holder(self, text: str) -> None:
        self.out.print(text)

    def message(self, text: str) -> None:
        if not self.json_mode:
            self.out.print(text)

    def warning(self, text: str) -> None:
        """A result that is not whole: on stderr, so stdout stays the (JSON) result."""
        self._stop_live()
        self.err.print(f"[yellow]warning:[/] {escape(text)}")

    def error_json(self, code: int, name: str, message: str) -> None:
        """``--json``: the error as an object on stdout too, for scripts that parse stdout only."""
        self.json({"error": True, "code": code, "name": name, "message": message})

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

    def error(self, text: str) -> None:
        self._stop_live()
        self.err.print(f"[red]error:[/] {escape(text)}")

    # -- day-two operations (iotpipe/ops) -------------------------------------------------------
    def health(self, report: Any) -> None:
        """The 3 a.m. screen: the flow by stage, what waits, alarms, and a verdict last."""
        data = report.as_dict()
        if self.json_mode:
            self.json(data)
            return
        p = self.out.print
        p(f"[bold]health of env {escape(report.env)}[/] from {report.since} to {report.until}")
        p(f"  readings     published {report.published:,} · in the stream {report.in_stream:,} · "
          f"processed {report.processed:,} (stored {report.stored:,}, rejected {report.rejected:,}) · "
          f"failed {report.failed:,} · given up {report.given_up:,} · anomalies {report.anomalies:,}")
        age = "no data" if report.iterator_age_ms is None else f"{report.iterator_age_ms / 1000:,.1f} s"
        p(f"  function     invocations {report.invocations:,} · errors {report.errors:,} · "
          f"throttles {report.throttles:,} · iterator age {age}")
        dlq = "none" if report.dlq_messages_waiting is None else f"{report.dlq_messages_waiting:,}"
        p(f"  waiting      failure records {report.failure_records_waiting:,} · dead-letter queue messages {dlq}")
        alarms = ", ".join(a["name"] for a in report.alarms_in_alarm) or "none"
        p(f"  in ALARM     {escape(alarms)}")
        p(f"  last reading {report.last_reading_stored_at or 'none stored'}")
        if report.healthy:
            p("[green]verdict: healthy[/]")
            return
        p("[red]verdict: degraded[/]")
        for problem in report.problems:
            p(f"  - {escape(problem)}")

    def log_event(self, event: Any) -> None:
        """One handler log event: a JSON line with --json, else time, level, event and fields."""
        if self.json_mode:
            sys.stdout.write(json.dumps(event.as_dict(), default=str) + "\n")
            sys.stdout.flush()
            return
        when = event.timestamp.strftime("%Y-%m-%d %H:%M:%S")
        if event.fields is None:
            self.out.print(f"[dim]{when}[/] {escape(event.message)}")
            return
        fields = dict(event.fields)
        level, name = str(fields.pop("level", "")), str(fields.pop("event", ""))
        style = {"ERROR": "red", "WARNING": "yellow"}.get(level, "dim")
        rest = " ".join(f"{k}={_short(v, 120)}" for k, v in fields.items() if v not in (None, [], {}))
        self.out.print(f"[dim]{when}[/] [{style}]{level:<7}[/] [bold]{escape(name)}[/] {escape(rest)}")

    def readings(self, device_id: str, readings: list[Any], fmt: str) -> None:
        if fmt == "json":
            self.json({"device_id": device_id, "count": len(readings), "readings": [r.as_dict() for r in readings]})
            return
        if fmt == "csv":
            from iotpipe.ops.readings import to_csv

            sys.stdout.write(to_csv(readings))
            sys.stdout.flush()
            return
        table = Table(title=f"readings of {device_id}", box=box.SIMPLE)
        for column in ("time (UTC)", "temperature", "vibration", "pressure", "anomalies"):
            table.add_column(column, overflow="fold")
        for r in readings:
            mark = "[red]! " + ", ".join(r.anomalies) + "[/]" if r.anomalies else ""
            table.add_row(r.time, *(("" if r.metrics.get(m) is None else str(r.metrics[m]))
                                    for m in ("temperature", "vibration", "pressure")), mark)
        self.out.print(table)
        flagged = sum(1 for r in readings if r.anomalies)
        self.out.print(f"{len(readings)} reading(s), {flagged} anomalous")
